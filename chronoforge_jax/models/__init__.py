"""The Qwen2.5-VL-architecture video-language model in Flax NNX.

Modules: `config` (frozen configs, presets, config.json mapping), `layers` (Dense, RMSNorm,
SwiGLU, attention), `rope` (2D RoPE, M-RoPE position ids), `vision` (ViT tower), `text`
(decoder + KV cache), `vlm` (VideoLanguageModel, frames_to_pixel_values).

`create_model(section, rngs=...)` builds a model from the `model` config section
(configs/model.py): a preset name or an HF checkpoint directory, dtype names, remat.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from chronoforge_jax.models.config import (ModelConfig, TextConfig, VisionConfig,  # noqa: F401
                                           from_hf_config, get_preset, to_hf_config)
from chronoforge_jax.models.text import KVCache  # noqa: F401
from chronoforge_jax.models.vlm import (VideoLanguageModel,  # noqa: F401
                                        frames_to_pixel_values)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_from_name(name: str):
  """'float32' / 'bfloat16' / 'float16' -> the jnp dtype (ValueError otherwise)."""
  if name not in _DTYPES:
    raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(_DTYPES)}")
  return _DTYPES[name]


def config_from_section(section: Any) -> ModelConfig:
  """ModelConfig of a `model` config section: `hf_dir`'s config.json, else `preset`."""
  hf_dir = getattr(section, "hf_dir", "") or ""
  overrides = {}
  after = getattr(section, "text_position_after_video", "") or ""
  if after:
    overrides["text_position_after_video"] = after
  if hf_dir:
    import json
    import os
    with open(os.path.join(hf_dir, "config.json")) as f:
      return from_hf_config(json.load(f), **overrides)
  cfg = get_preset(section.preset)
  return cfg.replace(**overrides) if overrides else cfg


def create_model(section: Any, *, rngs: nnx.Rngs) -> VideoLanguageModel:
  """Builds a randomly initialised model from a `model` config section.

  Args:
    section: has preset, hf_dir, dtype, param_dtype, remat_policy (configs/model.py).
    rngs: parameter RNG streams.

  Returns:
    The VideoLanguageModel (load weights with `chronoforge_jax.convert`).
  """
  return VideoLanguageModel(config_from_section(section), rngs=rngs,
                            dtype=dtype_from_name(section.dtype),
                            param_dtype=dtype_from_name(section.param_dtype),
                            remat_policy=section.remat_policy)
