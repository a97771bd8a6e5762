"""Pre-decoded shards vs decoding mp4 files on the fly, and Grain prefetch scaling.

  python benchmarks/data_bench.py                      # synthetic videos, ~2 minutes
  python benchmarks/data_bench.py --videos 16 --native_size 320 --batches 40

Measured side by side in one run, on the same videos at the same fps and size:
  1. frames/s: reading every stored frame from the ArrayRecord shards vs decoding the
     mp4 files with PyAV (decode.decode_video at --fps, --size).
  2. examples/s end to end: the Grain train pipeline (TAD keyframes, both views, prompt
     tokens) vs doing the same per question from the mp4 (decode, features, TAD, gather).
  3. batches/s of the Grain pipeline with 0, 1 and 2 prefetch worker processes (after
     warm-up; worker start-up time is printed separately).
Wall-clock numbers depend on the machine and its load; the ratios are the point.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _parse() -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--videos", type=int, default=8, help="synthetic videos to generate")
  p.add_argument("--video_seconds", type=float, default=20.0, help="length of each video")
  p.add_argument("--native_size", type=int, default=256, help="side of the encoded mp4s")
  p.add_argument("--native_fps", type=float, default=24.0, help="frame rate of the mp4s")
  p.add_argument("--fps", type=float, default=2.0, help="preprocess / decode rate")
  p.add_argument("--size", type=int, default=112, help="frame side after resizing")
  p.add_argument("--k", type=int, default=8, help="keyframes per example")
  p.add_argument("--batch_size", type=int, default=4)
  p.add_argument("--batches", type=int, default=24, help="batches timed per setting")
  p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--work_dir", default=None, help="keep data here (default: a temp dir)")
  return p.parse_args()


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def _drain(it, n: int) -> float:
  """Seconds to pull n batches (dropping them, so shared-memory buffers are freed)."""
  start = time.perf_counter()
  for _ in range(n):
    next(it)
  return time.perf_counter() - start


def main() -> None:
  args = _parse()
  from absl import flags
  import numpy as np

  flags.FLAGS.mark_as_parsed()
  import jax

  from chronoforge_jax import tad, tokenizer
  from chronoforge_jax.data import benchmarks, decode, pipeline, records, synthetic
  from chronoforge_jax.rl import views
  from chronoforge_jax.tad import features

  work = args.work_dir or tempfile.mkdtemp(prefix="data_bench_")
  syn = synthetic.SyntheticSettings(
    num_train_questions=2 * args.videos,
    num_eval_questions=2,
    size=args.native_size,
    fps=args.native_fps,
    min_video_seconds=args.video_seconds,
    max_video_seconds=args.video_seconds,
  )
  paths, t = _timed(lambda: synthetic.write_dataset(os.path.join(work, "src"), syn))
  print(
    f"setup: {args.videos} synthetic mp4s, {args.video_seconds:.0f} s at "
    f"{args.native_fps:g} fps, {args.native_size}px ({t:.1f} s)",
    flush=True,
  )
  items, _ = benchmarks.load_annotations("synthetic", paths["train"], paths["video_dir"])
  settings = records.PreprocessSettings(
    fps=args.fps, max_frames=512, size=args.size, videos_per_shard=4
  )
  data_dir = os.path.join(work, "shards")
  index, t = _timed(lambda: records.preprocess(items, data_dir, settings, progress=False))
  print(f"setup: preprocessed {index['num_frames']} frames in {t:.1f} s", flush=True)
  tok = tokenizer.Tokenizer.from_dir(paths["tokenizer_dir"])
  files = sorted({i.video_path for i in items})

  # 1. Raw frames/s: every stored frame vs every decoded frame, same fps and size.
  data = records.PreprocessedData(data_dir)

  def read_all():
    n = 0
    for key in range(data.num_videos):
      v = data.video(key)
      n += len(data.frames(v, np.arange(v.num_frames)))
    return n

  def decode_all():
    return sum(decode.decode_video(f, fps=args.fps, size=args.size).num_frames for f in files)

  read_all()  # Warm the page cache, as a training job's second epoch would.
  n_read, t_read = _timed(lambda: sum(read_all() for _ in range(5)))
  n_dec, t_dec = _timed(decode_all)
  fr, fd = n_read / t_read, n_dec / t_dec
  print(
    f"\n1. frames/s  shards {fr:9.0f}   PyAV decode {fd:7.0f}   ratio {fr / fd:6.1f}x  "
    f"({n_dec} frames, {args.fps:g} fps, {args.size}px)",
    flush=True,
  )

  # 2. Examples/s end to end.
  ps = pipeline.train_settings(
    args.batch_size, num_keyframes=args.k, prompt_buckets=(128, 192, 256), target_buckets=(64, 96)
  )
  n_examples = args.batch_size * args.batches
  it = iter(pipeline.make_dataset(data_dir, tok, ps))
  next(it)  # Compile TAD and warm up.
  t_pipe = _drain(it, args.batches)
  select = jax.jit(lambda f, m: tad.select("tad", f, args.k, m))
  num_video = pipeline.num_video_tokens(args.k // 2, args.size, args.size)

  def on_the_fly(n):
    rng = np.random.default_rng(0)
    for item in itertools.islice(itertools.cycle(items), n):
      v = decode.decode_video(item.video_path, fps=args.fps, size=args.size)
      f = features.video_features(v.frames, chunk=512)
      pad = np.zeros((512, f.shape[1]), np.float32)
      pad[: len(f)] = f
      idx, valid = select(pad, np.arange(512) < len(f))
      vw = views.build_views(
        v.num_frames,
        np.asarray(idx),
        np.asarray(valid),
        num_pairs=ps.num_pairs,
        disorder_ratio=0.5,
        rng=rng,
      )
      _ = v.frames[vw.frame_indices], tok.encode_chat_prompt(item.question, item.options, num_video)

  on_the_fly(1)
  n_fly = max(4, n_examples // 4)
  _, t_fly = _timed(lambda: on_the_fly(n_fly))
  ep, ef = n_examples / t_pipe, n_fly / t_fly
  print(
    f"2. examples/s  Grain pipeline {ep:7.1f}   on-the-fly decode {ef:6.1f}   "
    f"ratio {ep / ef:6.1f}x  (K={args.k}, U={ps.num_frames} frames/example)",
    flush=True,
  )

  # 3. Batches/s against prefetch workers. Timed over many batches so the few that
  # workers buffer during start-up do not flatter them.
  n3 = 3 * args.batches
  print(f"3. batches/s of {args.batch_size} (after warm-up, {n3} batches):")
  base = None
  for w in args.workers:
    ds = pipeline.make_dataset(
      data_dir,
      tok,
      pipeline.train_settings(
        args.batch_size,
        num_keyframes=args.k,
        prompt_buckets=(128, 192, 256),
        target_buckets=(64, 96),
        prefetch_workers=w,
        prefetch_buffer=2,
      ),
    )
    it, t_start = _timed(lambda: iter(ds))  # noqa: B023 (called here)
    t_first = _drain(it, 1)
    _drain(it, 2)
    rate = n3 / _drain(it, n3)
    if hasattr(it, "close"):
      it.close()
    del it
    base = base or rate
    print(
      f"   workers={w}: {rate:7.1f} batches/s  ({rate / base:4.2f}x of workers="
      f"{args.workers[0]}; start-up {t_start + t_first:.1f} s)",
      flush=True,
    )
  print(f"\ncpu cores: {os.cpu_count()}; data in {work}")
  import gc

  gc.collect()  # Free Grain's shared-memory batches before interpreter shutdown.


if __name__ == "__main__":
  main()
