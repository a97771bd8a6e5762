"""TAD benchmark: speed against NumPy and PyAV decoding, and cut recall against baselines.

Prints three side-by-side measurements from one run:
  (a) jitted `tad.select_keyframes` vs the NumPy float64 reference
      (`testing.reference_select`, frame by frame) and vs a vectorised NumPy port of the
      same algorithm, on random features [B, T, D] (default 64 x 2048 x 256);
  (b) features + TAD time as a fraction of decoding the same video with PyAV;
  (c) recall of known scene cuts (a selected frame within +-1 frame) for TAD, uniform
      sampling and PySceneDetect's ContentDetector, on synthetic H.264 cut videos.

  python benchmarks/tad_bench.py            # defaults: a few minutes on a 2-core CPU
  python benchmarks/tad_bench.py --batch 8 --frames 512 --videos 4   # quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.timing import median_seconds  # noqa: E402
from chronoforge_jax import tad, testing  # noqa: E402
from chronoforge_jax.data import decode  # noqa: E402
from chronoforge_jax.tad import features


def numpy_vectorised_select(x_btd, k, window=16, prominence=0.1, min_prominence=1e-6, boost=1.0):
  """TAD's default settings in vectorised float64 NumPy (a fair CPU baseline)."""
  b, t, _ = x_btd.shape
  x = x_btd.astype(np.float64)
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  unit = np.where(norm > 1e-12, x / np.maximum(norm, 1e-12), 0.0)
  v = np.zeros((b, t))
  v[:, 1:] = np.maximum(1.0 - np.sum(unit[:, 1:] * unit[:, :-1], axis=-1), 0.0)
  d = np.diff(v, axis=1, prepend=0.0)
  idx = np.broadcast_to(np.arange(t), (b, t))
  change = np.where(d != 0, idx, t)
  change[:, 0] = 0
  nxt = np.minimum.accumulate(change[:, ::-1], axis=1)[:, ::-1]
  nxt = np.concatenate([nxt[:, 1:], np.full((b, 1), t)], axis=1)
  falls = (nxt < t) & (np.take_along_axis(d, np.minimum(nxt, t - 1), axis=1) < 0)
  peak = (d > 0) & falls
  peak[:, 0] = False
  pad = np.pad(v, ((0, 0), (window, window)), constant_values=np.inf)
  bases = []
  for direction in (-1, 1):
    alive, base = np.ones((b, t), bool), v.copy()
    for off in range(1, window + 1):
      s = pad[:, window + direction * off : window + direction * off + t]
      alive &= s <= v
      base = np.where(alive, np.minimum(base, s), base)
    bases.append(base)
  span = v.max(axis=1, keepdims=True) - v.min(axis=1, keepdims=True)
  infl = peak & (v - np.maximum(*bases) >= np.maximum(prominence * span, min_prominence))
  prio = v + boost * span * infl
  order = np.lexsort((idx, -prio), axis=1)[:, :k]
  return np.sort(order, axis=1)


def bench_speed(args) -> None:
  print(
    f"(a) TAD speed, features [B={args.batch}, T={args.frames}, D={args.dim}], "
    f"k={args.k}, backend={jax.default_backend()}"
  )
  rng = np.random.default_rng(0)
  x_btd = np.cumsum(rng.normal(size=(args.batch, args.frames, args.dim)), axis=1)
  x_btd = x_btd.astype(np.float32)
  x_dev = jnp.asarray(x_btd)
  select = jax.jit(lambda x: tad.select_keyframes(x, args.k)[0])
  t_jit = median_seconds(lambda: select(x_dev), args.repeats)
  start = time.perf_counter()
  ref = np.stack(
    [
      testing.reference_select(x_btd[i], args.k, np.ones(args.frames, bool))[0]
      for i in range(args.batch)
    ]
  )
  t_ref = time.perf_counter() - start
  vec_out = []
  t_vec = median_seconds(lambda: vec_out.append(numpy_vectorised_select(x_btd, args.k)), 1)
  got = np.asarray(select(x_dev))
  agree = np.mean(np.all(got == ref, axis=1))
  agree_vec = np.mean(np.all(got == vec_out[-1], axis=1))
  print(f"  jit TAD                       {t_jit * 1e3:9.2f} ms")
  print(f"  NumPy reference (per frame)   {t_ref * 1e3:9.2f} ms   ratio {t_ref / t_jit:8.1f}x")
  print(f"  NumPy vectorised float64      {t_vec * 1e3:9.2f} ms   ratio {t_vec / t_jit:8.1f}x")
  print(f"  identical selections: reference {agree:.0%}, vectorised {agree_vec:.0%}")


def bench_decode(args, tmp: str) -> None:
  n = int(args.decode_seconds * args.fps)
  h, w = args.decode_size
  print(
    f"(b) TAD vs PyAV decoding: {args.decode_seconds:.0f} s H.264 video, {w}x{h} at "
    f"{args.fps:g} fps ({n} frames)"
  )
  path = os.path.join(tmp, "decode.mp4")
  cuts = testing.random_cuts(n, max(1, n // 100), min_gap=20, seed=1)
  testing.write_cut_video(path, n, cuts, size=(h, w), fps=args.fps, seed=1, noise=4)
  feats = jax.jit(features.frame_features)
  select = jax.jit(lambda f: tad.select_keyframes(f, args.k)[0])
  for size in (None, args.small):
    start = time.perf_counter()
    video = decode.decode_video(path, size=size)
    t_decode = time.perf_counter() - start
    frames_dev = jax.device_put(video.frames)
    feats_td = feats(frames_dev)
    t_feat = median_seconds(lambda: feats(frames_dev), args.repeats)  # noqa: B023
    t_tad = median_seconds(lambda: select(feats_td), args.repeats)  # noqa: B023
    what = "native size" if size is None else f"resized to {size}x{size} by swscale"
    print(f"  decode {what}:")
    print(f"    PyAV decode to RGB          {t_decode * 1e3:9.1f} ms")
    print(
      f"    features (on device)        {t_feat * 1e3:9.1f} ms   {t_feat / t_decode:6.1%} of decode"
    )
    print(
      f"    TAD selection               {t_tad * 1e3:9.1f} ms   {t_tad / t_decode:6.1%} of decode"
    )
    print(
      f"    features + TAD              {(t_feat + t_tad) * 1e3:9.1f} ms   "
      f"{(t_feat + t_tad) / t_decode:6.1%} of decode"
    )


def _recall(found, cuts, tol: int = 1) -> float:
  found = np.asarray(found, int)
  if not len(cuts):
    return 1.0
  return float(np.mean([len(found) and np.min(np.abs(found - c)) <= tol for c in cuts]))


def bench_recall(args, tmp: str) -> None:
  from scenedetect import ContentDetector, detect  # Baseline only; an optional extra.

  print(
    f"(c) cut recall (+-1 frame), {args.videos} H.264 videos of {args.video_frames} "
    f"frames, 4-10 cuts each, pixel noise {args.noise:g}, k={args.k}"
  )
  rows = {
    "TAD keyframes": [],
    "uniform sampling": [],
    "PySceneDetect Content": [],
    "TAD inflections": [],
  }
  extra = {"PySceneDetect Content": [], "TAD inflections": []}
  rng = np.random.default_rng(2)
  select = jax.jit(lambda f: (tad.select_keyframes(f, args.k)[0], tad.analyze(f).inflections))
  for i in range(args.videos):
    num_cuts = int(rng.integers(4, 11))
    cuts = testing.random_cuts(args.video_frames, num_cuts, min_gap=12, seed=100 + i)
    path = os.path.join(tmp, f"cuts{i}.mp4")
    testing.write_cut_video(
      path, args.video_frames, cuts, size=(96, 128), fps=25, seed=100 + i, noise=args.noise
    )
    video = decode.decode_video(path)
    feats_td = features.frame_features(video.frames)
    picked, infl = select(feats_td)
    infl = np.flatnonzero(np.asarray(infl))
    uniform, _ = tad.uniform_select(feats_td, args.k)
    scenes = detect(path, ContentDetector(min_scene_len=5))
    detected = [s[0].frame_num for s in scenes[1:]]
    rows["TAD keyframes"].append(_recall(picked, cuts))
    rows["uniform sampling"].append(_recall(uniform, cuts))
    rows["PySceneDetect Content"].append(_recall(detected, cuts))
    rows["TAD inflections"].append(_recall(infl, cuts))
    extra["PySceneDetect Content"].append(len(detected) - num_cuts)
    extra["TAD inflections"].append(len(infl) - num_cuts)
  for name, recalls in rows.items():
    note = ""
    if name in extra:
      note = f"   detections minus true cuts: mean {np.mean(extra[name]):+.1f}"
    print(f"  {name:28s}  recall {np.mean(recalls):6.1%}{note}")


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--frames", type=int, default=2048)
  parser.add_argument("--dim", type=int, default=256)
  parser.add_argument("--k", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--decode_seconds", type=float, default=60.0)
  parser.add_argument("--decode_size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
  parser.add_argument(
    "--small", type=int, default=128, help="second decode of (b) at this square size"
  )
  parser.add_argument("--fps", type=float, default=25.0)
  parser.add_argument("--videos", type=int, default=12)
  parser.add_argument("--video_frames", type=int, default=300)
  parser.add_argument("--noise", type=float, default=6.0)
  parser.add_argument("--skip", nargs="*", default=(), choices=("speed", "decode", "recall"))
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    if "speed" not in args.skip:
      bench_speed(args)
    if "decode" not in args.skip:
      bench_decode(args, tmp)
    if "recall" not in args.skip:
      bench_recall(args, tmp)


if __name__ == "__main__":
  main()
