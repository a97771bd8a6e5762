"""The `ckpt` config section: when to save, how many to keep, where to resume from.

Used by the training configs as `config.ckpt = ckpt.get_config(variant)`; fields are
overridden on the command line, e.g.

  python -m launch.train --config=configs/kf_grpo.py:smoke --workdir /tmp/run \\
      --config.ckpt.save_every=10 --config.ckpt.init_from=/ckpt/qwen2_5_vl_7b

Resume order (chronoforge_jax.train.checkpoint.restore_or_init): the run's own latest
checkpoint in `<workdir>/<subdir>` -> `resume` -> `init_from` -> scratch.

Fields (checked by chronoforge_jax.train.checkpoint.CheckpointSettings):
  subdir: checkpoint directory, relative to the workdir.
  save_every: save every this many steps (plus a final save at the end and on SIGTERM).
  keep: keep the latest this many checkpoints.
  keep_every: also keep every step that is a multiple of this, forever (0: off).
  async_save: write checkpoints in a background thread (the field is not named `async`
    because that is a Python keyword: `config.ckpt.async` would not parse).
  resume: another run's checkpoint directory or step directory: continue it (params,
    optimizer, step, RNG, data position). "" for none.
  init_from: params-only start: a `checkpoint.save_params` directory (e.g. from
    launch/convert_hf.py) or a training checkpoint whose state has `params`. "" for none.
"""

from __future__ import annotations

import ml_collections

from chronoforge_jax.train import checkpoint
from configs import common

VARIANTS = ("default", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the `ckpt` section.

  Args:
    arg: "" / "default" for real runs, "smoke" for seconds-long CPU runs (saves often
      so resume paths are exercised).

  Returns:
    A ConfigDict with the fields listed in the module docstring.
  """
  args = common.parse_arg(arg, variant="default")
  common.check_choice(args.variant, "ckpt variant", VARIANTS)
  config = ml_collections.ConfigDict()
  config.subdir = "checkpoints"
  config.save_every = 1000
  config.keep = 3
  config.keep_every = 0
  config.async_save = True
  config.resume = ""
  config.init_from = ""
  if args.variant == "smoke":
    config.save_every = 5
    config.keep = 2
  validate_ckpt(config)
  config.lock()  # New fields are typos; existing ones stay overridable.
  return config


def validate_ckpt(config: ml_collections.ConfigDict) -> checkpoint.CheckpointSettings:
  """Builds `checkpoint.CheckpointSettings`; raises common.ConfigError naming the field."""
  return common.build(checkpoint.CheckpointSettings.from_config, config)
