"""The one timer the benchmark scripts share."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
  """Median wall time of `fn()` over `repeats` runs, after one warm-up run (compiles).

  JAX results are waited for (`jax.block_until_ready`), so asynchronous dispatch does
  not hide the work; other results (PyTorch tensors, NumPy) are returned when done.
  """
  import jax

  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)
