"""The ablation: t intervals, arm configs, the report from made-up runs, and end to end."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from chronoforge_jax.evaluation import ablation
from configs import ablation as ablation_config
from configs import common
from configs import kf_grpo as kf_grpo_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------------------
# Statistics against numbers worked out by hand.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "df,expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)]
)
def test_t_quantile_matches_the_printed_table(df, expected):
  assert ablation.t_quantile(df) == pytest.approx(expected, abs=1e-4)


def test_mean_ci_by_hand():
  # mean 0.6, s = 0.1, s / sqrt(3) = 0.057735, t(0.975, 2) = 4.302653 -> half 0.248414.
  ci = ablation.mean_ci([0.5, 0.6, 0.7])
  assert (ci.n, ci.mean) == (3, pytest.approx(0.6))
  assert ci.half_width == pytest.approx(0.248414, abs=1e-6)
  assert (ci.low, ci.high) == (pytest.approx(0.351586, abs=1e-6), pytest.approx(0.848414, abs=1e-6))
  # Two values 0.2, 0.4: s = 0.141421, se = 0.1, t(0.975, 1) = 12.706205.
  assert ablation.mean_ci([0.2, 0.4]).half_width == pytest.approx(1.2706205, abs=1e-6)
  # 90%: t(0.95, 2) = 2.919986.
  assert ablation.mean_ci([0.5, 0.6, 0.7], level=0.9).half_width == pytest.approx(
    2.919986 * 0.1 / math.sqrt(3), abs=1e-6
  )


def test_mean_ci_one_value_has_no_interval_and_nans_are_dropped():
  one = ablation.mean_ci([0.4, float("nan")])
  assert one.n == 1 and one.mean == pytest.approx(0.4) and math.isnan(one.low)
  assert one.overlaps(ablation.mean_ci([0.9, 0.91]))  # Undefined: cannot be told apart.
  assert ablation.mean_ci([]).n == 0
  assert ablation.fmt_ci(one) == "40.0%"
  assert ablation.fmt_ci(ablation.mean_ci([0.5, 0.6, 0.7])) == "60.0% [35.2, 84.8]"
  assert ablation.fmt_ci(ablation.mean_ci([-0.05, 0.05]), signed=True) == ("+0.0 pp [-63.5, +63.5]")


def test_overlap():
  a = ablation.MeanCI(n=3, mean=0.5, low=0.4, high=0.6)
  assert a.overlaps(ablation.MeanCI(n=3, mean=0.65, low=0.6, high=0.7))
  assert not a.overlaps(ablation.MeanCI(n=3, mean=0.75, low=0.61, high=0.9))
  assert a.contains(0.45) and not a.contains(0.0)


# ---------------------------------------------------------------------------------------
# Arms -> training configs.
# ---------------------------------------------------------------------------------------


def _run_config(cfg, arm, selector="uniform", seed=3):
  _, base = ablation_config.base_configs(cfg)
  return ablation.run_config(
    cfg,
    base,
    ablation.Run(arm=arm, selector=selector, seed=seed),
    train_dir="/data/train",
    init_from="/out/sft/checkpoints",
  )


@pytest.mark.parametrize("variant", ablation_config.VARIANTS)
def test_every_variant_validates_and_every_run_config_is_a_valid_training_config(variant):
  cfg = ablation_config.get_config(variant)
  ablation_config.validate(cfg)
  runs = ablation.plan(cfg)
  assert len(runs) == len(cfg.arms) * len(cfg.selectors) * len(cfg.seeds)
  assert len({r.name for r in runs}) == len(runs)
  assert set(cfg.arms) == {"grpo", "tgrpo", "kfgrpo"}
  kf_grpo_config.validate(_run_config(cfg, "kfgrpo"))
  sft_base, rl_base = ablation_config.base_configs(cfg)
  sft, runs = ablation.build_configs(
    cfg, sft_base, rl_base, out="/out", train_dir="/d", check_config=kf_grpo_config.validate
  )
  assert set(runs) == {r.name for r in ablation.plan(cfg)}
  assert sft.model.to_dict() == runs["kfgrpo_tad_s0"].model.to_dict()


def test_arm_overrides_set_the_intended_fields():
  cfg = ablation_config.get_config("full")
  g = cfg.rl.num_generations
  grpo, tgrpo, kfgrpo = (_run_config(cfg, a) for a in ("grpo", "tgrpo", "kfgrpo"))
  assert not grpo.rl.saliency.enabled and grpo.rl.advantage_estimator == "group_std"
  assert tgrpo.input.disorder_ratio == 0.0 and tgrpo.rl.advantage_estimator == "group_std"
  assert tgrpo.rl.saliency.enabled and tgrpo.rl.saliency.rule == "ratio"
  assert tgrpo.rl.num_disordered == g // 2
  assert kfgrpo.input.disorder_ratio == 0.5 and kfgrpo.rl.advantage_estimator == "batch_std"
  assert kfgrpo.rl.saliency.enabled and kfgrpo.rl.saliency.rule == "ratio"
  assert kfgrpo.rl.num_disordered == cfg.rl.num_disordered
  for c in (grpo, tgrpo, kfgrpo):
    # Shared: RL only, from the SFT params, this run's seed and selector.
    assert (c.sft_steps, c.total_steps) == (0, cfg.rl.steps)
    assert c.ckpt.init_from == "/out/sft/checkpoints" and c.ckpt.resume == ""
    assert (c.seed, c.input.seed, c.tad.selector) == (3, 3, "uniform")
    assert c.input.data_dir == "/data/train"
    assert c.optax.learning_rate == cfg.rl.learning_rate and c.rl.beta == cfg.rl.beta > 0
    assert c.rl.num_generations == g
  sft = ablation.sft_config(cfg, ablation_config.base_configs(cfg)[0], train_dir="/data/train")
  assert sft.sft_steps == sft.total_steps == cfg.sft.steps and sft.ckpt.init_from == ""


def test_an_rl_base_with_another_model_is_refused():
  cfg = ablation_config.get_config("smoke")
  sft_base, rl_base = ablation_config.base_configs(cfg)
  rl_base.model.preset = "small"
  with pytest.raises(ablation.ConfigMismatch, match=r"config\.rl\.base"):
    ablation.build_configs(
      cfg, sft_base, rl_base, out="/o", train_dir="/d", check_config=kf_grpo_config.validate
    )


def test_tgrpo_halves_g_when_g_is_overridden():
  cfg = ablation_config.get_config("full")
  cfg.rl.num_generations = 6  # As --config.rl.num_generations=6 would.
  assert _run_config(cfg, "tgrpo").rl.num_disordered == 3


def test_base_config_is_left_untouched():
  cfg = ablation_config.get_config("smoke")
  _, base = ablation_config.base_configs(cfg)
  before = base.to_json()
  ablation.run_config(
    cfg, base, ablation.Run(arm="tgrpo", selector="uniform", seed=1), train_dir="/d", init_from="/s"
  )
  assert base.to_json() == before


def test_an_added_arm_and_a_misspelt_override_field():
  cfg = ablation_config.get_config("smoke")
  cfg.arm_overrides.kfgrpo_strict = ablation_config._nested(
    {"rl.saliency.rule": "strict", "input.disorder_ratio": 0.25}
  )
  cfg.arms = ("grpo", "kfgrpo_strict")
  ablation_config.validate(cfg)
  c = _run_config(cfg, "kfgrpo_strict")
  assert c.rl.saliency.rule == "strict" and c.input.disorder_ratio == 0.25
  cfg.arm_overrides.grpo.rl.saliency.alhpa = 0.5
  with pytest.raises(ablation.ConfigMismatch, match=r"arm_overrides\.grpo\.rl\.saliency\.alhpa"):
    _run_config(cfg, "grpo")


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("seeds", (), r"config\.seeds"),
    ("seeds", (0, 0), r"config\.seeds"),
    ("selectors", ("tad", "random"), r"config\.selectors"),
    ("arms", ("grpo", "ppo"), r"config\.arms"),
    ("data", "big", r"config\.data"),
    ("log_every", 0, r"config\.log_every"),
  ],
)
def test_validate_names_the_bad_field(field, value, match):
  cfg = ablation_config.get_config("quick")
  cfg[field] = value
  with pytest.raises(common.ConfigError, match=match):
    ablation_config.validate(cfg)


@pytest.mark.parametrize(
  "section,field,value,match",
  [
    ("rl", "steps", 0, r"config\.rl\.steps"),
    ("rl", "base", "big", r"config\.rl\.base"),
    ("sft", "steps", -1, r"config\.sft\.steps"),
    ("eval", "frame_orders", ("shuffled",), r"config\.eval\.frame_orders"),
    ("eval", "mode", "vote", r"config\.eval\.mode"),
  ],
)
def test_validate_names_the_bad_nested_field(section, field, value, match):
  cfg = ablation_config.get_config("quick")
  cfg[section][field] = value
  with pytest.raises(common.ConfigError, match=match):
    ablation_config.validate(cfg)


def test_a_folder_made_with_another_config_is_refused(tmp_path):
  cfg = ablation_config.get_config("smoke")
  config = _run_config(cfg, "kfgrpo")
  ablation.check_same_config(str(tmp_path), config)
  ablation.check_same_config(str(tmp_path), config)  # Same config: fine.
  config.rl.beta = 0.5
  with pytest.raises(ablation.ConfigMismatch, match=r"rl\.beta: 0\.04 -> 0\.5"):
    ablation.check_same_config(str(tmp_path), config)
  # A field the code gained since the folder was made is not a difference.
  record = json.load(open(tmp_path / ablation.RUN_CONFIG))
  del record["rl.beta"]
  json.dump(record, open(tmp_path / ablation.RUN_CONFIG, "w"))
  ablation.check_same_config(str(tmp_path), config)
  config.seed = 12345
  with pytest.raises(ablation.ConfigMismatch, match=r"seed: \d+ -> 12345"):
    ablation.check_same_config(str(tmp_path), config)


# ---------------------------------------------------------------------------------------
# The report, from made-up run summaries (no training).
# ---------------------------------------------------------------------------------------


def _summary(arm, selector, seed, acc, shuffled, by_type, fired=None, shift=None):
  ev = {
    "ordered": {"accuracy": acc, "num_questions": 20, "task_type": by_type},
    "shuffled": {"accuracy": shuffled, "num_questions": 20, "task_type": by_type},
  }
  return {
    "arm": arm,
    "selector": selector,
    "seed": seed,
    "name": f"{arm}_{selector}_s{seed}",
    "steps": 4,
    "eval": {selector: ev},
    "train": {"bonus_fired": fired, "bonus_shift": shift},
  }


def _made_up():
  s = []
  for seed, (a, b) in enumerate([(0.5, 0.7), (0.6, 0.8), (0.7, 0.9)]):
    s.append(_summary("grpo", "tad", seed, a, a - 0.1, {"order": a, "count": 0.5}))
    s.append(
      _summary(
        "kfgrpo",
        "tad",
        seed,
        b,
        b - 0.3,
        {"order": b, "count": 0.25},
        fired=0.2 * (seed + 1),
        shift=0.01,
      )
    )
  s.append(_summary("grpo", "uniform", 0, 0.4, 0.4, {"order": 0.4}))
  s.append(_summary("kfgrpo", "uniform", 0, 0.4, 0.3, {"order": 0.4}, fired=0.0, shift=0.0))
  metrics = {
    x["name"]: [
      {
        "step": t,
        "reward/accuracy": 0.1 * t,
        "reward/total": 0.2 * t,
        **({"saliency/order_win_frac": 0.3} if x["arm"] == "kfgrpo" else {}),
      }
      for t in range(1, 5)
    ]
    for x in s
  }
  sft = {
    "name": "sft",
    "steps": 10,
    "eval": {
      "tad": {
        "ordered": {"accuracy": 0.45, "num_questions": 20, "task_type": {"order": 0.4}},
        "shuffled": {"accuracy": 0.35, "num_questions": 20, "task_type": {}},
      }
    },
  }
  return s, metrics, sft


def test_aggregate_by_hand():
  summaries, _, _ = _made_up()
  cells = ablation.aggregate(summaries)
  assert set(cells) == {
    ("grpo", "tad"),
    ("kfgrpo", "tad"),
    ("grpo", "uniform"),
    ("kfgrpo", "uniform"),
  }
  k = cells[("kfgrpo", "tad")]
  assert k.accuracy.n == 3 and k.accuracy.mean == pytest.approx(0.8)
  assert k.accuracy.half_width == pytest.approx(0.248414, abs=1e-6)
  # Gap 0.3 on every seed: zero spread, zero width.
  assert k.gap.mean == pytest.approx(0.3) and k.gap.half_width == pytest.approx(0, abs=1e-12)
  assert k.task_type["count"].mean == pytest.approx(0.25)
  assert k.bonus_fired.mean == pytest.approx(0.4)
  assert cells[("grpo", "tad")].bonus_fired is None
  assert cells[("grpo", "uniform")].accuracy.n == 1


def test_paired_difference_removes_the_shared_seed_effect():
  # kfgrpo beats grpo by 2, 4, 3 points on seeds whose own levels differ by 20 points.
  s = [_summary("grpo", "tad", seed, a, a, {}) for seed, a in enumerate([0.50, 0.70, 0.60])]
  s += [_summary("kfgrpo", "tad", seed, a, a, {}) for seed, a in enumerate([0.52, 0.74, 0.63])]
  s.append(_summary("kfgrpo", "tad", 7, 0.99, 0.99, {}))  # No grpo run with seed 7: unpaired.
  cells = ablation.aggregate(s)
  d = ablation.paired_difference(cells[("kfgrpo", "tad")], cells[("grpo", "tad")])
  diffs = [0.02, 0.04, 0.03]
  sd = math.sqrt(sum((x - 0.03) ** 2 for x in diffs) / 2)
  assert d.n == 3 and d.mean == pytest.approx(0.03)
  assert d.half_width == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-5)
  assert not d.contains(0.0)  # The unpaired accuracies' CIs overlap widely.
  assert cells[("grpo", "tad")].accuracy.overlaps(cells[("kfgrpo", "tad")].accuracy)
  one = ablation.aggregate([s[0], s[3]])
  assert ablation.paired_difference(one[("kfgrpo", "tad")], one[("grpo", "tad")]) is None


def test_report_tables_reading_and_plots(tmp_path):
  summaries, metrics, sft = _made_up()
  path = ablation.write_report(
    str(tmp_path),
    summaries,
    sft=sft,
    metrics=metrics,
    arms=["grpo", "kfgrpo"],
    selectors=["tad", "uniform"],
  )
  report = open(path).read()
  main = report.split("## Held-out accuracy")[1].split("## By question type")[0]
  rows = {
    tuple(c.strip() for c in line.strip("|").split("|")[:2]): line
    for line in main.splitlines()
    if line.startswith("| ")
  }
  assert (
    "| 3 | 80.0% [55.2, 104.8] | 50.0% [25.2, 74.8] | +30.0 pp [+30.0, +30.0] | "
    "40.0% | 0.0100 |" in rows[("kfgrpo", "tad")]
  )
  assert "| 3 | 60.0% [35.2, 84.8] |" in rows[("grpo", "tad")]
  assert rows[("grpo", "tad")].rstrip().endswith("| - | - |")  # No bonus without a view.
  assert "| 1 | 40.0% | 30.0% | +10.0 pp |" in rows[("kfgrpo", "uniform")]
  assert "| SFT (start) | tad | 1 | 45.0% | 35.0% | +10.0 pp |" in report
  # Per question type: columns sorted (count, order), mean [CI].
  assert "| arm | selector | count | order |" in report
  assert re.search(
    r"\| grpo \| tad \| 50\.0% \[50\.0, 50\.0\] "
    r"\| 60\.0% \[35\.2, 84\.8\] \|",
    report,
  )
  # The Reading is computed from these numbers (made up here: kfgrpo higher, CIs overlap).
  reading = report.split("## Reading")[1].split("## Held-out")[0]
  assert (
    "`kfgrpo` has the highest mean held-out accuracy (80.0% [55.2, 104.8], 3 seeds each)" in reading
  )
  assert "overlap the best arm's, so 3 seeds do not separate the arms: they tie." in reading
  assert (
    "From the SFT checkpoint's 45.0%, RL moved the mean by +35.0 pp (`kfgrpo`), "
    "+15.0 pp (`grpo`)." in reading
  )
  assert "fired in 40.0% of question groups for `kfgrpo`" in reading
  assert "every arm reaches the same mean held-out accuracy (40.0%, one seed each)" in reading
  assert "fired in under 5% of groups for `kfgrpo`" in reading  # uniform: fired 0%.
  for png in ("accuracy.png", "reward_curves_tad.png", "reward_curves_uniform.png"):
    assert f"({png})" in report and os.path.getsize(tmp_path / png) > 1000
  assert "[grpo_tad_s0](runs/grpo_tad_s0)" in report


def test_reading_when_cis_do_not_overlap():
  s = [_summary("a", "tad", i, 0.9 + 0.01 * i, 0.5, {}) for i in range(3)]
  s += [_summary("b", "tad", i, 0.3 + 0.01 * i, 0.3, {}) for i in range(3)]
  cells = list(ablation.aggregate(s).values())
  (note,) = ablation.reading(cells)
  assert "no other arm's 95% CI overlaps the best one's" in note
  assert "For `b` the 95% CI includes 0." in note  # b: gaps 0, 1, 2 pp.


def test_mean_curve_averages_over_runs_at_each_step():
  steps, values = ablation.mean_curve(
    [
      [{"step": 1, "m": 1.0}, {"step": 2, "m": 3.0}],
      [{"step": 1, "m": 2.0}],
      [{"step": 2, "m": float("nan")}],
    ],
    "m",
  )
  assert steps.tolist() == [1, 2] and values.tolist() == [1.5, 3.0]


# ---------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------


def _env():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
  env.pop("XLA_FLAGS", None)
  return env


def _ablation(*args, timeout=900):
  return subprocess.run(
    [sys.executable, "-m", "launch.ablation", *args],
    cwd=REPO,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_help_and_a_bad_config_value():
  result = _ablation("--help")  # absl's --help exits with 1 after printing.
  assert "GRPO vs T-GRPO vs KF-GRPO" in result.stdout
  for flag in ("--config", "--out", "--[no]compilation_cache"):
    assert flag in result.stdout
  result = _ablation(
    "--config=configs/ablation.py:smoke", "--config.rl.steps=0", "--out=/nonexistent/never_written"
  )
  assert result.returncode != 0
  assert "config.rl.steps" in result.stderr and "need an int >= 1" in result.stderr


@pytest.mark.slow
def test_smoke_ablation_end_to_end_then_resumes(tmp_path):
  out = tmp_path / "ablation"
  # The test run's shared compilation cache (tests/conftest.py), not one in <out>.
  args = (
    "--config=configs/ablation.py:smoke",
    "--config.selectors=('tad',)",
    f"--out={out}",
    "--nocompilation_cache",
  )
  first = _ablation(*args)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  for stage in ("1/4 data", "2/4 sft", "3/4 arms", "4/4 report"):
    assert f"== {stage}" in first.stdout
  names = [f"{arm}_tad_s0" for arm in ("grpo", "tgrpo", "kfgrpo")]
  for name in names:
    summary = json.load(open(out / "runs" / name / "summary.json"))
    assert set(summary["eval"]["tad"]) == {"ordered", "shuffled"}
    assert summary["eval"]["tad"]["ordered"]["num_questions"] > 0
    assert os.path.exists(out / "runs" / name / "eval" / "tad_shuffled.jsonl")
    metrics = [json.loads(line) for line in open(out / "runs" / name / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == [1, 2] and "reward/accuracy" in metrics[-1]
  assert "saliency/order_win_frac" in json.loads(
    open(out / "runs" / "kfgrpo_tad_s0" / "metrics.jsonl").readline()
  )
  assert "from init_from" in first.stdout
  assert os.path.getsize(out / "reward_curves_tad.png") > 1000
  os.remove(out / "report.md")

  again = _ablation(*args)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert "  SFT: skipped (done: sft/summary.json)" in again.stdout
  for i, name in enumerate(names, 1):
    assert f"[{i}/3] {name}: skipped (done: {name}/summary.json)" in again.stdout
  assert "compiled the" not in again.stdout  # Nothing was trained again.
  report = open(out / "report.md").read()
  assert all(f"[{name}](runs/{name})" in report for name in names)

  # Other evaluation settings: every stage is evaluated again, nothing is retrained.
  third = _ablation(*args, "--config.eval.shuffle_seed=1")
  assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
  assert third.stdout.count("evaluating again") == 4 and "compiled the" not in third.stdout
  assert (
    json.load(open(out / "runs" / names[0] / "summary.json"))["eval_settings"]["shuffle_seed"] == 1
  )
