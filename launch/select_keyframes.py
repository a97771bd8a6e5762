"""Selects TAD keyframes from a video file and prints them as JSON.

  python -m launch.select_keyframes --video clip.mp4 --k 16 [--fps 2] [--out DIR]

Decodes the video with PyAV (native rate, or resampled to --fps), computes cheap pixel
features, runs the configured selector (TAD by default) and prints JSON on stdout:
`frames` (selected indices at the decoded rate), `timestamps` (seconds), `inflections`,
`scores` (one per decoded frame) and a few facts about the decode. With --out it also
writes `tad_curve.png` (variation curve, inflections, selections) and
`contact_sheet.png` (the selected frames). Other settings come from
--config=configs/tad.py[:smoke] and --config.<section>.<field>=value overrides.
A missing, empty, corrupt or non-video file prints one error line and exits with 2.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.normpath(
  os.path.join(os.path.dirname(__file__), "..", "configs", "tad.py")
)
_CONFIG = config_flags.DEFINE_config_file(
  "config", _DEFAULT_CONFIG, "TAD config file (configs/tad.py[:variant]).", lock_config=True
)
_VIDEO = flags.DEFINE_string("video", None, "Video file to select keyframes from.")
_K = flags.DEFINE_integer("k", None, "Number of keyframes (default: config.tad.k).")
_FPS = flags.DEFINE_float("fps", None, "Decode at this rate (default: native rate).")
_OUT = flags.DEFINE_string("out", None, "Directory for the PNGs (none written if unset).")
_SELECTOR = flags.DEFINE_enum(
  "selector", None, ["tad", "uniform"], "Keyframe selector (default: config.tad.selector)."
)
_PROGRESS_EVERY = 2000  # Frames between progress lines on stderr.


def run(video: str, config, out_dir: str | None = None) -> dict:
  """Decodes `video`, selects keyframes per `config`, writes PNGs; returns the report."""
  from chronoforge_jax.data import decode

  inp = decode.DecodeSettings.from_config(config.input)
  start = time.perf_counter()
  info = decode.probe_video(video)  # Bad files fail here, before JAX starts up.

  import jax
  import numpy as np

  from chronoforge_jax import tad
  from chronoforge_jax.evaluation import plots
  from chronoforge_jax.tad import features

  feats = features.FeatureSettings.from_config(config.features)
  tad_settings = tad.TADSettings.from_config(config.tad)
  indices = decode.capped_indices(decode.output_length(info, inp.fps), inp.max_frames)
  times = []

  def stream():
    for n, (_, t, frame_hwc) in enumerate(
      decode.iter_frames(video, fps=inp.fps, size=inp.size, resize=inp.resize, indices=indices)
    ):
      times.append(t)
      if n and n % _PROGRESS_EVERY == 0:
        logging.info("decoded %d frames (%.0f s of video)", n, t)
      yield frame_hwc

  # Two passes keep memory flat for long videos: features while decoding, then only
  # the selected frames again for the contact sheet.
  feats_td = features.video_features(stream(), chunk=feats.chunk, **feats.frame_kwargs())
  if not len(times):
    raise decode.VideoDecodeError(video, "no decodable frames")
  logging.info(
    "decoded and featurised %d frames in %.1f s", len(times), time.perf_counter() - start
  )

  k, selector, kwargs = tad_settings.k, tad_settings.selector, tad_settings.select_kwargs()
  analysis = jax.jit(lambda x: tad.analyze(x, **kwargs))(feats_td)
  picked, valid = jax.jit(lambda x: tad.select(selector, x, k, **kwargs))(feats_td)
  picked = np.asarray(picked)[np.asarray(valid)]
  scores = np.asarray(analysis.scores, np.float64)
  inflections = np.flatnonzero(np.asarray(analysis.inflections))
  times = np.asarray(times, np.float64)

  report = {
    "video": os.fspath(video),
    "selector": selector,
    "k": k,
    "fps": inp.fps if inp.fps is not None else info.native_fps,
    "native_fps": info.native_fps,
    "duration": info.duration,
    "num_frames": int(times.shape[0]),
    "frames": picked.tolist(),
    "timestamps": [round(float(times[i]), 6) for i in picked],
    "inflections": inflections.tolist(),
    "scores": [round(float(s), 6) for s in scores],
  }
  if out_dir:
    # Positions in the capped sequence map back to decoder positions for pass two.
    positions = picked if indices is None else indices[picked]
    thumbs = {
      i: f
      for i, _, f in decode.iter_frames(
        video, fps=inp.fps, size=inp.size, resize=inp.resize, indices=positions
      )
    }
    name = os.path.basename(video)
    curve = plots.tad_curve(
      os.path.join(out_dir, "tad_curve.png"),
      scores,
      analysis.inflections,
      picked,
      times,
      title=f"{name}: {selector}, k={k}",
    )
    sheet = plots.contact_sheet(
      os.path.join(out_dir, "contact_sheet.png"),
      np.stack([thumbs[int(p)] for p in positions]),
      [f"#{i}  {times[i]:.2f}s" for i in picked],
      title=name,
    )
    report["outputs"] = [curve, sheet]
  return report


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from chronoforge_jax.data import decode
  from configs import common
  from configs import tad as tad_config

  config = _CONFIG.value
  try:
    if _K.value is not None:
      config.tad.k = _K.value
    if _FPS.value is not None:
      config.input.fps = _FPS.value
    if _SELECTOR.value is not None:
      config.tad.selector = _SELECTOR.value
    tad_config.validate_tad(config)
    report = run(_VIDEO.value, config, _OUT.value)
  except (decode.VideoDecodeError, common.ConfigError) as e:
    print(f"select_keyframes: error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(report))
  return 0


if __name__ == "__main__":
  flags.mark_flag_as_required("video")
  app.run(main)
