"""Host-side training metrics: TensorBoard + JSONL files, console line, NaN/Inf checks.

- `MetricsWriter` writes every step's scalars to TensorBoard event files (tensorboardX)
  and to `<workdir>/metrics.jsonl` (one flushed JSON object per step, so evaluation
  reports and plots read curves without TensorBoard: `read_jsonl`). Images and
  matplotlib figures go to TensorBoard. On resume it drops records past the restored
  step, so a killed-and-resumed run ends with the same curve as an uninterrupted one.
- `ProgressLogger` prints `step | metrics | tokens/s | s/step | ETA` every N steps.
- `find_nonfinite` and `BadStepGuard` check fetched metrics for NaN/Inf: a bad step is
  rejected with a message naming the metric and step; N bad steps in a row halt the run.

Only process 0 writes and prints (multi-host runs hold the same metrics everywhere).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import contextlib
import json
import math
import os
import time
from typing import Any

from absl import logging
import jax
import numpy as np

JSONL_NAME = "metrics.jsonl"


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Flattens nested dicts to "a/b" keys."""
  flat = {}
  for key, value in metrics.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(_flatten(value, name + "/"))
    else:
      flat[name] = value
  return flat


def _as_array(value: Any) -> np.ndarray | None:
  """A float-checkable NumPy view of a metric value, or None if it is not numeric."""
  if isinstance(value, (str, bytes)) or value is None:
    return None
  try:
    arr = np.asarray(value)
  except (TypeError, ValueError):
    return None
  return arr if np.issubdtype(arr.dtype, np.number) or arr.dtype == bool else None


def to_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Fetches metrics (jax/NumPy/Python, nested dicts allowed) as {"a/b": float}.

  Raises:
    ValueError: naming a metric that is not a scalar number.
  """
  out = {}
  for name, value in _flatten(metrics).items():
    arr = _as_array(value)
    if arr is None or arr.size != 1:
      raise ValueError(
        f"metric {name!r} is not a scalar number (got {type(value).__name__} "
        f"{getattr(arr, 'shape', '')}); reduce it (e.g. .mean()) before logging"
      )
    out[name] = float(arr.reshape(()))
  return out


def find_nonfinite(metrics: Mapping[str, Any]) -> list[str]:
  """Names of metrics holding a NaN or Inf (any element), nested keys joined by "/".

  Args:
    metrics: name -> scalar or array (jax, NumPy or Python); non-numeric values are
      skipped.

  Returns:
    The offending names, in the metrics' order.
  """
  bad = []
  for name, value in _flatten(metrics).items():
    arr = _as_array(value)
    if arr is not None and np.issubdtype(arr.dtype, np.inexact):
      if not np.all(np.isfinite(arr)):
        bad.append(name)
  return bad


class NonFiniteError(RuntimeError):
  """Raised by `BadStepGuard` after too many consecutive non-finite steps."""


class BadStepGuard:
  """Accepts or rejects steps by their metrics; halts after N bad steps in a row.

  The train step should not apply a non-finite update (e.g. `optax.apply_if_finite`
  or a `jnp.where` on the update inside the jitted step); this host-side guard names
  what went wrong, counts, and stops a run that will not recover, before it overwrites
  the last good checkpoint (do not save after a rejected step).
  """

  def __init__(
    self,
    max_consecutive: int = 5,
    *,
    watch: Sequence[str] | None = None,
    log_fn: Callable[[str], None] = logging.warning,
  ):
    """Creates a guard.

    Args:
      max_consecutive: raise after this many rejected steps in a row (>= 1).
      watch: metric names (or "a/" prefixes) to check; None checks every metric.
      log_fn: where rejection messages go.
    """
    if max_consecutive < 1:
      raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
    self.max_consecutive = max_consecutive
    self.watch = tuple(watch) if watch is not None else None
    self._log = log_fn
    self.consecutive = 0
    self.rejected = 0
    self.last_good_step: int | None = None

  def _watched(self, name: str) -> bool:
    return self.watch is None or any(
      name == w or (w.endswith("/") and name.startswith(w)) for w in self.watch
    )

  def check(self, step: int, metrics: Mapping[str, Any]) -> bool:
    """Returns True to accept the step, False to reject it (with a log message).

    Raises:
      NonFiniteError: when this is the `max_consecutive`-th rejected step in a row.
    """
    bad = [name for name in find_nonfinite(metrics) if self._watched(name)]
    if not bad:
      self.consecutive = 0
      self.last_good_step = step
      return True
    self.consecutive += 1
    self.rejected += 1
    message = (
      f"step {step}: non-finite {', '.join(bad)}; step rejected "
      f"({self.consecutive}/{self.max_consecutive} in a row)"
    )
    if self.consecutive >= self.max_consecutive:
      raise NonFiniteError(
        f"{message}. Halting: last good step {self.last_good_step}; its checkpoint "
        "is intact. Lower the learning rate or check the data, then restart."
      )
    self._log(message)
    return False


def _is_primary(active: bool | None) -> bool:
  return jax.process_index() == 0 if active is None else active


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """Reads a metrics JSONL file (or a workdir holding one); skips a torn last line."""
  if os.path.isdir(path):
    path = os.path.join(path, JSONL_NAME)
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        pass  # A line cut short by a kill; the step is re-logged after resume.
  return records


class MetricsWriter:
  """Writes step metrics to TensorBoard event files and `<workdir>/metrics.jsonl`."""

  def __init__(
    self,
    workdir: str,
    *,
    resume_step: int | None = None,
    tensorboard: bool = True,
    active: bool | None = None,
  ):
    """Opens the writers.

    Args:
      workdir: the run directory; TensorBoard files go to `<workdir>/tensorboard`.
      resume_step: the restored step when resuming: records with a larger step (logged
        after the checkpoint by the killed run) are dropped from the JSONL and hidden
        in TensorBoard (`purge_step`).
      tensorboard: also write TensorBoard events.
      active: whether this process writes; default: process 0 only.
    """
    self.active = _is_primary(active)
    self.jsonl_path = os.path.join(workdir, JSONL_NAME)
    self._tb = None
    self._jsonl = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None and os.path.exists(self.jsonl_path):
      kept = [r for r in read_jsonl(self.jsonl_path) if r.get("step", 0) <= resume_step]
      tmp = self.jsonl_path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
      os.replace(tmp, self.jsonl_path)  # Atomic: a kill here keeps the old file.
    self._jsonl = open(self.jsonl_path, "a")
    if tensorboard:
      import tensorboardX

      self._tb = tensorboardX.SummaryWriter(
        os.path.join(workdir, "tensorboard"),
        flush_secs=30,
        purge_step=None if resume_step is None else resume_step + 1,
      )

  def write_scalars(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Logs one step's scalars (nested dicts become "a/b" names) to both sinks."""
    if not self.active:
      return
    scalars = to_scalars(metrics)
    # NaN/Inf are written as JSON's NaN/Infinity tokens (Python's json reads them).
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for name, value in scalars.items():
        self._tb.add_scalar(name, value, global_step=int(step))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Logs HWC images (uint8, or float in [0, 1]) to TensorBoard."""
    if not self.active or self._tb is None:
      return
    for name, image in images.items():
      image = np.asarray(image)
      if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(
          f"image {name!r} has shape {image.shape}; expected HWC with 1, 3 or 4 channels"
        )
      self._tb.add_image(name, image, global_step=int(step), dataformats="HWC")

  def write_figure(self, step: int, name: str, figure: Any) -> None:
    """Logs a matplotlib figure (closes it) to TensorBoard."""
    if self.active and self._tb is not None:
      self._tb.add_figure(name, figure, global_step=int(step), close=True)

  def flush(self) -> None:
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def format_duration(seconds: float) -> str:
  """1h02m, 3m05s, 42s."""
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _format_value(value: float) -> str:
  if value == 0 or not math.isfinite(value):
    return str(value)
  return f"{value:.3e}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.4g}"


class ProgressLogger:
  """Prints `step s/T | name value ... | tok/s | s/step | ETA` every `every` steps.

  Rates are measured over the steps since the previous line, starting at the first
  `update` (so step 1's compile time does not inflate the ETA).
  """

  def __init__(
    self,
    total_steps: int,
    *,
    every: int = 10,
    keys: Sequence[str] | None = None,
    print_fn: Callable[[str], None] = print,
    clock: Callable[[], float] = time.perf_counter,
    active: bool | None = None,
  ):
    """Creates the logger.

    Args:
      total_steps: the last step of the run (for the percentage and ETA).
      every: print every this many steps (and at `total_steps`).
      keys: metric names to show, in order; None shows every scalar metric.
      print_fn: where lines go.
      clock: seconds, monotonic (injectable for tests).
      active: whether this process prints; default: process 0 only.
    """
    self.total_steps = total_steps
    self.every = max(1, every)
    self.keys = tuple(keys) if keys is not None else None
    self._print = print_fn
    self._clock = clock
    self.active = _is_primary(active)
    self._mark_time: float | None = None
    self._mark_step = 0
    self._tokens = 0

  def update(self, step: int, metrics: Mapping[str, Any], *, tokens: int = 0) -> str | None:
    """Records one finished step; returns (and prints) the line when one is due.

    Args:
      step: the step just finished.
      metrics: its metrics (only `keys` are fetched and shown).
      tokens: tokens processed by this step (all processes), for tokens/s.
    """
    now = self._clock()
    if self._mark_time is None:  # First call: start timing after the compiled step.
      self._mark_time, self._mark_step, self._tokens = now, step, 0
      if step % self.every and step != self.total_steps:
        return None
    else:
      self._tokens += tokens
    if step % self.every and step != self.total_steps:
      return None
    flat = _flatten(metrics)
    names = self.keys if self.keys is not None else list(flat)
    parts = [f"step {step}/{self.total_steps} ({100.0 * step / max(self.total_steps, 1):.1f}%)"]
    for name in names:
      if name in flat:
        arr = _as_array(flat[name])
        if arr is not None and arr.size == 1:
          parts.append(f"{name} {_format_value(float(arr.reshape(())))}")
    steps_done = step - self._mark_step
    elapsed = now - self._mark_time
    if steps_done > 0 and elapsed > 0:
      per_step = elapsed / steps_done
      parts += [
        f"{self._tokens / elapsed:,.0f} tok/s",
        f"{per_step:.3g} s/step",
        f"ETA {format_duration(per_step * (self.total_steps - step))}",
      ]
    self._mark_time, self._mark_step, self._tokens = now, step, 0
    line = " | ".join(parts)
    if self.active:
      self._print(line)
    return line


class InputWaitMeter:
  """How much of the loop's time goes to waiting for the input pipeline.

  A step is timed from the end of the previous one (so host work, rollouts and the
  device step are all in it); the wait is the time blocked in `next(data_iter)`. Steps
  that compiled a program are left out of the totals (compile time is not step time).
  """

  def __init__(self):
    self._last = time.perf_counter()
    self._wait = 0.0
    self._compiled = 0
    self.total_wait = self.total_time = 0.0
    self.steps = 0

  @contextlib.contextmanager
  def waiting(self):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self._wait = time.perf_counter() - t0

  def step_done(self, *, compiled: int) -> dict[str, float]:
    """Closes a step; `compiled` counts the programs compiled so far.

    Returns:
      metrics: time/step_s, time/data_wait_s and the running time/data_wait_frac.
    """
    now = time.perf_counter()
    step_s, self._last = now - self._last, now
    if compiled == self._compiled:
      self.total_wait += self._wait
      self.total_time += step_s
      self.steps += 1
    self._compiled = compiled
    return {
      "time/step_s": step_s,
      "time/data_wait_s": self._wait,
      "time/data_wait_frac": self.total_wait / max(self.total_time, 1e-9),
    }

  def summary(self) -> str:
    return (
      f"input wait {self.total_wait:.1f} s of {self.total_time:.1f} s "
      f"({self.total_wait / max(self.total_time, 1e-9):.1%}) over {self.steps} "
      "steps that compiled nothing"
    )


class PhaseTimer:
  """Wall time per phase of a step: each timed call is waited for before the clock stops.

  Waiting costs little here: every phase's output feeds the next (rollout tokens are
  decoded on the host, rewards feed the update), so the device has nothing to overlap.
  """

  def __init__(self):
    self.seconds: dict[str, float] = {}

  def __call__(self, name: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
    return out

  def metrics(self) -> dict[str, float]:
    """{"time/<phase>_s": seconds} of the phases timed since the last call."""
    out = {f"time/{name}_s": t for name, t in self.seconds.items()}
    self.seconds = {}
    return out
