"""TAD keyframe selection settings: decoding, frame features, and the selector.

Used by `launch/select_keyframes.py` and embedded (via `tad_section`, `features_section`)
in the training configs. Variants: default, `smoke` (tiny sizes for CPU tests).

Examples:
  python -m launch.select_keyframes --video clip.mp4 --k 16 --fps 2 --out out/
  python -m launch.select_keyframes --video clip.mp4 \\
      --config=configs/tad.py:smoke --config.tad.prominence=0.2
  python -m launch.select_keyframes --video clip.mp4 --config.tad.selector=uniform
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from configs import common

SELECTORS = ("tad", "uniform")
DISTANCES = ("cosine", "l2")
BOOST_MODES = ("add", "mul")
COLORS = ("rgb", "luma")
RESIZES = ("pad", "crop")


def input_section() -> ml_collections.ConfigDict:
  """How videos are decoded before features are computed."""
  c = ml_collections.ConfigDict()
  c.fps = config_dict.placeholder(float)  # None: the video's native rate.
  c.max_frames = config_dict.placeholder(int)  # None: no cap; else even subsampling.
  c.size = 160  # Square side frames are decoded to (aspect kept by `resize`).
  c.resize = "pad"  # "pad" (letterbox) or "crop" (centre crop).
  return c


def features_section() -> ml_collections.ConfigDict:
  """Cheap pixel features (chronoforge_jax.tad.features.frame_features)."""
  c = ml_collections.ConfigDict()
  c.grid = 8  # Blocks per side; D = grid * grid * channels.
  c.color = "rgb"  # "rgb" or "luma".
  c.center = True  # Map pixels to [-1, 1] so cosine sees brightness.
  c.chunk = 256  # Frames per device call when featurising a long video.
  return c


def tad_section() -> ml_collections.ConfigDict:
  """The keyframe selector and its settings (chronoforge_jax.tad)."""
  c = ml_collections.ConfigDict()
  c.selector = "tad"  # Registered name in tad.SELECTORS: "tad" or "uniform".
  c.k = 16  # Keyframes per video.
  c.distance = "cosine"  # Variation distance: "cosine" or "l2" (normalised features).
  c.smooth = 0  # Half-width of triangular smoothing of the variation curve.
  c.prominence = 0.1  # Inflection prominence, relative to the video's score range.
  c.min_prominence = 1e-6  # Absolute prominence floor (flat curves have no apex).
  c.window = 16  # Frames searched each side for a peak's prominence base.
  c.boost = 1.0  # Inflection bonus; >= 1 with "add" keeps every inflection first.
  c.boost_mode = "add"  # "add" (in units of the score range) or "mul".
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the TAD config; `arg` is a variant name or `variant=smoke,k=8` pairs."""
  args = common.parse_arg(arg, variant="default", k=16)
  common.check_choice(args.variant, "variant", ("default", "smoke"))
  config = ml_collections.ConfigDict()
  config.input = input_section()
  config.features = features_section()
  config.tad = tad_section()
  config.tad.k = args.k
  if args.variant == "smoke":
    config.input.size = 32
    config.input.max_frames = 64
    config.features.grid = 4
    config.features.chunk = 32
    config.tad.window = 4
  validate_tad(config)
  config.lock()  # Typos in field names fail instead of adding new fields.
  return config


def tad_kwargs(tad: ml_collections.ConfigDict) -> dict[str, Any]:
  """The `tad.analyze` / `tad.select_keyframes` keyword arguments of a `tad` section."""
  return dict(
    distance=tad.distance,
    smooth=tad.smooth,
    prominence=tad.prominence,
    min_prominence=tad.min_prominence,
    window=tad.window,
    boost=tad.boost,
    boost_mode=tad.boost_mode,
  )


def features_kwargs(features: ml_collections.ConfigDict) -> dict[str, Any]:
  """The `features.frame_features` keyword arguments of a `features` section."""
  return dict(grid=features.grid, color=features.color, center=features.center)


def validate_tad(config: ml_collections.ConfigDict) -> None:
  """Checks the `tad` section (and `features`, `input` where present).

  Raises:
    common.ConfigError: naming the first bad field and what would fix it.
  """
  check, choice = common.check, common.check_choice
  tad = config.tad
  choice(tad.selector, "tad.selector", SELECTORS)
  check(
    isinstance(tad.k, int) and tad.k >= 1,
    "tad.k",
    f"got {tad.k!r}; need a positive number of keyframes",
  )
  choice(tad.distance, "tad.distance", DISTANCES)
  check(
    isinstance(tad.smooth, int) and tad.smooth >= 0,
    "tad.smooth",
    f"got {tad.smooth!r}; need a non-negative window half-width (0 = off)",
  )
  check(
    tad.prominence >= 0,
    "tad.prominence",
    f"got {tad.prominence!r}; need >= 0 (a fraction of the score range)",
  )
  check(tad.min_prominence >= 0, "tad.min_prominence", f"got {tad.min_prominence!r}; need >= 0")
  check(
    isinstance(tad.window, int) and tad.window >= 1,
    "tad.window",
    f"got {tad.window!r}; need at least 1 frame",
  )
  check(tad.boost >= 0, "tad.boost", f"got {tad.boost!r}; need a non-negative bonus")
  choice(tad.boost_mode, "tad.boost_mode", BOOST_MODES)
  if "features" in config:
    feats = config.features
    check(
      isinstance(feats.grid, int) and feats.grid >= 1,
      "features.grid",
      f"got {feats.grid!r}; need a positive number of blocks per side",
    )
    choice(feats.color, "features.color", COLORS)
    check(
      isinstance(feats.chunk, int) and feats.chunk >= 1,
      "features.chunk",
      f"got {feats.chunk!r}; need a positive number of frames per device call",
    )
  if "input" in config:
    inp = config.input
    check(
      inp.fps is None or inp.fps > 0,
      "input.fps",
      f"got {inp.fps!r}; need a positive rate, or None for the native rate",
    )
    check(
      inp.max_frames is None or inp.max_frames >= 1,
      "input.max_frames",
      f"got {inp.max_frames!r}; need a positive cap, or None",
    )
    check(
      isinstance(inp.size, int) and inp.size >= 1,
      "input.size",
      f"got {inp.size!r}; need a positive frame side in pixels",
    )
    choice(inp.resize, "input.resize", RESIZES)
    if "features" in config:
      check(
        inp.size >= config.features.grid,
        "input.size",
        f"{inp.size} pixels is smaller than features.grid={config.features.grid}",
      )
