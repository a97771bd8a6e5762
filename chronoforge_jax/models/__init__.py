"""The Qwen2.5-VL-architecture video-language model in Flax NNX.

Modules: `config` (frozen configs, presets, config.json mapping), `layers` (Dense, RMSNorm,
SwiGLU, attention), `rope` (2D RoPE, M-RoPE position ids), `vision` (ViT tower), `text`
(decoder + KV cache), `vlm` (VideoLanguageModel, frames_to_pixel_values), `stack` (layer
stacks: stacked params run with nnx.scan, or a list for debugging).

`create_model(section, rngs=...)` builds a model from the `model` config section
(configs/model.py): a preset name or an HF checkpoint directory, dtype names, remat,
scanned or unrolled layers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx
import jax.numpy as jnp

from chronoforge_jax.models.config import (  # noqa: F401
  ModelConfig,
  TextConfig,
  VisionConfig,
  from_hf_config,
  get_preset,
  to_hf_config,
)
from chronoforge_jax.models.text import KVCache  # noqa: F401
from chronoforge_jax.models.vlm import VideoLanguageModel, frames_to_pixel_values  # noqa: F401

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
    section: has preset, hf_dir, dtype, param_dtype, remat_policy, attention_impl,
      attention_chunk, scan_layers (configs/model.py).
    rngs: parameter RNG streams.

  Returns:
    The VideoLanguageModel (load weights with `chronoforge_jax.models.convert`).
  """
  return VideoLanguageModel(
    config_from_section(section),
    rngs=rngs,
    dtype=dtype_from_name(section.dtype),
    param_dtype=dtype_from_name(section.param_dtype),
    remat_policy=section.remat_policy,
    attention_impl=section.get("attention_impl", "xla"),
    attention_chunk=section.get("attention_chunk", 512),
    scan_layers=section.get("scan_layers", True),
  )


def match_tokenizer(cfg: ModelConfig, tokenizer: Any) -> ModelConfig:
  """Takes the vocabulary size and special token ids from a tokenizer.

  The published checkpoints already agree with their tokenizer; this is for models
  trained from scratch on another vocabulary (the tiny synthetic-set tokenizer).

  Args:
    cfg: the model config.
    tokenizer: a `chronoforge_jax.tokenizer.Tokenizer`.

  Returns:
    The config with vocab_size >= the tokenizer's and its special token ids.
  """
  ids = {
    name: tokenizer.token_to_id(token)
    for name, token in (
      ("video_token_id", "<|video_pad|>"),
      ("image_token_id", "<|image_pad|>"),
      ("vision_start_token_id", "<|vision_start|>"),
      ("vision_end_token_id", "<|vision_end|>"),
      ("eos_token_id", "<|im_end|>"),
      ("pad_token_id", "<|endoftext|>"),
      ("bos_token_id", "<|endoftext|>"),
    )
  }
  missing = [k for k, v in ids.items() if v is None]
  if missing:
    raise ValueError(f"tokenizer {tokenizer.name} lacks the special tokens for {missing}")
  text = dataclasses.replace(cfg.text, vocab_size=max(cfg.text.vocab_size, tokenizer.vocab_size))
  return cfg.replace(text=text, **ids)
