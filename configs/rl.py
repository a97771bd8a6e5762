"""The `rl` config section: KF-GRPO rollouts, rewards, advantages and loss.

Other configs take it with `config.rl = rl.rl_config(variant)`; on its own,
`--config=configs/rl.py:smoke` shows the section. Variants: `default` (the paper's setup),
`demo`, `smoke` (seconds on a CPU). Override fields as `--config.rl.beta=0`.

Where the defaults come from (see ../shared/PAPER.md):

* The paper (ChronoForge-RL): G rollouts on each view, so `num_disordered` equals
  `num_generations`; the saliency-enhanced bonus for correct ordered answers when the
  ordered view wins; accuracy + format + bonus as the reward.
* Video-R1's T-GRPO, where the paper is silent: G = 8, bonus alpha = 0.3 when
  p >= mu * p~ with mu = 0.8 (`saliency.rule="ratio"`), disordered rollouts get no
  gradient, beta = 0.04 with the k3 KL, clip eps 0.2 both sides, one inner iteration
  (mu = 1, TRL's default), per-sequence token mean (GRPO), temperature 1.0, up to 768
  new tokens, reward weights 1. (Video-R1 used 4 shuffled rollouts.) Video-R1's length
  control (+0.2 for correct answers of 320-512 tokens in groups with two or more correct
  answers) is available as `length_bonus` but off: the paper's reward is accuracy +
  format + saliency.
* The project's own choice: `advantage_estimator="batch_std"`. With GRPO's per-group std
  ("group_std") a bonus given to every correct answer of a group cancels out of the
  advantages (PAPER.md, "Make the bonus count"), so the saliency reward would change
  nothing; one batch-level std (or "none", mean-only as in Dr.GRPO) keeps it effective.
  The trainer logs the advantage change the bonus caused.
"""

from __future__ import annotations

import math
import numbers

import ml_collections

from configs import common


def rl_config(variant: str = "default") -> ml_collections.ConfigDict:
  """The `rl` section for `variant` ("default", "demo" or "smoke")."""
  common.check_choice(variant, "rl.variant", {"default", "demo", "smoke"})
  c = ml_collections.ConfigDict()
  # Rollouts.
  c.num_generations = 8  # G ordered-keyframe rollouts per prompt (Video-R1: 8).
  c.num_disordered = 8  # G' hybrid-disordered rollouts (paper: G on each view).
  c.train_on_disordered = False  # True: disordered rollouts also get a policy gradient
  # (own advantages, no bonus; loss weighted by G and G').
  c.temperature = 1.0
  c.top_p = 1.0
  c.top_k = 0  # 0: no top-k filter.
  c.max_new_tokens = 768
  # Rewards: total = sum of weight * component; every component is logged on its own.
  c.reward_weights = ml_collections.ConfigDict(
    dict(accuracy=1.0, format=1.0, saliency=1.0, length=1.0)
  )
  # Multiple-choice accuracy: "lenient" reads wrapped letters and option text
  # (rewards.extract_choice); "videor1" wants the first <answer> span to be exactly the
  # letter (Video-R1's rule). The other problem types always use Video-R1's rules.
  c.mc_rule = "lenient"
  c.saliency = ml_collections.ConfigDict(
    dict(
      enabled=True,  # False: plain GRPO, no disordered rollouts.
      rule="ratio",  # "ratio": p >= mu * p~ (T-GRPO); "strict": p > p~.
      alpha=0.3,  # bonus for each correct ordered answer of a winning group.
      mu=0.8,
    )
  )
  c.length_bonus = ml_collections.ConfigDict(
    dict(
      enabled=False,  # True: Video-R1's length control reward ("length").
      bonus=0.2,  # for each correct ordered answer of moderate length,
      min_tokens=320,  # counted in completion tokens (the stop token included),
      max_tokens=512,
      min_correct=2,  # only in groups with at least this many correct answers.
    )
  )
  # Advantages.
  c.advantage_estimator = "batch_std"  # "group_std" (GRPO), "batch_std", "none" (Dr.GRPO).
  c.advantage_eps = 1e-4
  # Loss.
  c.policy_loss = "clipped"
  c.eps_low = 0.2
  c.eps_high = 0.2
  c.beta = 0.04  # 0 skips the reference model's forward pass.
  c.kl_estimator = "k3"
  c.num_iterations = 1  # mu: policy updates per batch of rollouts.
  # With mu > 1 the ratio's denominator (old_logp): False runs a log-prob pass of the
  # rollout policy; True takes the sampler's own log_softmax(logits) of each drawn token
  # (tunix's use_rollout_logps): one forward pass fewer, equal within float rounding
  # when sampler and trainer compute in the same dtype.
  c.use_rollout_logps = False
  c.aggregation = "sequence_mean"  # "sequence_mean" (GRPO), "token_mean", "dr_grpo".

  if variant == "demo":
    c.num_generations = 4
    c.num_disordered = 4
    c.max_new_tokens = 64
  elif variant == "smoke":
    c.num_generations = 4
    c.num_disordered = 4
    c.max_new_tokens = 16
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`--config=configs/rl.py:VARIANT`: a config holding only the `rl` section."""
  args = common.parse_arg(arg, variant="default")
  config = ml_collections.ConfigDict()
  config.rl = rl_config(args.variant)
  return config


def _is_number(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def validate_rl(cfg: ml_collections.ConfigDict) -> None:
  """Checks the `rl` section (or a config holding one) before anything is compiled.

  Raises:
    common.ConfigError: naming the first bad field and what it accepts.
  """
  # Imported here so that reading a config does not import JAX.
  from chronoforge_jax.rl import grpo, rewards

  rl = cfg.rl if "rl" in cfg else cfg
  check = common.check
  check(
    _is_int(rl.num_generations) and rl.num_generations >= 2,
    "rl.num_generations",
    f"got {rl.num_generations!r}; group-relative advantages need an int >= 2",
  )
  check(
    _is_int(rl.num_disordered) and rl.num_disordered >= 1,
    "rl.num_disordered",
    f"got {rl.num_disordered!r}; need an int >= 1",
  )
  check(
    isinstance(rl.train_on_disordered, bool),
    "rl.train_on_disordered",
    f"got {rl.train_on_disordered!r}; need true/false",
  )
  check(
    not rl.train_on_disordered or rl.saliency.enabled,
    "rl.train_on_disordered",
    "needs rl.saliency.enabled=true (no disordered rollouts are sampled otherwise)",
  )
  check(
    _is_number(rl.temperature) and rl.temperature > 0,
    "rl.temperature",
    f"got {rl.temperature!r}; need a number > 0",
  )
  check(
    _is_number(rl.top_p) and 0 < rl.top_p <= 1, "rl.top_p", f"got {rl.top_p!r}; need 0 < top_p <= 1"
  )
  check(
    _is_int(rl.top_k) and rl.top_k >= 0, "rl.top_k", f"got {rl.top_k!r}; need an int >= 0 (0: off)"
  )
  check(
    _is_int(rl.max_new_tokens) and rl.max_new_tokens >= 1,
    "rl.max_new_tokens",
    f"got {rl.max_new_tokens!r}; need an int >= 1",
  )

  known = set(rewards.REWARDS.names()) | {"saliency", "length"}
  for name, weight in rl.reward_weights.items():
    check(name in known, f"rl.reward_weights.{name}", f"unknown reward; known: {sorted(known)}")
    check(_is_number(weight), f"rl.reward_weights.{name}", f"got {weight!r}; need a finite number")
  check(
    any(w != 0 for k, w in rl.reward_weights.items() if k != "saliency"),
    "rl.reward_weights",
    "every text reward has weight 0; nothing would be learned",
  )

  common.check_choice(rl.mc_rule, "rl.mc_rule", set(rewards.MC_RULES))

  s = rl.saliency
  check(isinstance(s.enabled, bool), "rl.saliency.enabled", f"got {s.enabled!r}; need true/false")
  common.check_choice(s.rule, "rl.saliency.rule", set(rewards.SALIENCY_RULES.names()))
  check(
    _is_number(s.alpha) and s.alpha >= 0,
    "rl.saliency.alpha",
    f"got {s.alpha!r}; need a number >= 0",
  )
  check(_is_number(s.mu) and s.mu >= 0, "rl.saliency.mu", f"got {s.mu!r}; need a number >= 0")
  check(
    not s.enabled or "saliency" in rl.reward_weights,
    "rl.reward_weights.saliency",
    "missing while rl.saliency.enabled=true; add a weight (1.0 by default)",
  )

  lb = rl.length_bonus
  check(
    isinstance(lb.enabled, bool), "rl.length_bonus.enabled", f"got {lb.enabled!r}; need true/false"
  )
  check(_is_number(lb.bonus), "rl.length_bonus.bonus", f"got {lb.bonus!r}; need a number")
  check(
    _is_int(lb.min_tokens) and _is_int(lb.max_tokens) and 0 <= lb.min_tokens <= lb.max_tokens,
    "rl.length_bonus.min_tokens",
    f"got [{lb.min_tokens!r}, {lb.max_tokens!r}]; need ints 0 <= min_tokens <= max_tokens",
  )
  check(
    _is_int(lb.min_correct) and lb.min_correct >= 1,
    "rl.length_bonus.min_correct",
    f"got {lb.min_correct!r}; need an int >= 1",
  )
  check(
    not lb.enabled or "length" in rl.reward_weights,
    "rl.reward_weights.length",
    "missing while rl.length_bonus.enabled=true; add a weight (1.0 by default)",
  )

  common.check_choice(
    rl.advantage_estimator, "rl.advantage_estimator", set(grpo.ADVANTAGE_ESTIMATORS.names())
  )
  check(
    _is_number(rl.advantage_eps) and rl.advantage_eps > 0,
    "rl.advantage_eps",
    f"got {rl.advantage_eps!r}; need a number > 0 (keeps equal-reward groups finite)",
  )
  common.check_choice(rl.policy_loss, "rl.policy_loss", set(grpo.POLICY_LOSSES.names()))
  check(
    _is_number(rl.eps_low) and 0 <= rl.eps_low < 1,
    "rl.eps_low",
    f"got {rl.eps_low!r}; need 0 <= eps_low < 1",
  )
  check(
    _is_number(rl.eps_high) and rl.eps_high >= 0,
    "rl.eps_high",
    f"got {rl.eps_high!r}; need eps_high >= 0",
  )
  check(
    _is_number(rl.beta) and rl.beta >= 0,
    "rl.beta",
    f"got {rl.beta!r}; need beta >= 0 (0 skips the reference model)",
  )
  common.check_choice(rl.kl_estimator, "rl.kl_estimator", set(grpo.KL_ESTIMATORS.names()))
  check(
    _is_int(rl.num_iterations) and rl.num_iterations >= 1,
    "rl.num_iterations",
    f"got {rl.num_iterations!r}; need an int >= 1",
  )
  check(
    isinstance(rl.get("use_rollout_logps", False), bool),
    "rl.use_rollout_logps",
    f"got {rl.get('use_rollout_logps')!r}; need true/false",
  )
  common.check_choice(rl.aggregation, "rl.aggregation", set(grpo.AGGREGATIONS.names()))
