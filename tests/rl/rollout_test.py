"""Tests for chronoforge_jax.rl.rollout (loss inputs of either view) and rl.settings.

The reference is a plain NumPy float64 transcription of PAPER.md's reward and advantage
formulas: ordered rewards = accuracy + format + alpha * 1[p >= mu p~ and p > 0] * correct,
disordered rewards = accuracy + format, batch-std advantages (r - mean_g) / (rms + eps).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chronoforge_jax import settings as settings_lib
from chronoforge_jax.rl import grpo, kf_grpo
from chronoforge_jax.rl import rollout as rollout_lib
from chronoforge_jax.rl import settings as rl_settings
from configs import rl as rl_config

B, G, H, A = 4, 6, 5, 7


def _view(rng, g, accuracy=None):
  n = B * g
  return rollout_lib.ViewRollout(
    completions=jnp.asarray(rng.integers(0, 50, (n, A)), jnp.int32),
    mask=jnp.asarray(rng.random((n, A)) < 0.8),
    accuracy=jnp.asarray(
      accuracy if accuracy is not None else rng.random((B, g)) < 0.5, jnp.float32
    ),
    format=jnp.asarray(rng.random((B, g)) < 0.7, jnp.float32),
    ref_logp=jnp.asarray(-rng.random((n, A)), jnp.float32),
  )


def _batch_std(r_bg, eps):
  centred = r_bg - r_bg.mean(-1, keepdims=True)
  return centred / (np.sqrt((centred**2).mean()) + eps)


def test_ordered_view_gets_the_saliency_bonus_and_batch_std_advantages():
  rl = rl_settings.RLSettings()  # The paper's defaults: ratio rule, alpha 0.3, mu 0.8.
  rng = np.random.default_rng(0)
  accuracy = np.zeros((B, G))
  accuracy[0, :3] = accuracy[1, :2] = accuracy[2, :4] = 1  # Group 3 all wrong.
  ordered = _view(rng, G, accuracy)
  dis_acc = np.zeros((B, H))
  dis_acc[1, :4] = 1  # Group 1 loses (2/6 < 0.8 * 4/5); groups 0 and 2 win.
  inputs, metrics = rollout_lib.loss_inputs(rl, ordered, bonus_against=jnp.asarray(dis_acc))

  p, p_tilde = accuracy.mean(-1), dis_acc.mean(-1)
  win = (p >= rl.saliency.mu * p_tilde) & (p > 0)
  np.testing.assert_array_equal(win, [True, False, True, False])
  bonus = rl.saliency.alpha * win[:, None] * accuracy
  rewards = accuracy + np.asarray(ordered.format, np.float64) + bonus
  expected = _batch_std(rewards, rl.advantage_eps).reshape(-1)
  assert isinstance(inputs, kf_grpo.LossInputs)
  np.testing.assert_allclose(np.asarray(inputs.advantages), expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(inputs.completions, ordered.completions)
  np.testing.assert_array_equal(inputs.ref_logp, ordered.ref_logp)
  assert inputs.old_logp is None
  assert float(metrics["saliency/order_win_frac"]) == pytest.approx(0.5)
  without = _batch_std(rewards - bonus, rl.advantage_eps)
  shift = np.abs(_batch_std(rewards, rl.advantage_eps) - without).mean()
  np.testing.assert_allclose(float(metrics["adv/bonus_shift"]), shift, rtol=1e-4)


def test_disordered_view_gets_text_rewards_only_through_the_same_function():
  rl = rl_settings.RLSettings(train_on_disordered=True)
  rng = np.random.default_rng(1)
  disordered = _view(rng, H)
  inputs, metrics = rollout_lib.loss_inputs(rl, disordered)
  rewards = np.asarray(disordered.accuracy, np.float64) + np.asarray(disordered.format)
  np.testing.assert_allclose(
    np.asarray(inputs.advantages),
    _batch_std(rewards, rl.advantage_eps).reshape(-1),
    rtol=1e-5,
    atol=1e-6,
  )
  assert not any(k.startswith("saliency/") for k in metrics) and "adv/bonus_shift" not in metrics
  np.testing.assert_allclose(float(metrics["reward/total"]), rewards.mean(), rtol=1e-6)


def test_length_bonus_is_a_text_reward_of_either_view():
  rl = rl_settings.RLSettings(
    length_bonus=rl_settings.LengthBonusSettings(
      enabled=True, bonus=0.5, min_tokens=3, max_tokens=5, min_correct=1
    )
  )
  view = _view(np.random.default_rng(2), G)
  components = rollout_lib.text_rewards(rl, view)
  lengths = np.asarray(view.mask).sum(-1).reshape(B, G)
  accuracy = np.asarray(view.accuracy)
  expected = 0.5 * ((accuracy > 0.5) & (lengths >= 3) & (lengths <= 5))
  np.testing.assert_allclose(np.asarray(components["length"]), expected)


def test_rollouts_are_pytrees_a_jitted_step_takes():
  rng = np.random.default_rng(3)
  rollout = rollout_lib.Rollout(ordered=_view(rng, G), disordered=_view(rng, H))
  leaves = jax.tree.leaves(rollout)
  assert len(leaves) == 2 * 5  # completions, mask, accuracy, format, ref_logp per view.
  total = jax.jit(lambda r: r.ordered.accuracy.sum() + r.disordered.accuracy.sum())(rollout)
  assert float(total) == float(rollout.ordered.accuracy.sum() + rollout.disordered.accuracy.sum())


def test_rl_settings_from_the_config_match_its_fields():
  config = rl_config.get_config("smoke")
  rl = rl_settings.RLSettings.from_config(config.rl)
  assert (rl.num_generations, rl.num_disordered) == (
    config.rl.num_generations,
    config.rl.num_disordered,
  )
  assert rl.loss == grpo.LossConfig(
    policy_loss=config.rl.policy_loss,
    eps_low=config.rl.eps_low,
    eps_high=config.rl.eps_high,
    beta=config.rl.beta,
    kl_estimator=config.rl.kl_estimator,
    aggregation=config.rl.aggregation,
  )
  assert rl.weights == dict(config.rl.reward_weights)
  assert rl.trained_views == (("ordered", rl.num_generations),)
  both = dataclasses.replace(rl, train_on_disordered=True)
  assert both.trained_views == (("ordered", rl.num_generations), ("disordered", rl.num_disordered))
  hash(rl)  # Static in jit: hashable.


@pytest.mark.parametrize(
  "kwargs, name",
  [
    (dict(num_generations=1), "RLSettings.num_generations"),
    (dict(top_p=0.0), "top_p"),
    (dict(reward_weights=(("accuracy", 0.0), ("format", 0.0))), "RLSettings.reward_weights"),
    (
      dict(saliency=rl_settings.SaliencySettings(enabled=False), train_on_disordered=True),
      "RLSettings.train_on_disordered",
    ),
    (dict(mc_rule="loose"), "RLSettings.mc_rule"),
  ],
)
def test_rl_settings_name_the_bad_field(kwargs, name):
  with pytest.raises(settings_lib.SettingsError, match=name):
    rl_settings.RLSettings(**kwargs)
