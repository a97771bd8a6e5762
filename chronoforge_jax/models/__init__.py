"""The Qwen2.5-VL-architecture video-language model in Flax NNX.

Modules: `config` (frozen configs, presets, config.json mapping), `layers` (Dense, RMSNorm,
SwiGLU, attention), `rope` (2D RoPE, M-RoPE position ids), `vision` (ViT tower), `text`
(decoder + KV cache), `vlm` (VideoLanguageModel, frames_to_pixel_values), `stack` (layer
stacks: stacked params run with nnx.scan, or a list for debugging).

`ModelSettings` is the validated `model` config section (configs/model.py): a preset
name or an HF checkpoint directory, dtype names, remat, attention, scanned or unrolled
layers; `create_model(section, rngs=...)` builds a model from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from flax import nnx
import jax.numpy as jnp

from chronoforge_jax import settings as settings_lib
from chronoforge_jax.models.config import (  # noqa: F401
  PRESETS,
  TEXT_AFTER_VIDEO,
  ModelConfig,
  TextConfig,
  VisionConfig,
  from_hf_config,
  get_preset,
  to_hf_config,
)
from chronoforge_jax.models.layers import ATTENTION_IMPLS
from chronoforge_jax.models.text import KVCache  # noqa: F401
from chronoforge_jax.models.vision import REMAT_POLICIES
from chronoforge_jax.models.vlm import VideoLanguageModel, frames_to_pixel_values  # noqa: F401

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_from_name(name: str):
  """'float32' / 'bfloat16' / 'float16' -> the jnp dtype (ValueError otherwise)."""
  if name not in DTYPES:
    raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
  return DTYPES[name]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSettings:
  """Which VLM, in which precision, with which remat and attention: the `model` section.

  Attributes:
    preset: a name in `config.PRESETS` (tiny, small, qwen2_5_vl_3b, qwen2_5_vl_7b,
      qwen2_5_vl_32b, qwen2_5_vl_72b); ignored when `hf_dir` is set.
    hf_dir: a local HF checkpoint folder whose config.json defines the model ("": none).
    match_tokenizer: take the vocabulary size and special token ids from the tokenizer.
    dtype: compute dtype, a name in DTYPES.
    param_dtype: storage dtype of the params, a name in DTYPES.
    remat_policy: one of `vision.REMAT_POLICIES` (what each layer saves for backward).
    attention_impl: the decoder's attention, one of `layers.ATTENTION_IMPLS`.
    attention_chunk: query rows per block with attention_impl="chunked" (>= 1).
    scan_layers: stacked params run as one `nnx.scan` (True) or a Python loop (False).
    text_position_after_video: "" (the checkpoint's default) or one of
      `config.TEXT_AFTER_VIDEO` ('max', 'spatial').
    vocab_chunk: vocabulary columns per step of the chunked log-softmax (>= 1).
  """

  preset: str = "qwen2_5_vl_7b"
  hf_dir: str = ""
  match_tokenizer: bool = False
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  remat_policy: str = "dots_no_batch"
  attention_impl: str = "xla"
  attention_chunk: int = 512
  scan_layers: bool = True
  text_position_after_video: str = ""
  vocab_chunk: int = 8192

  def __post_init__(self):
    req = settings_lib.require
    req(isinstance(self.hf_dir, str), self, "hf_dir", self.hf_dir, "need a folder path or ''")
    req(
      bool(self.hf_dir) or self.preset in PRESETS,
      self,
      "preset",
      self.preset,
      f"choose one of {list(PRESETS)} or set hf_dir",
    )
    for field in ("match_tokenizer", "scan_layers"):
      value = getattr(self, field)
      req(isinstance(value, bool), self, field, value, "need true or false")
    settings_lib.choice(self, "dtype", self.dtype, DTYPES)
    settings_lib.choice(self, "param_dtype", self.param_dtype, DTYPES)
    settings_lib.choice(self, "remat_policy", self.remat_policy, REMAT_POLICIES)
    settings_lib.choice(self, "attention_impl", self.attention_impl, ATTENTION_IMPLS)
    for field in ("attention_chunk", "vocab_chunk"):
      value = getattr(self, field)
      req(settings_lib.is_int(value, 1), self, field, value, "need an int >= 1")
    settings_lib.choice(
      self, "text_position_after_video", self.text_position_after_video, ("",) + TEXT_AFTER_VIDEO
    )

  @classmethod
  def from_config(cls, section: Any) -> ModelSettings:
    """From a `model` config section; a bad field is reported as `config.model.<field>`.

    A section may leave fields out (they keep the defaults above); a ModelSettings
    passes through unchanged.
    """
    if isinstance(section, cls):
      return section
    return settings_lib.from_section(cls, section, "model")

  def model_config(self) -> ModelConfig:
    """The ModelConfig: `hf_dir`'s config.json, else the preset."""
    overrides = {}
    if self.text_position_after_video:
      overrides["text_position_after_video"] = self.text_position_after_video
    if self.hf_dir:
      path = os.path.join(self.hf_dir, "config.json")
      if not os.path.isfile(path):
        raise FileNotFoundError(
          f"model.hf_dir={self.hf_dir!r}: no config.json there; point it at a HF "
          "checkpoint folder (or a launch.convert_hf output), or set model.hf_dir='' "
          "and model.preset"
        )
      with open(path) as f:
        return from_hf_config(json.load(f), **overrides)
    cfg = get_preset(self.preset)
    return cfg.replace(**overrides) if overrides else cfg


def config_from_section(section: Any) -> ModelConfig:
  """ModelConfig of a `model` config section (or ModelSettings): `hf_dir`'s config.json,
  else `preset`."""
  return ModelSettings.from_config(section).model_config()


def create_model(section: Any, *, rngs: nnx.Rngs) -> VideoLanguageModel:
  """Builds a randomly initialised model from a `model` config section.

  Args:
    section: a `model` config section (configs/model.py) or a ModelSettings.
    rngs: parameter RNG streams.

  Returns:
    The VideoLanguageModel (load weights with `chronoforge_jax.models.convert`).
  """
  s = ModelSettings.from_config(section)
  return VideoLanguageModel(
    s.model_config(),
    rngs=rngs,
    dtype=dtype_from_name(s.dtype),
    param_dtype=dtype_from_name(s.param_dtype),
    remat_policy=s.remat_policy,
    attention_impl=s.attention_impl,
    attention_chunk=s.attention_chunk,
    scan_layers=s.scan_layers,
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
