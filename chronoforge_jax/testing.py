"""Small utilities shared by tests and benchmarks: cut videos and a NumPy TAD reference.

`write_cut_video` encodes a real H.264 mp4 with PyAV whose content changes abruptly at
known frames, so keyframe selection can be checked against ground truth on encoded,
compressed video rather than on hand-made feature arrays. `reference_*` are a plain
float64 frame-by-frame transcription of TAD, independent of the JAX code. `free_port`
finds a port for multi-process tests.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  height, width = (int(s) for s in size)
  return height, width


def _bounce(position: int, span: int) -> int:
  """Folds an unbounded position into [0, span] like a ball bouncing between walls."""
  if span <= 0:
    return 0
  q = position % (2 * span)
  return int(q if q <= span else 2 * span - q)


def cut_video_frames(
  num_frames: int,
  cuts: Sequence[int],
  size: int | Sequence[int],
  *,
  seed: int = 0,
  noise: float = 0.0,
) -> np.ndarray:
  """Renders the raw frames that `write_cut_video` encodes.

  Each scene (the frames between consecutive cuts) has its own random stripe pattern and
  palette; a small square drifts across it so frames inside a scene are not identical
  (the variation curve has a noise floor, as real footage does).

  Args:
    num_frames: total number of frames T.
    cuts: frame indices where a new scene starts (0 < cut < T, strictly increasing).
    size: frame side, or (H, W).
    seed: seeds the scene patterns.
    noise: std of Gaussian pixel noise added to every frame (sensor noise), in levels.

  Returns:
    uint8 frames [T, H, W, 3].
  """
  height, width = _hw(size)
  cuts = [int(c) for c in cuts]
  if any(not 0 < c < num_frames for c in cuts) or cuts != sorted(set(cuts)):
    raise ValueError(f"cuts={cuts} must be strictly increasing frame indices in (0, {num_frames})")
  bounds = [0, *cuts, num_frames]
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  frames_thwc = np.empty((num_frames, height, width, 3), np.uint8)
  box = max(2, min(height, width) // 6)
  noise_rng = np.random.default_rng([seed, 1 << 20])
  for scene, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
    rng = np.random.default_rng([seed, scene])
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(0.2, 0.6) * max(height, width)
    phase = np.cos(angle) * xx + np.sin(angle) * yy
    stripes_hw = 0.5 + 0.5 * np.sin(2 * np.pi * phase / period)
    lo, hi = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    background_hwc = lo + (hi - lo) * stripes_hw[..., None]
    box_colour = rng.uniform(0, 255, size=3)
    y0, x0 = rng.integers(0, [height - box, width - box])
    vy, vx = rng.choice([-1, 1], size=2)
    for t in range(start, stop):
      frame_hwc = background_hwc.copy()
      y = _bounce(y0 + vy * (t - start), height - box)
      x = _bounce(x0 + vx * (t - start), width - box)
      frame_hwc[y : y + box, x : x + box] = box_colour
      if noise:
        frame_hwc = frame_hwc + noise_rng.normal(0, noise, frame_hwc.shape)
      frames_thwc[t] = np.clip(frame_hwc, 0, 255).astype(np.uint8)
  return frames_thwc


def write_frames(
  path: str | os.PathLike,
  frames_thwc: np.ndarray,
  fps: float,
  *,
  codec: str = "h264",
  crf: int = 20,
) -> None:
  """Encodes uint8 frames [T, H, W, 3] to a video file with PyAV.

  Args:
    path: output file; the container format follows the extension (.mp4, .mkv, ...).
    frames_thwc: uint8 RGB frames; H and W must be even for yuv420p codecs.
    fps: frame rate written to the stream.
    codec: encoder name ("h264" picks libx264; "mpeg4" and "libvpx-vp9" also work).
    crf: x264 quality (lower is better); ignored by other codecs.
  """
  from fractions import Fraction

  import av  # Optional dependency (extra `video`), imported late.

  frames_thwc = np.asarray(frames_thwc)
  if frames_thwc.dtype != np.uint8 or frames_thwc.ndim != 4 or frames_thwc.shape[-1] != 3:
    raise ValueError(
      f"frames must be uint8 [T, H, W, 3], got {frames_thwc.dtype} {frames_thwc.shape}"
    )
  _, height, width, _ = frames_thwc.shape
  if height % 2 or width % 2:
    raise ValueError(f"frame size {height}x{width} must be even for yuv420p encoding")
  rate = Fraction(fps).limit_denominator(1001)
  with av.open(os.fspath(path), mode="w") as container:
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if codec in ("h264", "libx264"):
      stream.options = {"crf": str(crf), "preset": "veryfast"}
    for frame_hwc in frames_thwc:
      frame = av.VideoFrame.from_ndarray(frame_hwc, format="rgb24")
      container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_cut_video(
  path: str | os.PathLike,
  num_frames: int,
  cuts: Sequence[int],
  size: int | Sequence[int] = 64,
  fps: float = 10.0,
  codec: str = "h264",
  *,
  seed: int = 0,
  noise: float = 0.0,
) -> None:
  """Writes an H.264 mp4 whose content changes abruptly exactly at frames `cuts`.

  Args:
    path: output file (.mp4).
    num_frames: total number of frames.
    cuts: first frame of each new scene, strictly increasing in (0, num_frames).
    size: frame side, or (H, W); must be even.
    fps: frame rate of the stream.
    codec: encoder name passed to PyAV.
    seed: seeds the scene patterns (same seed, same video).
    noise: std of Gaussian pixel noise per frame, in levels.
  """
  write_frames(
    path, cut_video_frames(num_frames, cuts, size, seed=seed, noise=noise), fps, codec=codec
  )


def random_cuts(num_frames: int, num_cuts: int, *, min_gap: int = 4, seed: int = 0) -> list[int]:
  """Draws `num_cuts` cut frames in (0, num_frames) at least `min_gap` frames apart.

  Args:
    num_frames: total number of frames.
    num_cuts: how many cuts.
    min_gap: smallest distance between cuts (and from the first and last frame).
    seed: random seed.

  Returns:
    Sorted list of cut frame indices.
  """
  slack = num_frames - min_gap * (num_cuts + 1)
  if slack < 0:
    raise ValueError(f"cannot place {num_cuts} cuts {min_gap} frames apart in {num_frames} frames")
  rng = np.random.default_rng(seed)
  # Stars and bars: split the slack into num_cuts + 1 gaps, each padded by min_gap.
  extra = np.sort(rng.integers(0, slack + 1, size=num_cuts))
  return [int(min_gap * (i + 1) + e) for i, e in enumerate(extra)]


# ------------------------------------------------------------------------------------
# NumPy float64 reference of TAD: loops over frames, written from PAPER.md's formulas
# independently of tad.py. Tests compare against it; the benchmark times it.
# ------------------------------------------------------------------------------------


def reference_variation(
  x_td: np.ndarray, mask_t: np.ndarray, distance: str = "cosine", smooth: int = 0
) -> np.ndarray:
  """TAD stage 1 for one video, float64, frame by frame (see tad.variation_scores)."""
  x_td = np.asarray(x_td, np.float64)
  t = len(x_td)
  unit = []
  for f in x_td:
    n = np.sqrt(np.sum(f * f))
    unit.append(f / n if n > 1e-12 else np.zeros_like(f))
  v = np.zeros(t)
  for i in range(1, t):
    if not (mask_t[i] and mask_t[i - 1]):
      continue
    a, b = unit[i], unit[i - 1]
    if not a.any() and not b.any():
      continue
    if distance == "cosine":
      v[i] = max(0.0, 1.0 - float(a @ b))
    else:
      v[i] = float(np.sqrt(np.sum((a - b) ** 2)))
  if smooth:
    out = np.zeros(t)
    for i in range(t):
      if not mask_t[i]:
        continue
      num = den = 0.0
      for j in range(max(0, i - smooth), min(t, i + smooth + 1)):
        if mask_t[j]:
          w = smooth + 1 - abs(i - j)
          num, den = num + w * v[j], den + w
      out[i] = num / den
    v = out
  return v


def reference_inflections(
  v_t: np.ndarray,
  mask_t: np.ndarray,
  prominence: float = 0.1,
  min_prominence: float = 1e-6,
  window: int = 16,
) -> np.ndarray:
  """TAD stage 2 for one video, float64, frame by frame (see tad.inflection_points)."""
  v_t = np.asarray(v_t, np.float64)
  t = len(v_t)
  real = [i for i in range(t) if mask_t[i]]
  scale = (max(v_t[real]) - min(v_t[real])) if real else 0.0
  out = np.zeros(t, bool)
  for i in range(1, t):
    if not (mask_t[i] and mask_t[i - 1]) or not v_t[i] > v_t[i - 1]:
      continue
    # Walk right over a plateau; the first different value must be lower.
    j = i + 1
    while j < t and mask_t[j] and v_t[j] == v_t[i]:
      j += 1
    if j >= t or not mask_t[j] or v_t[j] > v_t[i]:
      continue
    bases = []
    for step in (-1, 1):
      base, j = v_t[i], i + step
      while 0 <= j < t and abs(j - i) <= window and mask_t[j] and v_t[j] <= v_t[i]:
        base = min(base, v_t[j])
        j += step
      bases.append(base)
    out[i] = v_t[i] - max(bases) >= max(prominence * scale, min_prominence)
  return out


def reference_select(
  x_td: np.ndarray, k: int, mask_t: np.ndarray, boost: float = 1.0, boost_mode: str = "add", **kw
) -> tuple[np.ndarray, ...]:
  """TAD stage 3 for one video, float64, frame by frame (see tad.select_keyframes).

  Returns:
    (indices [k], valid [k], scores [T], inflections [T]) as NumPy arrays.
  """
  infl_kw = {n: kw.pop(n) for n in ("prominence", "min_prominence", "window") if n in kw}
  v = reference_variation(x_td, mask_t, **kw)
  infl = reference_inflections(v, mask_t, **infl_kw)
  real = [i for i in range(len(v)) if mask_t[i]]
  scale = (max(v[real]) - min(v[real])) if real else 0.0
  if boost_mode == "add":
    prio = v + boost * scale * infl
  else:
    prio = np.where(infl, v * (1 + boost), v)
  ranked = sorted(real, key=lambda i: (-prio[i], i))[:k]
  chosen = sorted(ranked)
  fill = chosen[-1] if chosen else 0
  return (np.asarray(chosen + [fill] * (k - len(chosen))), np.arange(k) < len(chosen), v, infl)


def free_port() -> int:
  """A TCP port free on localhost now (for a test's JAX coordinator address)."""
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]
