"""Config sections are checked by the library's settings types, once, naming the field.

configs/* hold defaults and variants; `validate` builds the library type of each section
(chronoforge_jax/settings.py lists them), and a bad `--config.<section>.<field>` fails
as a ConfigError `config.<section>.<field>=<value>: <need>` before anything compiles.
"""

from __future__ import annotations

import json
import os

import pytest

from chronoforge_jax import models, settings, tad
from chronoforge_jax.data import pipeline, records
from chronoforge_jax.models import sampling
from chronoforge_jax.train import checkpoint
from configs import ckpt as ckpt_config
from configs import common
from configs import data as data_config
from configs import kf_grpo as kf_grpo_config
from configs import model as model_config
from configs import sampling as sampling_config


@pytest.mark.parametrize("variant", kf_grpo_config.VARIANTS)
def test_every_training_variant_builds_the_library_types(variant):
  config = kf_grpo_config.get_config(variant)
  config.input.data_dir = "/data"
  kf_grpo_config.validate(config)
  train = pipeline.PipelineSettings.from_config(config)
  evaluate = pipeline.PipelineSettings.from_config(config, train=False)
  assert (train.batch_size, train.num_keyframes) == (config.input.batch_size, config.tad.k)
  assert (evaluate.batch_size, evaluate.num_keyframes, evaluate.shuffle) == (
    config.input.eval_batch_size,
    config.input.eval_num_keyframes,
    False,
  )
  assert train.select_kwargs == tad.TADSettings.from_config(config.tad).select_kwargs()
  m = models.ModelSettings.from_config(config.model)
  assert (m.preset, m.remat_policy, m.attention_impl) == (
    config.model.preset,
    config.model.remat_policy,
    config.model.attention_impl,
  )
  assert checkpoint.CheckpointSettings.from_config(config.ckpt).save_every == (
    config.ckpt.save_every
  )
  # Nothing in a training config is read by nothing: the features section belongs to
  # preprocessing (configs/data.py), and the patch sizes to the model.
  assert "features" not in config
  assert "patch_size" not in config.input and "spatial_merge_size" not in config.input


def test_patch_sizes_come_from_the_model(tmp_path):
  config = kf_grpo_config.get_config("smoke")
  tiny = models.get_preset("tiny")
  assert pipeline.PipelineSettings.from_config(config).patch_size == tiny.vision.patch_size
  hf = models.to_hf_config(tiny)
  hf["vision_config"].update(patch_size=16, spatial_patch_size=16, spatial_merge_size=1)
  with open(tmp_path / "config.json", "w") as f:
    json.dump(hf, f)
  config.model.hf_dir = os.fspath(tmp_path)
  s = pipeline.PipelineSettings.from_config(config)
  assert (s.patch_size, s.merge_size) == (16, 1)
  # A data config alone (no model section) gets Qwen2.5-VL's 14-pixel patches, 2x2.
  alone = pipeline.PipelineSettings.from_config(data_config.get_config("smoke"))
  assert (alone.patch_size, alone.merge_size) == (14, 2)
  config.model.hf_dir = os.fspath(tmp_path / "missing")
  with pytest.raises(common.ConfigError, match="model.hf_dir=.*no config.json"):
    data_config.validate_data(config)


def _training():
  config = kf_grpo_config.get_config("smoke")
  config.input.data_dir = "data"
  return config


@pytest.mark.parametrize(
  "make, validate, field, value, message",
  [
    (data_config.get_config, data_config.validate_data, "input.eval_batch_size", 0, "=0: need"),
    (data_config.get_config, data_config.validate_data, "input.eval_num_keyframes", 3, "even K"),
    (data_config.get_config, data_config.validate_data, "input.num_epochs", 0, "None"),
    (data_config.get_config, data_config.validate_data, "input.prefetch_buffer", 0, ">= 1"),
    (data_config.get_config, data_config.validate_data, "input.patch_mode", "x", "choose"),
    (data_config.get_config, data_config.validate_data, "tad.selector", "x", "choose"),
    (data_config.get_config, data_config.validate_data, "preprocess.workers", -1, ">= 0"),
    (data_config.get_config, data_config.validate_data, "preprocess.format", "x", "choose"),
    (data_config.get_config, data_config.validate_data, "preprocess.fps", 0.0, "positive"),
    (data_config.get_config, data_config.validate_data, "features.grid", 0, "positive"),
    (data_config.get_config, data_config.validate_data, "features.color", "hsv", "choose"),
    (model_config.get_config, model_config.validate, "preset", "qwen9", "or set hf_dir"),
    (model_config.get_config, model_config.validate, "dtype", "int8", "choose"),
    (model_config.get_config, model_config.validate, "vocab_chunk", 0, ">= 1"),
    (model_config.get_config, model_config.validate, "text_position_after_video", "x", "choose"),
    (ckpt_config.get_config, ckpt_config.validate_ckpt, "subdir", " ", "non-empty"),
    (ckpt_config.get_config, ckpt_config.validate_ckpt, "resume", None, "path string"),
    (
      lambda: sampling_config.get_config().sampling,
      sampling_config.validate,
      "num_samples",
      0,
      ">= 1",
    ),
    (lambda: sampling_config.get_config().sampling, sampling_config.validate, "top_k", -1, "int"),
    (_training, kf_grpo_config.validate, "optax.grad_accum", 0, ">= 1"),
    (_training, kf_grpo_config.validate, "optax.b2", 1.5, "<= 1"),
    (_training, kf_grpo_config.validate, "sft_steps", 9, "<= total_steps"),
    (_training, kf_grpo_config.validate, "mesh.fsdp", 0, "-1"),
    (_training, kf_grpo_config.validate, "rl.num_generations", 1, ">= 2"),
    (_training, kf_grpo_config.validate, "rl.saliency.alpha", -0.3, ">= 0"),
    (
      lambda: sampling_config.get_config().sampling,
      sampling_config.validate,
      "cache_dtype",
      "int8",
      "choose",
    ),
  ],
)
def test_a_bad_field_is_a_config_error_naming_it(make, validate, field, value, message):
  config = make()
  section = {
    model_config.validate: "model",
    ckpt_config.validate_ckpt: "ckpt",
    sampling_config.validate: "sampling",
  }.get(validate)
  node = config
  *parents, name = field.split(".")
  for part in parents:
    node = node[part]
  with node.unlocked():
    node[name] = value
  full = f"config.{section}.{field}" if section else f"config.{field}"
  with pytest.raises(common.ConfigError) as e:
    validate(config)
  assert str(e.value).startswith(f"{full}={value!r}: "), str(e.value)
  assert message in str(e.value)


def test_built_directly_a_type_names_itself():
  for build, match in (
    (lambda: pipeline.PipelineSettings(batch_size=0), "PipelineSettings.batch_size=0: "),
    (lambda: pipeline.PipelineSettings(batch_size=2, select_kwargs={"windw": 3}), "windw"),
    (lambda: records.PreprocessSettings(size=100), "PreprocessSettings.size=100: "),
    (lambda: records.PreprocessSettings(feature_grid=0), "PreprocessSettings.feature_grid=0"),
    (lambda: models.ModelSettings(remat_policy="some"), "ModelSettings.remat_policy='some'"),
    (lambda: checkpoint.CheckpointSettings(keep=0), "CheckpointSettings.keep=0: "),
    (lambda: sampling.SamplingSettings(top_p=0.0), "SamplingSettings.top_p=0.0: "),
    (lambda: sampling.SamplingParams(temperature=-1.0), "temperature=-1.0: use 0"),
  ):
    with pytest.raises(settings.SettingsError, match=match.replace(".", r"\.")):
      build()


def test_library_choices_are_the_registries():
  """The config files re-declare no choices: adding a preset, a selector or a remat
  policy to the library makes it valid in a config."""
  from chronoforge_jax.models import layers, vision

  for name in models.PRESETS:
    models.ModelSettings(preset=name)
  for policy in vision.REMAT_POLICIES:
    models.ModelSettings(remat_policy=policy)
  for impl in layers.ATTENTION_IMPLS:
    models.ModelSettings(attention_impl=impl)
  for name in tad.SELECTORS.names():
    tad.TADSettings(selector=name)
  kw = sampling.SamplingSettings(cache_dtype="bfloat16").generate_kwargs()
  assert kw["cache_dtype"] == "bfloat16" and "bucket" not in kw
