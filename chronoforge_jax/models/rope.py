"""Rotary embeddings: the vision tower's 2D RoPE and the decoder's multimodal RoPE (M-RoPE).

Public functions:

  vision_cos_sin(hpos, wpos, head_dim, theta)            2D RoPE tables of the tower.
  mrope_cos_sin(positions_3bs, head_dim, theta, section) decoder M-RoPE tables.
  temporal_offsets(grids, tokens_per_second, ...)        temporal id of each temporal patch.
  mrope_position_ids(input_ids_bs, attention_mask_bs, ...) -> (positions_3bs, rope_deltas_b)

M-RoPE position ids (what the reference's `get_rope_index` computes, vectorised so it runs
under jit with no Python loop over tokens):

- Only tokens with attention_mask == 1 count; masked tokens get position 0.
- Text tokens advance all three axes by one.
- A video (a contiguous run of `video_token_id` tokens; videos are consumed in row-major
  order, as the reference does) with merged grid (T, H, W) starting at position s gives
  token (t, h, w) the ids (s + tpos[t], s + h, s + w). `tpos[t]` is
  floor(t * tokens_per_second * second_per_grid_t) in float32 (the reference's
  arithmetic), or, when per-temporal-patch timestamps are given,
  floor((ts[t] - min(ts)) * tokens_per_second): the position then follows each patch's
  real time (TAD keyframes are not evenly spaced). Evenly spaced timestamps reproduce
  the reference's ids.
- Text after a video resumes at `s + span`, with span = 1 + max(tpos, H-1, W-1) ('max',
  Qwen's original rule) or max(H, W) ('spatial', transformers >= 5.3); see
  ModelConfig.text_position_after_video.
- rope_deltas[b] = (next position of row b) - (number of valid tokens of row b), so that
  a token appended after n valid tokens has position n + rope_deltas (the decode path).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def vision_cos_sin(
  hpos: jax.Array, wpos: jax.Array, head_dim: int, theta: float
) -> tuple[jax.Array, jax.Array]:
  """2D rotary tables of the vision tower (HF `Qwen2_5_VLVisionRotaryEmbedding`).

  The first quarter of the frequencies rotate by the patch row, the second by the column,
  and the table is repeated twice for rotate-half.

  Args:
    hpos: [...] integer patch rows.
    wpos: [...] integer patch columns.
    head_dim: the tower's head dim (multiple of 4).
    theta: rotary base.

  Returns:
    (cos, sin), each [..., head_dim] float32.
  """
  spatial = head_dim // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(0, spatial, 2, dtype=jnp.float32) / spatial))
  fh = hpos.astype(jnp.float32)[..., None] * inv_freq
  fw = wpos.astype(jnp.float32)[..., None] * inv_freq
  freqs = jnp.concatenate([fh, fw, fh, fw], axis=-1)
  return jnp.cos(freqs), jnp.sin(freqs)


def mrope_cos_sin(
  positions_3bs: jax.Array, head_dim: int, theta: float, section: Sequence[int]
) -> tuple[jax.Array, jax.Array]:
  """M-RoPE tables: frequency pair j rotates by the time, height or width position.

  Args:
    positions_3bs: [3, B, S] integer positions (time, height, width).
    head_dim: decoder head dim.
    theta: rotary base.
    section: pairs per axis, summing to head_dim / 2.

  Returns:
    (cos, sin), each [B, S, head_dim] float32.
  """
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs_3bsf = positions_3bs.astype(jnp.float32)[..., None] * inv_freq
  axis_of_freq = np.repeat(np.arange(3), np.asarray(section))
  freqs_bsf = jnp.take_along_axis(
    freqs_3bsf, jnp.asarray(axis_of_freq)[None, None, None, :], axis=0
  )[0]
  freqs_bsd = jnp.concatenate([freqs_bsf, freqs_bsf], axis=-1)
  return jnp.cos(freqs_bsd), jnp.sin(freqs_bsd)


def temporal_offsets(
  grids_v3: np.ndarray,
  tokens_per_second: float,
  *,
  second_per_grid_ts: jax.Array | None = None,
  patch_timestamps: jax.Array | None = None,
) -> jax.Array:
  """Temporal position offset of each temporal patch of each video.

  Args:
    grids_v3: static [V, 3] (T, H, W) patch grids.
    tokens_per_second: from the vision config.
    second_per_grid_ts: [V] seconds between temporal patches (default 1.0 each).
    patch_timestamps: [V, Tmax] seconds of each temporal patch (entries past a video's
      T are ignored); overrides second_per_grid_ts.

  Returns:
    [V, Tmax] int32 offsets (0 past a video's T).
  """
  t_v = grids_v3[:, 0]
  t_max = int(t_v.max())
  valid_vt = np.arange(t_max)[None, :] < t_v[:, None]
  tps = jnp.float32(tokens_per_second)
  if patch_timestamps is not None:
    ts_vt = jnp.asarray(patch_timestamps, jnp.float32)
    if ts_vt.ndim != 2 or ts_vt.shape[0] != len(t_v) or ts_vt.shape[1] < t_max:
      raise ValueError(
        f"patch_timestamps has shape {ts_vt.shape}; expected [num_videos="
        f"{len(t_v)}, >= {t_max}] (one time in seconds per temporal patch)"
      )
    ts_vt = ts_vt[:, :t_max]
    first = jnp.min(jnp.where(valid_vt, ts_vt, jnp.inf), axis=1, keepdims=True)
    offsets = jnp.floor((ts_vt - first) * tps)
  else:
    if second_per_grid_ts is None:
      spg_v = jnp.ones((len(t_v),), jnp.float32)
    else:
      spg_v = jnp.asarray(second_per_grid_ts, jnp.float32).reshape(-1)
      if spg_v.shape[0] != len(t_v):
        raise ValueError(
          f"second_per_grid_ts has {spg_v.shape[0]} entries for {len(t_v)} "
          "videos; give one per video"
        )
    interval_v = tps * spg_v
    offsets = jnp.floor(jnp.arange(t_max, dtype=jnp.float32)[None, :] * interval_v[:, None])
  return jnp.where(valid_vt, offsets, 0).astype(jnp.int32)


def mrope_position_ids(
  input_ids_bs: jax.Array,
  attention_mask_bs: jax.Array | None,
  *,
  video_token_id: int,
  grids_v3: np.ndarray | None,
  spatial_merge_size: int,
  tokens_per_second: float,
  second_per_grid_ts: jax.Array | None = None,
  patch_timestamps: jax.Array | None = None,
  text_after_video: str = "max",
) -> tuple[jax.Array, jax.Array]:
  """Builds [3, B, S] M-RoPE position ids for interleaved text and video tokens.

  See the module docstring for the rules. The number of video tokens must equal
  sum(T*H*W) / merge^2 over `grids_v3` (the reference raises otherwise; this function
  cannot check it under jit).

  Args:
    input_ids_bs: [B, S] token ids.
    attention_mask_bs: [B, S] 1 for real tokens, 0 for padding (None: all real).
    video_token_id: the video placeholder id.
    grids_v3: static [V, 3] patch grids, or None for text only.
    spatial_merge_size: from the vision config.
    tokens_per_second: from the vision config.
    second_per_grid_ts: [V] seconds per temporal patch.
    patch_timestamps: [V, Tmax] seconds of each temporal patch.
    text_after_video: 'max' or 'spatial'.

  Returns:
    positions_3bs: [3, B, S] int32.
    rope_deltas_b: [B] int32.
  """
  b, s = input_ids_bs.shape
  valid = jnp.ones((b, s), bool) if attention_mask_bs is None else attention_mask_bs.astype(bool)
  if grids_v3 is None or len(grids_v3) == 0:
    pos_bs = jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1
    pos_bs = jnp.where(valid, pos_bs, 0)
    deltas = jnp.zeros((b,), jnp.int32)
    return jnp.broadcast_to(pos_bs, (3, b, s)), deltas

  m = spatial_merge_size
  grids = np.asarray(grids_v3, np.int64)
  t_v, h_v, w_v = grids[:, 0], grids[:, 1] // m, grids[:, 2] // m
  ntok_v = t_v * h_v * w_v
  first_tok_v = np.concatenate([[0], np.cumsum(ntok_v)[:-1]])
  tpos_vt = temporal_offsets(
    grids,
    tokens_per_second,
    second_per_grid_ts=second_per_grid_ts,
    patch_timestamps=patch_timestamps,
  )
  if text_after_video == "max":
    span_v = jnp.maximum(jnp.max(tpos_vt, axis=1), jnp.asarray(np.maximum(h_v, w_v) - 1)) + 1
  elif text_after_video == "spatial":
    span_v = jnp.asarray(np.maximum(h_v, w_v))
  else:
    raise ValueError(f"text_after_video={text_after_video!r}; choose 'max' or 'spatial'")

  is_vid = (input_ids_bs == video_token_id) & valid
  # Index k of each video token among all video tokens (row-major), then which video it
  # belongs to and where inside that video's (t, h, w) grid it sits.
  k_flat = jnp.cumsum(is_vid.reshape(-1), dtype=jnp.int32) - 1
  k_bs = k_flat.reshape(b, s)
  g_bs = jnp.clip(
    jnp.searchsorted(jnp.asarray(first_tok_v), k_bs, side="right") - 1, 0, len(grids) - 1
  )
  local = k_bs - jnp.asarray(first_tok_v)[g_bs]
  hw = jnp.asarray(h_v * w_v)[g_bs]
  w_of = jnp.asarray(w_v)[g_bs]
  t_idx = local // jnp.maximum(hw, 1)
  h_idx = (local // jnp.maximum(w_of, 1)) % jnp.maximum(jnp.asarray(h_v)[g_bs], 1)
  w_idx = local % jnp.maximum(w_of, 1)
  t_off = tpos_vt[g_bs, jnp.clip(t_idx, 0, tpos_vt.shape[1] - 1)]

  last_of_video = is_vid & (local == jnp.asarray(ntok_v)[g_bs] - 1)
  contrib = (jnp.where(valid & ~is_vid, 1, 0) + jnp.where(last_of_video, span_v[g_bs], 0)).astype(
    jnp.int32
  )
  start = jnp.cumsum(contrib, axis=1) - contrib  # exclusive: constant across a video run
  pos_t = jnp.where(is_vid, start + t_off, start)
  pos_h = jnp.where(is_vid, start + h_idx, start)
  pos_w = jnp.where(is_vid, start + w_idx, start)
  positions = jnp.stack([pos_t, pos_h, pos_w])
  positions = jnp.where(valid[None], positions, 0).astype(jnp.int32)
  deltas = (jnp.sum(contrib, axis=1) - jnp.sum(valid, axis=1)).astype(jnp.int32)
  return positions, deltas
