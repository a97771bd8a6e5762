r"""Video-R1-260k at its real size: preprocessing items/s and bytes/item, projected.

  python benchmarks/videor1_scale.py --videos 6 --video_seconds 30 --images 30 --workers 0

Builds a synthetic stand-in in a temporary folder (H.264 videos of --video_seconds at
30 fps and 640x360, textured scenes with cuts and pixel noise, so frames neither vanish
under compression nor are pure noise; PNG stills of 640x480), writes a Video-R1-format
annotation file (one item per media file, as in Video-R1-260k, all five problem types),
runs `launch.preprocess.run` with the default data config (fps 1, at most 256 frames,
448 px, zstd:1) once on the videos and once on the images, and prints the measured
items/s and stored bytes per item of each, then the projection for --full_videos +
--full_images items (default: the split the Video-R1 paper reports, about 116k video and
146k image items) with --project_workers workers, assuming preprocessing scales linearly
with workers (shards are independent) and with video length (frames kept at 1 fps).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TYPES = ("multiple choice", "numerical", "OCR", "free-form", "regression")
SOLUTIONS = {
  "multiple choice": "<answer>B</answer>",
  "numerical": "<answer>3</answer>",
  "OCR": "<answer>EXIT</answer>",
  "free-form": "<answer>a man runs</answer>",
  "regression": "<answer>2.5</answer>",
}


def _rows(paths, data_type):
  rows = []
  for n, path in enumerate(paths):
    ptype = TYPES[n % len(TYPES)]
    rows.append(
      {
        "problem_id": f"{data_type}{n}",
        "problem": "What happens?",
        "data_type": data_type,
        "problem_type": ptype,
        "options": ["A. a", "B. b", "C. c", "D. d"] if ptype == TYPES[0] else [],
        "solution": SOLUTIONS[ptype],
        "path": path,
        "data_source": "stand-in",
      }
    )
  return rows


def write_image(path: str, image_hwc: np.ndarray) -> None:
  """A PNG written with PyAV's image2 muxer."""
  import av

  h, w, _ = image_hwc.shape
  with av.open(path, "w", format="image2") as container:
    stream = container.add_stream("png", rate=1)
    stream.width, stream.height, stream.pix_fmt = w, h, "rgb24"
    container.mux(stream.encode(av.VideoFrame.from_ndarray(image_hwc, format="rgb24")))
    container.mux(stream.encode(None))


def make_stand_in(root: str, videos: int, seconds: float, images: int) -> dict[str, str]:
  from chronoforge_jax import testing

  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, "v"), exist_ok=True)
  os.makedirs(os.path.join(root, "i"), exist_ok=True)
  frames = int(seconds * 30)
  vpaths = []
  for n in range(videos):
    cuts = sorted(rng.choice(np.arange(30, frames - 30), size=3, replace=False).tolist())
    path = f"v/{n}.mp4"
    testing.write_cut_video(
      os.path.join(root, path), frames, cuts, (360, 640), fps=30.0, seed=n, noise=6.0
    )
    vpaths.append(path)
  ipaths = []
  for n in range(images):
    base = testing.cut_video_frames(1, [], (480, 640), seed=100 + n, noise=6.0)[0]
    path = f"i/{n}.png"
    write_image(os.path.join(root, path), base)
    ipaths.append(path)
  out = {}
  for kind, rows in (("video", _rows(vpaths, "video")), ("image", _rows(ipaths, "image"))):
    out[kind] = os.path.join(root, f"{kind}.json")
    with open(out[kind], "w") as f:
      json.dump(rows, f)
  return out


def _bytes(folder: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--videos", type=int, default=6)
  p.add_argument("--video_seconds", type=float, default=30.0)
  p.add_argument("--images", type=int, default=30)
  p.add_argument("--workers", type=int, default=0, help="preprocess workers (0: inline)")
  p.add_argument("--full_videos", type=int, default=116_000)
  p.add_argument("--full_images", type=int, default=146_000)
  p.add_argument("--project_workers", type=int, default=16)
  args = p.parse_args()

  from configs import data as data_config
  from launch import preprocess

  with tempfile.TemporaryDirectory() as root:
    t0 = time.perf_counter()
    ann = make_stand_in(root, args.videos, args.video_seconds, args.images)
    print(
      f"stand-in: {args.videos} videos of {args.video_seconds:.0f} s (640x360, 30 fps) "
      f"and {args.images} PNG stills (640x480), built in {time.perf_counter() - t0:.1f} s"
    )
    measured = {}
    for kind in ("video", "image"):
      config = data_config.get_config("default")
      config.preprocess.workers = args.workers
      out = os.path.join(root, f"out_{kind}")
      t0, c0 = time.perf_counter(), time.process_time()
      index = preprocess.run(
        config, fmt="videor1", annotations=ann[kind], video_dir=root, out=out, progress=False
      )
      seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
      n = index["num_questions"]
      assert index["num_rejected"] == 0, index
      stored = _bytes(os.path.join(out, "shards"))
      raw = index["num_frames"] * 448 * 448 * 3
      # Shared machines: CPU time per item (this process; --workers 0) projects better
      # than wall time. With workers, CPU time is in the children: use wall time.
      per_item = (cpu if args.workers == 0 else seconds) / n
      measured[kind] = (1.0 / per_item, stored / n)
      print(
        f"{kind}: {n} items, {index['num_frames']} frames in {seconds:.1f} s wall, "
        f"{cpu:.1f} s CPU = {n / seconds:.2f} items/s wall, {1 / per_item:.2f} items/s "
        f"per core ({args.workers} workers); stored "
        f"{stored / n / 2**20:.2f} MiB/item (raw frames {raw / n / 2**20:.2f} MiB/item, "
        f"zstd:1 keeps {stored / raw:.0%})"
      )
  scale = max(args.project_workers, 1) / max(args.workers, 1)
  hours = (
    (args.full_videos / measured["video"][0] + args.full_images / measured["image"][0])
    / scale
    / 3600
  )
  total = args.full_videos * measured["video"][1] + args.full_images * measured["image"][1]
  print(
    f"projection: {args.full_videos} video + {args.full_images} image items -> "
    f"{hours:.1f} h with {args.project_workers} worker cores like these, "
    f"{total / 2**40:.2f} TiB stored (videos of {args.video_seconds:.0f} s; both scale "
    f"linearly with the mean video length)"
  )


if __name__ == "__main__":
  main()
