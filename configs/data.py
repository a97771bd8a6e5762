"""Data config sections: `input` (the Grain pipeline) and `preprocess` (videos -> shards).

Training configs take `config.input = data.input_config(variant)`; `launch/preprocess.py`
reads `--config=configs/data.py[:variant]` for its defaults (flags override them).
Keyframe count and selector live in the `tad` section (`tad.k`, `tad.selector`), frame
features in `features` (configs/tad.py); this file embeds both so it stands alone. The
library checks the fields (data.pipeline.PipelineSettings, data.records.PreprocessSettings);
the vision patch sizes are the model's (`model` section), not fields of `input`.
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

import ml_collections
from ml_collections import config_dict

from chronoforge_jax.data import pipeline, records
from chronoforge_jax.rl import scoring
from configs import common
from configs import tad as tad_config

VARIANTS = ("default", "demo", "smoke")


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
  c.size = 448  # Square frame side; a multiple of the vision patch * merge (28).
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


def validate_data(config: ml_collections.ConfigDict) -> None:
  """Builds the library settings of the `input` and `preprocess` sections (whichever
  are present): data.pipeline.PipelineSettings for training and for evaluation (with
  the `tad` and `model` sections where present) and data.records.PreprocessSettings.

  Raises:
    common.ConfigError: naming the first bad field and what it accepts.
  """
  if "input" in config:
    common.build(pipeline.PipelineSettings.from_config, config, train=True)
    common.build(pipeline.PipelineSettings.from_config, config, train=False)
    # How evaluation reads answers: a name in the scoring registry.
    common.check_choice(
      config.input.eval_scoring, "input.eval_scoring", set(scoring.SCORINGS.names())
    )
  if "preprocess" in config:
    common.build(records.PreprocessSettings.from_config, config)
