"""Data config sections: `input` (the Grain pipeline) and `preprocess` (videos -> shards).

Training configs take `config.input = data.input_config(variant)`; `launch/preprocess.py`
reads `--config=configs/data.py[:variant]` for its defaults (flags override them).
Keyframe count and selector live in the `tad` section (`tad.k`, `tad.selector`), frame
features in `features` (configs/tad.py); this file embeds both so it stands alone.
Variants: `default` (real benchmarks at the paper's settings), `demo` (the learnable
synthetic colour-order set, 2000 train / 400 eval questions at 56 px, sized for `make demo`
and `launch.ablation` on a CPU), `smoke` (seconds, for tests; the `events` variant).

A fresh held-out split of the demo set (another seed; the tokenizer is seed-free):
  python -m launch.preprocess --config=configs/data.py:demo --format synthetic \
      --config.preprocess.synthetic.seed=7 --video_dir out/synthetic_s7 \
      --out out/heldout_s7 --split eval

Examples:
  python -m launch.preprocess --format videomme --annotations videomme.json \\
      --video_dir Video-MME/data --out data/videomme --fps 1 --max_frames 256 --size 448
  python -m launch.preprocess --config=configs/data.py:demo --format synthetic \\
      --video_dir out/synthetic --out out/synthetic_train --split train
"""

from __future__ import annotations

import numbers

import ml_collections
from ml_collections import config_dict

from chronoforge_jax.data import prompts
from chronoforge_jax.rl import scoring
from configs import common
from configs import tad as tad_config

VARIANTS = ("default", "demo", "smoke")
FORMATS = ("videomme", "lvbench", "videor1", "synthetic")


def input_config(variant: str = "default") -> ml_collections.ConfigDict:
  """The `input` section: where batches come from and what they look like."""
  common.check_choice(variant, "input.variant", set(VARIANTS))
  c = ml_collections.ConfigDict()
  c.data_dir = ""  # Preprocessed training folder (launch/preprocess --out).
  c.tokenizer_dir = ""  # Folder holding tokenizer.json (checkpoint or tiny one).
  c.batch_size = 8  # GLOBAL batch; each of N processes gets batch_size / N.
  c.eval_batch_size = 8  # GLOBAL eval batch; the last one is padded, not dropped.
  c.eval_num_keyframes = 32  # K at evaluation (paper: more frames than in training).
  c.disorder_ratio = 0.5  # Share of non-keyframe patches in the disordered view.
  c.num_nonkey_pairs = -1  # M non-keyframe patches stored; -1: round(ratio * P).
  c.patch_mode = "pair"  # "pair": 2 keyframes per temporal patch (P = K/2 patches);
  # "duplicate": each frame repeated into its own (P = K).
  c.patch_size = 14  # Qwen2.5-VL vision patch side.
  c.spatial_merge_size = 2  # 2x2 patches merge into one video token.
  c.prompt_buckets = (128, 256, 512)  # Prompt lengths, not counting video tokens.
  c.target_buckets = (64, 128, 256)  # Reference-answer lengths (SFT targets).
  c.target_reasoning = True  # SFT targets keep the annotation's <think> reasoning.
  # The user text's template (chronoforge_jax/data/prompts.py): "short" (question, options,
  # one instruction line) or "videor1" (Video-R1's QUESTION_TEMPLATE + TYPE_TEMPLATE).
  # The paper config (kf_grpo.py:qwen2_5_vl_7b) sets "videor1"; evaluation uses the
  # training template unless launch.eval --prompt_template says otherwise.
  c.prompt_template = "short"
  # How evaluation reads a generated answer (chronoforge_jax/rl/scoring.py): "lenient" or
  # "lmms_eval" (lmms-eval's VideoMME rules: numbers comparable with published ones).
  c.eval_scoring = "lenient"
  c.seed = 0
  c.num_epochs = config_dict.placeholder(int)  # None: repeat forever.
  c.prefetch_workers = 2  # Grain worker processes (0: build in the trainer process).
  c.prefetch_buffer = 2  # Batches buffered per worker.
  c.read_threads = 1  # Threads building batches inside each process.
  if variant == "demo":
    c.batch_size = 16
    c.eval_batch_size = 50
    c.eval_num_keyframes = 8
    c.patch_mode = "duplicate"  # One keyframe per temporal patch: each flash seen alone.
    c.prompt_buckets = (96, 128)
    c.target_buckets = (16, 32)
    c.target_reasoning = False
    c.prefetch_workers = 1
  elif variant == "smoke":
    c.batch_size = 2
    c.eval_batch_size = 2
    c.eval_num_keyframes = 4
    c.prompt_buckets = (128, 192)
    c.target_buckets = (16, 48, 64)
    c.target_reasoning = False
    c.prefetch_workers = 0
  return c


def preprocess_config(variant: str = "default") -> ml_collections.ConfigDict:
  """The `preprocess` section: decoding, shards, and the synthetic set's settings."""
  common.check_choice(variant, "preprocess.variant", set(VARIANTS))
  c = ml_collections.ConfigDict()
  c.format = "synthetic"  # videomme | lvbench | videor1 | synthetic.
  c.fps = 1.0  # Resample rate (frames per second).
  c.max_frames = 256  # Cap per video (even subsampling beyond it).
  c.size = 448  # Square frame side; a multiple of patch * merge (28).
  c.resize = "pad"  # "pad" (letterbox) or "crop" (centre crop).
  c.videos_per_shard = 8  # Unit of parallel work and of resuming.
  c.workers = 4  # Worker processes (0: in the launcher's process).
  c.compression = "zstd:1"  # ArrayRecord compression: "zstd:N" or "uncompressed".
  # The synthetic set (chronoforge_jax/data/synthetic.py: SyntheticSettings).
  c.synthetic = ml_collections.ConfigDict(
    dict(
      variant="colour_order",
      num_train_questions=2000,
      num_eval_questions=400,
      questions_per_video=2,
      num_events=4,
      event_seconds=1.0,
      min_video_seconds=12.0,
      max_video_seconds=20.0,
      fps=8.0,
      size=56,
      vocab_size=512,
      seed=0,
    )
  )
  if variant == "demo":
    c.fps, c.max_frames, c.size, c.workers, c.videos_per_shard = 2.0, 48, 56, 2, 50
  elif variant == "smoke":
    c.fps, c.max_frames, c.size, c.workers, c.videos_per_shard = 2.0, 32, 56, 0, 2
    c.synthetic.update(
      dict(
        variant="events",
        num_train_questions=8,
        num_eval_questions=4,
        num_events=5,
        min_video_seconds=12.0,
        max_video_seconds=14.0,
        size=64,
      )
    )
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`--config=configs/data.py:VARIANT`: input, preprocess, features and tad sections."""
  args = common.parse_arg(arg, variant="default")
  common.check_choice(args.variant, "variant", set(VARIANTS))
  config = ml_collections.ConfigDict()
  config.input = input_config(args.variant)
  config.preprocess = preprocess_config(args.variant)
  config.features = tad_config.features_section()
  config.tad = tad_config.tad_section()
  if args.variant == "demo":
    config.tad.k = 8
  elif args.variant == "smoke":
    config.tad.k = 4
    config.features.grid = 4
    config.tad.window = 4
  validate_data(config)
  return config


def _int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _buckets(value, field: str) -> None:
  ok = (
    isinstance(value, (tuple, list))
    and len(value) > 0
    and all(_int(b) and b > 0 for b in value)
    and list(value) == sorted(set(value))
  )
  common.check(ok, field, f"got {value!r}; need increasing positive lengths, e.g. (128, 256)")


def validate_data(config: ml_collections.ConfigDict) -> None:
  """Checks the `input` and `preprocess` sections (whichever are present).

  Raises:
    common.ConfigError: naming the first bad field and what it accepts.
  """
  check = common.check
  if "input" in config:
    c = config.input
    for f in ("batch_size", "eval_batch_size"):
      check(_int(c[f]) and c[f] >= 1, f"input.{f}", f"got {c[f]!r}; need an int >= 1")
    common.check_choice(c.patch_mode, "input.patch_mode", {"pair", "duplicate"})
    pairing = c.patch_mode == "pair"
    check(
      _int(c.eval_num_keyframes)
      and c.eval_num_keyframes >= 1
      and not (pairing and c.eval_num_keyframes % 2),
      "input.eval_num_keyframes",
      f"got {c.eval_num_keyframes!r}; need an even int >= 2 (frames pair into patches; "
      "input.patch_mode='duplicate' takes any K >= 1)",
    )
    check(
      isinstance(c.disorder_ratio, numbers.Real) and 0 <= c.disorder_ratio <= 1,
      "input.disorder_ratio",
      f"got {c.disorder_ratio!r}; need a number in [0, 1]",
    )
    check(
      _int(c.num_nonkey_pairs) and c.num_nonkey_pairs >= -1,
      "input.num_nonkey_pairs",
      f"got {c.num_nonkey_pairs!r}; need -1 (auto) or an int >= 0",
    )
    for f in ("patch_size", "spatial_merge_size"):
      check(_int(c[f]) and c[f] >= 1, f"input.{f}", f"got {c[f]!r}; need an int >= 1")
    _buckets(c.prompt_buckets, "input.prompt_buckets")
    common.check_choice(
      c.prompt_template, "input.prompt_template", set(prompts.PROMPT_TEMPLATES.names())
    )
    common.check_choice(c.eval_scoring, "input.eval_scoring", set(scoring.SCORINGS.names()))
    _buckets(c.target_buckets, "input.target_buckets")
    check(
      c.num_epochs is None or (_int(c.num_epochs) and c.num_epochs >= 1),
      "input.num_epochs",
      f"got {c.num_epochs!r}; need None (forever) or an int >= 1",
    )
    for f in ("prefetch_workers", "read_threads"):
      check(_int(c[f]) and c[f] >= 0, f"input.{f}", f"got {c[f]!r}; need an int >= 0")
    check(
      _int(c.prefetch_buffer) and c.prefetch_buffer >= 1,
      "input.prefetch_buffer",
      f"got {c.prefetch_buffer!r}; need an int >= 1",
    )
    if "tad" in config:
      check(
        _int(config.tad.k) and config.tad.k >= 1 and not (pairing and config.tad.k % 2),
        "tad.k",
        f"got {config.tad.k!r}; training needs an even K >= 2 (consecutive keyframes "
        "pair into Qwen2.5-VL temporal patches; input.patch_mode='duplicate' takes "
        "any K >= 1)",
      )
  if "preprocess" in config:
    p = config.preprocess
    common.check_choice(p.format, "preprocess.format", set(FORMATS))
    check(
      p.fps is None or (isinstance(p.fps, numbers.Real) and p.fps > 0),
      "preprocess.fps",
      f"got {p.fps!r}; need a positive rate",
    )
    for f in ("max_frames", "size", "videos_per_shard"):
      check(_int(p[f]) and p[f] >= 1, f"preprocess.{f}", f"got {p[f]!r}; need an int >= 1")
    check(
      _int(p.workers) and p.workers >= 0,
      "preprocess.workers",
      f"got {p.workers!r}; need an int >= 0",
    )
    common.check_choice(p.resize, "preprocess.resize", {"pad", "crop"})
    check(
      p.compression == "uncompressed" or str(p.compression).startswith("zstd:"),
      "preprocess.compression",
      f"got {p.compression!r}; 'uncompressed' or 'zstd:LEVEL'",
    )
    if "input" in config:
      unit = config.input.patch_size * config.input.spatial_merge_size
      check(
        p.size % unit == 0,
        "preprocess.size",
        f"got {p.size}; need a multiple of input.patch_size * spatial_merge_size = {unit}",
      )
