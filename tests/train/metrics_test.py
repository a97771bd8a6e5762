"""Tests for chronoforge_jax.train.metrics: NaN/Inf checks, the bad-step guard, the writers."""

import glob
import io
import json
import math
import os
import struct

import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
import pytest  # noqa: E402
from tensorboardX.proto import event_pb2  # noqa: E402
from tensorboardX.record_writer import masked_crc32c  # noqa: E402

from chronoforge_jax.train import metrics  # noqa: E402


def _read_events(logdir):
  """Parses TFRecord-framed Event protos from every event file under `logdir`."""
  events = []
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      header = data[pos : pos + 8]
      (length,) = struct.unpack("<Q", header)
      assert struct.unpack("<I", data[pos + 8 : pos + 12])[0] == masked_crc32c(header)
      payload = data[pos + 12 : pos + 12 + length]
      assert struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])[0] == (
        masked_crc32c(payload)
      )
      events.append(event_pb2.Event.FromString(payload))
      pos += 16 + length
  return events


def test_find_nonfinite_names_every_bad_metric():
  values = {
    "loss": jnp.float32(1.5),
    "grad_norm": float("nan"),
    "kl": np.array([0.1, np.inf, 0.2]),
    "reward": {"accuracy": jnp.array([0.5, jnp.nan]), "format": 1.0},
    "count": 3,  # Integers cannot be non-finite.
    "ok": True,
    "note": "text",
    "neg": -np.inf,
  }
  reference = []
  for name, value in (
    ("loss", [1.5]),
    ("grad_norm", [math.nan]),
    ("kl", [0.1, math.inf, 0.2]),
    ("reward/accuracy", [0.5, math.nan]),
    ("reward/format", [1.0]),
    ("neg", [-math.inf]),
  ):
    if not all(math.isfinite(v) for v in value):
      reference.append(name)
  assert metrics.find_nonfinite(values) == reference
  assert metrics.find_nonfinite({"a": 0.0, "b": jnp.ones(3)}) == []


def test_bad_step_guard_rejects_names_and_halts():
  messages = []
  guard = metrics.BadStepGuard(3, watch=("loss", "grad/"), log_fn=messages.append)
  nan = float("nan")
  assert guard.check(1, {"loss": 1.0, "grad/norm": 2.0})
  assert guard.check(2, {"loss": 1.0, "reward/acc": nan})  # Not watched.
  assert not guard.check(3, {"loss": nan, "grad/norm": 2.0})
  assert "step 3" in messages[-1] and "loss" in messages[-1]
  assert not guard.check(4, {"loss": 1.0, "grad/norm": float("inf")})
  assert "step 4" in messages[-1] and "grad/norm" in messages[-1]
  assert (guard.consecutive, guard.rejected, guard.last_good_step) == (2, 2, 2)
  assert guard.check(5, {"loss": 0.5, "grad/norm": 1.0})  # A good step resets the run.
  assert guard.consecutive == 0
  assert not guard.check(6, {"loss": nan})
  assert not guard.check(7, {"loss": nan})
  with pytest.raises(
    metrics.NonFiniteError,
    match=r"step 8: non-finite loss.*last "
    r"good step 5",
  ):
    guard.check(8, {"loss": nan})
  assert len(messages) == 4
  with pytest.raises(ValueError):
    metrics.BadStepGuard(0)


def test_writer_jsonl_tensorboard_and_resume_truncation(tmp_path):
  workdir = str(tmp_path)
  image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  with metrics.MetricsWriter(workdir, active=True) as writer:
    for step in range(1, 6):
      writer.write_scalars(
        step, {"loss": jnp.float32(1.0 / step), "reward": {"accuracy": np.float64(step / 10)}}
      )
    writer.write_images(5, {"frames": image})
    fig = plt.figure(figsize=(1, 1))
    plt.plot([0, 1], [1, 0])
    writer.write_figure(5, "curve", fig)
    with pytest.raises(ValueError, match="metric 'vec' is not a scalar"):
      writer.write_scalars(6, {"vec": np.ones(3)})
    with pytest.raises(ValueError, match="image 'bad'"):
      writer.write_images(6, {"bad": np.ones((4, 4))})

  records = metrics.read_jsonl(workdir)
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
  for r in records:
    assert r["loss"] == pytest.approx(1.0 / r["step"], rel=1e-6)
    assert r["reward/accuracy"] == pytest.approx(r["step"] / 10)

  events = _read_events(os.path.join(workdir, "tensorboard"))
  scalars = {
    (v.tag, e.step): v.simple_value
    for e in events
    for v in e.summary.value
    if v.WhichOneof("value") == "simple_value"
  }
  assert len(scalars) == 10
  for step in range(1, 6):
    assert scalars["loss", step] == pytest.approx(1.0 / step, rel=1e-6)
    assert scalars["reward/accuracy", step] == pytest.approx(step / 10, rel=1e-6)
  images = {
    v.tag: v.image for e in events for v in e.summary.value if v.WhichOneof("value") == "image"
  }
  decoded = np.asarray(Image.open(io.BytesIO(images["frames"].encoded_image_string)))
  np.testing.assert_array_equal(decoded, image)
  assert "curve" in images and images["curve"].height > 0

  # A run killed after step 5 resumes from its step-3 checkpoint: steps 4, 5 again.
  with open(os.path.join(workdir, metrics.JSONL_NAME), "a") as f:
    f.write('{"step": 6, "loss": 0.1')  # A torn line from the kill.
  with metrics.MetricsWriter(workdir, resume_step=3, active=True) as writer:
    for step in (4, 5):
      writer.write_scalars(step, {"loss": 2.0 * step})
  records = metrics.read_jsonl(os.path.join(workdir, metrics.JSONL_NAME))
  assert [(r["step"], r["loss"]) for r in records[3:]] == [(4, 8.0), (5, 10.0)]
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
  purges = [
    e.step for e in _read_events(os.path.join(workdir, "tensorboard")) if e.HasField("session_log")
  ]
  assert purges == [4]  # TensorBoard hides the killed run's events from step 4 on.


def test_inactive_writer_writes_nothing(tmp_path):
  with metrics.MetricsWriter(str(tmp_path / "w"), active=False) as writer:
    writer.write_scalars(1, {"loss": 1.0})
  assert not os.path.exists(tmp_path / "w")


def test_nonfinite_values_roundtrip_through_jsonl(tmp_path):
  with metrics.MetricsWriter(str(tmp_path), tensorboard=False, active=True) as writer:
    writer.write_scalars(1, {"loss": float("nan"), "kl": float("inf")})
  (record,) = metrics.read_jsonl(str(tmp_path))
  assert math.isnan(record["loss"]) and record["kl"] == math.inf
  assert json.loads(open(tmp_path / metrics.JSONL_NAME).read())["step"] == 1


class _FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_progress_line_rates_and_eta():
  clock, lines = _FakeClock(), []
  progress = metrics.ProgressLogger(
    125, every=5, keys=("loss", "reward/accuracy"), print_fn=lines.append, clock=clock, active=True
  )
  for step in range(1, 11):
    clock.now += 30.0 if step == 1 else 2.0  # Step 1 includes the compile.
    progress.update(step, {"loss": 0.25, "reward": {"accuracy": 0.5}, "kl": 1.0}, tokens=100)
  assert len(lines) == 2
  # Step 5: 4 timed steps (2..5), 400 tokens over 8 s; ETA (125 - 5) * 2 s = 4m00s.
  assert lines[0] == (
    "step 5/125 (4.0%) | loss 0.25 | reward/accuracy 0.5 | 50 tok/s | 2 s/step | ETA 4m00s"
  )
  # Step 10: 5 steps, 500 tokens over 10 s; ETA 115 * 2 s = 3m50s.
  assert lines[1].endswith("| 50 tok/s | 2 s/step | ETA 3m50s")
  assert "kl" not in lines[1]
  silent = metrics.ProgressLogger(10, every=1, print_fn=lines.append, active=False)
  assert silent.update(1, {"loss": 1.0}) is not None and len(lines) == 2


def test_format_duration():
  assert [metrics.format_duration(s) for s in (0, 42.4, 185, 3720, float("inf"))] == [
    "0s",
    "42s",
    "3m05s",
    "1h02m",
    "?",
  ]
