"""The trainer: sharded steps agree with one device, kill/resume is exact, SIGTERM saves.

The end-to-end runs use the `smoke` config (tiny model, synthetic set): 2 SFT steps, then
KF-GRPO steps with rollouts on both views.
"""

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from chronoforge_jax import sharding, testing
from chronoforge_jax.data import pipeline
from chronoforge_jax.rl import rollout as rollout_lib
from chronoforge_jax.train import checkpoint as ckpt_lib
from chronoforge_jax.train import loop
from chronoforge_jax.train import metrics as metrics_lib
from chronoforge_jax.train import steps as steps_lib
from configs import kf_grpo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("train")
  subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.preprocess",
      "--config=configs/data.py:smoke",
      "--format=synthetic",
      f"--video_dir={root}/videos",
      f"--out={root}/train",
      "--split=train",
      "--quiet",
    ],
    check=True,
    cwd=ROOT,
    env=ENV,
    capture_output=True,
  )
  return str(root / "train")


# beta > 0 so the frozen reference (kept in the checkpointed state) is exercised too.
BETA = 0.04


def _config(data_dir, **overrides):
  config = kf_grpo.get_config("smoke")
  config.input.data_dir = data_dir
  config.ckpt.save_every = 1
  config.rl.beta = BETA
  for key, value in overrides.items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  return config


def _train_cmd(data_dir, workdir, *extra, config_file="configs/kf_grpo.py"):
  return [
    sys.executable,
    "-m",
    "launch.train",
    f"--config={config_file}:smoke",
    f"--workdir={workdir}",
    f"--config.input.data_dir={data_dir}",
    "--config.ckpt.save_every=1",
    f"--config.rl.beta={BETA}",
    *extra,
  ]


def _read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _final_params(config, workdir):
  mesh = sharding.mesh_from_config(config.mesh)
  s = loop.setup(config, mesh)
  ckpt = ckpt_lib.Checkpointer.from_config(workdir, config.ckpt)
  with jax.set_mesh(mesh):
    restored = ckpt.restore(s.abstract_state)
  ckpt.close()
  return restored.step, jax.tree.leaves(jax.device_get(restored.state["params"]))


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run_a"))
  config = _config(data_dir)
  loop.train_and_evaluate(config, workdir)
  return config, workdir


@pytest.mark.slow
def test_smoke_run_writes_metrics_of_both_modes(uninterrupted):
  config, workdir = uninterrupted
  records = _read_metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, config.total_steps + 1))
  assert all("sft/nll" in r for r in records[: config.sft_steps])
  for r in records[config.sft_steps :]:
    for key in (
      "reward/accuracy",
      "reward/format",
      "saliency/ordered_acc",
      "saliency/disordered_acc",
      "adv/bonus_shift",
      "clip_frac",
      "entropy",
    ):
      assert key in r and np.isfinite(r[key]), key
  # SFT steps after warmup move the params and lower the loss on repeated data.
  assert records[0]["param_norm"] != records[-1]["param_norm"]
  # The reference is reset to the SFT'd policy when KF-GRPO starts: its first KL is ~0
  # (a reference left at the random init would be nats away).
  assert records[config.sft_steps]["kl"] < 1e-4, records[config.sft_steps]["kl"]


@pytest.mark.slow
def test_sigkill_at_random_step_then_resume_matches_uninterrupted(
  uninterrupted, data_dir, tmp_path
):
  config, workdir_a = uninterrupted
  kill_after = int(np.random.default_rng(int(time.time())).integers(1, config.total_steps))
  workdir = str(tmp_path / "run_b")
  proc = subprocess.Popen(
    _train_cmd(data_dir, workdir),
    cwd=ROOT,
    env=ENV,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 300
  ckpt_dir = os.path.join(workdir, "checkpoints", str(kill_after))
  while not os.path.isdir(ckpt_dir) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.isdir(ckpt_dir), f"no checkpoint of step {kill_after} before the kill"
  # Resumed from another folder with every path relative to it, as a user would type them.
  resumed = subprocess.run(
    _train_cmd(
      os.path.relpath(data_dir, tmp_path),
      "run_b",
      config_file=os.path.join(ROOT, "configs", "kf_grpo.py"),
    ),
    cwd=tmp_path,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "starting at step 0" not in resumed.stdout, f"killed after step {kill_after}"

  step_a, params_a = _final_params(config, workdir_a)
  step_b, params_b = _final_params(config, workdir)
  assert step_a == step_b == config.total_steps
  for a, b in zip(params_a, params_b):
    np.testing.assert_array_equal(a, b, err_msg=f"killed after step {kill_after}")
  metrics_a, metrics_b = _read_metrics(workdir_a), _read_metrics(workdir)
  assert [m["step"] for m in metrics_b] == [m["step"] for m in metrics_a]
  for ma, mb in zip(metrics_a, metrics_b):
    assert ma["loss"] == mb["loss"], (ma["step"], kill_after)


@pytest.mark.slow
def test_sigterm_saves_the_current_step(data_dir, tmp_path):
  workdir = str(tmp_path / "run_c")
  proc = subprocess.Popen(
    _train_cmd(data_dir, workdir, "--config.total_steps=50", "--config.ckpt.save_every=100"),
    cwd=ROOT,
    env=ENV,
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
  )
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics_path) and os.path.getsize(metrics_path) > 0:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-2000:]
  last = _read_metrics(workdir)[-1]["step"]
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps == [last], (steps, last)  # save_every=100: only the preemption save.
  assert "preempted" in out


def test_config_typo_fails_before_anything_is_compiled(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.train",
      "--config=configs/kf_grpo.py:smoke",
      f"--workdir={tmp_path}",
      "--config.rl.num_generationz=3",
    ],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode != 0
  assert "num_generationz" in result.stderr
  assert not os.listdir(tmp_path)  # Nothing was written.


def test_train_help_documents_flags():
  result = subprocess.run(
    [sys.executable, "-m", "launch.train", "--helpshort"],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=120,
  )
  for flag in ("--config", "--workdir", "--num_processes", "--process_id", "--coordinator_address"):
    assert flag in result.stdout, flag


def test_bad_config_value_names_the_field(data_dir):
  config = _config(data_dir)
  config.rl.num_generations = 1
  with pytest.raises(ValueError, match="rl.num_generations"):
    kf_grpo.validate(config)


@pytest.mark.slow
def test_train_steps_on_222_mesh_match_one_device(data_dir):
  """The same SFT and KF-GRPO steps on a (data 2, fsdp 2, tensor 2) mesh and on 1 device.

  Tolerance: 1e-5 relative on the loss and 1e-5 absolute on params; the sharded step
  sums in a different order.
  """
  # beta = 0: right after init the reference equals the params, so the KL gradient is zero
  # up to rounding, and Adam's first step (g / (|g| + eps)) would amplify that rounding
  # noise differently on each mesh. The KL under sharding is covered in tests/rl/.
  config = _config(data_dir, **{"input.batch_size": 4, "rl.beta": 0.0})
  results = []
  for shape in ((1, 1, 1), (2, 2, 2)):
    devices = jax.devices()[: int(np.prod(shape))]
    mesh = sharding.make_mesh(shape, devices=devices)
    s = loop.setup(config, mesh)
    settings = pipeline.settings_from_config(config)
    local, _ = pipeline.split_host(
      next(iter(pipeline.make_dataset(data_dir, s.tokenizer, settings)))
    )
    with jax.set_mesh(mesh):
      batch = sharding.to_global(mesh, local)
      state = s.init_state()
      state, sft_metrics = s.sft_step(state, batch)
      b, g, t = local["prompt_ids"].shape[0], config.rl.num_generations, 6
      rng = np.random.default_rng(0)
      rollout = {
        "completions": rng.integers(0, s.tokenizer.vocab_size, (b * g, t)).astype(np.int32),
        "mask": (rng.random((b * g, t)) < 0.8),
        "accuracy": (rng.random((b, g)) < 0.5).astype(np.float32),
        "format": (rng.random((b, g)) < 0.5).astype(np.float32),
        "disordered_accuracy": (rng.random((b, config.rl.num_disordered)) < 0.3).astype(np.float32),
      }
      put = lambda v, mesh=mesh: jax.device_put(v, sharding.batch_sharding(mesh, v.shape))
      rollout = _typed(rollout, put)
      state, grpo_metrics = s.grpo_step(state, batch, rollout)
      results.append(
        (
          float(sft_metrics["loss"]),
          float(grpo_metrics["loss"]),
          jax.tree.leaves(jax.device_get(state["params"])),
        )
      )
  (sft_1, grpo_1, params_1), (sft_8, grpo_8, params_8) = results
  np.testing.assert_allclose(sft_8, sft_1, rtol=1e-5)
  np.testing.assert_allclose(grpo_8, grpo_1, rtol=1e-5, atol=1e-7)
  assert grpo_1 != 0.0
  for p1, p8 in zip(params_1, params_8):
    np.testing.assert_allclose(p8, p1, atol=1e-5)


@pytest.mark.slow
def test_train_on_disordered_adds_the_disordered_views_loss(data_dir):
  """rl.train_on_disordered: loss = (G L_ordered + G' L_disordered) / (G + G').

  L_disordered is the GRPO loss of the disordered rollouts on the disordered view with
  their own batch-std advantages of accuracy + format (a NumPy transcription here).
  """
  from flax import nnx

  from chronoforge_jax.rl import kf_grpo

  config = _config(data_dir, **{"rl.beta": 0.0, "rl.train_on_disordered": True})
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  s = loop.setup(config, mesh)
  local, _ = pipeline.split_host(
    next(iter(pipeline.make_dataset(data_dir, s.tokenizer, pipeline.settings_from_config(config))))
  )
  b, g, h, t = local["prompt_ids"].shape[0], config.rl.num_generations, config.rl.num_disordered, 5
  rng = np.random.default_rng(3)
  draw = lambda shape, p: (rng.random(shape) < p).astype(np.float32)
  rollout = {
    "completions": rng.integers(0, s.tokenizer.vocab_size, (b * g, t)).astype(np.int32),
    "mask": rng.random((b * g, t)) < 0.8,
    "accuracy": draw((b, g), 0.5),
    "format": draw((b, g), 0.5),
    "disordered_completions": rng.integers(0, s.tokenizer.vocab_size, (b * h, t)).astype(np.int32),
    "disordered_mask": rng.random((b * h, t)) < 0.8,
    "disordered_accuracy": draw((b, h), 0.4),
    "disordered_format": draw((b, h), 0.5),
  }
  with jax.set_mesh(mesh):
    batch = sharding.to_global(mesh, local)
    state = s.init_state()
    params = jax.device_get(state["params"])
    model = nnx.merge(s.graphdef, jax.device_put(params))
    r = rollout["disordered_accuracy"] + rollout["disordered_format"]
    centred = r - r.mean(-1, keepdims=True)
    adv = centred / (np.sqrt((centred**2).mean()) + config.rl.advantage_eps)
    dis_loss, _ = kf_grpo.kf_grpo_loss(
      model,
      batch,
      kf_grpo.LossInputs(
        completions=jnp.asarray(rollout["disordered_completions"]),
        mask=jnp.asarray(rollout["disordered_mask"]),
        advantages=jnp.asarray(adv.reshape(-1)),
      ),
      loss_config=s.rl.loss,
      num_samples=h,
      view="disordered",
    )
    state, metrics = s.grpo_step(state, batch, _typed(rollout))
  ordered = float(metrics["ordered/loss"])
  np.testing.assert_allclose(float(metrics["disordered/loss"]), float(dis_loss), rtol=1e-5)
  np.testing.assert_allclose(
    float(metrics["loss"]), (g * ordered + h * float(dis_loss)) / (g + h), rtol=1e-5
  )
  assert float(dis_loss) != 0.0
  np.testing.assert_allclose(float(metrics["disordered/reward/total"]), r.mean(), rtol=1e-6)


@pytest.mark.slow
def test_two_process_run_matches_single_process(data_dir, tmp_path):
  """Two local processes (JAX CPU collectives, one device each) vs one process.

  Tolerance: losses to 1e-5 relative and params to 1e-5 absolute (the global batch is
  reduced across processes in a different order). beta = 0: with a KL term, its
  rounding-level gradient at the reference point is amplified by Adam's first steps
  differently per reduction order (see the (2,2,2) mesh test).
  """
  env = {**ENV, "XLA_FLAGS": ""}  # One CPU device per process.
  no_kl = "--config.rl.beta=0"
  single = str(tmp_path / "run_1p")
  result = subprocess.run(
    _train_cmd(data_dir, single, no_kl),
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  workdir = str(tmp_path / "run_2p")
  port = testing.free_port()
  procs = [
    subprocess.Popen(
      _train_cmd(
        data_dir,
        workdir,
        no_kl,
        "--num_processes=2",
        f"--process_id={i}",
        f"--coordinator_address=localhost:{port}",
      ),
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "'data': 2" in outs[0]  # One mesh over both processes' devices.
  metrics_a, metrics_b = _read_metrics(single), _read_metrics(workdir)
  assert [m["step"] for m in metrics_b] == [m["step"] for m in metrics_a]
  for ma, mb in zip(metrics_a, metrics_b):
    np.testing.assert_allclose(mb["loss"], ma["loss"], rtol=1e-5, atol=1e-7)
    for key in ("reward/accuracy", "reward/format"):
      if key in ma:
        assert ma[key] == mb[key], (ma["step"], key)
  config = _config(data_dir, **{"rl.beta": 0.0})
  _, params_a = _final_params(config, single)
  _, params_b = _final_params(config, workdir)
  for a, b in zip(params_a, params_b):
    np.testing.assert_allclose(b, a, atol=1e-5)


def test_nonfinite_step_leaves_state_unchanged():
  params = {"w": jnp.ones((3,)), "b": jnp.zeros((2,))}
  tx = __import__("optax").adam(0.1)
  state = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)}
  good = {"w": jnp.ones((3,)), "b": jnp.ones((2,))}
  new, metrics = steps_lib._apply_if_finite(state, good, jnp.float32(1.0), tx)
  assert metrics["step_ok"] == 1.0 and not np.allclose(new["params"]["w"], 1.0)
  bad = {"w": jnp.array([1.0, jnp.nan, 1.0]), "b": jnp.ones((2,))}
  same, metrics = steps_lib._apply_if_finite(state, bad, jnp.float32(1.0), tx)
  assert metrics["step_ok"] == 0.0
  for a, b in zip(
    jax.tree.leaves(same["params"]) + jax.tree.leaves(same["opt_state"]),
    jax.tree.leaves(params) + jax.tree.leaves(state["opt_state"]),
  ):
    np.testing.assert_array_equal(a, b)
  _, metrics = steps_lib._apply_if_finite(state, good, jnp.float32(jnp.inf), tx)
  assert metrics["step_ok"] == 0.0


def test_frozen_vision_tower_gets_no_updates(data_dir):
  config = _config(data_dir, **{"optax.freeze_vision": True})
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  s = loop.setup(config, mesh)
  settings = pipeline.settings_from_config(config)
  local, _ = pipeline.split_host(next(iter(pipeline.make_dataset(data_dir, s.tokenizer, settings))))
  with jax.set_mesh(mesh):
    state = s.init_state()
    before = jax.device_get(state["params"])
    for _ in range(3):  # warmup starts at lr 0
      state, _ = s.sft_step(state, sharding.to_global(mesh, local))
    after = jax.device_get(state["params"])
  for name, a, b in zip(
    ("visual", "text"), (before["visual"], before["text"]), (after["visual"], after["text"])
  ):
    same = all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert same == (name == "visual"), name


# ----------------------------------------------------------------------------------------
# Single KF-GRPO updates on rollouts chosen by the test: exact properties of the update,
# not the outcome of a (chaotic, CPU-dependent) training run.
# ----------------------------------------------------------------------------------------

# SGD's update is -lr * gradient, so parameter deltas compare gradients directly (Adam's
# first step, ~ -lr * sign(gradient), would hide their scale). Small enough that the
# first-order effect dominates: log-prob changes scale linearly with it.
SGD_LR = 1e-2


@pytest.fixture(scope="module")
def grpo_case(data_dir):
  """The smoke model at init, one batch, and cached single KF-GRPO steps.

  beta = 0 (no KL), no SFT phase or warmup, no weight decay, one inner iteration: the
  update is the policy gradient of the clipped surrogate at ratio 1, sum_i A_i * grad of
  the per-token mean log-prob of completion i (over the number of completions).
  """
  config = _config(
    data_dir,
    **{
      "sft_steps": 0,
      "optax.warmup_steps": 0,
      "optax.weight_decay": 0.0,
      "optax.learning_rate": 2e-3,
      "optax.grad_accum": 1,
      "optax.freeze_vision": False,
      "rl.beta": 0.0,
      "rl.num_iterations": 1,
      "rl.train_on_disordered": False,
      "rl.aggregation": "sequence_mean",
      "rl.policy_loss": "clipped",
      "rl.advantage_estimator": "batch_std",
    },
  )
  config.rl.length_bonus.enabled = False
  config.rl.saliency.update(dict(enabled=True, rule="ratio", alpha=0.3, mu=0.8))
  for name in ("accuracy", "format", "saliency"):
    config.rl.reward_weights[name] = 1.0
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  s = loop.setup(config, mesh)
  local, _ = pipeline.split_host(
    next(iter(pipeline.make_dataset(data_dir, s.tokenizer, pipeline.settings_from_config(config))))
  )
  with jax.set_mesh(mesh):
    batch = sharding.to_global(mesh, local)
    params = jax.device_get(s.init_state()["params"])
  b, g, h = local["prompt_ids"].shape[0], config.rl.num_generations, config.rl.num_disordered
  assert b >= 2 and g >= 4 and g % 2 == 0, (b, g)
  steps = {}

  def sgd_step(estimator):
    """jit(steps_lib.kf_grpo_step) with plain SGD and the given advantage estimator."""
    if estimator not in steps:
      rl = dataclasses.replace(s.rl, advantage_estimator=estimator)
      steps[estimator] = jax.jit(
        functools.partial(
          steps_lib.kf_grpo_step, s.graphdef, optax.sgd(SGD_LR), rl, config.model.vocab_chunk
        )
      )
    return steps[estimator]

  def update(rollout, estimator="batch_std"):
    """One SGD KF-GRPO step from the initial params: (param deltas (float64), metrics)."""
    state = {
      "params": params,
      "opt_state": optax.sgd(SGD_LR).init(params),
      "step": jnp.zeros((), jnp.int32),
    }
    with jax.set_mesh(mesh):
      new, metrics = sgd_step(estimator)(state, batch, _device_rollout(rollout))
      new, metrics = jax.device_get((new["params"], metrics))
    deltas = [
      np.asarray(n, np.float64) - np.asarray(o, np.float64)
      for n, o in zip(jax.tree.leaves(new), jax.tree.leaves(params))
    ]
    return deltas, metrics

  def logp_sums(new_params, rollout):
    """Summed log-prob of each completion [B*G] (over its mask) under `new_params`."""
    with jax.set_mesh(mesh):
      logp = s.logprobs(
        jax.device_put(new_params),
        batch,
        rollout["completions"],
        rollout["mask"],
        view="ordered",
        num_samples=g,
      )
    return np.where(rollout["mask"], np.asarray(logp, np.float64), 0.0).sum(-1)

  return types.SimpleNamespace(
    config=config,
    mesh=mesh,
    s=s,
    batch=batch,
    params=params,
    b=b,
    g=g,
    h=h,
    update=update,
    logp_sums=logp_sums,
  )


def _typed(flat, put=jnp.asarray):
  """A flat {name / disordered_name: array} dict -> the trainer's typed Rollout.

  A disordered view given only by its accuracy (not trained on) gets empty completions.
  """

  def view(prefix, like=None):
    arrays = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
    if prefix == "":
      arrays = {k: v for k, v in arrays.items() if not k.startswith("disordered_")}
    if "completions" not in arrays:
      n = arrays["accuracy"].size
      arrays["completions"] = np.zeros((n, like.shape[1]), np.int32)
      arrays["mask"] = np.zeros((n, like.shape[1]), bool)
      arrays["format"] = np.zeros_like(arrays["accuracy"])
    return rollout_lib.ViewRollout(**{k: put(v) for k, v in arrays.items()})

  ordered = view("")
  disordered = (
    view("disordered_", like=flat["completions"]) if "disordered_accuracy" in flat else None
  )
  return rollout_lib.Rollout(ordered=ordered, disordered=disordered)


def _device_rollout(rollout):
  return _typed(rollout)


def _rollout(case, accuracy, disordered_accuracy, seed=0):
  """Random completions of random lengths (3..6 tokens), format 1 everywhere."""
  b, g, t = case.b, case.g, 6
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, t + 1, b * g)
  return {
    "completions": rng.integers(0, case.s.tokenizer.vocab_size, (b * g, t)).astype(np.int32),
    "mask": np.arange(t)[None, :] < lengths[:, None],
    "accuracy": np.asarray(accuracy, np.float32).reshape(b, g),
    "format": np.ones((b, g), np.float32),
    "disordered_accuracy": np.asarray(disordered_accuracy, np.float32).reshape(b, case.h),
  }


def _norm(deltas):
  return float(np.sqrt(sum((d**2).sum() for d in deltas)))


def _apply(params, deltas):
  leaves, treedef = jax.tree.flatten(params)
  return jax.tree.unflatten(
    treedef, [(np.asarray(p, np.float64) + d).astype(p.dtype) for p, d in zip(leaves, deltas)]
  )


@pytest.mark.slow
def test_kf_grpo_step_raises_logp_of_positive_advantage_completions(grpo_case):
  """Half of each group correct: after one small step, EVERY correct completion is more
  likely and every wrong one less likely (observed: |change| >= 0.04 nats at lr 1e-2,
  ten times less at 1e-3; float noise in a summed log-prob is ~1e-6)."""
  case = grpo_case
  accuracy = np.tile(np.arange(case.g) % 2 == 0, case.b)  # 1, 0, 1, 0, ... per group
  # The disordered view is as accurate: no saliency bonus, A = +-c by accuracy alone.
  rollout = _rollout(case, accuracy, np.ones((case.b, case.h)))
  deltas, metrics = case.update(rollout)
  assert metrics["step_ok"] == 1.0 and metrics["saliency/order_win_frac"] == 0.0
  before = case.logp_sums(case.params, rollout)
  after = case.logp_sums(_apply(case.params, deltas), rollout)
  change = after - before
  positive = accuracy.astype(bool)
  assert np.all(change[positive] > 3e-3), change[positive]
  assert np.all(change[~positive] < -3e-3), change[~positive]
  # The objective the step ascends, sum_i A_i mean_t logp_it, rises.
  lengths = rollout["mask"].sum(-1)
  sign = np.where(positive, 1.0, -1.0)
  assert (sign * change / lengths).sum() > 0.05


@pytest.mark.slow
def test_zero_advantages_leave_params_exactly_unchanged(grpo_case):
  """Equal rewards within every group: all advantages are exactly 0, and with beta = 0
  and no weight decay the real optimizer (AdamW, clipping) leaves the params bit-for-bit
  unchanged; changing one reward moves them by about the learning rate."""
  case = grpo_case
  b, g = case.b, case.g
  accuracy = np.zeros((b, g))
  accuracy[0] = 1.0  # Group 0 all correct (and given the bonus, equally), the rest wrong.
  rollout = _rollout(case, accuracy, np.zeros((b, case.h)), seed=1)
  initial = jax.tree.leaves(case.params)

  def real_step(rollout):
    with jax.set_mesh(case.mesh):
      state = case.s.init_state(jax.device_put(case.params))
      state, metrics = case.s.grpo_step(state, case.batch, _device_rollout(rollout))
      return jax.tree.leaves(jax.device_get(state["params"])), jax.device_get(metrics)

  params, metrics = real_step(rollout)
  assert metrics["saliency/order_win_frac"] > 0  # The bonus fired, uniformly in group 0.
  assert metrics["adv/abs_mean"] == 0.0 and metrics["grad_norm"] == 0.0
  assert metrics["step_ok"] == 1.0
  for new, old in zip(params, initial, strict=True):
    np.testing.assert_array_equal(new, old)

  rollout["accuracy"] = accuracy.copy()
  rollout["accuracy"][1, 0] = 1.0  # One correct answer in group 1: nonzero advantages.
  params, metrics = real_step(rollout)
  assert metrics["adv/abs_mean"] > 0.1 and metrics["grad_norm"] > 1e-3
  moved = max(float(np.abs(new - old).max()) for new, old in zip(params, initial))
  lr = case.config.optax.learning_rate
  assert 0.5 * lr < moved < 2 * lr, (moved, lr)


def _bonus_rollouts(case):
  """The same rollout twice: the saliency bonus fires in group 0 only, or nowhere.

  Group 0 is half correct on the ordered view; its disordered accuracy is 0 (the ordered
  view wins: each correct answer gets +alpha) or 1 (p = 0.5 < mu p~: no bonus). Every
  other group has p~ = 1 and gets no bonus in either rollout.
  """
  b, g, h = case.b, case.g, case.h
  accuracy = np.zeros((b, g))
  accuracy[:, : g // 2] = 1.0
  accuracy[1:, g // 2] = 1.0  # The other groups: one more correct, another spread.
  dis_fired, dis_not = np.ones((b, h)), np.ones((b, h))
  dis_fired[0] = 0.0
  fired = _rollout(case, accuracy, dis_fired, seed=2)
  not_fired = dict(fired, disordered_accuracy=dis_not.astype(np.float32))
  return fired, not_fired


@pytest.mark.slow
def test_saliency_bonus_changes_batch_std_update_when_it_fires(grpo_case):
  """batch_std (the project's default): the bonus widens group 0's reward spread against
  the others', so the gradient turns, not only scales (observed: the updates differ by
  13% of their norm, cosine 0.992; Adam would undo a mere rescaling)."""
  case = grpo_case
  fired, not_fired = _bonus_rollouts(case)
  d_fired, m_fired = case.update(fired, "batch_std")
  d_not, m_not = case.update(not_fired, "batch_std")
  assert m_fired["saliency/order_win_frac"] == pytest.approx(1 / case.b)
  assert m_not["saliency/order_win_frac"] == 0.0
  assert m_fired["adv/bonus_shift"] > 0.02 and m_not["adv/bonus_shift"] < 1e-6
  diff = _norm([a - c for a, c in zip(d_fired, d_not)])
  assert diff > 0.05 * _norm(d_not), (diff, _norm(d_not))
  cosine = sum((a * c).sum() for a, c in zip(d_fired, d_not)) / (_norm(d_fired) * _norm(d_not))
  assert cosine < 0.999, cosine


@pytest.mark.slow
def test_saliency_bonus_cancels_under_group_std(grpo_case):
  """group_std (GRPO's per-group std): with only accuracy + bonus varying in a group,
  the bonus rescales the group's centred rewards and cancels in the advantages
  (PAPER.md, "Make the bonus count"): the same update up to advantage_eps (observed: a
  relative difference of 3e-5, against 0.13 under batch_std)."""
  case = grpo_case
  fired, not_fired = _bonus_rollouts(case)
  d_fired, m_fired = case.update(fired, "group_std")
  d_not, m_not = case.update(not_fired, "group_std")
  assert m_fired["saliency/order_win_frac"] == pytest.approx(1 / case.b)
  assert m_not["saliency/order_win_frac"] == 0.0
  assert m_fired["adv/bonus_shift"] < 1e-3  # Observed ~2e-5; ~0.13 under batch_std.
  diff = _norm([a - c for a, c in zip(d_fired, d_not)])
  assert diff < 1e-3 * _norm(d_not), (diff, _norm(d_not))
  assert _norm(d_not) > 1e-3  # Not trivially equal: the update itself is not zero.


def test_gradient_accumulation_updates_every_k_micro_steps(data_dir):
  config = _config(data_dir, **{"optax.grad_accum": 2, "optax.warmup_steps": 0})
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  s = loop.setup(config, mesh)
  settings = pipeline.settings_from_config(config)
  batches = iter(pipeline.make_dataset(data_dir, s.tokenizer, settings))
  with jax.set_mesh(mesh):
    state = s.init_state()
    snapshots = [jax.tree.leaves(jax.device_get(state["params"]))]
    for _ in range(2):
      local, _ = pipeline.split_host(next(batches))
      state, _ = s.sft_step(state, sharding.to_global(mesh, local))
      snapshots.append(jax.tree.leaves(jax.device_get(state["params"])))
  unchanged = lambda a, b: all(np.array_equal(x, y) for x, y in zip(a, b))
  assert unchanged(snapshots[0], snapshots[1])  # first micro-step: accumulate only
  assert not unchanged(snapshots[1], snapshots[2])  # second: one optimizer update


@pytest.mark.slow
def test_rollout_logps_give_the_loss_and_update_of_a_log_prob_pass(data_dir):
  """rl.use_rollout_logps: old_logp from the sampler instead of a second forward pass.

  The same rollout (same key) either way; the sampler's log-probs equal the log-prob pass
  on every generated token, and so do the mu = 2 step's loss and updated params.
  """
  config = _config(
    data_dir, **{"rl.beta": 0.0, "rl.num_iterations": 2, "sft_steps": 0, "optax.warmup_steps": 0}
  )
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  s = loop.setup(config, mesh)
  local, host = pipeline.split_host(
    next(iter(pipeline.make_dataset(data_dir, s.tokenizer, pipeline.settings_from_config(config))))
  )
  results = {}
  with jax.set_mesh(mesh):
    batch = sharding.to_global(mesh, local)
    for use in (False, True):
      s = dataclasses.replace(s, rl=dataclasses.replace(s.rl, use_rollout_logps=use))
      state = s.init_state()
      timer = metrics_lib.PhaseTimer()
      rollout, _, _ = loop.make_rollout(s, state, batch, host, jax.random.key(7), timer)
      phases = set(timer.metrics())
      state, metrics = s.grpo_step(state, batch, rollout)
      results[use] = jax.device_get((rollout, metrics, state["params"]))
      assert ("time/logprobs_s" in phases) == (not use), phases
  (r0, m0, p0), (r1, m1, p1) = results[False], results[True]
  np.testing.assert_array_equal(r0.ordered.completions, r1.ordered.completions)
  mask = np.asarray(r0.ordered.mask, bool)
  assert mask.sum() > 0
  np.testing.assert_allclose(r1.ordered.old_logp[mask], r0.ordered.old_logp[mask], atol=1e-5)
  np.testing.assert_allclose(float(m1["loss"]), float(m0["loss"]), rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, atol=1e-5)
