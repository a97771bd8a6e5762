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
  (mu = 1, TRL's default), per-sequence token mean (GRPO), up to 768 new tokens, reward
  weights 1, temperature 1.0 (not a setting: the ratio and KL use the untempered policy's
  log-probs). (Video-R1 used 4 shuffled rollouts.) Video-R1's length control (+0.2 for
  correct answers of 320-512 tokens in groups with two or more correct answers) is
  available as `length_bonus` but off: the paper's reward is accuracy + format + saliency.
* The project's own choice: `advantage_estimator="batch_std"`. With GRPO's per-group std
  ("group_std") a bonus given to every correct answer of a group cancels out of the
  advantages (PAPER.md, "Make the bonus count"), so the saliency reward would change
  nothing; one batch-level std (or "none", mean-only as in Dr.GRPO) keeps it effective.
  The trainer logs the advantage change the bonus caused.
"""

from __future__ import annotations

import ml_collections

from chronoforge_jax.rl import settings
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


def validate_rl(cfg: ml_collections.ConfigDict) -> None:
  """Checks the `rl` section (or a config holding one) before anything is compiled.

  The checks are `RLSettings`'s (chronoforge_jax/rl/settings.py).

  Raises:
    common.ConfigError: naming the first bad field (`config.rl.<field>`) and what it
      accepts.
  """
  common.build(settings.RLSettings.from_config, cfg.rl if "rl" in cfg else cfg)
