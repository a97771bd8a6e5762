"""The paper's ablation in miniature: arms, runs, confidence intervals and the report.

  runs = ablation.plan(ablation_config)                        # arm x selector x seed
  config = ablation.run_config(ablation_config, rl_base, runs[0], train_dir=..., init_from=...)
  ablation.run_ablation(ablation_config, sft_base=..., rl_base=..., out="ablation_out", ...)
  ablation.write_report("ablation_out", summaries, sft=sft_summary, metrics=records)

One SFT checkpoint, then every arm (a set of dotted training-config overrides: plain
GRPO, T-GRPO, KF-GRPO) x training keyframe selector x seed starts from its params
(`ckpt.init_from`) and runs RL; each run is evaluated on the held-out split with ordered
and with shuffled keyframes. Each stage leaves `summary.json` in its folder when it is
complete; a rerun skips those stages, and an interrupted training run resumes from its own
checkpoint (the trainer's resume order). A stage whose folder was made with another
config is refused rather than silently reused (`run_config.json` is compared).

Statistics: per (arm, selector), the mean over seeds and its 95% confidence interval
mean +- t(0.975, n - 1) * s / sqrt(n) (Student's t; s the sample standard deviation),
undefined for one seed. The "Reading" paragraphs of the report are sentences computed
from those numbers.

The library takes the base training configs and their validator from the caller
(launch/ablation.py), so it imports no config module.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp
from matplotlib.figure import Figure
import ml_collections
import numpy as np
from scipy import stats

from chronoforge_jax import fileio
from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax.evaluation import evaluator as eval_lib
from chronoforge_jax.evaluation import report
from chronoforge_jax.train import loop
from chronoforge_jax.train import metrics as metrics_lib
from chronoforge_jax.train import state as state_lib

SUMMARY = "summary.json"
RUN_CONFIG = "run_config.json"
CURVE_METRICS = (
  ("reward/accuracy", "accuracy reward"),
  ("reward/total", "total reward"),
  ("saliency/order_win_frac", "saliency bonus fired (share of groups)"),
)
FIRE_METRIC, SHIFT_METRIC = "saliency/order_win_frac", "adv/bonus_shift"
RARE = 0.05  # The Reading calls a bonus firing in fewer groups than this rare,
NO_SHIFT = 1e-3  # and a mean advantage shift below this none.


class ConfigMismatch(ValueError):
  """An override names no training-config field, or a folder holds another config's run."""


# ---------------------------------------------------------------------------------------
# Confidence intervals.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeanCI:
  """Mean of n values and its two-sided confidence interval (NaN bounds for n < 2)."""

  n: int
  mean: float
  low: float
  high: float

  @property
  def half_width(self) -> float:
    return (self.high - self.low) / 2

  def overlaps(self, other: MeanCI) -> bool:
    """Whether the intervals share a point (always True when either is undefined)."""
    if not (math.isfinite(self.half_width) and math.isfinite(other.half_width)):
      return True
    return self.low <= other.high and other.low <= self.high

  def contains(self, x: float) -> bool:
    return not math.isfinite(self.half_width) or self.low <= x <= self.high


def t_quantile(df: int, q: float = 0.975) -> float:
  """Student's t quantile (scipy, a JAX dependency): t_quantile(2) = 4.3027."""
  if df < 1:
    raise ValueError(f"df={df}: need >= 1")
  return float(stats.t.ppf(q, df))


def mean_ci(values: Sequence[float], level: float = 0.95) -> MeanCI:
  """The mean of `values` (NaNs dropped) and its t-interval at `level`."""
  x = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
  n = len(x)
  if n == 0:
    return MeanCI(n=0, mean=math.nan, low=math.nan, high=math.nan)
  mean = float(x.mean())
  if n < 2:
    return MeanCI(n=1, mean=mean, low=math.nan, high=math.nan)
  half = t_quantile(n - 1, 0.5 + level / 2) * float(x.std(ddof=1)) / math.sqrt(n)
  return MeanCI(n=n, mean=mean, low=mean - half, high=mean + half)


# ---------------------------------------------------------------------------------------
# Arms and runs: training configs.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Run:
  """One RL run: an arm trained with one keyframe selector and one seed."""

  arm: str
  selector: str
  seed: int

  @property
  def name(self) -> str:
    return f"{self.arm}_{self.selector}_s{self.seed}"


def plan(ablation: ml_collections.ConfigDict) -> list[Run]:
  """Every run of the ablation, arm-major (arms, then selectors, then seeds)."""
  return [
    Run(arm=a, selector=s, seed=int(seed))
    for a in ablation.arms
    for s in ablation.selectors
    for seed in ablation.seeds
  ]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1} (ConfigDict references resolved)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def apply_overrides(
  config: ml_collections.ConfigDict, overrides: Mapping[str, Any], *, source: str
) -> None:
  """Sets dotted fields of `config` in place; every field must already exist.

  Raises:
    ConfigMismatch: naming `source` and the field that does not exist or has the wrong
      type.
  """
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = config
    for i, key in enumerate(parents + [leaf]):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        raise ConfigMismatch(
          f"config.{source}.{dotted}: the training config has no "
          f"field {'.'.join(parents[:i] + [key])!r}"
        )
      if i < len(parents):
        node = node[key]
    try:
      with node.unlocked():
        node[leaf] = value.tolist() if isinstance(value, np.generic) else value
    except TypeError as e:
      raise ConfigMismatch(f"config.{source}.{dotted}: {e}") from None


def _start(
  ablation: ml_collections.ConfigDict, base: ml_collections.ConfigDict, train_dir: str
) -> ml_collections.ConfigDict:
  config = copy.deepcopy(base)
  apply_overrides(
    config,
    {
      "input.data_dir": os.path.abspath(train_dir),
      "log_every": ablation.log_every,
      "ckpt.save_every": ablation.ckpt_every,
    },
    source="base",
  )
  return config


def sft_config(
  ablation: ml_collections.ConfigDict, base: ml_collections.ConfigDict, *, train_dir: str
) -> ml_collections.ConfigDict:
  """The shared SFT run: `base` (sft.base's config) with all `sft.steps` steps SFT."""
  config = _start(ablation, base, train_dir)
  s = ablation.sft
  fields = {"total_steps": s.steps, "sft_steps": s.steps, "seed": s.seed, "input.seed": s.seed}
  if s.learning_rate > 0:
    fields["optax.sft_learning_rate"] = s.learning_rate
  apply_overrides(config, fields, source="sft")
  return config


def run_config(
  ablation: ml_collections.ConfigDict,
  base: ml_collections.ConfigDict,
  run: Run,
  *,
  train_dir: str,
  init_from: str,
) -> ml_collections.ConfigDict:
  """One arm run's training config: base <- shared RL settings <- the arm's overrides.

  Args:
    ablation: the ablation config (configs/ablation.py).
    base: the arms' base training config (configs/kf_grpo.py:<ablation.rl.base>).
    run: which arm, selector and seed.
    train_dir: the preprocessed training split.
    init_from: the SFT checkpoint directory (params-only start).

  Returns:
    A new training config (`base` is not modified).
  """
  config = _start(ablation, base, train_dir)
  rl = ablation.rl
  apply_overrides(
    config,
    {
      "seed": run.seed,
      "input.seed": run.seed,
      "tad.selector": run.selector,
      "sft_steps": 0,
      "total_steps": rl.steps,
      "ckpt.init_from": os.path.abspath(init_from),
      "optax.learning_rate": rl.learning_rate,
      "optax.warmup_steps": rl.warmup_steps,
      "rl.beta": rl.beta,
      "rl.num_generations": rl.num_generations,
      "rl.num_disordered": rl.num_disordered,
    },
    source="rl",
  )
  if run.arm not in ablation.arm_overrides:
    raise ConfigMismatch(
      f"config.arms: no arm_overrides entry for {run.arm!r}; known: "
      f"{sorted(ablation.arm_overrides.keys())}"
    )
  apply_overrides(
    config, flatten(ablation.arm_overrides[run.arm]), source=f"arm_overrides.{run.arm}"
  )
  return config


def _jsonable(x: Any) -> Any:
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)
  return x if isinstance(x, (str, int, float, bool, type(None))) else str(x)


def config_record(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The training config as a flat JSON-able dict (what `run_config.json` holds)."""
  return {k: _jsonable(v) for k, v in sorted(flatten(config).items())}


def check_same_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Records the config of a stage; refuses a folder made with a different one.

  Only fields both configs have are compared: a field the code gained (or lost) since the
  folder was made is not a difference (new fields default to the old behaviour), so a
  finished ablation still resumes after an update; such fields are printed.

  Raises:
    ConfigMismatch: listing the fields that differ, when `workdir` holds another config.
  """
  path = os.path.join(workdir, RUN_CONFIG)
  record = config_record(config)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = [
      f"{k}: {old[k]!r} -> {record[k]!r}"
      for k in sorted(set(old) & set(record))
      if old[k] != record[k]
    ]
    if diff:
      raise ConfigMismatch(
        f"{workdir} was made with a different config ({'; '.join(diff[:6])}"
        f"{'; ...' if len(diff) > 6 else ''}); delete that folder to redo it, or use "
        "another --out"
      )
    changed = sorted(set(old) ^ set(record))
    if changed:
      print(
        f"  {workdir}: config fields added or removed since it was made (not compared): "
        + ", ".join(changed),
        flush=True,
      )
    return
  write_json(path, record)


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (configs' tuples and the like made JSON-able)."""
  fileio.write_json_atomic(path, obj, default=_jsonable)


def read_summary(workdir: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, SUMMARY)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------
# Training and evaluating one stage.
# ---------------------------------------------------------------------------------------


def _latest_step(workdir: str, config: ml_collections.ConfigDict) -> int:
  ckpt_dir = os.path.join(workdir, config.ckpt.subdir)
  steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
  return max(steps, default=0)


def _train(config: ml_collections.ConfigDict, workdir: str) -> None:
  loop.train_and_evaluate(config, workdir)
  step = _latest_step(workdir, config)
  if step < config.total_steps:
    raise InterruptedError(
      f"{workdir} stopped at step {step} of {config.total_steps}; "
      "rerun the same command to resume it"
    )


def evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  eval_dir: str,
  ablation: ml_collections.ConfigDict,
  selectors: Sequence[str],
) -> dict[str, dict[str, Any]]:
  """Evaluates the stage's final checkpoint on the held-out split.

  The settings are the training config's (`EvalSettings.from_train_config`: its K, TAD
  settings, patches and prompts) with the ablation's `eval` section (mode, answer
  template, frame orders and their seed, max questions).

  Returns:
    {selector: {frame order: {"accuracy", "num_questions", "task_type": {type: acc}}}};
    the full results go to `<workdir>/eval/<selector>_<order>.{json,jsonl,md}`.
  """
  tok = tokenizer_lib.Tokenizer.from_dir(
    config.input.tokenizer_dir or os.path.join(config.input.data_dir, "tokenizer")
  )
  model = eval_lib.load_model(
    state_lib.model_config(config, tok),
    checkpoint=os.path.join(workdir, config.ckpt.subdir),
    dtype=jnp.dtype(config.model.dtype),
    param_dtype=jnp.dtype(config.model.param_dtype),
    seed=config.seed,
    attention_impl=config.model.attention_impl,
  )
  e = ablation.eval
  base = eval_lib.EvalSettings.from_train_config(
    config,
    mode=e.mode,
    answer_template=e.answer_template,
    max_questions=e.max_questions or None,
    frame_order_seed=e.shuffle_seed,
  )
  out: dict[str, dict[str, Any]] = {}
  for selector in selectors:
    out[selector] = {}
    for order in e.frame_orders:
      result = eval_lib.evaluate(
        model,
        eval_dir,
        tok,
        base.replace(selector=selector, frame_order=order),
        name=f"{selector}_{order}",
        out_dir=os.path.join(workdir, "eval"),
        progress=False,
        meta={"checkpoint": workdir},
      )
      t = result.tables
      out[selector][order] = {
        "accuracy": t["overall"]["accuracy"],
        "num_questions": t["overall"]["num_questions"],
        "task_type": {k: v["accuracy"] for k, v in t["task_type"].items()},
      }
  return out


def train_stats(workdir: str) -> dict[str, float | None]:
  """Means over the logged steps of the bonus firing rate and its advantage shift."""
  path = os.path.join(workdir, metrics_lib.JSONL_NAME)
  records = metrics_lib.read_jsonl(path) if os.path.exists(path) else []

  def mean(name):
    vals = [
      r[name] for r in records if isinstance(r.get(name), (int, float)) and math.isfinite(r[name])
    ]
    return float(np.mean(vals)) if vals else None

  fired = mean(FIRE_METRIC)  # Logged only when the arm samples a disordered view.
  return {
    "steps": max((int(r.get("step", 0)) for r in records), default=0),
    "bonus_fired": fired,
    "bonus_shift": None if fired is None else mean(SHIFT_METRIC),
    "final_reward_accuracy": next(
      (r["reward/accuracy"] for r in reversed(records) if "reward/accuracy" in r), None
    ),
  }


# ---------------------------------------------------------------------------------------
# The whole ablation.
# ---------------------------------------------------------------------------------------


def build_configs(
  ablation: ml_collections.ConfigDict,
  sft_base: ml_collections.ConfigDict,
  rl_base: ml_collections.ConfigDict,
  *,
  out: str,
  train_dir: str,
  check_config: Callable[[ml_collections.ConfigDict], None],
) -> tuple[ml_collections.ConfigDict, dict[str, ml_collections.ConfigDict]]:
  """The SFT config and every run's config (by run name), each checked.

  Call it before anything slow: a bad override fails in seconds.

  Raises:
    The error of `check_config` (or ConfigMismatch), prefixed with the stage it is about.
  """
  if flatten(sft_base.model) != flatten(rl_base.model):
    raise ConfigMismatch(
      f"config.rl.base: the {ablation.rl.base!r} model differs from the "
      f"SFT stage's ({ablation.sft.base!r}); the arms start from its params"
    )
  sft_cfg = sft_config(ablation, sft_base, train_dir=train_dir)
  init_from = os.path.join(os.path.abspath(out), "sft", sft_cfg.ckpt.subdir)
  configs = {}
  for stage, make in [("sft", lambda: sft_cfg)] + [
    (
      f"runs/{r.name}",
      functools.partial(run_config, ablation, rl_base, r, train_dir=train_dir, init_from=init_from),
    )
    for r in plan(ablation)
  ]:
    try:
      config = make()
      check_config(config)
    except ValueError as e:
      raise type(e)(f"{stage}: {e}") from None
    if stage != "sft":
      configs[stage.split("/", 1)[1]] = config
  return sft_cfg, configs


def run_ablation(
  ablation: ml_collections.ConfigDict,
  *,
  sft_base: ml_collections.ConfigDict,
  rl_base: ml_collections.ConfigDict,
  out: str,
  train_dir: str,
  eval_dir: str,
  check_config: Callable[[ml_collections.ConfigDict], None],
  say: Callable[[str], None] = print,
) -> str:
  """SFT once, every arm run from it, evaluations, then the report.

  Args:
    ablation: the ablation config (configs/ablation.py, validated).
    sft_base, rl_base: the training configs of the SFT stage and of the arm runs.
    out: the output folder (reused to resume).
    train_dir, eval_dir: the preprocessed training and held-out splits.
    check_config: validates a training config (raises naming the bad field).
    say: progress output.

  Returns:
    The report's path.
  """
  out = os.path.abspath(out)
  sft_dir = os.path.join(out, "sft")
  sft_cfg, configs = build_configs(
    ablation, sft_base, rl_base, out=out, train_dir=train_dir, check_config=check_config
  )
  runs = plan(ablation)

  say(f"\n== 2/4 sft: {ablation.sft.steps} SFT steps ({sft_base.model.preset} model) -> {sft_dir}")
  sft = _stage(
    sft_dir,
    sft_cfg,
    {"name": "sft", "steps": ablation.sft.steps},
    ablation,
    list(ablation.selectors),
    eval_dir,
    say,
    "  SFT",
  )
  for selector, ev in sft["eval"].items():
    say(f"  SFT, {selector} keyframes: " + _accuracy_line(ev))

  say(
    f"\n== 3/4 arms: {len(runs)} runs ({len(ablation.arms)} arms x "
    f"{len(ablation.selectors)} selectors x {len(ablation.seeds)} seeds), "
    f"{ablation.rl.steps} RL steps each"
  )
  summaries = []
  for i, run in enumerate(runs, 1):
    config = configs[run.name]
    head = f"[{i}/{len(runs)}] {run.name}"
    summary = _stage(
      os.path.join(out, "runs", run.name),
      config,
      {**dataclasses.asdict(run), "name": run.name, "steps": config.total_steps},
      ablation,
      [run.selector],
      eval_dir,
      say,
      head,
    )
    say(f"{head}: " + _accuracy_line(summary["eval"][run.selector]))
    summaries.append(summary)

  say("\n== 4/4 report")
  metrics = {}
  for s in summaries:
    path = os.path.join(out, "runs", s["name"], metrics_lib.JSONL_NAME)
    if os.path.exists(path):
      metrics[s["name"]] = metrics_lib.read_jsonl(path)
  path = write_report(
    out,
    summaries,
    sft=sft,
    metrics=metrics,
    arms=list(ablation.arms),
    selectors=list(ablation.selectors),
  )
  say(f"  {path}")
  return path


def _stage(
  workdir: str,
  config: ml_collections.ConfigDict,
  head: dict[str, Any],
  ablation: ml_collections.ConfigDict,
  selectors: list[str],
  eval_dir: str,
  say: Callable[[str], None],
  label: str,
) -> dict[str, Any]:
  """Trains (or resumes) and evaluates one stage unless its summary.json is current.

  A summary made with other evaluation settings or selectors is redone from the
  finished checkpoint, without training again.
  """
  os.makedirs(workdir, exist_ok=True)
  check_same_config(workdir, config)
  settings = {k: _jsonable(v) for k, v in flatten(ablation.eval).items()}
  summary = read_summary(workdir)
  if (
    summary is not None
    and summary.get("eval_settings") == settings
    and set(selectors) <= set(summary["eval"])
  ):
    say(f"{label}: skipped (done: {os.path.basename(workdir)}/{SUMMARY})")
    return summary
  t0 = time.perf_counter()
  step = _latest_step(workdir, config)
  if summary is not None:
    say(f"{label}: trained; evaluating again (the evaluation settings or selectors changed)")
  else:
    say(
      f"{label}: "
      + (
        f"resuming at step {step} of {config.total_steps}"
        if step
        else f"training {config.total_steps} steps"
      )
    )
    _train(config, workdir)
  summary = {
    **head,
    "eval": evaluate(config, workdir, eval_dir, ablation, selectors),
    "eval_settings": settings,
    "train": train_stats(workdir),
    "seconds": round(time.perf_counter() - t0, 1),
  }
  write_json(os.path.join(workdir, SUMMARY), summary)
  return summary


def _accuracy_line(ev: Mapping[str, Any]) -> str:
  return ", ".join(f"{order} {v['accuracy']:.1%}" for order, v in ev.items()) + (
    f" (n={next(iter(ev.values()))['num_questions']})" if ev else ""
  )


# ---------------------------------------------------------------------------------------
# Aggregation and the report.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cell:
  """One (arm, selector) over its seeds."""

  arm: str
  selector: str
  accuracy: MeanCI
  shuffled: MeanCI | None
  gap: MeanCI | None  # ordered minus shuffled accuracy, per seed.
  task_type: dict[str, MeanCI]
  bonus_fired: MeanCI | None  # mean saliency/order_win_frac (None: never logged).
  bonus_shift: MeanCI | None
  by_seed: dict[int, float] = dataclasses.field(default_factory=dict)  # seed -> accuracy.


def aggregate(summaries: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], Cell]:
  """Groups run summaries by (arm, selector) and takes means and CIs over seeds."""
  groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
  for s in summaries:
    groups.setdefault((s["arm"], s["selector"]), []).append(s)
  cells = {}
  for (arm, selector), runs in groups.items():
    evs = [r["eval"][selector] for r in runs]
    acc = [e["ordered"]["accuracy"] for e in evs]
    shuffled = [e["shuffled"]["accuracy"] for e in evs if "shuffled" in e]
    gap = [e["ordered"]["accuracy"] - e["shuffled"]["accuracy"] for e in evs if "shuffled" in e]
    types = sorted({t for e in evs for t in e["ordered"]["task_type"]})
    train = [r.get("train") or {} for r in runs]

    def opt(name, train=train):
      vals = [t[name] for t in train if t.get(name) is not None]
      return mean_ci(vals) if vals else None

    cells[(arm, selector)] = Cell(
      arm=arm,
      selector=selector,
      accuracy=mean_ci(acc),
      shuffled=mean_ci(shuffled) if shuffled else None,
      gap=mean_ci(gap) if gap else None,
      task_type={
        t: mean_ci([e["ordered"]["task_type"].get(t, math.nan) for e in evs]) for t in types
      },
      bonus_fired=opt("bonus_fired"),
      bonus_shift=opt("bonus_shift"),
      by_seed={r["seed"]: a for r, a in zip(runs, acc) if "seed" in r},
    )
  return cells


def paired_difference(a: Cell, b: Cell) -> MeanCI | None:
  """Mean and CI of a's minus b's accuracy over the seeds both ran (None: under 2).

  Runs with the same seed share the data order and the model's starting point, so most of
  the seed-to-seed spread is common to both arms; the paired difference removes it.
  """
  seeds = sorted(set(a.by_seed) & set(b.by_seed))
  if len(seeds) < 2:
    return None
  return mean_ci([a.by_seed[k] - b.by_seed[k] for k in seeds])


def fmt_ci(ci: MeanCI | None, *, pct: bool = True, signed: bool = False) -> str:
  """ "61.2% [55.0, 67.4]" (percent) / "+3.1 pp [...]" (signed); the mean alone for n = 1."""
  if ci is None or ci.n == 0 or not math.isfinite(ci.mean):
    return "-"
  scale, unit = (100.0, "%") if pct else (1.0, "")
  if signed:
    unit = " pp" if pct else ""
  head = f"{scale * ci.mean:{'+' if signed else ''}.1f}{unit}"
  if not math.isfinite(ci.half_width):
    return head
  sign = "+" if signed else ""
  return f"{head} [{scale * ci.low:{sign}.1f}, {scale * ci.high:{sign}.1f}]"


def _ordered(
  cells: Mapping[tuple[str, str], Cell], arms: Sequence[str] | None, selectors: Sequence[str] | None
) -> list[Cell]:
  arms = list(arms or dict.fromkeys(a for a, _ in cells))
  selectors = list(selectors or dict.fromkeys(s for _, s in cells))
  return [cells[(a, s)] for s in selectors for a in arms if (a, s) in cells]


def results_table(cells: Sequence[Cell], sft: Mapping[str, Any] | None = None) -> str:
  """The main table: accuracy, shuffled accuracy, order gap and bonus statistics."""
  lines = [
    "| arm | selector | seeds | accuracy (95% CI) | shuffled | ordered - shuffled "
    "(95% CI) | bonus fired | bonus advantage shift |",
    "|---|---|---:|---|---|---|---:|---:|",
  ]
  for selector, ev in (sft or {}).get("eval", {}).items():
    o, sh = ev["ordered"]["accuracy"], ev.get("shuffled", {}).get("accuracy")
    lines.append(
      f"| SFT (start) | {selector} | 1 | {100 * o:.1f}% | "
      + (f"{100 * sh:.1f}% | {100 * (o - sh):+.1f} pp" if sh is not None else "- | -")
      + " | - | - |"
    )
  for c in cells:
    fired = "-" if c.bonus_fired is None else f"{c.bonus_fired.mean:.1%}"
    shift = "-" if c.bonus_shift is None else f"{c.bonus_shift.mean:.4f}"
    lines.append(
      f"| {c.arm} | {c.selector} | {c.accuracy.n} | {fmt_ci(c.accuracy)} | "
      f"{fmt_ci(c.shuffled)} | {fmt_ci(c.gap, signed=True)} | {fired} | {shift} |"
    )
  return "\n".join(lines) + "\n"


def task_table(cells: Sequence[Cell], sft: Mapping[str, Any] | None = None) -> str:
  """Held-out accuracy (ordered keyframes) per question type, mean [95% CI]."""
  types = sorted({t for c in cells for t in c.task_type})
  lines = ["| arm | selector | " + " | ".join(types) + " |", "|---|---|" + "---|" * len(types)]
  for selector, ev in (sft or {}).get("eval", {}).items():
    by = ev["ordered"]["task_type"]
    lines.append(
      f"| SFT (start) | {selector} | "
      + " | ".join(f"{100 * by[t]:.1f}%" if by.get(t) is not None else "-" for t in types)
      + " |"
    )
  for c in cells:
    lines.append(
      f"| {c.arm} | {c.selector} | " + " | ".join(fmt_ci(c.task_type.get(t)) for t in types) + " |"
    )
  return "\n".join(lines) + "\n"


def reading(cells: Sequence[Cell], sft: Mapping[str, Any] | None = None) -> list[str]:
  """What the numbers say, one paragraph per selector (sentences computed, not written)."""
  notes = []
  for selector in dict.fromkeys(c.selector for c in cells):
    row = sorted((c for c in cells if c.selector == selector), key=lambda c: -c.accuracy.mean)
    best, rest = row[0], row[1:]
    n = min(c.accuracy.n for c in row)
    seeds = f"{n} seeds each" if n > 1 else "one seed each"
    equal = [c for c in rest if abs(c.accuracy.mean - best.accuracy.mean) < 1e-9]
    if rest and len(equal) == len(rest):
      s = [
        f"With {selector} keyframes every arm reaches the same mean held-out accuracy "
        f"({100 * best.accuracy.mean:.1f}%, {seeds}): a tie."
      ]
    else:
      s = [
        f"With {selector} keyframes, `{best.arm}` has the highest mean held-out "
        f"accuracy ({fmt_ci(best.accuracy)}, {seeds})."
      ]
    if not rest:
      notes.append(" ".join(s))
      continue
    others = ", ".join(f"`{c.arm}` {fmt_ci(c.accuracy)}" for c in rest)
    tied = [c for c in rest if c.accuracy.overlaps(best.accuracy)]
    if len(equal) == len(rest):
      tie = True
    elif n < 2:
      s.append(
        f"The others: {others}. With one seed per arm there is no confidence "
        "interval, so this ranking is a single draw"
        + (
          f"; `{'`, `'.join(c.arm for c in equal)}` tie{'s' if len(equal) == 1 else ''}"
          " with it exactly."
          if equal
          else "."
        )
      )
      tie = False
    elif tied:
      s.append(
        f"The others: {others}. The 95% CIs of "
        f"`{'`, `'.join(c.arm for c in tied)}` overlap the best arm's, so {n} seeds do "
        "not separate " + ("the arms: they tie." if len(tied) == len(rest) else "those from it.")
      )
      tie = len(tied) == len(rest)
    else:
      s.append(f"The others: {others}; no other arm's 95% CI overlaps the best one's.")
      tie = False
    paired = [(c, paired_difference(best, c)) for c in rest]
    paired = [(c, d) for c, d in paired if d is not None]
    if paired:
      s.append(
        f"Paired by seed (same data order), `{best.arm}` minus each other arm: "
        + ", ".join(f"{fmt_ci(d, signed=True)} vs `{c.arm}`" for c, d in paired)
        + "; "
        + (
          "every paired CI excludes 0."
          if all(not d.contains(0.0) for _, d in paired)
          else "a CI that includes 0 is no evidence of a difference."
        )
      )
    start = (sft or {}).get("eval", {}).get(selector, {}).get("ordered", {}).get("accuracy")
    if start is not None:
      s.append(
        f"From the SFT checkpoint's {100 * start:.1f}%, RL moved the mean by "
        + ", ".join(f"{100 * (c.accuracy.mean - start):+.1f} pp (`{c.arm}`)" for c in row)
        + "."
      )
    bonus = [c for c in row if c.bonus_fired is not None]
    if bonus:
      s.append(
        "The saliency bonus fired in "
        + ", ".join(
          f"{c.bonus_fired.mean:.1%} of question groups for `{c.arm}` (mean advantage "
          f"shift {c.bonus_shift.mean if c.bonus_shift else math.nan:.4f})"
          for c in bonus
        )
        + "."
      )
      rare = [c for c in bonus if c.bonus_fired.mean < RARE]
      cancelled = [
        c
        for c in bonus
        if c.bonus_fired.mean >= RARE and c.bonus_shift and c.bonus_shift.mean < NO_SHIFT
      ]
      if tie and (rare or cancelled):
        why = []
        if rare:
          why.append(
            f"the bonus fired in under {RARE:.0%} of groups for "
            f"`{'`, `'.join(c.arm for c in rare)}`"
          )
        if cancelled:
          why.append(
            f"it fired but hardly moved the advantages for "
            f"`{'`, `'.join(c.arm for c in cancelled)}` (mean shift under "
            f"{NO_SHIFT:g}: the std normalisation cancelled it)"
          )
        s.append(
          "The likely reason for the tie: " + " and ".join(why) + ", so those arms "
          "got the same gradient as plain GRPO."
        )
      elif tie:
        s.append(
          "The bonus did act on the advantages, so the tie is not for want of a "
          "bonus; more steps or seeds may separate the arms."
        )
    gaps = [c for c in row if c.gap is not None]
    if gaps:
      zero = [c.arm for c in gaps if c.gap.contains(0.0) and c.gap.n > 1]
      s.append(
        "Ordered minus shuffled keyframes (what frame order is worth to the "
        "model): "
        + ", ".join(f"{fmt_ci(c.gap, signed=True)} (`{c.arm}`)" for c in gaps)
        + "."
        + (f" For `{'`, `'.join(zero)}` the 95% CI includes 0." if zero else "")
      )
    notes.append(" ".join(s))
  return notes


def mean_curve(
  runs: Sequence[Sequence[Mapping[str, Any]]], name: str
) -> tuple[np.ndarray, np.ndarray]:
  """(steps, mean over runs) of metric `name`, at the steps any run logged it."""
  by_step: dict[int, list[float]] = {}
  for records in runs:
    for r in records:
      v = r.get(name)
      if isinstance(v, (int, float)) and math.isfinite(v) and "step" in r:
        by_step.setdefault(int(r["step"]), []).append(float(v))
  steps = np.asarray(sorted(by_step), np.int64)
  return steps, np.asarray([np.mean(by_step[s]) for s in steps], np.float64)


def reward_curves(
  path: str,
  summaries: Sequence[Mapping[str, Any]],
  metrics: Mapping[str, Sequence[Mapping[str, Any]]],
  selector: str,
  arms: Sequence[str],
) -> str | None:
  """One PNG per selector: each arm's mean-over-seeds curve of CURVE_METRICS.

  Lines are smoothed with a trailing mean over max(1, steps // 10) logged points (the
  raw mean is drawn faintly underneath).
  """
  panels = []
  for name, title in CURVE_METRICS:
    lines = {}
    for arm in arms:
      runs = [
        metrics[s["name"]]
        for s in summaries
        if s["arm"] == arm and s["selector"] == selector and s["name"] in metrics
      ]
      steps, values = mean_curve(runs, name)
      if len(steps):
        lines[arm] = (steps, values)
    if lines:
      panels.append((title, lines))
  if not panels:
    return None
  fig = Figure(figsize=(5.2 * len(panels), 3.6), dpi=100, layout="constrained")
  for i, (title, lines) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), i + 1)
    for arm, (steps, values) in lines.items():
      w = max(1, len(values) // 10)
      smooth = np.convolve(values, np.ones(w) / w)[: len(values)] / np.minimum(
        np.arange(1, len(values) + 1) / w, 1.0
      )
      color = f"C{list(arms).index(arm) % 10}"  # One colour per arm in every panel.
      ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
      ax.plot(steps, smooth, color=color, label=arm, linewidth=1.6)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("RL step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"{selector} keyframes: mean over seeds")
  return report._save(fig, path)


def accuracy_plot(path: str, cells: Sequence[Cell], sft: Mapping[str, Any] | None) -> str:
  """Bars of held-out accuracy per (selector, arm) with 95% CI whiskers, SFT as a line."""
  selectors = list(dict.fromkeys(c.selector for c in cells))
  arms = list(dict.fromkeys(c.arm for c in cells))
  width = 0.8 / max(len(arms), 1)
  fig = Figure(
    figsize=(2.2 + 1.4 * len(selectors) * max(len(arms), 1) / 2, 3.8), dpi=100, layout="constrained"
  )
  ax = fig.add_subplot(1, 1, 1)
  for j, arm in enumerate(arms):
    xs, ys, errs = [], [], []
    for i, sel in enumerate(selectors):
      c = next((c for c in cells if c.arm == arm and c.selector == sel), None)
      if c is not None:
        xs.append(i + (j - (len(arms) - 1) / 2) * width)
        ys.append(100 * c.accuracy.mean)
        errs.append(100 * c.accuracy.half_width if c.accuracy.n > 1 else 0.0)
    ax.bar(xs, ys, width, yerr=errs, capsize=3, label=arm, color=f"C{j}")
  for i, sel in enumerate(selectors):
    start = (sft or {}).get("eval", {}).get(sel, {}).get("ordered", {}).get("accuracy")
    if start is not None:
      ax.hlines(
        100 * start,
        i - 0.45,
        i + 0.45,
        colors="k",
        linestyles="dashed",
        label="SFT start" if i == 0 else None,
      )
  ax.set_xticks(range(len(selectors)), [f"{s} keyframes" for s in selectors])
  ax.set_ylabel("held-out accuracy (%)")
  ax.set_ylim(0, 100)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8)
  return report._save(fig, path)


def write_report(
  out: str,
  summaries: Sequence[Mapping[str, Any]],
  *,
  sft: Mapping[str, Any] | None = None,
  metrics: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
  arms: Sequence[str] | None = None,
  selectors: Sequence[str] | None = None,
  title: str = "ChronoForge-RL ablation in miniature",
) -> str:
  """Writes `<out>/report.md` and its PNGs from run summaries (and their metrics).

  Args:
    out: the folder (created).
    summaries: per-run summaries: arm, selector, seed, name, eval[selector][order], and
      optionally train (bonus_fired, bonus_shift).
    sft: the SFT stage's summary (its eval gives the starting point), optional.
    metrics: run name -> metrics.jsonl records, for the reward curves (optional).
    arms, selectors: row order (default: order of appearance).
    title: the page title.

  Returns:
    The path of report.md.
  """
  os.makedirs(out, exist_ok=True)
  cells = _ordered(aggregate(summaries), arms, selectors)
  if not cells:
    raise ValueError("write_report: no run summaries")
  lines = [
    f"# {title}",
    "",
    f"{len(summaries)} RL runs from one SFT checkpoint; held-out accuracy with each "
    "run's own keyframe selector. Means over seeds with 95% confidence intervals "
    '(Student\'s t over seeds; none for one seed). "shuffled": the same keyframes '
    'in a random order. "bonus fired": mean share of question groups given the '
    'saliency bonus (`saliency/order_win_frac`); "bonus advantage shift": mean '
    "|change of advantages| the bonus caused (`adv/bonus_shift`; ~0 when the std "
    "normalisation cancels it: always under a per-group std, and under a batch std "
    "when every group with a reward spread gets the bonus).",
    "",
    "## Reading",
    "",
  ]
  for note in reading(cells, sft):
    lines += [note, ""]
  lines += [
    "## Held-out accuracy",
    "",
    results_table(cells, sft),
    "![accuracy](accuracy.png)",
    "",
    "## By question type (ordered keyframes)",
    "",
    task_table(cells, sft),
  ]
  accuracy_plot(os.path.join(out, "accuracy.png"), cells, sft)
  lines += ["## Reward curves", ""]
  for sel in dict.fromkeys(c.selector for c in cells):
    png = reward_curves(
      os.path.join(out, f"reward_curves_{sel}.png"),
      summaries,
      metrics or {},
      sel,
      list(dict.fromkeys(c.arm for c in cells)),
    )
    lines += [
      f"![reward curves, {sel}]({os.path.basename(png)})"
      if png
      else f"No training metrics for the {sel} runs.",
      "",
    ]
  lines += ["## Runs", "", "| run | accuracy | shuffled | bonus fired |", "|---|---:|---:|---:|"]
  for s in summaries:
    ev = s["eval"][s["selector"]]
    fired = (s.get("train") or {}).get("bonus_fired")
    lines.append(
      f"| [{s['name']}](runs/{s['name']}) | {ev['ordered']['accuracy']:.1%} | "
      + (f"{ev['shuffled']['accuracy']:.1%}" if "shuffled" in ev else "-")
      + f" | {'-' if fired is None else f'{fired:.1%}'} |"
    )
  path = os.path.join(out, "report.md")
  fileio.write_text_atomic(path, "\n".join(lines) + "\n")
  return path
