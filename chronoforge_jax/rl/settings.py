"""`RLSettings`: the validated KF-GRPO settings the trainer runs on.

Built once from the `rl` config section (`RLSettings.from_config(config.rl)`; defaults
and variants live in configs/rl.py) and checked there, in `__post_init__`, before
anything compiles. Frozen and hashable, so the jitted steps close over it as a static
value. Each check lives with the type that owns the setting: the loss fields are
`grpo.LossConfig`'s, top-k/top-p are `sampling.SamplingParams`'s, the choices are the
registries' (`rewards.REWARDS`, `rewards.SALIENCY_RULES`, `grpo.ADVANTAGE_ESTIMATORS`,
...); errors name the config field (`config.rl.eps_low=1.5: ...`; chronoforge_jax/settings.py).

The trainer samples at temperature 1: the GRPO ratio and KL use the untempered
policy's log-probs, so that is not a setting.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from chronoforge_jax import settings as base
from chronoforge_jax.models import sampling
from chronoforge_jax.rl import grpo, rewards
from chronoforge_jax.settings import is_int, is_number, require


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
    require(isinstance(self.enabled, bool), self, "enabled", self.enabled, "need true/false")
    base.choice(self, "rule", self.rule, rewards.SALIENCY_RULES)
    require(is_number(self.alpha, 0), self, "alpha", self.alpha, "need a number >= 0")
    require(is_number(self.mu, 0), self, "mu", self.mu, "need a number >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LengthBonusSettings:
  """Video-R1's length-control reward (rewards.length_bonus); off in the paper's reward."""

  enabled: bool = False
  bonus: float = 0.2
  min_tokens: int = 320
  max_tokens: int = 512
  min_correct: int = 2

  def __post_init__(self):
    require(isinstance(self.enabled, bool), self, "enabled", self.enabled, "need true/false")
    require(is_number(self.bonus), self, "bonus", self.bonus, "need a number")
    require(
      is_int(self.min_tokens, 0) and is_int(self.max_tokens) and self.min_tokens <= self.max_tokens,
      self,
      "min_tokens",
      self.min_tokens,
      f"need ints 0 <= min_tokens <= max_tokens (max_tokens={self.max_tokens!r})",
    )
    require(is_int(self.min_correct, 1), self, "min_correct", self.min_correct, "need an int >= 1")


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
    require(
      is_int(self.num_generations, 2),
      self,
      "num_generations",
      self.num_generations,
      "group-relative advantages need an int >= 2",
    )
    require(
      is_int(self.num_disordered, 1),
      self,
      "num_disordered",
      self.num_disordered,
      "need an int >= 1",
    )
    for field in ("train_on_disordered", "use_rollout_logps"):
      value = getattr(self, field)
      require(isinstance(value, bool), self, field, value, "need true/false")
    require(
      not self.train_on_disordered or self.saliency.enabled,
      self,
      "train_on_disordered",
      self.train_on_disordered,
      "needs rl.saliency.enabled=true (no disordered rollouts are sampled otherwise)",
    )
    sampling.SamplingParams(top_k=self.top_k, top_p=self.top_p)  # Its own checks.
    require(
      is_int(self.max_new_tokens, 1),
      self,
      "max_new_tokens",
      self.max_new_tokens,
      "need an int >= 1",
    )
    known = set(rewards.REWARDS.names()) | {"saliency", "length"}
    for name, weight in self.reward_weights:
      field = f"reward_weights.{name}"
      require(name in known, self, field, weight, f"unknown reward; known: {sorted(known)}")
      require(is_number(weight), self, field, weight, "need a finite number")
    require(
      any(w != 0 for k, w in self.reward_weights if k not in ("saliency", "length")),
      self,
      "reward_weights",
      self.weights,
      "every text reward has weight 0; nothing would be learned",
    )
    for name, section, on in (
      ("saliency", "saliency", self.saliency.enabled),
      ("length", "length_bonus", self.length_bonus.enabled),
    ):
      require(
        not on or name in self.weights,
        self,
        f"reward_weights.{name}",
        None,
        f"missing while rl.{section}.enabled=true; add a weight (1.0 by default)",
      )
    base.choice(self, "mc_rule", self.mc_rule, rewards.MC_RULES)
    base.choice(self, "advantage_estimator", self.advantage_estimator, grpo.ADVANTAGE_ESTIMATORS)
    require(
      is_number(self.advantage_eps) and self.advantage_eps > 0,
      self,
      "advantage_eps",
      self.advantage_eps,
      "need a number > 0 (keeps equal-reward groups finite)",
    )
    require(
      is_int(self.num_iterations, 1),
      self,
      "num_iterations",
      self.num_iterations,
      "need an int >= 1",
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
  def sampled_views(self) -> tuple[tuple[str, int], ...]:
    """(view, rollouts per prompt) of each view sampled: the disordered view only with
    the saliency bonus on (its accuracy decides the bonus)."""
    views = (("ordered", self.num_generations),)
    if self.saliency.enabled:
      views += (("disordered", self.num_disordered),)
    return views

  @property
  def trained_views(self) -> tuple[tuple[str, int], ...]:
    """(view, rollouts per prompt) of each view that gets a policy gradient."""
    return self.sampled_views if self.train_on_disordered else self.sampled_views[:1]

  @classmethod
  def from_config(cls, rl: Any) -> RLSettings:
    """The settings of an `rl` config section (configs/rl.py).

    Raises:
      settings.SettingsError: naming the field as `config.rl.<field>`.
    """
    saliency = base.from_section(SaliencySettings, rl.saliency, "rl.saliency")
    length_bonus = base.from_section(LengthBonusSettings, rl.length_bonus, "rl.length_bonus")
    with base.renamed("config.rl"):
      loss = grpo.LossConfig(
        policy_loss=rl.policy_loss,
        eps_low=rl.eps_low,
        eps_high=rl.eps_high,
        beta=rl.beta,
        kl_estimator=rl.kl_estimator,
        aggregation=rl.aggregation,
        max_tokens=rl.max_new_tokens if rl.aggregation == "dr_grpo" else None,
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
        saliency=saliency,
        length_bonus=length_bonus,
        advantage_estimator=rl.advantage_estimator,
        advantage_eps=rl.advantage_eps,
        loss=loss,
        num_iterations=rl.num_iterations,
        use_rollout_logps=rl.get("use_rollout_logps", False),
      )
