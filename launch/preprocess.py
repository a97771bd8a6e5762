"""Decodes videos once into ArrayRecord shards of frames, TAD features and questions.

  python -m launch.preprocess --format videomme --annotations videomme.json \\
      --video_dir Video-MME/data --out data/videomme --fps 1 --max_frames 256 \\
      --size 448 --workers 8
  python -m launch.preprocess --config=configs/data.py:demo --format synthetic \\
      --video_dir out/synthetic --out out/synthetic_train --split train

Formats: videomme, lvbench, videor1 (see chronoforge_jax/data/benchmarks.py) and
synthetic: without --annotations it first writes the synthetic temporal-QA set into
--video_dir (idempotent) and reads its `<split>.json`; the set's tiny tokenizer is
copied to `<out>/tokenizer`. Defaults come from --config (configs/data.py); flags
override them. A rerun with the same settings resumes: finished shards are skipped.
Bad items go to `<out>/rejected.jsonl`; the exit code is 1 only if nothing was written
(2 for unusable arguments or annotations).
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  os.path.join(os.path.dirname(__file__), "..", "configs", "data.py"),
  "Data config (configs/data.py[:variant]); its `preprocess` section gives defaults.",
  lock_config=True,
)
_FORMAT = flags.DEFINE_enum(
  "format",
  None,
  ["videomme", "lvbench", "videor1", "synthetic"],
  "Annotation format (default: config.preprocess.format).",
)
_ANNOTATIONS = flags.DEFINE_string("annotations", None, "Annotation file as published.")
_VIDEO_DIR = flags.DEFINE_string("video_dir", None, "Folder the video paths are relative to.")
_OUT = flags.DEFINE_string("out", None, "Output folder for shards and index.json.")
_FPS = flags.DEFINE_float("fps", None, "Resample rate (default: config.preprocess.fps).")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", None, "Frames kept per video at most.")
_SIZE = flags.DEFINE_integer("size", None, "Square frame side (a multiple of 28).")
_RESIZE = flags.DEFINE_enum("resize", None, ["pad", "crop"], "Keep aspect by pad or crop.")
_WORKERS = flags.DEFINE_integer("workers", None, "Worker processes (0: in this process).")
_PER_SHARD = flags.DEFINE_integer("videos_per_shard", None, "Videos per shard.")
_SPLIT = flags.DEFINE_enum(
  "split", "train", ["train", "eval"], "Synthetic split to preprocess (format=synthetic only)."
)
_QUIET = flags.DEFINE_bool("quiet", False, "No progress bar.")


def run(
  config,
  *,
  fmt: str,
  annotations: str | None,
  video_dir: str,
  out: str,
  split: str = "train",
  progress: bool = True,
) -> dict:
  """Loads annotations (writing the synthetic set if needed) and preprocesses them.

  Returns:
    The index dictionary with this run's skipped/written shard counts.
  """
  from chronoforge_jax.data import benchmarks, records, synthetic

  p = config.preprocess
  video_dir = os.path.abspath(video_dir)
  if fmt == "synthetic" and not annotations:
    paths = synthetic.write_dataset(
      video_dir, synthetic.SyntheticSettings(**p.synthetic.to_dict()), progress=progress
    )
    annotations = paths[split]
    os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
    shutil.copy(
      os.path.join(paths["tokenizer_dir"], "tokenizer.json"),
      os.path.join(out, "tokenizer", "tokenizer.json"),
    )
  if not annotations:
    raise benchmarks.AnnotationError(f"--annotations is required for --format={fmt}")
  items, rejects = benchmarks.load_annotations(fmt, annotations, video_dir)
  settings = records.PreprocessSettings.from_config(config)
  meta = {"format": fmt, "annotations": os.path.abspath(annotations), "video_dir": video_dir}
  return records.preprocess(
    items,
    out,
    settings,
    workers=p.workers,
    annotation_rejects=rejects,
    meta=meta,
    progress=progress,
  )


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from chronoforge_jax.data import benchmarks
  from configs import common
  from configs import data as data_config

  config = _CONFIG.value
  overrides = {
    "format": _FORMAT.value,
    "fps": _FPS.value,
    "max_frames": _MAX_FRAMES.value,
    "size": _SIZE.value,
    "resize": _RESIZE.value,
    "workers": _WORKERS.value,
    "videos_per_shard": _PER_SHARD.value,
  }
  start = time.perf_counter()
  try:
    with config.unlocked():
      for key, value in overrides.items():
        if value is not None:
          config.preprocess[key] = value
    data_config.validate_data(config)
    if not _OUT.value or not _VIDEO_DIR.value:
      raise common.ConfigError("--out and --video_dir are required")
    index = run(
      config,
      fmt=config.preprocess.format,
      annotations=_ANNOTATIONS.value,
      video_dir=_VIDEO_DIR.value,
      out=_OUT.value,
      split=_SPLIT.value,
      progress=not _QUIET.value,
    )
  except (common.ConfigError, benchmarks.AnnotationError, ValueError) as e:
    print(f"preprocess: error: {e}", file=sys.stderr)
    return 2
  print(
    f"preprocess: {index['num_questions']} questions on {index['num_videos']} videos "
    f"({index['num_frames']} frames) in {len(index['shards'])} shards; "
    f"{index['num_rejected']} rejected (see {os.path.join(_OUT.value, 'rejected.jsonl')}); "
    f"{index['written_shards']} shards written, {index['skipped_shards']} already done; "
    f"{time.perf_counter() - start:.1f} s"
  )
  return 0 if index["num_questions"] > 0 else 1


if __name__ == "__main__":
  app.run(main)
