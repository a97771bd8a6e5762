"""pytest setup: 8 fake CPU devices (set before JAX is imported) for sharding tests."""

import atexit
import os
import shutil
import sys
import tempfile

# The repository root: tests import `configs` and the torch oracle `tests.hf_reference`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One persistent compilation cache for the whole run: the tests build the same small
# programs many times over (every end-to-end run compiles the smoke config's SFT step,
# views, sampler, log-prob and GRPO programs), in this process, in pytest-xdist's workers
# (which inherit this environment from the controller) and in the launchers they spawn.
# A cache hit still traces and lowers; only XLA's compile is skipped. The run that made
# the folder removes it at exit; CHRONOFORGE_TEST_JAX_CACHE=0 turns the cache off.
if (
  os.environ.get("CHRONOFORGE_TEST_JAX_CACHE", "1") != "0"
  and "JAX_COMPILATION_CACHE_DIR" not in os.environ
):
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="chronoforge-jax-cache-")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)

import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_default_matmul_precision", "highest")
