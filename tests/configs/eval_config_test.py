"""Tests for configs/eval.py: variants, checks, and the EvalSettings they build."""

from __future__ import annotations

import pytest

from chronoforge_jax import tad
from chronoforge_jax.evaluation import evaluator
from configs import common, kf_grpo
from configs import eval as eval_config
from configs import tad as tad_config


@pytest.mark.parametrize("variant", eval_config.VARIANTS)
def test_every_variant_builds_valid_settings_for_each_run(variant):
  config = eval_config.get_config(variant)
  for selector in config.eval.selectors:
    for order in config.eval.frame_orders:
      s = evaluator.EvalSettings.from_config(config, selector=selector, frame_order=order)
      assert (s.selector, s.frame_order, s.num_keyframes) == (selector, order, config.tad.k)
      assert s.select_kwargs == tad_config.tad_kwargs(config.tad)
      assert s.max_questions is None  # 0 in the config: all questions.
      # Empty template / scoring: the training run's, else these.
      assert (s.prompt_template, s.scoring) == ("short", "lenient")


def test_demo_evaluates_as_the_demo_trains():
  """configs/eval.py:demo == what configs/kf_grpo.py:demo implies for evaluation."""
  config = eval_config.get_config("demo")
  train = kf_grpo.get_config("demo")
  got = evaluator.EvalSettings.from_config(config, selector="tad")
  want = evaluator.EvalSettings.from_train_config(
    train,
    selector="tad",
    mode="likelihood",
    answer_template=eval_config.DEMO_ANSWER_TEMPLATE,
    max_new_tokens=32,
  )
  assert got == want
  assert config.model.preset == train.model.preset == "small"
  assert config.model.match_tokenizer


def test_overrides_and_defaults():
  config = eval_config.get_config("default")
  assert tuple(config.eval.selectors) == ("uniform", "tad")
  assert config.model.preset == "qwen2_5_vl_7b" and config.tad.k == 16
  assert "selector" not in config.tad  # eval.selectors picks them.
  s = evaluator.EvalSettings.from_config(config, scoring="lmms_eval", mode="likelihood")
  assert (s.scoring, s.mode, s.selector) == ("lmms_eval", "likelihood", "uniform")
  assert s.select_kwargs == tad.analyze_defaults()


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("eval.mode", "beam", "config.eval.mode: got 'beam'"),
    ("eval.selectors", ("tad", "best"), "config.eval.selectors: got 'best'"),
    ("eval.frame_orders", ("reversed",), "config.eval.frame_orders: got 'reversed'"),
    ("tad.k", 5, "config.tad.k: got 5"),
    ("eval.scoring", "strict", "config.eval.scoring: got 'strict'"),
    ("eval.answer_template", "<a/>", "config.eval.answer_template"),
    ("eval.batch_size", 0, "config.eval.batch_size"),
  ],
)
def test_bad_eval_fields_name_the_config_field(field, value, message):
  config = eval_config.get_config("smoke")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError) as e:
    for selector in config.eval.selectors:
      for order in config.eval.frame_orders:
        evaluator.EvalSettings.from_config(config, selector=selector, frame_order=order)
  assert message in str(e.value)


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("eval.selectors", (), "config.eval.selectors"),
    ("eval.frame_orders", ("ordered", "ordered"), "config.eval.frame_orders"),
    ("mesh.fsdp", 0, "config.mesh.fsdp"),
    ("model.dtype", "int8", "config.model.dtype"),
    ("tad.window", 0, "config.tad.window"),
  ],
)
def test_validate_names_the_field(field, value, message):
  config = eval_config.get_config("smoke")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(common.ConfigError, match=message):
    eval_config.validate(config)


def test_unknown_variant_is_refused():
  with pytest.raises(common.ConfigError, match="variant"):
    eval_config.get_config("huge")
