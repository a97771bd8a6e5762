"""Tests for chronoforge_jax.evaluation.report: curve grouping, bar data, valid PNGs, report.md."""

from __future__ import annotations

import json
import math
import os

import numpy as np
from PIL import Image
import pytest

from chronoforge_jax.evaluation import report
from chronoforge_jax.evaluation import results as results_lib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics(workdir):
  """A metrics.jsonl as the trainer writes it: SFT steps first, then KF-GRPO steps."""
  rows = [{"step": 1, "loss": 2.0, "sft/nll": 2.0}, {"step": 2, "loss": 1.5, "sft/nll": 1.5}]
  for s in range(3, 9):
    rows.append(
      {
        "step": s,
        "loss": 0.1 * s,
        "pg_loss": -0.01 * s,
        "kl": 0.001 * s,
        "reward/accuracy": 0.1 * s,
        "reward/format": 0.9,
        "reward/total": 0.1 * s + 0.9,
        "saliency/ordered_acc": 0.05 * s,
        "saliency/disordered_acc": 0.03 * s,
        "grad_norm": 1.0,
        "clip_frac": float("nan") if s == 5 else 0.0,
      }
    )
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
    f.write('{"step": 9, "loss": ')  # A line torn by a kill is skipped.
  return rows


def _check_png(path, min_size=(200, 150)):
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC
  with Image.open(path) as im:
    im.verify()
  with Image.open(path) as im:
    assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
    pixels = np.asarray(im.convert("L"), np.float64)
  assert pixels.std() > 1.0  # Something was drawn on the canvas.


def _result(name, rows):
  recs = [
    results_lib.QuestionResult(
      question_id=f"q{i}",
      video_id="v",
      duration_bucket=b,
      task_type=t,
      answer_index=a,
      predicted_index=p,
      num_options=4,
      text="",
    )
    for i, (b, t, a, p) in enumerate(rows)
  ]
  return results_lib.EvalResult.from_records(name, recs, {"selector": name, "num_keyframes": 8})


UNIFORM = _result(
  "uniform",
  [
    ("short", "order", 0, 0),
    ("short", "count", 1, 2),
    ("long", "order", 2, 2),
    ("long", "count", 3, None),
  ],
)
TAD = _result(
  "tad",
  [
    ("short", "order", 0, 0),
    ("short", "count", 1, 1),
    ("long", "order", 2, 2),
    ("medium", "order", 3, 3),
  ],
)


def test_curve_series_groups_metrics_by_panel(tmp_path):
  rows = _metrics(str(tmp_path))
  series = report.curve_series(rows)
  assert set(series["rewards"]) == {"reward/accuracy", "reward/format", "reward/total"}
  assert set(series["ordered vs disordered accuracy"]) == {
    "saliency/ordered_acc",
    "saliency/disordered_acc",
  }
  assert set(series["KL to reference"]) == {"kl"}
  assert set(series["loss"]) == {"loss", "pg_loss", "sft/nll"}
  steps, values = series["loss"]["loss"]
  np.testing.assert_array_equal(steps, [r["step"] for r in rows])
  np.testing.assert_allclose(values, [r["loss"] for r in rows])
  steps, values = series["rewards"]["reward/accuracy"]
  np.testing.assert_array_equal(steps, np.arange(3, 9))
  np.testing.assert_allclose(values, 0.1 * np.arange(3, 9))
  # A NaN is dropped, not plotted; unmatched metrics (grad_norm) go nowhere.
  nan_series = report.curve_series(rows, [("clip", r"clip_frac$")])["clip"]["clip_frac"]
  np.testing.assert_array_equal(nan_series[0], [3, 4, 6, 7, 8])
  assert not any("grad_norm" in s for p in series.values() for s in p)


def test_training_curves_png(tmp_path):
  _metrics(str(tmp_path / "run"))
  path = report.training_curves(tmp_path / "curves.png", str(tmp_path / "run"))
  _check_png(path, (800, 500))
  assert report.training_curves(tmp_path / "none.png", [{"step": 1, "x": 1.0}]) is None
  assert not os.path.exists(tmp_path / "none.png")


def test_accuracy_series_matches_tables():
  cats, acc, counts = report.accuracy_series([UNIFORM, TAD], "duration_bucket")
  assert cats == ["short", "medium", "long"]
  assert acc["uniform"][0] == 0.5 and math.isnan(acc["uniform"][1])
  assert acc["uniform"][2] == 0.5
  assert acc["tad"] == [1.0, 1.0, 1.0]
  assert counts == [2, 1, 2]
  cats, acc, counts = report.accuracy_series([UNIFORM, TAD], "task_type")
  assert cats == ["count", "order"]
  # Plain recount of the task-type accuracy from the per-question records.
  for res in (UNIFORM, TAD):
    for c, a in zip(cats, acc[res.name]):
      mine = [r for r in res.records if r.task_type == c]
      assert a == sum(r.predicted_index == r.answer_index for r in mine) / len(mine)
  with pytest.raises(ValueError, match="group"):
    report.accuracy_series([TAD], "domain")


@pytest.mark.parametrize("group", ["overall", "duration_bucket", "task_type"])
def test_accuracy_bars_png(tmp_path, group):
  _check_png(report.accuracy_bars(tmp_path / f"{group}.png", [UNIFORM, TAD], group))


def test_write_report_links_everything(tmp_path):
  _metrics(str(tmp_path / "run"))
  paths = results_lib.write_result(UNIFORM, tmp_path / "eval")
  md_path = report.write_report(
    tmp_path / "report", results=[paths["json"], TAD], metrics=str(tmp_path / "run")
  )
  md = open(md_path).read()
  links = [part.split(")")[0] for part in md.split("](")[1:]]
  assert {
    "training_curves.png",
    "accuracy_overall.png",
    "accuracy_by_duration.png",
    "accuracy_by_task.png",
    "uniform.md",
    "tad.md",
    "uniform.jsonl",
    "tad.jsonl",
  } <= set(links)
  for link in links:
    assert os.path.exists(tmp_path / "report" / link), link
    if link.endswith(".png"):
      _check_png(tmp_path / "report" / link)
  assert results_lib.compare_results([UNIFORM, TAD]) in md
  assert not [f for f in os.listdir(tmp_path / "report") if ".tmp" in f]


def test_prediction_summary_shows_a_collapse_to_one_letter(tmp_path):
  collapsed = _result(
    "collapsed",
    [
      ("short", "order", 0, 1),
      ("short", "order", 1, 1),
      ("long", "order", 1, 1),
      ("long", "order", 2, None),
      ("long", "count", 1, 1),
    ],
  )
  table = report.prediction_summary([collapsed, TAD])
  rows = {
    line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in table.splitlines()[2:]
  }
  # 4 of 5 answers are "B"; B is also the most common correct letter (3 of 5).
  assert rows["collapsed"] == ["60.0%", "B (80%)", "60.0%", "20.0% |"]
  assert rows["tad"] == ["100.0%", "A (25%)", "25.0%", "0.0% |"]
  md = open(
    report.write_report(tmp_path, results=[collapsed], notes=["A note on what the run shows."])
  ).read()
  assert md.index("A note on what the run shows.") < md.index("## Accuracy")
  assert table.splitlines()[0] in md
