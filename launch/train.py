r"""Trains a video-language model with KF-GRPO (or SFT warm-up) from a config file.

  python -m launch.train --config=configs/kf_grpo.py:smoke --workdir=/tmp/run

Fields are overridden on the command line, e.g. `--config.rl.num_generations=4`; a typo
in a field name fails at once, before anything is compiled. Rerunning with the same
--workdir resumes from its latest checkpoint. Multi-host: start one process per host with
--coordinator_address, --num_processes and --process_id (or let
`jax.distributed.initialize()` read them from a TPU/SLURM environment with
--distributed).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from configs import common
from configs import kf_grpo as kf_grpo_config
from launch import multihost, tools

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Training config file, e.g. configs/kf_grpo.py:smoke.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, metrics and plots; reused to resume."
)
flags.mark_flags_as_required(["config", "workdir"])
flags.adopt_module_key_flags(multihost)  # --help lists the multi-process flags too.


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file at INFO.
  config = tools.absolute_config_paths(_CONFIG.value)
  try:
    kf_grpo_config.validate(config)  # Before anything is compiled.
  except common.ConfigError as e:
    raise app.UsageError(str(e)) from None
  jax = multihost.initialize()
  from chronoforge_jax.train import loop

  logging.info(
    "process %d/%d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  loop.train_and_evaluate(config, tools.absolute(_WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
