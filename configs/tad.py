"""TAD keyframe selection settings: decoding, frame features, and the selector.

Used by `launch/select_keyframes.py` and embedded (via `tad_section`, `features_section`)
in the training configs. Variants: default, `smoke` (tiny sizes for CPU tests). The
library checks the fields: `tad` is chronoforge_jax.tad.TADSettings, `features` is
tad.features.FeatureSettings, `input` (decoding) is data.decode.DecodeSettings.

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

from chronoforge_jax import tad
from chronoforge_jax.data import decode
from chronoforge_jax.tad import features
from configs import common


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


def tad_kwargs(section: ml_collections.ConfigDict) -> dict[str, Any]:
  """The `tad.analyze` / `tad.select` keyword arguments of a `tad` section."""
  return common.build(tad.TADSettings.from_config, section).select_kwargs()


def features_kwargs(section: ml_collections.ConfigDict) -> dict[str, Any]:
  """The `features.frame_features` keyword arguments of a `features` section."""
  return common.build(features.FeatureSettings.from_config, section).frame_kwargs()


def validate_tad(config: ml_collections.ConfigDict) -> None:
  """Builds the library settings of the `tad` section (and `features`, and the decoding
  `input`, where present): tad.TADSettings, features.FeatureSettings,
  decode.DecodeSettings.

  Raises:
    common.ConfigError: naming the first bad field and what would fix it.
  """
  common.build(tad.TADSettings.from_config, config.tad)
  feats = None
  if "features" in config:
    feats = common.build(features.FeatureSettings.from_config, config.features)
  if "input" in config:
    inp = common.build(decode.DecodeSettings.from_config, config.input)
    if feats is not None:
      common.build(feats.check_frame_size, inp.size, "config.input.size")
