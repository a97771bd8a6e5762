r"""Trains a video-language model with KF-GRPO (or SFT warm-up) from a config file.

  python -m launch.train --config=configs/kf_grpo.py:smoke --workdir=/tmp/run

Fields are overridden on the command line, e.g. `--config.rl.num_generations=4`; a typo
in a field name fails at once, before anything is compiled. Rerunning with the same
--workdir resumes from its latest checkpoint. Multi-host: start one process per host with
--coordinator_address, --num_processes and --process_id (or let
`jax.distributed.initialize()` read them from a TPU/SLURM environment with
--distributed).
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/kf_grpo.py:smoke.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and plots; reused to resume.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() with arguments from the environment (TPU pods, "
    "SLURM). Implied by --num_processes > 1.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", 1, "Number of processes (one per host) in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index in [0, num_processes).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "Fake this many CPU devices (testing sharding on one machine); 0 = off.")

flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file at INFO.
  import os  # pylint: disable=g-import-not-at-top
  if _CPU_DEVICES.value:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_CPU_DEVICES.value}")
  import jax  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)
  from chronoforge_jax import train_lib  # pylint: disable=g-import-not-at-top

  if _NUM_PROCESSES.value > 1:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value,
                               process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("process %d/%d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
