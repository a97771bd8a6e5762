"""GRPO losses for KF-GRPO as pure array functions.

The pieces, each in a small registry keyed by config strings:

* advantage estimators (`ADVANTAGE_ESTIMATORS`): group-relative advantages from [B, G]
  rewards. "group_std" is GRPO's (r - mean_g) / std_g; "batch_std" (the project default)
  divides the group-centred rewards by one batch-level std; "none" keeps them centred
  only, as in Dr.GRPO. With "group_std", a bonus that every correct answer of a group
  gets scales the group uniformly and cancels (PAPER.md); `bonus_advantage_shift`
  measures how much a bonus actually moved the advantages.
* policy losses (`POLICY_LOSSES`): per-token losses from log-ratios to the rollout
  policy's stored log-probs ("clipped": the PPO/GRPO surrogate with separate low and high
  clip ranges).
* KL estimators (`KL_ESTIMATORS`): k1, k2 and k3 (GRPO's exp(r) - r - 1, r = ref - logp).
* aggregations (`AGGREGATIONS`): "sequence_mean" (GRPO: mean over each response's tokens,
  then over responses), "token_mean" (all tokens of the batch at once, DAPO), "dr_grpo"
  (a constant normaliser: number of responses x max tokens).

Every function takes an optional `axis_name`: then sums and counts that span the batch
are psum-ed over that mapped axis, so the same code gives the global loss under `jax.jit`
on the full batch, under `jax.pmap` and under `jax.shard_map` on per-device shards.
Shapes: N responses (B prompts x G rollouts, flattened), A completion (answer) tokens
(README, "Dimension letters").
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from chronoforge_jax import settings as base
from chronoforge_jax.registry import Registry
from chronoforge_jax.settings import is_int, is_number, require

ADVANTAGE_ESTIMATORS: Registry[Callable[..., jax.Array]] = Registry("advantage estimator")
POLICY_LOSSES: Registry[Callable[..., tuple]] = Registry("policy loss")
KL_ESTIMATORS: Registry[Callable[[jax.Array, jax.Array], jax.Array]] = Registry("KL estimator")
AGGREGATIONS: Registry[Callable[..., jax.Array]] = Registry("loss aggregation")


def _psum(x: jax.Array, axis_name: str | None) -> jax.Array:
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def _global_sum(x: jax.Array, axis_name: str | None) -> jax.Array:
  """psum(x) in value, but differentiated as the local x alone.

  A psum-ed loss would be differentiated through the psum: under pmap that sums every
  device's copy of the loss (axis_size times the true gradient). This way each device
  gets the gradient of its own share of the global loss; summing those over the axis
  (psum of grads under pmap, automatic for replicated params under shard_map) gives the
  global gradient, and the value is the global loss on every device.
  """
  if axis_name is None:
    return x
  return x + jax.lax.stop_gradient(jax.lax.psum(x, axis_name) - x)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
  # Guards both the value and the gradient when nothing is counted (den == 0).
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


# ----------------------------------------------------------------------------------------
# Advantages.
# ----------------------------------------------------------------------------------------


def _centre(rewards_bg: jax.Array) -> jax.Array:
  if rewards_bg.ndim != 2:
    raise ValueError(f"rewards must be [B, G] (prompts x rollouts), got {rewards_bg.shape}")
  rewards_bg = jnp.asarray(rewards_bg, jnp.float32)
  # Shifting by one member first makes an all-equal group centre to exact zeros; a plain
  # float32 mean of five 1.3s is off by an ulp, which group_std would blow up to ~1e-3.
  shifted_bg = rewards_bg - rewards_bg[:, :1]
  return shifted_bg - shifted_bg.mean(axis=1, keepdims=True)


@ADVANTAGE_ESTIMATORS.register("group_std")
def group_std_advantages(
  rewards_bg: jax.Array, *, eps: float = 1e-4, axis_name: str | None = None
) -> jax.Array:
  """GRPO: (r - mean_g) / (std_g + eps), std with Bessel's correction as in TRL."""
  del axis_name  # Groups never span devices.
  if rewards_bg.shape[-1] < 2:
    raise ValueError(
      "group_std advantages need at least 2 rollouts per prompt "
      f"(config.rl.num_generations), got {rewards_bg.shape[-1]}"
    )
  centred_bg = _centre(rewards_bg)
  std_b1 = jnp.sqrt((centred_bg**2).sum(1, keepdims=True) / (centred_bg.shape[1] - 1))
  return centred_bg / (std_b1 + eps)


@ADVANTAGE_ESTIMATORS.register("batch_std")
def batch_std_advantages(
  rewards_bg: jax.Array, *, eps: float = 1e-4, axis_name: str | None = None
) -> jax.Array:
  """(r - mean_g) / (std_batch + eps), std_batch the RMS of all group-centred rewards.

  One scale for the whole (global) batch keeps a group's reward spread meaningful, so
  a saliency bonus that widens a group's spread gives it larger advantages.
  """
  centred_bg = _centre(rewards_bg)
  sum_sq = _psum((centred_bg**2).sum(), axis_name)
  count = _psum(jnp.asarray(centred_bg.size, jnp.float32), axis_name)
  return centred_bg / (jnp.sqrt(sum_sq / count) + eps)


@ADVANTAGE_ESTIMATORS.register("none")
def centred_advantages(
  rewards_bg: jax.Array, *, eps: float = 1e-4, axis_name: str | None = None
) -> jax.Array:
  """Dr.GRPO: r - mean_g, no std scaling."""
  del eps, axis_name
  return _centre(rewards_bg)


def compute_advantages(
  rewards_bg: jax.Array,
  estimator: str = "batch_std",
  *,
  eps: float = 1e-4,
  axis_name: str | None = None,
) -> jax.Array:
  """Group-relative advantages [B, G] by the estimator named in the config.

  Args:
    rewards_bg: total reward per rollout, B prompts x G rollouts.
    estimator: a name in `ADVANTAGE_ESTIMATORS`.
    eps: added to stds, so groups whose rewards are all equal get zero advantages.
    axis_name: mapped axis over which the batch is split (batch-level statistics).

  Returns:
    float32 advantages [B, G].
  """
  return ADVANTAGE_ESTIMATORS.get(estimator)(rewards_bg, eps=eps, axis_name=axis_name)


def bonus_advantage_shift(
  rewards_bg: jax.Array,
  bonus_bg: jax.Array,
  estimator: str = "batch_std",
  *,
  eps: float = 1e-4,
  axis_name: str | None = None,
) -> jax.Array:
  """Mean |A(rewards) - A(rewards - bonus)|: how much the bonus moved the advantages.

  Args:
    rewards_bg: total rewards, bonus included.
    bonus_bg: the (weighted) saliency bonus inside `rewards_bg`.
    estimator, eps, axis_name: as in `compute_advantages`.

  Returns:
    A scalar over the global batch; ~0 when the bonus cancels (e.g. under "group_std").
  """
  with_bonus = compute_advantages(rewards_bg, estimator, eps=eps, axis_name=axis_name)
  without = compute_advantages(rewards_bg - bonus_bg, estimator, eps=eps, axis_name=axis_name)
  total = _psum(jnp.abs(with_bonus - without).sum(), axis_name)
  return total / _psum(jnp.asarray(with_bonus.size, jnp.float32), axis_name)


# ----------------------------------------------------------------------------------------
# Per-token policy losses and KL estimators.
# ----------------------------------------------------------------------------------------


@POLICY_LOSSES.register("clipped")
def clipped_surrogate(
  logratio_na: jax.Array, adv_n1: jax.Array, eps_low: float, eps_high: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) per token.

  Returns:
    (loss [N, A], clipped-low [N, A] bool, clipped-high [N, A] bool), where "clipped"
    means the clip bound is the active term, so the token gives no gradient.
  """
  ratio_na = jnp.exp(logratio_na)
  clipped_na = jnp.clip(ratio_na, 1.0 - eps_low, 1.0 + eps_high)
  loss_na = -jnp.minimum(ratio_na * adv_n1, clipped_na * adv_n1)
  low_na = (ratio_na < 1.0 - eps_low) & (adv_n1 < 0)
  high_na = (ratio_na > 1.0 + eps_high) & (adv_n1 > 0)
  return loss_na, low_na, high_na


@POLICY_LOSSES.register("unclipped")
def unclipped_surrogate(
  logratio_na: jax.Array, adv_n1: jax.Array, eps_low: float, eps_high: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """-rho A: importance-weighted policy gradient without a trust region (ablation)."""
  del eps_low, eps_high
  no_clip = jnp.zeros(logratio_na.shape, bool)
  return -jnp.exp(logratio_na) * adv_n1, no_clip, no_clip


@KL_ESTIMATORS.register("k3")
def kl_k3(logp_na: jax.Array, ref_logp_na: jax.Array) -> jax.Array:
  """exp(ref - logp) - (ref - logp) - 1: unbiased, non-negative (GRPO)."""
  d = ref_logp_na - logp_na
  return jnp.exp(d) - d - 1.0


@KL_ESTIMATORS.register("k1")
def kl_k1(logp_na: jax.Array, ref_logp_na: jax.Array) -> jax.Array:
  """logp - ref: unbiased, high variance, can be negative."""
  return logp_na - ref_logp_na


@KL_ESTIMATORS.register("k2")
def kl_k2(logp_na: jax.Array, ref_logp_na: jax.Array) -> jax.Array:
  """(logp - ref)^2 / 2: biased, low variance."""
  return 0.5 * (logp_na - ref_logp_na) ** 2


# ----------------------------------------------------------------------------------------
# Token aggregation.
# ----------------------------------------------------------------------------------------


@AGGREGATIONS.register("sequence_mean")
def sequence_mean(
  values_na: jax.Array, mask_na: jax.Array, *, max_tokens: int | None, axis_name: str | None
) -> jax.Array:
  """Mean over each response's tokens, then over responses that have any token."""
  del max_tokens
  tokens_n = mask_na.sum(1)
  per_seq_n = _safe_div((values_na * mask_na).sum(1), tokens_n)
  has_tokens_n = (tokens_n > 0).astype(values_na.dtype)
  return _safe_div(
    _global_sum((per_seq_n * has_tokens_n).sum(), axis_name), _psum(has_tokens_n.sum(), axis_name)
  )


@AGGREGATIONS.register("token_mean")
def token_mean(
  values_na: jax.Array, mask_na: jax.Array, *, max_tokens: int | None, axis_name: str | None
) -> jax.Array:
  """Sum over all tokens of the global batch / global token count."""
  del max_tokens
  return _safe_div(
    _global_sum((values_na * mask_na).sum(), axis_name), _psum(mask_na.sum(), axis_name)
  )


@AGGREGATIONS.register("dr_grpo")
def dr_grpo_sum(
  values_na: jax.Array, mask_na: jax.Array, *, max_tokens: int | None, axis_name: str | None
) -> jax.Array:
  """Sum over all tokens / (global number of responses x max_tokens), length-unbiased."""
  max_tokens = values_na.shape[1] if max_tokens is None else max_tokens
  num_seqs = _psum(jnp.asarray(values_na.shape[0], values_na.dtype), axis_name)
  return _global_sum((values_na * mask_na).sum(), axis_name) / (num_seqs * max_tokens)


# ----------------------------------------------------------------------------------------
# The loss.
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossConfig:
  """Settings of `grpo_loss`; hashable, so it can be a static jit argument.

  Attributes:
    policy_loss: a name in `POLICY_LOSSES`.
    eps_low: lower clip range, ratio >= 1 - eps_low.
    eps_high: upper clip range, ratio <= 1 + eps_high (DAPO raises it above eps_low).
    beta: KL coefficient; 0 needs no reference log-probs (skip the reference forward).
    kl_estimator: a name in `KL_ESTIMATORS`.
    aggregation: a name in `AGGREGATIONS`.
    max_tokens: the "dr_grpo" constant (max completion length); None: the padded T.
  """

  policy_loss: str = "clipped"
  eps_low: float = 0.2
  eps_high: float = 0.2
  beta: float = 0.04
  kl_estimator: str = "k3"
  aggregation: str = "sequence_mean"
  max_tokens: int | None = None

  def __post_init__(self):
    base.choice(self, "policy_loss", self.policy_loss, POLICY_LOSSES)
    base.choice(self, "kl_estimator", self.kl_estimator, KL_ESTIMATORS)
    base.choice(self, "aggregation", self.aggregation, AGGREGATIONS)
    require(
      is_number(self.eps_low, 0) and self.eps_low < 1,
      self,
      "eps_low",
      self.eps_low,
      "need 0 <= eps_low < 1",
    )
    require(is_number(self.eps_high, 0), self, "eps_high", self.eps_high, "need eps_high >= 0")
    require(
      is_number(self.beta, 0), self, "beta", self.beta, "need beta >= 0 (0 skips the reference)"
    )
    require(
      self.max_tokens is None or is_int(self.max_tokens, 1),
      self,
      "max_tokens",
      self.max_tokens,
      "need an int >= 1 or None",
    )


def grpo_loss(
  logp_na: jax.Array,
  advantages_n: jax.Array,
  mask_na: jax.Array,
  *,
  old_logp_na: jax.Array | None = None,
  ref_logp_na: jax.Array | None = None,
  entropy_na: jax.Array | None = None,
  config: LossConfig = LossConfig(),
  axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The (KF-)GRPO objective to minimise, and its diagnostics.

  loss = agg(policy_loss(logp - old_logp, A)) + beta * agg(KL(pi || pi_ref)).

  Args:
    logp_na: log-probs of the sampled completion tokens under the current params.
    advantages_n: one advantage per response (flattened [B, G]).
    mask_na: 1 on completion tokens, 0 on padding (bool or float weights).
    old_logp_na: log-probs stored by the rollout pass, the ratio's denominator for the
      mu inner iterations; None means on-policy (mu = 1): ratio 1, gradient A.
    ref_logp_na: frozen reference log-probs; required when beta > 0, optional (KL is
      then only logged) when beta = 0.
    entropy_na: optional per-token policy entropy (`VideoLanguageModel.token_logprobs(...,
      return_entropy=True)`), logged only.
    config: loss settings.
    axis_name: mapped axis the batch is split over; counts and sums become global.
      The loss then has the global value on every device, and its gradient is the
      gradient of this device's share: sum gradients over the axis (see `_global_sum`).

  Returns:
    (scalar loss, metrics: loss, pg_loss, kl (if ref_logp_na), clip_frac, clip_frac_low,
    clip_frac_high, ratio_mean, entropy (if entropy_na), num_tokens), the metrics
    replicated over `axis_name`.
  """
  if (
    logp_na.ndim != 2 or mask_na.shape != logp_na.shape or advantages_n.shape != (logp_na.shape[0],)
  ):
    raise ValueError(
      f"grpo_loss: need logp [N, A], mask [N, A], advantages [N]; got "
      f"{logp_na.shape}, {mask_na.shape}, {advantages_n.shape}"
    )
  if config.beta > 0 and ref_logp_na is None:
    raise ValueError(
      f"grpo_loss: beta={config.beta} needs ref_logp_na; pass the frozen "
      "reference's log-probs or set config.rl.beta=0"
    )
  mask_na = jnp.asarray(mask_na, jnp.float32)
  valid_na = mask_na > 0
  logp_na = logp_na.astype(jnp.float32)
  old_na = (
    jax.lax.stop_gradient(logp_na) if old_logp_na is None else old_logp_na.astype(jnp.float32)
  )
  # Padding may hold -inf log-probs; zeroing them first keeps values and grads finite.
  logratio_na = jnp.where(valid_na, logp_na - old_na, 0.0)
  adv_n1 = jnp.asarray(advantages_n, jnp.float32)[:, None]
  pg_na, low_na, high_na = POLICY_LOSSES.get(config.policy_loss)(
    logratio_na, adv_n1, config.eps_low, config.eps_high
  )

  aggregate = AGGREGATIONS.get(config.aggregation)

  def agg(values_na):
    return aggregate(values_na, mask_na, max_tokens=config.max_tokens, axis_name=axis_name)

  num_tokens = _psum(mask_na.sum(), axis_name)

  def token_avg(values_na):
    total = _psum((values_na.astype(jnp.float32) * mask_na).sum(), axis_name)
    return _safe_div(jax.lax.stop_gradient(total), num_tokens)

  pg_loss = agg(pg_na)
  loss = pg_loss
  metrics = {"pg_loss": pg_loss}
  if ref_logp_na is not None:
    safe_logp_na = jnp.where(valid_na, logp_na, 0.0)
    safe_ref_na = jnp.where(valid_na, ref_logp_na.astype(jnp.float32), 0.0)
    kl_na = KL_ESTIMATORS.get(config.kl_estimator)(safe_logp_na, safe_ref_na)
    if config.beta > 0:
      loss = loss + config.beta * agg(kl_na)
    metrics["kl"] = token_avg(kl_na)
  metrics.update(
    clip_frac_low=token_avg(low_na),
    clip_frac_high=token_avg(high_na),
    clip_frac=token_avg(low_na | high_na),
    ratio_mean=token_avg(jnp.exp(logratio_na)),
    num_tokens=num_tokens,
  )
  if entropy_na is not None:
    metrics["entropy"] = token_avg(jnp.where(valid_na, entropy_na, 0.0))
  metrics["loss"] = loss
  metrics = jax.tree.map(jax.lax.stop_gradient, metrics)
  if axis_name is not None:
    # The losses are per-device typed (see `_global_sum`) though equal everywhere; pmax
    # makes the metrics replicated, exactly.
    metrics["loss"] = jax.lax.pmax(metrics["loss"], axis_name)
    metrics["pg_loss"] = jax.lax.pmax(metrics["pg_loss"], axis_name)
  return loss, metrics
