"""`RLSettings`: the validated KF-GRPO settings the trainer runs on.

Built once from the `rl` config section (`RLSettings.from_config(config.rl)`; defaults
and variants live in configs/rl.py) and checked there, in `__post_init__`, before
anything compiles. Frozen and hashable, so the jitted steps close over it as a static
value. Each check lives with the type that owns the setting: the loss fields are
`grpo.LossConfig`'s, top-k/top-p are `sampling.SamplingParams`'s, the choices are the
registries' (`rewards.REWARDS`, `rewards.SALIENCY_RULES`, `grpo.ADVANTAGE_ESTIMATORS`,
...); errors name the config field (`rl.eps_low=1.5: ...`).

The trainer samples at temperature 1: the GRPO ratio and KL use the untempered
policy's log-probs, so that is not a setting.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from chronoforge_jax.models import sampling
from chronoforge_jax.rl import grpo, rewards


def _is_number(x: Any) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check(ok: bool, field: str, value: Any, need: str) -> None:
  if not ok:
    raise ValueError(f"rl.{field}={value!r}: {need}")


def _owned(prefix: str, build):
  """Builds a sub-settings object, naming its fields as the `rl` section does."""
  try:
    return build()
  except ValueError as e:
    message = str(e).replace("LossConfig.", "")
    raise ValueError(f"rl.{prefix}{message}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SaliencySettings:
  """The saliency-enhanced bonus (rewards.kf_grpo_rewards).

  Attributes:
    enabled: False gives plain GRPO (no disordered rollouts are sampled).
    rule: a name in `rewards.SALIENCY_RULES` ("ratio": p >= mu * p~; "strict": p > p~).
    alpha: the bonus for each correct ordered answer of a winning group.
    mu: the ratio rule's factor.
  """

  enabled: bool = True
  rule: str = "ratio"
  alpha: float = 0.3
  mu: float = 0.8

  def __post_init__(self):
    _check(isinstance(self.enabled, bool), "saliency.enabled", self.enabled, "need true/false")
    _check(
      self.rule in rewards.SALIENCY_RULES,
      "saliency.rule",
      self.rule,
      f"choose one of {rewards.SALIENCY_RULES.names()}",
    )
    _check(_is_number(self.alpha) and self.alpha >= 0, "saliency.alpha", self.alpha, "need >= 0")
    _check(_is_number(self.mu) and self.mu >= 0, "saliency.mu", self.mu, "need >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LengthBonusSettings:
  """Video-R1's length-control reward (rewards.length_bonus); off in the paper's reward."""

  enabled: bool = False
  bonus: float = 0.2
  min_tokens: int = 320
  max_tokens: int = 512
  min_correct: int = 2

  def __post_init__(self):
    _check(isinstance(self.enabled, bool), "length_bonus.enabled", self.enabled, "need true/false")
    _check(_is_number(self.bonus), "length_bonus.bonus", self.bonus, "need a number")
    _check(
      _is_int(self.min_tokens)
      and _is_int(self.max_tokens)
      and 0 <= self.min_tokens <= self.max_tokens,
      "length_bonus.min_tokens",
      (self.min_tokens, self.max_tokens),
      "need ints 0 <= min_tokens <= max_tokens",
    )
    _check(
      _is_int(self.min_correct) and self.min_correct >= 1,
      "length_bonus.min_correct",
      self.min_correct,
      "need an int >= 1",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLSettings:
  """KF-GRPO: rollouts, rewards, advantages and loss (configs/rl.py documents each field).

  Attributes:
    num_generations: G ordered-keyframe rollouts per prompt.
    num_disordered: G' hybrid-disordered rollouts per prompt (sampled with saliency on).
    train_on_disordered: the disordered rollouts also get a policy gradient.
    top_k, top_p: the sampler's filters (`sampling.SamplingParams`).
    max_new_tokens: the answer length cap A.
    reward_weights: ((name, weight), ...): text rewards, "saliency" and "length".
    mc_rule: a name in `rewards.MC_RULES`, how multiple-choice answers are read.
    saliency, length_bonus: the two bonus rewards.
    advantage_estimator: a name in `grpo.ADVANTAGE_ESTIMATORS`; advantage_eps its floor.
    loss: the surrogate / KL / aggregation settings (`grpo.LossConfig`).
    num_iterations: mu, policy updates per batch of rollouts.
    use_rollout_logps: with mu > 1, old log-probs from the sampler, not a second pass.
  """

  num_generations: int = 8
  num_disordered: int = 8
  train_on_disordered: bool = False
  top_k: int = 0
  top_p: float = 1.0
  max_new_tokens: int = 768
  reward_weights: tuple[tuple[str, float], ...] = (
    ("accuracy", 1.0),
    ("format", 1.0),
    ("saliency", 1.0),
    ("length", 1.0),
  )
  mc_rule: str = "lenient"
  saliency: SaliencySettings = SaliencySettings()
  length_bonus: LengthBonusSettings = LengthBonusSettings()
  advantage_estimator: str = "batch_std"
  advantage_eps: float = 1e-4
  loss: grpo.LossConfig = grpo.LossConfig()
  num_iterations: int = 1
  use_rollout_logps: bool = False

  def __post_init__(self):
    _check(
      _is_int(self.num_generations) and self.num_generations >= 2,
      "num_generations",
      self.num_generations,
      "group-relative advantages need an int >= 2",
    )
    _check(
      _is_int(self.num_disordered) and self.num_disordered >= 1,
      "num_disordered",
      self.num_disordered,
      "need an int >= 1",
    )
    _check(
      isinstance(self.train_on_disordered, bool),
      "train_on_disordered",
      self.train_on_disordered,
      "need true/false",
    )
    _check(
      not self.train_on_disordered or self.saliency.enabled,
      "train_on_disordered",
      self.train_on_disordered,
      "needs rl.saliency.enabled=true (no disordered rollouts are sampled otherwise)",
    )
    _owned("", lambda: sampling.SamplingParams(top_k=self.top_k, top_p=self.top_p))
    _check(
      _is_int(self.max_new_tokens) and self.max_new_tokens >= 1,
      "max_new_tokens",
      self.max_new_tokens,
      "need an int >= 1",
    )
    known = set(rewards.REWARDS.names()) | {"saliency", "length"}
    for name, weight in self.reward_weights:
      _check(
        name in known, f"reward_weights.{name}", weight, f"unknown reward; known: {sorted(known)}"
      )
      _check(_is_number(weight), f"reward_weights.{name}", weight, "need a finite number")
    _check(
      any(w != 0 for k, w in self.reward_weights if k not in ("saliency", "length")),
      "reward_weights",
      dict(self.reward_weights),
      "every text reward has weight 0; nothing would be learned",
    )
    for name, on in (("saliency", self.saliency.enabled), ("length", self.length_bonus.enabled)):
      _check(
        not on or name in self.weights,
        f"reward_weights.{name}",
        None,
        f"missing while rl.{name if name == 'saliency' else 'length_bonus'}.enabled=true; "
        "add a weight (1.0 by default)",
      )
    _check(
      self.mc_rule in rewards.MC_RULES,
      "mc_rule",
      self.mc_rule,
      f"choose one of {list(rewards.MC_RULES)}",
    )
    _check(
      self.advantage_estimator in grpo.ADVANTAGE_ESTIMATORS,
      "advantage_estimator",
      self.advantage_estimator,
      f"choose one of {grpo.ADVANTAGE_ESTIMATORS.names()}",
    )
    _check(
      _is_number(self.advantage_eps) and self.advantage_eps > 0,
      "advantage_eps",
      self.advantage_eps,
      "need a number > 0 (keeps equal-reward groups finite)",
    )
    _check(
      _is_int(self.num_iterations) and self.num_iterations >= 1,
      "num_iterations",
      self.num_iterations,
      "need an int >= 1",
    )
    _check(
      isinstance(self.use_rollout_logps, bool),
      "use_rollout_logps",
      self.use_rollout_logps,
      "need true/false",
    )

  @property
  def weights(self) -> dict[str, float]:
    """{reward name: weight}."""
    return dict(self.reward_weights)

  @property
  def beta(self) -> float:
    """The KL coefficient; 0 skips the frozen reference."""
    return self.loss.beta

  @property
  def trained_views(self) -> tuple[tuple[str, int], ...]:
    """(view, rollouts per prompt) of each view that gets a policy gradient."""
    views = (("ordered", self.num_generations),)
    if self.train_on_disordered:
      views += (("disordered", self.num_disordered),)
    return views

  @classmethod
  def from_config(cls, rl: Any) -> RLSettings:
    """The settings of an `rl` config section (configs/rl.py); ValueError names the field."""
    loss = _owned(
      "",
      lambda: grpo.LossConfig(
        policy_loss=rl.policy_loss,
        eps_low=rl.eps_low,
        eps_high=rl.eps_high,
        beta=rl.beta,
        kl_estimator=rl.kl_estimator,
        aggregation=rl.aggregation,
        max_tokens=rl.max_new_tokens if rl.aggregation == "dr_grpo" else None,
      ),
    )
    return cls(
      num_generations=rl.num_generations,
      num_disordered=rl.num_disordered,
      train_on_disordered=rl.train_on_disordered,
      top_k=rl.top_k,
      top_p=rl.top_p,
      max_new_tokens=rl.max_new_tokens,
      reward_weights=tuple(dict(rl.reward_weights).items()),
      mc_rule=rl.mc_rule,
      saliency=SaliencySettings(**dict(rl.saliency)),
      length_bonus=LengthBonusSettings(**dict(rl.length_bonus)),
      advantage_estimator=rl.advantage_estimator,
      advantage_eps=rl.advantage_eps,
      loss=loss,
      num_iterations=rl.num_iterations,
      use_rollout_logps=rl.get("use_rollout_logps", False),
    )
