r"""The paper's ablation in miniature: GRPO vs T-GRPO vs KF-GRPO from one SFT checkpoint.

  python -m launch.ablation --config=configs/ablation.py --out=ablation_out   (make ablation)
  python -m launch.ablation --config=configs/ablation.py:quick --out=ablation_quick
  python -m launch.ablation --config=configs/ablation.py:smoke --out=/tmp/ablation_smoke

One SFT checkpoint is trained on the learnable synthetic set (the `sft.base` training
config with every step SFT); then every arm x training keyframe selector x seed starts from
its params (`ckpt.init_from`) and runs `rl.steps` RL steps of the `rl.base` config; each
run is evaluated on the held-out split with its own selector, with ordered and with
shuffled keyframes.

Variants:
  full   (default) 3 seeds x {tad, uniform} x 3 arms = 18 RL runs of 120 steps;
         79 minutes measured on 2 CPU cores shared with other jobs (under the two-hour budget).
  quick  1 seed, TAD keyframes only, the three arms, 40 RL steps: about 12 minutes.
  smoke  configs/kf_grpo.py:smoke on configs/data.py:smoke, 2 steps per stage: seconds
         per run (tests).

Fields:
  data: the variant of configs/data.py the synthetic set is preprocessed with.
  seeds: one run per seed and arm and selector (sets `seed` and `input.seed`).
  selectors: training keyframe selectors (`tad.selector`); evaluation uses the run's own.
  arms: the arms to run, in the report's order; each names an entry of `arm_overrides`.
  arm_overrides: per arm, the training-config fields it sets, nested as the training
    config is (`--config.arm_overrides.tgrpo.rl.saliency.alpha=0.5`). They are written
    below as dotted fields (`arm_table`); add an arm there and name it in `arms`.
  sft.base: the configs/kf_grpo.py variant of the SFT stage (model, data pipeline,
    optimizer); the sft.* fields below override it.
  sft.steps: SFT steps of the shared starting checkpoint (stop at moderate accuracy, so
    RL has room to improve).
  sft.learning_rate: its peak learning rate (0: sft.base's optax.sft_learning_rate).
  sft.seed: its seed (model init and data order).
  rl.base: the configs/kf_grpo.py variant every arm run starts from (batch size, RL
    defaults); its model must be the SFT stage's. The rl.* fields below override it,
    then the arm's overrides.
  rl.steps: RL steps of every arm run.
  rl.learning_rate, rl.warmup_steps: the RL phase's optimizer schedule (optax.*).
  rl.beta: KL weight to the reference (the SFT policy); > 0 keeps a small policy anchored.
  rl.num_generations: G, ordered rollouts per question.
  rl.num_disordered: rollouts on the disordered view (the paper: G on each view; the
    tgrpo arm halves it as Video-R1 does).
  eval.mode: "likelihood" (option scoring; fast, deterministic) or "generate".
  eval.answer_template: the completion scored per option letter (the SFT target format).
  eval.frame_orders: evaluation controls: "ordered" (the score), "shuffled" (keyframes
    permuted: the order gap) and optionally "zeroed".
  eval.shuffle_seed: seed of the shuffled permutations (the same for every run).
  eval.max_questions: evaluate only the first N held-out questions (0: all).
  log_every: console progress interval of every training run (steps).
  ckpt_every: checkpoint interval of every training run (steps), so an interrupted run
    resumes close to where it stopped.
"""

from __future__ import annotations

import numbers
from typing import Any

import ml_collections

from configs import common
from configs import data as data_config
from configs import kf_grpo as kf_grpo_config

VARIANTS = ("full", "quick", "smoke")
FRAME_ORDERS = ("ordered", "shuffled", "zeroed")
SELECTORS = ("tad", "uniform")


def arm_table(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  """The arms: dotted training-config fields each one sets (the ablation's data).

  Every arm also gets the shared settings (`rl.*`, seed, selector, init_from) first;
  these overrides come last. Values may be references to the ablation config's fields
  (tgrpo's G/2 follows `--config.rl.num_generations`).
  """
  g = config.rl.get_ref("num_generations")
  return {
    # Plain GRPO: ordered rollouts only, no disordered view, per-group std.
    "grpo": {"rl.saliency.enabled": False, "rl.advantage_estimator": "group_std"},
    # Video-R1's T-GRPO: the disordered view is the keyframes shuffled (no
    # non-keyframes), G/2 shuffled rollouts, the ratio rule, per-group std (under
    # which the bonus cancels out of the advantages: PAPER.md, "Make the bonus count").
    "tgrpo": {
      "input.disorder_ratio": 0.0,
      "rl.advantage_estimator": "group_std",
      "rl.saliency.enabled": True,
      "rl.saliency.rule": "ratio",
      "rl.num_disordered": g // 2,
    },
    # KF-GRPO: hybrid disordered view (half non-keyframes), batch-level std.
    "kfgrpo": {
      "input.disorder_ratio": 0.5,
      "rl.advantage_estimator": "batch_std",
      "rl.saliency.enabled": True,
      "rl.saliency.rule": "ratio",
    },
  }


def _nested(dotted: dict[str, Any]) -> ml_collections.ConfigDict:
  """{"a.b": v} -> ConfigDict a.b = v (references are kept, so they stay lazy)."""
  out = ml_collections.ConfigDict()
  for key, value in dotted.items():
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
      if p not in node:
        node[p] = ml_collections.ConfigDict()
      node = node[p]
    node[leaf] = value
  return out


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`--config=configs/ablation.py[:VARIANT]` (full, quick or smoke)."""
  args = common.parse_arg(arg, variant="full")
  common.check_choice(args.variant, "variant", set(VARIANTS))
  v = args.variant

  c = ml_collections.ConfigDict()
  c.variant = v
  c.data = "demo"
  c.seeds = (0, 1, 2)
  c.selectors = SELECTORS
  c.arms = ("grpo", "tgrpo", "kfgrpo")

  # SFT: the cosine schedule spans sft.steps, so the length sets the end point. Measured
  # with the demo recipe on 200 held-out questions (TAD keyframes, chance 25%): 150 steps
  # end near chance (23-38%), 200 at ~50% ("last" questions 87%, "first" 14%; shuffled
  # keyframes ~26%), 300 at ~84%. 200 leaves RL room.
  c.sft = ml_collections.ConfigDict(dict(base="demo", steps=200, learning_rate=0.0, seed=0))
  # RL: the demo_rl recipe's small learning rate with the KL anchor (a large RL step
  # collapses a small policy: 1e-3 lost the answer format within 40 steps; 3e-4 held it
  # and left held-out accuracy where it was after 120 steps), G = 8 on each view (tgrpo:
  # G/2 shuffled).
  c.rl = ml_collections.ConfigDict(
    dict(
      base="demo_rl",
      steps=120,
      learning_rate=1e-4,
      warmup_steps=5,
      beta=0.04,
      num_generations=8,
      num_disordered=8,
    )
  )
  c.eval = ml_collections.ConfigDict(
    dict(
      mode="likelihood",
      answer_template="<think></think><answer>{letter}</answer>",
      frame_orders=("ordered", "shuffled"),
      shuffle_seed=0,
      max_questions=0,
    )
  )
  c.log_every = 10
  c.ckpt_every = 20

  if v == "quick":
    c.seeds = (0,)
    c.selectors = ("tad",)
    c.rl.steps = 40
  elif v == "smoke":
    c.sft.base = c.rl.base = "smoke"
    c.data = "smoke"
    c.seeds = (0,)
    c.sft.steps = 2
    c.rl.steps = 2
    c.rl.warmup_steps = 1
    c.rl.num_generations = 4
    c.rl.num_disordered = 4
    c.log_every = 1
    c.ckpt_every = 1

  c.arm_overrides = ml_collections.ConfigDict(
    {name: _nested(fields) for name, fields in arm_table(c).items()}
  )
  return c


def base_configs(
  config: ml_collections.ConfigDict,
) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """The training configs the SFT stage and the arm runs start from (configs/kf_grpo.py)."""
  return (kf_grpo_config.get_config(config.sft.base), kf_grpo_config.get_config(config.rl.base))


def data_arg(config: ml_collections.ConfigDict) -> str:
  """The `--config` of `launch.preprocess` for the synthetic set."""
  return f"configs/data.py:{config.data}"


def _int(x: Any) -> bool:
  return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _number(x: Any) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the ablation's own fields (the training configs are checked per run).

  Raises:
    common.ConfigError: naming the first bad field and what it accepts.
  """
  check = common.check
  common.check_choice(config.sft.base, "sft.base", set(kf_grpo_config.VARIANTS))
  common.check_choice(config.rl.base, "rl.base", set(kf_grpo_config.VARIANTS))
  common.check_choice(config.data, "data", set(data_config.VARIANTS))
  check(
    isinstance(config.seeds, (tuple, list))
    and len(config.seeds) >= 1
    and all(_int(s) and s >= 0 for s in config.seeds)
    and len(set(config.seeds)) == len(config.seeds),
    "seeds",
    f"got {config.seeds!r}; need distinct ints >= 0, e.g. (0, 1, 2)",
  )
  check(
    isinstance(config.selectors, (tuple, list))
    and len(config.selectors) >= 1
    and len(set(config.selectors)) == len(config.selectors),
    "selectors",
    f"got {config.selectors!r}; need distinct names from {SELECTORS}",
  )
  for s in config.selectors:
    common.check_choice(s, "selectors", set(SELECTORS))
  check(
    isinstance(config.arms, (tuple, list))
    and len(config.arms) >= 1
    and len(set(config.arms)) == len(config.arms),
    "arms",
    f"got {config.arms!r}; need distinct arm names",
  )
  for arm in config.arms:
    common.check_choice(arm, "arms", set(config.arm_overrides.keys()))
    check(
      arm.replace("_", "").isalnum(),
      "arms",
      f"got {arm!r}; arm names become folder names: letters, digits, '_'",
    )
  check(
    _int(config.sft.steps) and config.sft.steps >= 1,
    "sft.steps",
    f"got {config.sft.steps!r}; need an int >= 1",
  )
  check(
    _number(config.sft.learning_rate) and config.sft.learning_rate >= 0,
    "sft.learning_rate",
    f"got {config.sft.learning_rate!r}; need >= 0 (0: sft.base's)",
  )
  check(
    _int(config.sft.seed) and config.sft.seed >= 0,
    "sft.seed",
    f"got {config.sft.seed!r}; need an int >= 0",
  )
  check(
    _int(config.rl.steps) and config.rl.steps >= 1,
    "rl.steps",
    f"got {config.rl.steps!r}; need an int >= 1",
  )
  check(
    _number(config.rl.learning_rate) and config.rl.learning_rate > 0,
    "rl.learning_rate",
    f"got {config.rl.learning_rate!r}; need > 0",
  )
  check(
    _int(config.rl.warmup_steps) and config.rl.warmup_steps >= 0,
    "rl.warmup_steps",
    f"got {config.rl.warmup_steps!r}; need an int >= 0",
  )
  check(
    _number(config.rl.beta) and config.rl.beta >= 0, "rl.beta", f"got {config.rl.beta!r}; need >= 0"
  )
  check(
    _int(config.rl.num_generations) and config.rl.num_generations >= 2,
    "rl.num_generations",
    f"got {config.rl.num_generations!r}; need an int >= 2",
  )
  check(
    _int(config.rl.num_disordered) and config.rl.num_disordered >= 1,
    "rl.num_disordered",
    f"got {config.rl.num_disordered!r}; need an int >= 1",
  )
  common.check_choice(config.eval.mode, "eval.mode", {"likelihood", "generate"})
  check(
    "{letter}" in config.eval.answer_template,
    "eval.answer_template",
    f"got {config.eval.answer_template!r}; it must contain {{letter}}",
  )
  orders = tuple(config.eval.frame_orders)
  check(
    len(orders) >= 1
    and orders[0] == "ordered"
    and len(set(orders)) == len(orders)
    and all(o in FRAME_ORDERS for o in orders),
    "eval.frame_orders",
    f"got {orders!r}; need 'ordered' first, then any of {FRAME_ORDERS[1:]}",
  )
  check(
    _int(config.eval.shuffle_seed),
    "eval.shuffle_seed",
    f"got {config.eval.shuffle_seed!r}; need an int",
  )
  check(
    _int(config.eval.max_questions) and config.eval.max_questions >= 0,
    "eval.max_questions",
    f"got {config.eval.max_questions!r}; need an int >= 0 (0: all)",
  )
  for f in ("log_every", "ckpt_every"):
    check(_int(config[f]) and config[f] >= 1, f, f"got {config[f]!r}; need an int >= 1")
