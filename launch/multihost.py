"""Command-line flags and start-up shared by the multi-process launchers (train, eval).

Importing this module defines --distributed, --coordinator_address, --num_processes,
--process_id and --cpu_devices; `initialize()` acts on them. Call it before anything
touches a JAX backend.
"""

from __future__ import annotations

import os

from absl import flags

_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Call jax.distributed.initialize() with arguments from the environment (TPU pods, "
  "SLURM). Implied by --num_processes > 1.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0, for multi-process runs."
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", 1, "Number of processes (one per host) in a multi-process run."
)
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index in [0, num_processes).")
_CPU_DEVICES = flags.DEFINE_integer(
  "cpu_devices", 0, "Fake this many CPU devices (testing sharding on one machine); 0 = off."
)


def initialize():
  """Fakes CPU devices if asked, joins the multi-process run if any; returns `jax`."""
  if _CPU_DEVICES.value:
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "")
      + f" --xla_force_host_platform_device_count={_CPU_DEVICES.value}"
    )
  import jax  # After XLA_FLAGS is set.

  if _NUM_PROCESSES.value > 1:
    jax.distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
    )
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  return jax
