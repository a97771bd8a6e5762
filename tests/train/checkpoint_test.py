"""Tests for chronoforge_jax.train.checkpoint and configs/ckpt.py (8 fake CPU devices)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import grain
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from chronoforge_jax.train import checkpoint
from configs import ckpt as ckpt_config
from configs import common

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def mesh():
  return jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))


def _state(mesh, seed=0):
  """A train-state-like tree: sharded, replicated, int, bf16 leaves; odd sizes."""
  rng = np.random.default_rng(seed)
  put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
  w = rng.standard_normal((4, 6)).astype(np.float32)
  return {
    "params": {
      "w": put(w, P("fsdp", "tensor")),
      "b": put(rng.standard_normal(5).astype(np.float32), P()),
      "emb": put(rng.standard_normal((8, 3)).astype(jnp.bfloat16), P("data")),
    },
    "opt_state": {"mu": put(w * 0.5, P("fsdp", "tensor")), "count": put(np.int32(seed + 7), P())},
  }


def _abstract(state, shardings):
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
  )


def _assert_same_values(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sharded_roundtrip_gives_values_and_requested_shardings(mesh, tmp_path):
  state = _state(mesh)
  key = jax.random.fold_in(jax.random.key(11), 3)
  with checkpoint.Checkpointer(str(tmp_path / "ckpt"), save_every=1, keep=2) as ckpt:
    assert ckpt.save(12, state, rng=key, extra={"tokens": 1234})
    ckpt.wait()
    # Restore onto DIFFERENT shardings than saved: the requested ones must win.
    requested = {
      "params": {
        "w": NamedSharding(mesh, P(("data", "fsdp"), None)),
        "b": NamedSharding(mesh, P()),
        "emb": NamedSharding(mesh, P(("fsdp", "tensor"))),
      },
      "opt_state": {"mu": NamedSharding(mesh, P("data")), "count": NamedSharding(mesh, P())},
    }
    restored = ckpt.restore(_abstract(state, requested))
  assert (restored.source, restored.step) == ("own", 12)
  assert restored.extra == {"tokens": 1234}
  _assert_same_values(restored.state, state)
  for x, want, orig in zip(
    jax.tree.leaves(restored.state), jax.tree.leaves(requested), jax.tree.leaves(state)
  ):
    assert x.sharding == want and x.dtype == orig.dtype
  np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(key))
  assert jax.random.key_impl(restored.rng) == jax.random.key_impl(key)


def test_restore_without_shardings_names_the_leaf(mesh, tmp_path):
  state = _state(mesh)
  with checkpoint.Checkpointer(str(tmp_path), save_every=1, keep=1) as ckpt:
    ckpt.save(1, state)
    ckpt.wait()
    abstract = checkpoint.abstract_like(state)
    b = state["params"]["b"]
    abstract["params"]["b"] = jax.ShapeDtypeStruct(b.shape, b.dtype)  # No sharding.
    with pytest.raises(ValueError, match=r"\['params'\]\['b'\].*no sharding"):
      ckpt.restore(abstract)


def test_async_save_survives_deleting_the_saved_buffers(mesh, tmp_path):
  # The trainer donates the state to the next step right after `save` returns.
  state, reference = _state(mesh, seed=3), jax.device_get(_state(mesh, seed=3))
  abstract = checkpoint.abstract_like(state)
  with checkpoint.Checkpointer(str(tmp_path), save_every=1, keep=1) as ckpt:
    ckpt.save(1, state)
    for leaf in jax.tree.leaves(state):
      leaf.delete()
    ckpt.wait()
    _assert_same_values(ckpt.restore(abstract).state, reference)


def test_save_every_and_keep_last_k(mesh, tmp_path):
  state = _state(mesh)
  ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=2, keep=2, keep_every=4)
  saved = [ckpt.maybe_save(step, state) for step in range(1, 10)]
  ckpt.wait()
  assert saved == [step % 2 == 0 for step in range(1, 10)]
  # Latest two (6, 8) plus the keep_every=4 multiples (4, 8).
  assert ckpt.all_steps() == [4, 6, 8]
  assert ckpt.save(9, state)  # A forced save off the grid (preemption, end of run).
  assert not ckpt.save(9, state)  # Already on disk: skipped, not overwritten.
  ckpt.close()
  assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [4, 8, 9]


def test_grain_iterator_restored_mid_epoch_continues_identically(mesh, tmp_path):
  dataset = grain.MapDataset.range(100).shuffle(seed=5).batch(7).to_iter_dataset()
  it = iter(dataset)
  head = [next(it) for _ in range(5)]
  state = _state(mesh)
  with checkpoint.Checkpointer(str(tmp_path), save_every=1, keep=1) as ckpt:
    ckpt.save(5, state, data_iter=it)
    ckpt.wait()
    tail = list(it)  # The rest of the epoch, as an uninterrupted run sees it.
    fresh = iter(dataset)
    restored = ckpt.restore(checkpoint.abstract_like(state), data_iter=fresh)
  assert restored.data_restored
  resumed_tail = list(fresh)
  assert len(resumed_tail) == len(tail) == 10  # ceil(100 / 7) - 5 batches.
  for a, b in zip(resumed_tail, tail):
    np.testing.assert_array_equal(a, b)
  # Independent check that the split really was mid-epoch: every element exactly once.
  assert sorted(np.concatenate(head + resumed_tail).tolist()) == list(range(100))


def test_resume_order_picks_each_source_in_turn(mesh, tmp_path):
  own_dir, other_dir, hf_dir = (str(tmp_path / n) for n in ("own", "other", "hf"))
  state_a, state_b = _state(mesh, seed=1), _state(mesh, seed=2)
  abstract = checkpoint.abstract_like(state_a)
  # Another run with steps 3 and 6; a params-only export (a "converted HF model").
  with checkpoint.Checkpointer(other_dir, save_every=3, keep=5) as other:
    other.save(3, state_a, rng=jax.random.key(3))
    other.save(6, state_b, rng=jax.random.key(6))
  checkpoint.save_params(hf_dir, state_b["params"])
  with pytest.raises(FileExistsError):
    checkpoint.save_params(hf_dir, state_b["params"])

  ckpt = checkpoint.Checkpointer(own_dir, save_every=1, keep=2)
  order = lambda **kw: checkpoint.restore_or_init(ckpt, abstract, **kw)
  assert order().source == "scratch"

  got = order(init_from=hf_dir)
  assert (got.source, got.step, got.state) == ("init_from", 0, None)
  _assert_same_values(got.params, state_b["params"])
  assert got.params["w"].sharding == state_b["params"]["w"].sharding
  got = order(init_from=other_dir)  # Params taken out of a training checkpoint.
  assert got.source == "init_from"
  _assert_same_values(got.params, state_b["params"])

  got = order(resume=other_dir, init_from=hf_dir)  # A run dir: its latest step.
  assert (got.source, got.step) == ("resume", 6)
  _assert_same_values(got.state, state_b)
  np.testing.assert_array_equal(
    jax.random.key_data(got.rng), jax.random.key_data(jax.random.key(6))
  )
  got = order(resume=os.path.join(other_dir, "3"))  # One step directory.
  assert (got.source, got.step) == ("resume", 3)
  _assert_same_values(got.state, state_a)

  with pytest.raises(FileNotFoundError, match="config.ckpt.resume"):
    order(resume=str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="config.ckpt.init_from"):
    order(init_from=str(tmp_path / "missing"))

  ckpt.save(4, state_a)
  ckpt.wait()
  got = order(resume=other_dir, init_from=hf_dir)  # Own checkpoint wins over both.
  assert (got.source, got.step, got.path) == ("own", 4, os.path.join(own_dir, "4"))
  _assert_same_values(got.state, state_a)
  ckpt.close()


def test_init_from_wrong_tree_names_path_and_fix(mesh, tmp_path):
  state = _state(mesh)
  checkpoint.save_params(str(tmp_path / "p"), state["params"])
  params = state["params"]
  wrong = checkpoint.abstract_like({"w": params["w"], "z": params["b"]})
  with pytest.raises(ValueError, match=r"(?s)cannot load params from .*/p: .*convert_hf"):
    checkpoint.load_params(str(tmp_path / "p"), wrong)


def _model_state(mesh, *, scan_layers):
  """The tiny VLM's train state with random sharded params and the trainer's optimizer
  at its most nested (frozen vision tower: masked moments; gradient accumulation)."""
  from flax import nnx

  from chronoforge_jax import sharding
  from chronoforge_jax.models import get_preset, vlm
  from chronoforge_jax.train import state as state_lib
  from configs import kf_grpo

  abstract = nnx.state(
    nnx.eval_shape(
      lambda: vlm.VideoLanguageModel(get_preset("tiny"), rngs=nnx.Rngs(0), scan_layers=scan_layers)
    ),
    nnx.Param,
  )
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda a, s: jax.device_put(rng.standard_normal(a.shape).astype(a.dtype), s),
    abstract,
    sharding.state_shardings(abstract, mesh),
  )
  config = kf_grpo.get_config("smoke")
  config.optax.freeze_vision, config.optax.grad_accum = True, 2
  tx = state_lib.make_optimizer(config, params)
  opt_state = jax.jit(lambda p: tx.update(p, tx.init(p), p)[1])(params)
  return {"params": params, "opt_state": opt_state, "step": jnp.int32(5)}


@pytest.mark.parametrize("saved_scanned", [False, True], ids=["per_layer", "stacked"])
def test_checkpoints_load_across_layer_layouts(mesh, tmp_path, saved_scanned):
  """A per-layer checkpoint (unscanned model, or written before scanned layers) loads
  into a scanned model's stacked params and optimizer moments, and the reverse."""
  from chronoforge_jax.models import stack

  scanned = _model_state(mesh, scan_layers=True)
  per_layer = stack.relayout(scanned, scan=False)
  saved, wanted = (scanned, per_layer) if saved_scanned else (per_layer, scanned)
  abstract = checkpoint.abstract_like(wanted)
  assert checkpoint._per_layer(abstract) == saved_scanned

  with checkpoint.Checkpointer(str(tmp_path / "run"), save_every=1, keep=1) as ckpt:
    ckpt.save(5, saved)
  sources = ["run"]
  if not saved_scanned:  # An old converted HF model (`save_params`) for init_from.
    checkpoint.save_params(str(tmp_path / "params"), saved["params"])
    sources.append("params")
  for source in sources:
    params = checkpoint.load_params(str(tmp_path / source), abstract["params"])
    _assert_same_values(params, wanted["params"])
    assert jax.tree.structure(params) == jax.tree.structure(wanted["params"])
  with checkpoint.Checkpointer(str(tmp_path / "run"), save_every=1, keep=1) as ckpt:
    restored = ckpt.restore(abstract)
  _assert_same_values(restored.state, wanted)
  assert jax.tree.structure(restored.state) == jax.tree.structure(wanted)
  for x, a in zip(jax.tree.leaves(restored.state), jax.tree.leaves(abstract)):
    assert x.sharding == a.sharding
  # Independently of relayout: layer 1 of the saved per-layer q kernel is row 1.
  q_per_layer = per_layer["params"]["text"]["layers"][1]["attn"]["q"]["kernel"]
  q_stacked = (restored.state if not saved_scanned else scanned)["params"]["text"]
  np.testing.assert_array_equal(
    np.asarray(q_stacked["layers"]["attn"]["q"]["kernel"][1]), np.asarray(q_per_layer)
  )


_KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from chronoforge_jax.train import checkpoint
    ckpt = checkpoint.Checkpointer(sys.argv[1], save_every=1, keep=3)
    ckpt.save(1, {"w": jnp.arange(6.0)})
    ckpt.wait()

    async def killed_before_commit(self):  # Every file written, nothing committed.
      os.kill(os.getpid(), signal.SIGKILL)

    atomicity.AtomicRenameTemporaryPath.finalize = killed_before_commit
    ckpt.save(2, {"w": jnp.arange(6.0) * 2})
    ckpt.wait()
    print("not killed")
""")


def test_killed_save_leaves_previous_step_restorable(tmp_path):
  directory = str(tmp_path / "ckpt")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run(
    [sys.executable, "-c", _KILLED_SAVE, directory],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-3000:]
  leftovers = [d for d in os.listdir(directory) if d.startswith("2.")]
  assert leftovers, "the killed save should have left a temporary directory"
  ckpt = checkpoint.Checkpointer(directory, save_every=1, keep=3)
  assert ckpt.latest_step() == 1
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  restored = ckpt.restore({"w": jax.ShapeDtypeStruct((6,), jnp.float32, sharding=sharding)})
  np.testing.assert_array_equal(restored.state["w"], np.arange(6.0))
  # Orbax removes the leftover in a background thread that the next save awaits, so
  # the directory is only guaranteed clean once step 2 has been written again.
  assert ckpt.save(2, {"w": jnp.ones(6)})
  ckpt.wait()
  assert not [d for d in os.listdir(directory) if d.startswith("2.")]
  assert ckpt.latest_step() == 2
  ckpt.close()


def _wait_until(condition, what, timeout=60.0):
  """Waits for `condition()` (e.g. a signal handler having run); fails after `timeout` s.

  Python runs signal handlers asynchronously: between bytecodes of the main thread, once
  the C-level handler (in whichever thread the kernel picked) has flagged the signal. So
  an `os.kill` of this process is not handled by its next line, and under load not
  within any fixed time; poll instead, yielding the CPU. The timeout only bounds a hang.
  """
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
    time.sleep(0.001)


@pytest.fixture
def sigint_handler():
  """Installs Python's default SIGINT handler (KeyboardInterrupt) for the test.

  The disposition the test process inherited is not always it: a shell without job
  control starts background jobs with SIGINT ignored, and Python then keeps SIG_IGN.
  """
  saved = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield signal.default_int_handler
  signal.signal(signal.SIGINT, saved)


def test_sigterm_sets_flag_and_loop_saves_current_step(mesh, tmp_path):
  before = signal.getsignal(signal.SIGTERM)
  state = _state(mesh)
  with checkpoint.Checkpointer(str(tmp_path), save_every=100, keep=2) as ckpt:
    with checkpoint.PreemptionGuard() as guard:
      assert not guard.should_stop()
      for step in range(1, 50):
        if step == 3:  # A real SIGTERM arrives during step 3.
          os.kill(os.getpid(), signal.SIGTERM)
          _wait_until(lambda: guard.received is not None, "the SIGTERM handler")
        if guard.should_stop():
          ckpt.save(step, state)
          break
    assert (step, guard.received) == (3, signal.SIGTERM)
    ckpt.wait()
    assert ckpt.all_steps() == [3]
  assert signal.getsignal(signal.SIGTERM) is before


def test_first_signal_requests_stop_second_calls_previous_handler():
  """The guard's logic, with its installed handler called directly (no async delivery)."""
  calls = []
  previous = lambda signum, frame: calls.append((signum, frame))
  saved = signal.signal(signal.SIGTERM, previous)
  try:
    guard = checkpoint.PreemptionGuard(signals=(signal.SIGTERM,))
    handler = signal.getsignal(signal.SIGTERM)
    assert handler is not previous and not guard.should_stop()
    frame = sys._getframe()
    handler(signal.SIGTERM, frame)  # First: only records the request.
    assert guard.should_stop() and guard.received == signal.SIGTERM
    assert calls == [] and signal.getsignal(signal.SIGTERM) is handler
    handler(signal.SIGTERM, frame)  # Second: restores and calls through, same args.
    assert calls == [(signal.SIGTERM, frame)]
    assert signal.getsignal(signal.SIGTERM) is previous
    guard.close()  # Idempotent: nothing left to restore.
    assert signal.getsignal(signal.SIGTERM) is previous
  finally:
    signal.signal(signal.SIGTERM, saved)


def test_other_signal_or_request_stop_does_not_fall_through():
  calls = []
  previous = lambda signum, frame: calls.append(signum)
  saved = {s: signal.signal(s, previous) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    with checkpoint.PreemptionGuard() as guard:
      handler = signal.getsignal(signal.SIGINT)
      guard.request_stop()  # By hand (a time limit): not a received signal.
      handler(signal.SIGINT, None)
      assert guard.received == signal.SIGINT and calls == []
      signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # A different signal.
      assert guard.received == signal.SIGTERM and calls == []
      assert signal.getsignal(signal.SIGINT) is handler
    for s in (signal.SIGTERM, signal.SIGINT):  # The context manager restored both.
      assert signal.getsignal(s) is previous
  finally:
    for s, old in saved.items():
      signal.signal(s, old)


def test_second_sigint_falls_through_to_previous_handler(sigint_handler):
  guard = checkpoint.PreemptionGuard(signals=(signal.SIGINT,))
  handler = signal.getsignal(signal.SIGINT)
  try:
    handler(signal.SIGINT, None)
    assert guard.should_stop() and signal.getsignal(signal.SIGINT) is handler
    with pytest.raises(KeyboardInterrupt):  # Python's default SIGINT handler.
      handler(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) is sigint_handler
  finally:
    guard.close()


def test_second_real_sigint_raises_keyboard_interrupt(sigint_handler):
  """The same through real signals, waiting for each to be handled (see `_wait_until`)."""
  guard = checkpoint.PreemptionGuard(signals=(signal.SIGINT,))
  try:
    os.kill(os.getpid(), signal.SIGINT)
    _wait_until(guard.should_stop, "the first SIGINT to be handled")
    assert signal.getsignal(signal.SIGINT) is not sigint_handler
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      # The guard restores the previous handler, then calls it: KeyboardInterrupt is
      # raised from inside this wait, whenever the interpreter runs the handler.
      _wait_until(lambda: False, "the second SIGINT to raise KeyboardInterrupt")
    assert signal.getsignal(signal.SIGINT) is sigint_handler
  finally:
    guard.close()


def test_ckpt_config_variants_and_validation(tmp_path):
  default, smoke = ckpt_config.get_config(), ckpt_config.get_config("smoke")
  assert (default.save_every, default.keep, default.async_save) == (1000, 3, True)
  assert (smoke.save_every, smoke.keep) == (5, 2)
  with pytest.raises(common.ConfigError, match="variant"):
    ckpt_config.get_config("smok")
  for field, value, match in (
    ("save_every", 0, "ckpt.save_every"),
    ("keep", -1, "ckpt.keep"),
    ("keep_every", -2, "ckpt.keep_every"),
    ("subdir", "/abs", "ckpt.subdir"),
  ):
    config = ckpt_config.get_config()
    config[field] = value
    with pytest.raises(common.ConfigError, match=match):
      ckpt_config.validate_ckpt(config)
  with pytest.raises(AttributeError):
    ckpt_config.get_config().save_evry = 3  # Locked: typos fail.
  ckpt = checkpoint.Checkpointer.from_config(str(tmp_path), smoke)
  assert ckpt.directory == os.path.join(str(tmp_path), "checkpoints")
  ckpt.close()
