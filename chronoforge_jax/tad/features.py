"""Cheap per-frame features for TAD, computed on device from uint8 frames.

A frame becomes its grid x grid block-mean colours (or luma), scaled to [-1, 1]: enough
to see cuts, camera moves and large motions, at a tiny fraction of a vision tower's
cost, so TAD runs without a model. Model embeddings [B, T, D] can be passed to TAD
instead; nothing in `tad.py` depends on how features were made.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from chronoforge_jax import settings as settings_lib

# ITU-R BT.601 luma weights, as in most video pipelines.
_LUMA = (0.299, 0.587, 0.114)
COLORS = ("rgb", "luma")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureSettings:
  """Which pixel features TAD scores: the `features` config section.

  Attributes:
    grid: blocks per side (>= 1); D = grid * grid * channels.
    color: one of COLORS: "rgb" (three channels per block) or "luma" (one).
    center: map pixels to [-1, 1] so cosine distance sees brightness.
    chunk: frames per device call when featurising a long video (>= 1).
  """

  grid: int = 8
  color: str = "rgb"
  center: bool = True
  chunk: int = 256

  def __post_init__(self):
    req = settings_lib.require
    req(
      settings_lib.is_int(self.grid, 1),
      self,
      "grid",
      self.grid,
      "need a positive number of blocks per side",
    )
    settings_lib.choice(self, "color", self.color, COLORS)
    req(isinstance(self.center, bool), self, "center", self.center, "need true or false")
    req(
      settings_lib.is_int(self.chunk, 1),
      self,
      "chunk",
      self.chunk,
      "need a positive number of frames per device call",
    )

  @classmethod
  def from_config(cls, section: Any) -> FeatureSettings:
    """From a `features` config section; a bad field is reported as `config.features.*`."""
    return settings_lib.from_section(cls, section, "features")

  def frame_kwargs(self) -> dict[str, Any]:
    """`frame_features`' keyword arguments (grid, color, center)."""
    return dict(grid=self.grid, color=self.color, center=self.center)

  def check_frame_size(self, size: int, name: str) -> None:
    """Requires frames of side `size` (the field `name`) to hold `grid` blocks."""
    settings_lib.require(
      size >= self.grid,
      name.rpartition(".")[0] or name,
      name.rpartition(".")[2],
      size,
      f"{size} pixels is smaller than features.grid={self.grid}; decode larger or lower the grid",
    )


def feature_dim(grid: int = 8, color: Literal["rgb", "luma"] = "rgb") -> int:
  """Length D of the vectors `frame_features` returns."""
  return grid * grid * (3 if color == "rgb" else 1)


def frame_features(
  frames_bthwc: jax.Array,
  *,
  grid: int = 8,
  color: Literal["rgb", "luma"] = "rgb",
  center: bool = True,
) -> jax.Array:
  """Block-mean colour grid of each frame.

  The frame is centre-cropped to a multiple of `grid` on each side (dropping fewer than
  `grid` rows/columns), split into grid x grid blocks, and each block averaged.

  Args:
    frames_bthwc: uint8 frames [B, T, H, W, 3] or [T, H, W, 3], values 0..255.
    grid: blocks per side; H and W must be at least `grid`.
    color: "rgb" keeps three channels per block, "luma" one (BT.601).
    center: map [0, 255] to [-1, 1] so cosine distance sees brightness changes (with
      all-positive features every uniform frame would point the same way).

  Returns:
    f32 [B, T, D] (or [T, D]) with D = grid * grid * channels, block-major then
    channel.
  """
  if color not in COLORS:
    raise ValueError(f"color={color!r}: choose one of {COLORS}")
  x = jnp.asarray(frames_bthwc)
  squeeze = x.ndim == 4
  if squeeze:
    x = x[None]
  if x.ndim != 5 or x.shape[-1] != 3:
    raise ValueError(f"frames must be [B, T, H, W, 3] or [T, H, W, 3], got {x.shape}")
  b, t, h, w, c = x.shape
  if h < grid or w < grid:
    raise ValueError(
      f"frames of {h}x{w} pixels are smaller than grid={grid}; "
      "decode at a larger size or lower the grid"
    )
  hc, wc = (h // grid) * grid, (w // grid) * grid
  top, left = (h - hc) // 2, (w - wc) // 2
  bh, bw = hc // grid, wc // grid
  x = x[:, :, top : top + hc, left : left + wc, :].reshape(b * t, hc, wc, c)
  # A windowed sum runs ~2.5x faster on CPU than a mean over a 7-d reshape; f32 so
  # uint8 sums cannot overflow.
  sums = jax.lax.reduce_window(
    x.astype(jnp.float32), 0.0, jax.lax.add, (1, bh, bw, 1), (1, bh, bw, 1), "VALID"
  )
  mean_btggc = sums.reshape(b, t, grid, grid, c) / (bh * bw * 255.0)
  if color == "luma":
    mean_btggc = mean_btggc @ jnp.asarray(_LUMA, jnp.float32)[:, None]
  if center:
    mean_btggc = 2.0 * mean_btggc - 1.0
  feats_btd = mean_btggc.reshape(b, t, -1)
  return feats_btd[0] if squeeze else feats_btd


@functools.partial(jax.jit, static_argnames=("grid", "color", "center"))
def _features_jit(frames_thwc, *, grid, color, center):
  return frame_features(frames_thwc, grid=grid, color=color, center=center)


def video_features(
  frames: np.ndarray | Iterable[np.ndarray],
  *,
  chunk: int = 256,
  grid: int = 8,
  color: Literal["rgb", "luma"] = "rgb",
  center: bool = True,
) -> np.ndarray:
  """Features of a long video, `chunk` frames per device call.

  Bounds device memory for videos of any length. A last, partial chunk is padded to the
  next power of two (at most `chunk`), so a still image (one frame) costs one frame's
  work rather than `chunk` frames', while at most log2(chunk) + 1 programs compile.

  Args:
    frames: uint8 [T, H, W, 3], or an iterable of [H, W, 3] frames (e.g. a decoder
      stream) so the whole video never sits in host memory.
    chunk: frames per device call.
    grid, color, center: see `frame_features`.

  Returns:
    f32 NumPy [T, D].
  """
  out, buf = [], []

  def flush():
    n = len(buf)
    block_thwc = np.stack(buf)
    padded = min(chunk, 1 << (n - 1).bit_length())
    if n < padded:
      block_thwc = np.concatenate(
        [block_thwc, np.zeros((padded - n,) + block_thwc.shape[1:], block_thwc.dtype)]
      )
    out.append(np.asarray(_features_jit(block_thwc, grid=grid, color=color, center=center))[:n])
    buf.clear()

  for frame_hwc in frames:
    buf.append(np.asarray(frame_hwc))
    if len(buf) == chunk:
      flush()
  if buf:
    flush()
  if not out:
    return np.zeros((0, feature_dim(grid, color)), np.float32)
  return np.concatenate(out)
