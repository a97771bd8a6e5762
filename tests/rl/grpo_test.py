"""Tests for chronoforge_jax.rl.grpo against a NumPy float64 transcription of the formulas.

Covers advantages (three normalisations, equal-reward groups, the saliency bonus that
cancels under per-group std and counts under the default), the clipped surrogate with its
analytic gradient, KL estimators, aggregation modes, metrics, and agreement of jit on the
full batch, pmap over 8 fake devices and shard_map over an 8-device mesh. The `rl` config
section (configs/rl.py) that builds `LossConfig` is checked here too.
"""

import functools

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from chronoforge_jax.rl import grpo, rewards
from chronoforge_jax.rl import settings as rl_settings
from configs import common
from configs import rl as rl_config

# ----------------------------------------------------------------------------------------
# NumPy float64 reference.
# ----------------------------------------------------------------------------------------


def np_advantages(r, mode, eps=1e-4):
  r = np.asarray(r, np.float64)
  c = r - r.mean(1, keepdims=True)
  if mode == "group_std":
    return c / (r.std(1, ddof=1, keepdims=True) + eps)
  if mode == "batch_std":
    return c / (np.sqrt((c**2).mean()) + eps)
  return c


def np_loss(
  logp,
  old,
  ref,
  adv,
  mask,
  *,
  policy_loss="clipped",
  eps_low=0.2,
  eps_high=0.2,
  beta=0.04,
  aggregation="sequence_mean",
  max_tokens=None,
  entropy=None,
):
  """Loss, metrics and d loss / d logp, written out token by token in float64."""
  logp, old, adv, mask = (np.asarray(x, np.float64) for x in (logp, old, adv, mask))
  n, t = logp.shape
  a = adv[:, None]
  ratio = np.exp(logp - old)
  if policy_loss == "clipped":
    clipped = np.clip(ratio, 1 - eps_low, 1 + eps_high)
    pg = -np.minimum(ratio * a, clipped * a)
    inside = (ratio >= 1 - eps_low) & (ratio <= 1 + eps_high)
    pg_grad = np.where(inside | (ratio * a < clipped * a), -ratio * a, 0.0)
    low = (ratio < 1 - eps_low) & (a < 0)
    high = (ratio > 1 + eps_high) & (a > 0)
  else:
    pg, pg_grad = -ratio * a, -ratio * a
    low = high = np.zeros_like(ratio, bool)
  tokens = mask.sum(1)
  if aggregation == "sequence_mean":
    weight = mask / np.maximum(tokens, 1)[:, None] / max((tokens > 0).sum(), 1)
  elif aggregation == "token_mean":
    weight = mask / mask.sum()
  else:
    weight = mask / (n * (max_tokens or t))
  metrics = {"pg_loss": (weight * pg).sum(), "num_tokens": mask.sum()}
  loss, grad = metrics["pg_loss"], weight * pg_grad
  if ref is not None:
    d = np.asarray(ref, np.float64) - logp
    kl = np.exp(d) - d - 1
    metrics["kl"] = (kl * mask).sum() / mask.sum()
    loss, grad = loss + beta * (weight * kl).sum(), grad + beta * weight * (1 - np.exp(d))
  tok = lambda x: (x * mask).sum() / mask.sum()
  metrics.update(
    loss=loss,
    clip_frac_low=tok(low),
    clip_frac_high=tok(high),
    clip_frac=tok(low | high),
    ratio_mean=tok(ratio),
  )
  if entropy is not None:
    metrics["entropy"] = tok(entropy)
  return metrics, grad


def make_batch(seed, n=16, t=7):
  """Random rollout data with ratios well outside both clip bounds and some padding."""
  rng = np.random.default_rng(seed)
  logp = np.log(rng.uniform(0.05, 0.95, (n, t)))
  old = logp + rng.normal(0, 0.35, (n, t))
  ref = logp + rng.normal(0, 0.2, (n, t))
  adv = rng.normal(size=n)
  lengths = rng.integers(1, t + 1, n)
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float64)
  entropy = rng.uniform(0, 3, (n, t))
  return dict(logp=logp, old=old, ref=ref, adv=adv, mask=mask, entropy=entropy)


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def assert_metrics_close(got, want, rtol=2e-5, atol=1e-6):
  assert set(want) <= set(got), sorted(set(want) - set(got))
  for k, v in want.items():
    np.testing.assert_allclose(np.asarray(got[k]), v, rtol=rtol, atol=atol, err_msg=k)


# ----------------------------------------------------------------------------------------
# Advantages.
# ----------------------------------------------------------------------------------------

MODES = ["group_std", "batch_std", "none"]
_adv_jit = jax.jit(grpo.compute_advantages, static_argnames=("estimator",))


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=25, deadline=None)
@given(
  r=hnp.arrays(np.float64, (6, 5), elements=st.sampled_from([0.0, 0.3, 1.0, 1.3, 2.0, 2.3, -0.5]))
)
def test_advantages_match_numpy(mode, r):
  np.testing.assert_allclose(_adv_jit(_f32(r), mode), np_advantages(r, mode), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_equal_reward_groups_get_zero_advantages(mode):
  r = np.array([[1.3] * 4, [0.0] * 4, [2.0, 2.0, 2.0, 2.0]], np.float32)
  adv = grpo.compute_advantages(r, mode)
  assert np.all(np.isfinite(adv)) and np.abs(adv).max() < 1e-3


def test_group_std_needs_two_rollouts():
  with pytest.raises(ValueError, match="at least 2 rollouts"):
    grpo.compute_advantages(np.zeros((3, 1)), "group_std")
  with pytest.raises(KeyError, match="unknown advantage estimator 'batchstd'"):
    grpo.compute_advantages(np.zeros((3, 2)), "batchstd")


def _bonus_batch():
  """Accuracy in 0/1, format constant per group, bonus from the saliency rule."""
  rng = np.random.default_rng(3)
  acc = (rng.random((12, 8)) > 0.5).astype(np.float32)
  acc[:, 0], acc[:, 1] = 1.0, 0.0  # every group has spread
  fmt = np.repeat((rng.random((12, 1)) > 0.3).astype(np.float32), 8, axis=1)
  disordered = rng.random((12, 8)) > 0.45
  bonus, metrics = rewards.saliency_bonus(acc, disordered, alpha=0.3, mu=0.8)
  assert 0 < float(metrics["order_win_frac"]) < 1  # both kinds of group present
  return acc + fmt, np.asarray(bonus)


def test_bonus_cancels_under_group_std_but_counts_by_default():
  base, bonus = _bonus_batch()
  with_bonus = base + bonus
  # PAPER.md's observation: per-group std normalisation erases the bonus.
  np.testing.assert_allclose(
    grpo.compute_advantages(with_bonus, "group_std"),
    grpo.compute_advantages(base, "group_std"),
    atol=1e-4,
  )
  assert float(grpo.bonus_advantage_shift(with_bonus, bonus, "group_std")) < 1e-4
  default = rl_config.rl_config().advantage_estimator
  for mode in (default, "none"):
    a_with = np.asarray(grpo.compute_advantages(with_bonus, mode))
    a_without = np.asarray(grpo.compute_advantages(base, mode))
    np.testing.assert_allclose(a_with, np_advantages(with_bonus, mode), atol=1e-4)
    shift = float(grpo.bonus_advantage_shift(with_bonus, bonus, mode))
    np.testing.assert_allclose(shift, np.abs(a_with - a_without).mean(), rtol=1e-4)
    assert shift > 0.02, mode
    # Correct answers of groups where order won gain advantage relative to the rest.
    won = bonus > 0
    gain = a_with - a_without
    assert gain[won].mean() > gain[~won].mean() + 0.05, mode


# ----------------------------------------------------------------------------------------
# Loss, metrics, gradients.
# ----------------------------------------------------------------------------------------


def _loss_and_grad(batch, config, *, with_ref=True, with_old=True, axis_name=None):
  def loss_fn(logp):
    return grpo.grpo_loss(
      logp,
      batch["adv"],
      batch["mask"],
      old_logp_na=batch["old"] if with_old else None,
      ref_logp_na=batch["ref"] if with_ref else None,
      entropy_na=batch["entropy"],
      config=config,
      axis_name=axis_name,
    )

  (_, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(batch["logp"])
  return metrics, grad


@functools.partial(jax.jit, static_argnames=("config", "with_ref", "with_old"))
def _jit_loss(batch, config, with_ref=True, with_old=True):
  return _loss_and_grad(batch, config, with_ref=with_ref, with_old=with_old)


LOSS_CASES = [
  dict(aggregation="sequence_mean"),
  dict(aggregation="token_mean", eps_high=0.28),
  dict(aggregation="dr_grpo", max_tokens=11),
  dict(aggregation="sequence_mean", policy_loss="unclipped", beta=0.0),
]


@pytest.mark.parametrize("case", LOSS_CASES, ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_metrics_and_grad_match_numpy(case, seed):
  batch = make_batch(seed)
  metrics, grad = _jit_loss(jax.tree.map(_f32, batch), grpo.LossConfig(**case))
  want, want_grad = np_loss(**batch, **case)
  assert 0 < want["clip_frac_low"] and 0 < want["clip_frac_high"] or "unclipped" in str(case)
  assert_metrics_close(metrics, want)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)


def test_beta_zero_needs_no_reference():
  batch = jax.tree.map(_f32, make_batch(2))
  config = grpo.LossConfig(beta=0.0)
  no_ref, grad_no_ref = _jit_loss(batch, config, with_ref=False)
  with_ref, grad_ref = _jit_loss(batch, config)
  assert "kl" not in no_ref and float(with_ref["kl"]) > 0
  np.testing.assert_allclose(no_ref["loss"], with_ref["loss"], rtol=1e-6)
  np.testing.assert_allclose(grad_no_ref, grad_ref, rtol=1e-6)
  with pytest.raises(ValueError, match="beta=0.04 needs ref_logp_na"):
    grpo.grpo_loss(batch["logp"], batch["adv"], batch["mask"])


def test_on_policy_gradient_is_minus_advantage():
  batch = make_batch(4)
  config = grpo.LossConfig(beta=0.0)
  metrics, grad = _jit_loss(jax.tree.map(_f32, batch), config, with_ref=False, with_old=False)
  want, want_grad = np_loss(**{**batch, "old": batch["logp"], "ref": None}, beta=0.0)
  assert_metrics_close(metrics, want)
  assert float(metrics["clip_frac"]) == 0 and float(metrics["ratio_mean"]) == 1
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-8)


def test_padding_with_minus_inf_stays_finite():
  batch = jax.tree.map(_f32, make_batch(5))
  pad = batch["mask"] == 0
  assert bool(pad.any())
  batch["logp"] = jnp.where(pad, -jnp.inf, batch["logp"])
  batch["old"] = jnp.where(pad, -jnp.inf, batch["old"])
  batch["entropy"] = jnp.where(pad, jnp.nan, batch["entropy"])
  metrics, grad = _jit_loss(batch, grpo.LossConfig())
  assert all(np.isfinite(np.asarray(v)) for v in metrics.values())
  assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad[pad]).max()) == 0


def test_kl_estimators():
  logp, ref = np.log([0.2, 0.5, 0.9]), np.log([0.4, 0.5, 0.3])
  d = ref - logp
  np.testing.assert_allclose(grpo.KL_ESTIMATORS.get("k3")(logp, ref), np.exp(d) - d - 1, rtol=1e-6)
  np.testing.assert_allclose(grpo.KL_ESTIMATORS.get("k1")(logp, ref), -d, rtol=1e-6)
  np.testing.assert_allclose(grpo.KL_ESTIMATORS.get("k2")(logp, ref), d**2 / 2, rtol=1e-6)


# ----------------------------------------------------------------------------------------
# jit vs pmap vs shard_map on 8 fake devices.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean", "dr_grpo"])
def test_jit_pmap_shard_map_agree_with_numpy(aggregation):
  assert jax.device_count() == 8
  batch = make_batch(7, n=16)
  batch["mask"][3] = 0  # a response with no tokens on one device
  rewards_bg = np.random.default_rng(8).integers(0, 3, (16, 4)).astype(np.float64)
  config = grpo.LossConfig(aggregation=aggregation, eps_high=0.28)
  want, want_grad = np_loss(**batch, aggregation=aggregation, eps_high=0.28)
  want_adv = np_advantages(rewards_bg, "batch_std")
  bonus_bg = np.where(rewards_bg > 1, 0.3, 0.0)
  want_shift = np.abs(want_adv - np_advantages(rewards_bg - bonus_bg, "batch_std")).mean()
  data = jax.tree.map(_f32, dict(batch, rewards=rewards_bg, bonus=bonus_bg))

  def step(d, axis_name=None):
    metrics, grad = _loss_and_grad(d, config, axis_name=axis_name)
    adv = grpo.compute_advantages(d["rewards"], "batch_std", axis_name=axis_name)
    shift = grpo.bonus_advantage_shift(d["rewards"], d["bonus"], "batch_std", axis_name=axis_name)
    return metrics, grad, adv, shift

  results = {"jit": jax.jit(step)(data)}
  per_device = jax.tree.map(lambda x: x.reshape(8, -1, *x.shape[1:]), data)
  out = jax.pmap(functools.partial(step, axis_name="dev"), axis_name="dev")(per_device)
  unshard = lambda x: x.reshape(-1, *x.shape[2:])
  results["pmap"] = (
    jax.tree.map(lambda x: x[0], out[0]),
    unshard(out[1]),
    unshard(out[2]),
    out[3][0],
  )
  mesh = jax.make_mesh((8,), ("dev",))
  sharded = jax.device_put(data, NamedSharding(mesh, P("dev")))
  results["shard_map"] = jax.jit(
    jax.shard_map(
      functools.partial(step, axis_name="dev"),
      mesh=mesh,
      in_specs=P("dev"),
      out_specs=(P(), P("dev"), P("dev"), P()),
    )
  )(sharded)
  for name, (metrics, grad, adv, shift) in results.items():
    assert_metrics_close(metrics, want)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(shift, want_shift, rtol=1e-4, err_msg=name)


# ----------------------------------------------------------------------------------------
# Config: LossConfig and the `rl` section.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(aggregation="mean"), "LossConfig.aggregation='mean'"),
    (dict(policy_loss="ppo"), "LossConfig.policy_loss"),
    (dict(eps_low=1.0), "eps_low"),
    (dict(beta=-1.0), "beta"),
    (dict(max_tokens=0), "max_tokens"),
  ],
)
def test_loss_config_rejects_bad_fields(kwargs, match):
  with pytest.raises(ValueError, match=match):
    grpo.LossConfig(**kwargs)


@pytest.mark.parametrize("variant", ["default", "demo", "smoke"])
def test_rl_config_variants_validate_and_build_loss_config(variant):
  config = rl_config.get_config(variant)
  rl_config.validate_rl(config)
  loss_config = rl_settings.RLSettings.from_config(config.rl).loss
  assert loss_config.beta == config.rl.beta and loss_config.max_tokens is None
  config.rl.aggregation = "dr_grpo"
  assert rl_settings.RLSettings.from_config(config.rl).loss.max_tokens == config.rl.max_new_tokens


@pytest.mark.parametrize(
  "field, value, match",
  [
    ("num_generations", 1, "rl.num_generations"),
    ("advantage_estimator", "gruop_std", "rl.advantage_estimator"),
    ("aggregation", "mean", "rl.aggregation"),
    ("eps_low", 1.5, "rl.eps_low"),
    ("top_p", 0.0, "rl.top_p"),
    ("policy_loss", "ppo", "rl.policy_loss"),
    ("saliency.rule", "loose", "rl.saliency.rule"),
    ("saliency.alpha", -0.3, "rl.saliency.alpha"),
    ("reward_weights.lenght", 0.2, "rl.reward_weights.lenght"),
    ("length_bonus.min_tokens", 600, "rl.length_bonus.min_tokens"),
    ("train_on_disordered", True, None),
  ],
)
def test_validate_rl_names_the_bad_field(field, value, match):
  config = rl_config.get_config("smoke")
  section = config.rl
  *parents, leaf = field.split(".")
  for p in parents:
    section = section[p]
  with section.unlocked():
    section[leaf] = value
  if match is None:  # a valid change on its own
    rl_config.validate_rl(config)
    config.rl.saliency.enabled = False
    match = "rl.train_on_disordered"
  with pytest.raises(common.ConfigError, match=match):
    rl_config.validate_rl(config)


def test_rl_config_rejects_unknown_variant():
  with pytest.raises(common.ConfigError, match="rl.variant"):
    rl_config.get_config("paperr")
