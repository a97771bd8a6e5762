"""The Qwen2.5-VL ViT tower: 3D patch embedding, window/full attention, 2D RoPE, merger.

`VisionTower(pixel_values, grid_thw)` maps HF-processor patches
([P, C*temporal_patch*patch*patch], in the processor's order) to merged LLM tokens
([P / merge^2, out_hidden_size]) in the reference's output order: video by video,
temporal patch by temporal patch, merged tokens row-major. So each temporal patch's merged
tokens are contiguous, and views that reorder or subsample whole temporal patches can
gather them from one encoding (attention never crosses temporal patches).

How the reference's variable-length attention becomes static-shape arrays: the grid
(`grid_thw`) is static (it fixes shapes), so a NumPy plan per distinct (H, W) lays each
temporal patch out as [windows_h, windows_w, window, window, merge, merge] tokens, padding
the ragged edge windows with masked dummies. Window attention attends inside each window,
full attention inside each temporal patch, both with the dummies masked out as keys. The
result equals the reference's packed `cu_seqlens` attention.

The blocks are one stack (`stack.py`): with `scan_layers` (the default) their params are
stacked [depth, ...], and each run of consecutive window-attention blocks between the
full-attention blocks (`fullatt_block_indexes`) is one `nnx.scan`, as is each run of
full-attention blocks; without it the blocks are a list run by a Python loop.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import einops
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from chronoforge_jax import sharding
from chronoforge_jax.models import layers, rope, stack
from chronoforge_jax.models.config import VisionConfig


def static_grid(grid_thw) -> np.ndarray:
  """Returns `grid_thw` as a host [V, 3] int64 array; it must not be a tracer.

  Args:
    grid_thw: [V, 3] (or [3]) temporal/height/width patch counts, as the HF processor
      returns them (`video_grid_thw`): NumPy, list/tuple, or a concrete jax.Array.

  Returns:
    The [V, 3] NumPy array.
  """
  if isinstance(grid_thw, jax.core.Tracer):
    raise TypeError(
      "video_grid_thw fixes array shapes, so it must be concrete: pass a NumPy "
      "array or tuple and close over it (or mark it static) instead of passing "
      "it as a traced jit argument"
    )
  grid = np.asarray(grid_thw, dtype=np.int64)
  if grid.ndim == 1:
    grid = grid[None]
  if grid.ndim != 2 or grid.shape[1] != 3 or (grid <= 0).any():
    raise ValueError(f"video_grid_thw must be [num_videos, 3] positive ints, got {grid!r}")
  return grid


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Static layout of one (H, W) patch grid in padded window order."""

  src: np.ndarray  # [P'] processor-order patch index inside a temporal patch (P' padded)
  valid: np.ndarray  # [P'] False for padding dummies
  hpos: np.ndarray  # [P'] patch row, for the 2D RoPE
  wpos: np.ndarray  # [P'] patch column
  unit_out: np.ndarray  # [Hm*Wm] padded merged-unit slot of each output token
  num_windows: int
  window_len: int  # tokens per window = window^2 * merge^2


@functools.lru_cache(maxsize=64)
def _plan(h: int, w: int, merge: int, window: int) -> _Plan:
  if h % merge or w % merge:
    raise ValueError(
      f"video grid {h}x{w} patches is not a multiple of spatial_merge_size="
      f"{merge}; resize frames to multiples of patch*merge pixels"
    )
  hm, wm = h // merge, w // merge
  nwh, nww = -(-hm // window), -(-wm // window)
  iwh, iww, iy, ix, mh, mw = np.meshgrid(
    np.arange(nwh),
    np.arange(nww),
    np.arange(window),
    np.arange(window),
    np.arange(merge),
    np.arange(merge),
    indexing="ij",
  )
  br, bc = iwh * window + iy, iww * window + ix
  valid = (br < hm) & (bc < wm)
  src = ((br * wm + bc) * merge + mh) * merge + mw
  unit_br, unit_bc = br[..., 0, 0].reshape(-1), bc[..., 0, 0].reshape(-1)
  unit_slot = np.full(hm * wm, -1, np.int64)
  unit_valid = (unit_br < hm) & (unit_bc < wm)
  unit_slot[(unit_br * wm + unit_bc)[unit_valid]] = np.nonzero(unit_valid)[0]
  return _Plan(
    src=np.where(valid, src, 0).reshape(-1),
    valid=valid.reshape(-1),
    hpos=(br * merge + mh).reshape(-1),
    wpos=(bc * merge + mw).reshape(-1),
    unit_out=unit_slot,
    num_windows=nwh * nww,
    window_len=window * window * merge * merge,
  )


class VisionBlock(nnx.Module):
  """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
    d = cfg.hidden_size
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.norm1 = layers.RMSNorm(d, eps=cfg.rms_norm_eps, **kw)
    self.norm2 = layers.RMSNorm(d, eps=cfg.rms_norm_eps, **kw)
    self.qkv = layers.Dense(
      d, 3 * d, axes=("vision_embed", "vision_qkv"), use_bias=True, rngs=rngs, **kw
    )
    self.proj = layers.Dense(
      d, d, axes=("vision_heads", "vision_embed"), use_bias=True, rngs=rngs, **kw
    )
    self.mlp = layers.GatedMLP(
      d,
      cfg.intermediate_size,
      act=cfg.hidden_act,
      use_bias=True,
      axes=("vision_embed", "vision_mlp"),
      rngs=rngs,
      **kw,
    )
    self.num_heads = cfg.num_heads

  def __call__(
    self, x_bpd: jax.Array, cos_bpd: jax.Array, sin_bpd: jax.Array, mask_bpp: jax.Array
  ) -> jax.Array:
    """B windows or temporal patches of P patches each; masks [B, P, P]."""
    q_bphd, k_bphd, v_bphd = einops.rearrange(
      self.qkv(self.norm1(x_bpd)), "b p (three h d) -> three b p h d", three=3, h=self.num_heads
    )
    q_bphd = layers.apply_rotary(q_bphd, cos_bpd, sin_bpd)
    k_bphd = layers.apply_rotary(k_bphd, cos_bpd, sin_bpd)
    attn_bphd = layers.attention(q_bphd, k_bphd, v_bphd, mask_bpp)
    x_bpd = x_bpd + self.proj(einops.rearrange(attn_bphd, "b p h d -> b p (h d)"))
    x_bpd = sharding.shard(x_bpd, ("vision_batch", "act_seq", "act_embed"))
    return x_bpd + self.mlp(self.norm2(x_bpd))


class PatchMerger(nnx.Module):
  """RMSNorm, then groups of merge^2 tokens -> Linear -> GELU -> Linear(out_hidden)."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
    merged = cfg.hidden_size * cfg.spatial_merge_size**2
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.norm = layers.RMSNorm(cfg.hidden_size, eps=1e-6, **kw)
    self.fc1 = layers.Dense(
      merged, merged, axes=("vision_merged", "vision_mlp"), use_bias=True, rngs=rngs, **kw
    )
    self.fc2 = layers.Dense(
      merged, cfg.out_hidden_size, axes=("vision_mlp", "embed"), use_bias=True, rngs=rngs, **kw
    )
    self.group = cfg.spatial_merge_size**2

  def __call__(self, x_bpd: jax.Array) -> jax.Array:
    # Each merge unit's m^2 consecutive patches become one token of m^2 * D features.
    x = einops.rearrange(self.norm(x_bpd), "b (p m) d -> b p (m d)", m=self.group)
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionTower(nnx.Module):
  """Patch embedding, `depth` blocks (window or full attention) and the 2x2 merger.

  `scan_layers` stacks the blocks' params [depth, ...] and scans each run of blocks of
  one attention kind (False: one module per block, run by a Python loop).
  """

  def __init__(
    self,
    cfg: VisionConfig,
    *,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    remat_policy: str = "none",
    scan_layers: bool = True,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.patch_embed = layers.Dense(
      cfg.patch_dim,
      cfg.hidden_size,
      axes=("vision_patch", "vision_embed"),
      use_bias=False,
      rngs=rngs,
      **kw,
    )
    self.blocks = stack.create(
      lambda r: VisionBlock(cfg, rngs=r, **kw), cfg.depth, rngs, scan=scan_layers
    )
    self.merger = PatchMerger(cfg, rngs=rngs, **kw)
    self.cfg = cfg
    self.dtype = dtype
    self.remat_policy = remat_policy
    self.scan_layers = scan_layers

  def _run_group(self, x_tpd: jax.Array, h: int, w: int) -> jax.Array:
    """Runs the tower on temporal patches that all have an h x w patch grid."""
    cfg = self.cfg
    plan = _plan(h, w, cfg.spatial_merge_size, cfg.window_merged)
    t = x_tpd.shape[0]
    x = x_tpd[:, plan.src]  # [T, P', D] window order, P' = windows * window_len
    pp = x.shape[1]
    cos, sin = rope.vision_cos_sin(
      jnp.asarray(plan.hpos), jnp.asarray(plan.wpos), cfg.head_dim, cfg.rope_theta
    )
    valid = jnp.asarray(plan.valid)
    nw = plan.num_windows
    full_mask = jnp.broadcast_to(valid[None, None, :], (1, pp, pp))
    # Window attention: each temporal patch's windows are rows (t w) of a batch.
    win_mask = einops.repeat(valid, "(w k) -> (t w) q k", w=nw, t=t, q=plan.window_len)
    win_cos = einops.repeat(cos, "(w p) d -> (t w) p d", w=nw, t=t)
    win_sin = einops.repeat(sin, "(w p) d -> (t w) p d", w=nw, t=t)

    def window_block(block, x, i):
      y = block(einops.rearrange(x, "t (w p) d -> (t w) p d", w=nw), win_cos, win_sin, win_mask)
      return einops.rearrange(y, "(t w) p d -> t (w p) d", t=t), None

    def full_block(block, x, i):
      return block(x, cos[None], sin[None], full_mask), None

    policy = remat_policy_fn(self.remat_policy)
    for start, stop, full in attention_runs(cfg.depth, cfg.fullatt_block_indexes):
      x, _ = stack.run(
        self.blocks,
        full_block if full else window_block,
        x,
        scan=self.scan_layers,
        remat_policy=policy,
        start=start,
        stop=stop,
      )
    merged = self.merger(x)  # [T, P'/m^2, D_out]
    out = merged[:, plan.unit_out]  # [T, (h/m)*(w/m), D_out]
    return einops.rearrange(out, "t p d -> (t p) d")

  def __call__(self, pixel_values: jax.Array, grid_thw) -> jax.Array:
    """Encodes videos.

    Args:
      pixel_values: [P, patch_dim] patches in the HF processor's order.
      grid_thw: static [V, 3] patch grids (see `static_grid`).

    Returns:
      [P / merge^2, out_hidden_size] merged tokens in the reference's order.
    """
    cfg = self.cfg
    grid = static_grid(grid_thw)
    n = int(np.sum(np.prod(grid, axis=1)))
    if pixel_values.ndim != 2 or pixel_values.shape != (n, cfg.patch_dim):
      raise ValueError(
        f"pixel_values_videos has shape {tuple(pixel_values.shape)}; the grid "
        f"{grid.tolist()} needs [{n}, {cfg.patch_dim}]"
      )
    x_pd = self.patch_embed(pixel_values)
    starts = np.concatenate([[0], np.cumsum(np.prod(grid, axis=1))])
    groups: dict[tuple[int, int], list[int]] = {}
    for v, (_, h, w) in enumerate(grid.tolist()):
      groups.setdefault((h, w), []).append(v)
    outs, order = [], []
    for (h, w), vids in groups.items():
      rows = np.concatenate([np.arange(starts[v], starts[v + 1]) for v in vids])
      x_g = x_pd if len(groups) == 1 else x_pd[rows]
      t_g = int(sum(grid[v, 0] for v in vids))
      outs.append(self._run_group(einops.rearrange(x_g, "(t p) d -> t p d", t=t_g), h, w))
      order.extend(vids)
    if len(groups) == 1:
      return outs[0]
    # Put the videos back in input order.
    m2 = cfg.spatial_merge_size**2
    sizes = {v: int(np.prod(grid[v])) // m2 for v in range(len(grid))}
    offsets, pos = {}, 0
    for v in order:
      offsets[v], pos = pos, pos + sizes[v]
    perm = np.concatenate([np.arange(offsets[v], offsets[v] + sizes[v]) for v in range(len(grid))])
    return jnp.concatenate(outs, axis=0)[perm]


def attention_runs(depth: int, full_indexes: Sequence[int]) -> list[tuple[int, int, bool]]:
  """Splits blocks [0, depth) into maximal runs of one attention kind.

  Returns:
    [(start, stop, full)]: blocks [start, stop) all use full attention (full=True) or
    all window attention; e.g. depth 8 with full attention at (3, 7) gives
    [(0, 3, False), (3, 4, True), (4, 7, False), (7, 8, True)].
  """
  runs: list[tuple[int, int, bool]] = []
  for i in range(depth):
    full = i in full_indexes
    if runs and runs[-1][2] == full:
      runs[-1] = (runs[-1][0], i + 1, full)
    else:
      runs.append((i, i + 1, full))
  return runs


def remat_policy_fn(name: str):
  """Maps a remat policy name to a jax.checkpoint policy (None: no remat).

  Args:
    name: 'none' (keep everything), 'full' (save nothing, recompute the block),
      'dots' (save matmul outputs), 'dots_no_batch' (save matmuls without batch dims:
      weights-stationary, the usual transformer choice).

  Returns:
    A policy callable, or None for 'none'.
  """
  policies = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  }
  if name not in policies:
    raise ValueError(f"unknown remat policy {name!r}; choose one of {sorted(policies)}")
  return policies[name]


REMAT_POLICIES: Sequence[str] = ("none", "full", "dots", "dots_no_batch")
