"""Tiny HF transformers Qwen2.5-VL reference models and inputs, for parity tests and benches.

Needs torch and transformers (the `test` extra); imported only by tests and benchmarks.

  hf_config_dict(**overrides) -> dict          a tiny config in the nested layout
  build_hf_model(config_dict, *, seed, std=...) -> Qwen2_5_VLForConditionalGeneration
      random weights of realistic scale (not HF's 0.02 init, under which every logit is
      near zero and parity would be vacuous).
  video_prompt_batch(cfg, grids, text_lens, rng, pad='left') -> dict of NumPy inputs
      rows of text + <vision_start> video placeholders <vision_end> + text, padded.
  hf_forward(model, inputs) -> float32 NumPy logits [B, S, V]
  build_pair(config_dict, *, seed, **overrides) -> (hf_model, VideoLanguageModel)
      the HF model saved to a temporary directory and converted with `load_hf_model`.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any, Sequence

import numpy as np

from chronoforge_jax.models.config import ModelConfig

TINY_HF = {
  "text_config": {
    "vocab_size": 151,
    "hidden_size": 36,
    "intermediate_size": 53,
    "num_hidden_layers": 3,
    "num_attention_heads": 3,
    "num_key_value_heads": 1,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 2048,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2]},
    "bos_token_id": 148,
    "eos_token_id": 149,
    "pad_token_id": 150,
  },
  "vision_config": {
    "depth": 3,
    "hidden_size": 40,
    "intermediate_size": 29,
    "num_heads": 2,
    "out_hidden_size": 36,
    "window_size": 56,
    "fullatt_block_indexes": [1],
    "tokens_per_second": 2,
  },
  "image_token_id": 144,
  "video_token_id": 145,
  "vision_start_token_id": 146,
  "vision_end_token_id": 147,
  "tie_word_embeddings": False,
}


def hf_config_dict(
  *, text: dict | None = None, vision: dict | None = None, **top: Any
) -> dict[str, Any]:
  """The tiny config with overrides merged into text_config / vision_config / top level."""
  cfg = copy.deepcopy(TINY_HF)
  cfg["text_config"].update(text or {})
  cfg["vision_config"].update(vision or {})
  cfg.update(top)
  return cfg


def build_hf_model(config_dict: dict[str, Any], *, seed: int = 0, dtype: str = "float32"):
  """A Qwen2_5_VLForConditionalGeneration with random weights of realistic scale."""
  import torch
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

  torch.manual_seed(seed)
  config = Qwen2_5_VLConfig(**copy.deepcopy(config_dict))
  model = Qwen2_5_VLForConditionalGeneration(config).eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or "ln_q" in name:
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
      elif name.endswith(".bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
      elif "embed_tokens" in name:
        p.copy_(torch.randn(p.shape, generator=gen))
      else:
        fan_in = int(np.prod(p.shape[1:]))
        p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(fan_in))
  return model.to(getattr(torch, dtype))


def video_prompt_batch(
  cfg: ModelConfig,
  grids: Sequence[Sequence[int]],
  text_lens: Sequence[tuple[int, int]],
  rng: np.random.Generator,
  *,
  pad: str = "left",
  videos_per_row: Sequence[int] | None = None,
  seconds_per_grid: Sequence[float] | None = None,
) -> dict[str, Any]:
  """Builds a padded batch of text + video prompts and matching random pixels.

  Args:
    cfg: the model config (token ids, patch sizes).
    grids: (T, H, W) patch grid of each video, in consumption order.
    text_lens: per row, (text tokens before the video(s), text tokens after).
    rng: NumPy generator.
    pad: 'left' or 'right' padding.
    videos_per_row: how many of `grids` each row holds (default one each).
    seconds_per_grid: per video, or None.

  Returns:
    dict with input_ids, attention_mask, pixel_values_videos, video_grid_thw,
    second_per_grid_ts (if given), mm_token_type_ids (for transformers).
  """
  v = cfg.vision
  m2 = v.spatial_merge_size**2
  videos_per_row = list(videos_per_row or [1] * len(text_lens))
  text_vocab = min(
    cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id
  )
  rows, g = [], 0
  for (before, after), nv in zip(text_lens, videos_per_row):
    row = list(rng.integers(0, text_vocab, size=before))
    for _ in range(nv):
      n_tok = int(np.prod(grids[g])) // m2
      row += [cfg.vision_start_token_id] + [cfg.video_token_id] * n_tok
      row += [cfg.vision_end_token_id] + list(rng.integers(0, text_vocab, size=2))
      g += 1
    row += list(rng.integers(0, text_vocab, size=after))
    rows.append(row)
  if g != len(grids):
    raise ValueError(f"rows use {g} videos but {len(grids)} grids were given")
  s = max(len(r) for r in rows)
  pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
  ids = np.full((len(rows), s), pad_id, np.int64)
  mask = np.zeros((len(rows), s), np.int64)
  for i, r in enumerate(rows):
    sl = slice(s - len(r), s) if pad == "left" else slice(0, len(r))
    ids[i, sl], mask[i, sl] = r, 1
  n_patches = int(sum(np.prod(gr) for gr in grids))
  out = {
    "input_ids": ids,
    "attention_mask": mask,
    "pixel_values_videos": rng.standard_normal((n_patches, v.patch_dim)).astype(np.float32),
    "video_grid_thw": np.asarray(grids, np.int64),
    "mm_token_type_ids": np.where(ids == cfg.video_token_id, 2, 0).astype(np.int64),
  }
  if seconds_per_grid is not None:
    out["second_per_grid_ts"] = np.asarray(seconds_per_grid, np.float32)
  return out


def hf_forward(model, inputs: dict[str, Any], **extra: Any) -> np.ndarray:
  """Runs the HF model on NumPy inputs; returns float32 logits [B, S, V]."""
  import torch

  kw = {}
  for k, x in inputs.items():
    if x is not None:
      kw[k] = torch.from_numpy(np.asarray(x))
  kw.update(extra)
  with torch.no_grad():
    return model(**kw).logits.float().numpy()


def build_pair(config_dict: dict[str, Any], *, seed: int = 0, **load_kwargs: Any):
  """An HF reference model and the same weights converted into a VideoLanguageModel.

  Args:
    config_dict: e.g. from `hf_config_dict`.
    seed: weight seed.
    **load_kwargs: passed to `convert.load_hf_model` (dtype, mesh, config overrides).

  Returns:
    (hf_model, model).
  """
  from chronoforge_jax.models import convert

  hf = build_hf_model(config_dict, seed=seed)
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    model = convert.load_hf_model(d, **load_kwargs)
  return hf, model
