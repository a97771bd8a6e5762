"""Tests for configs/tad.py: variants parse, settings reach TAD, bad fields are named."""

from __future__ import annotations

import inspect

import pytest

from chronoforge_jax import tad
from chronoforge_jax.tad import features
from configs import common
from configs import tad as tad_config


@pytest.mark.parametrize("arg", [None, "", "smoke", "variant=smoke,k=8", "k=32"])
def test_variants_validate(arg):
  config = tad_config.get_config(arg)
  tad_config.validate_tad(config)
  assert config.tad.k == (8 if arg == "variant=smoke,k=8" else 32 if arg == "k=32" else 16)
  if arg and "smoke" in arg:
    assert config.input.size <= 32 and config.features.grid <= 4


def test_kwargs_are_exactly_the_library_arguments():
  config = tad_config.get_config()
  kwargs = tad_config.tad_kwargs(config.tad)
  params = inspect.signature(tad.analyze).parameters
  assert set(kwargs) == {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY}
  for name, value in kwargs.items():  # Config defaults are the library defaults.
    assert params[name].default == value, name
  fparams = inspect.signature(features.frame_features).parameters
  for name, value in tad_config.features_kwargs(config.features).items():
    assert fparams[name].default == value, name


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("tad.selector", "random", "config.tad.selector='random': choose one of"),
    ("tad.k", 0, "config.tad.k=0: need a positive"),
    ("tad.distance", "cos", "tad.distance"),
    ("tad.smooth", -1, "tad.smooth"),
    ("tad.prominence", -0.1, "tad.prominence"),
    ("tad.window", 0, "tad.window"),
    ("tad.boost_mode", "pow", "tad.boost_mode"),
    ("features.color", "hsv", "features.color"),
    ("features.grid", 0, "features.grid"),
    ("input.fps", -1.0, "input.fps"),
    ("input.resize", "stretch", "input.resize"),
    ("input.size", 4, "config.input.size=4: 4 pixels is smaller than features.grid=8"),
  ],
)
def test_bad_fields_are_named(field, value, match):
  config = tad_config.get_config()
  section, _, name = field.rpartition(".")
  node = config
  for part in section.split("."):
    node = node[part]
  node[name] = value
  with pytest.raises(common.ConfigError, match=match):
    tad_config.validate_tad(config)


def test_unknown_variant_and_typo_fail():
  with pytest.raises(common.ConfigError, match="variant"):
    tad_config.get_config("huge")
  config = tad_config.get_config()
  with pytest.raises(AttributeError):
    config.tad.prominance = 0.2  # Locked: typos fail loudly.
