"""Evaluation report: training curves and accuracy bars (PNG) plus a Markdown page linking them.

  report.training_curves("out/report/training_curves.png", "runs/kf_grpo")  # metrics.jsonl
  report.accuracy_bars("out/report/by_duration.png", [tad, uniform], "duration_bucket")
  report.write_report("out/report", results=[tad, uniform], metrics="runs/kf_grpo")

Training curves come from the workdir's `metrics.jsonl` (`metrics.read_jsonl`); each
panel gathers the metrics whose names match its pattern, whatever prefix the trainer
gives them ("reward/accuracy", "train/reward/accuracy", ...): reward components, ordered
vs disordered accuracy (the KF-GRPO saliency signal), KL to the reference, and losses.
Accuracy bars compare any number of `results.EvalResult`s (TAD vs uniform keyframes,
before vs after training) per duration bucket or task type.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, never pyplot, so no
display or global state is involved. Every file is written to a temporary name and
renamed.
"""

from __future__ import annotations

import collections
import math
import os
import re
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax.evaluation import results as results_lib
from chronoforge_jax.train import metrics as metrics_lib

# (panel title, pattern on the metric name); a metric may appear in several panels.
CURVE_PANELS = (
  ("rewards", r"(^|/)reward/[^/]+$"),
  ("ordered vs disordered accuracy", r"(^|/)(ordered|disordered)_acc$"),
  ("KL to reference", r"(^|/)kl$"),
  ("loss", r"(^|/)(loss|pg_loss|sft/nll)$"),
)
GROUP_TITLES = {
  "overall": "overall",
  "duration_bucket": "duration bucket",
  "task_type": "task type",
  "problem_type": "problem type",
}


def _save(fig: Figure, path: str | os.PathLike) -> str:
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  FigureCanvasAgg(fig)
  tmp = f"{path}.tmp{os.getpid()}.png"
  try:
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


# ---------------------------------------------------------------------------------------
# Training curves.
# ---------------------------------------------------------------------------------------


def curve_series(
  records: Sequence[Mapping[str, Any]], panels: Sequence[tuple[str, str]] = CURVE_PANELS
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
  """Groups metrics records into panels of (steps, values) series.

  Args:
    records: one dict per logged step with "step" and scalar metrics.
    panels: (title, regex) pairs; a metric joins every panel whose regex it matches.

  Returns:
    {panel title: {metric name: (steps int64 [N], values float64 [N])}}, sorted by
    step, non-finite values dropped; panels without a matching metric are left out.
  """
  out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
  names = sorted({k for r in records for k in r if k != "step"})
  for title, pattern in panels:
    regex = re.compile(pattern)
    series = {}
    for name in (n for n in names if regex.search(n)):
      pts = sorted(
        (int(r["step"]), float(r[name]))
        for r in records
        if name in r and "step" in r and _finite(r[name])
      )
      if pts:
        steps, values = zip(*pts)
        series[name] = (np.asarray(steps, np.int64), np.asarray(values, np.float64))
    if series:
      out[title] = series
  return out


def _finite(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def training_curves(
  path: str | os.PathLike,
  metrics: str | os.PathLike | Sequence[Mapping[str, Any]],
  *,
  panels: Sequence[tuple[str, str]] = CURVE_PANELS,
  title: str | None = None,
) -> str | None:
  """Plots the training curves of a run as one PNG with a panel per metric group.

  Args:
    path: the PNG to write.
    metrics: a workdir (holding metrics.jsonl), the JSONL file, or its records.
    panels: see `curve_series`.
    title: figure title.

  Returns:
    The PNG path, or None when no logged metric matches any panel (nothing written).
  """
  records = (
    metrics_lib.read_jsonl(os.fspath(metrics))
    if isinstance(metrics, (str, os.PathLike))
    else list(metrics)
  )
  series = curve_series(records, panels)
  if not series:
    return None
  n = len(series)
  cols = min(n, 2)
  rows = math.ceil(n / cols)
  fig = Figure(figsize=(6 * cols, 3.6 * rows), dpi=100, layout="constrained")
  for i, (panel, lines) in enumerate(series.items()):
    ax = fig.add_subplot(rows, cols, i + 1)
    for name, (steps, values) in lines.items():
      ax.plot(steps, values, label=name, linewidth=1.4, marker="." if len(steps) < 30 else None)
    ax.set_title(panel)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


# ---------------------------------------------------------------------------------------
# Accuracy bars.
# ---------------------------------------------------------------------------------------


def accuracy_series(
  results: Sequence[results_lib.EvalResult], group: str
) -> tuple[list[str], dict[str, list[float]], list[int]]:
  """The numbers an accuracy bar chart shows.

  Args:
    results: evaluation results (bars side by side).
    group: "overall", "duration_bucket" or "task_type".

  Returns:
    (categories, {result name: accuracy per category (NaN where the result has no such
    questions)}, question count per category from the first result that has it).
  """
  if group not in GROUP_TITLES:
    raise ValueError(f"group={group!r}: choose one of {sorted(GROUP_TITLES)}")
  rows = [r for r in results_lib.comparison_rows(results) if r["group"] == group]
  names = list(rows[0]["summaries"]) if rows else [r.name for r in results]
  cats = [r["category"] for r in rows]
  acc = {
    n: [r["summaries"][n]["accuracy"] if r["summaries"][n] else math.nan for r in rows]
    for n in names
  }
  counts = [next((s["num_questions"] for s in r["summaries"].values() if s), 0) for r in rows]
  return cats, acc, counts


def accuracy_bars(
  path: str | os.PathLike,
  results: Sequence[results_lib.EvalResult],
  group: str = "duration_bucket",
  *,
  title: str | None = None,
) -> str:
  """Grouped bars: accuracy of each result per category of `group`.

  Args:
    path: the PNG to write.
    results: one or more results (e.g. TAD vs uniform, before vs after training).
    group: "overall", "duration_bucket" or "task_type".
    title: axes title (default: "accuracy by <group>").

  Returns:
    The PNG path.
  """
  cats, acc, counts = accuracy_series(results, group)
  names = list(acc)
  width = 0.8 / max(len(names), 1)
  x = np.arange(len(cats))
  fig = Figure(
    figsize=(max(5.0, 1.1 * len(cats) * max(len(names), 1) + 2), 4), dpi=100, layout="constrained"
  )
  ax = fig.add_subplot(1, 1, 1)
  for i, name in enumerate(names):
    heights = 100 * np.asarray(acc[name], np.float64)
    bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, np.nan_to_num(heights), width, label=name)
    for bar, h in zip(bars, heights):
      if np.isfinite(h):
        ax.annotate(
          f"{h:.0f}", (bar.get_x() + bar.get_width() / 2, h), ha="center", va="bottom", fontsize=7
        )
  ax.set_xticks(
    x,
    [f"{c}\n(n={n})" for c, n in zip(cats, counts)],
    rotation=30 if len(cats) > 6 else 0,
    fontsize=8,
  )
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(0, 105)
  ax.set_title(title or f"accuracy by {GROUP_TITLES[group]}")
  ax.grid(axis="y", alpha=0.3)
  if names:
    ax.legend(fontsize=8)
  return _save(fig, path)


# ---------------------------------------------------------------------------------------
# The report page.
# ---------------------------------------------------------------------------------------


def most_frequent_answer(result: results_lib.EvalResult) -> tuple[int | None, float]:
  """(the option index answered most often, its share of all questions); (None, 0.0) when
  no answer could be read. Ties go to the option answered first."""
  picks = collections.Counter(
    q.predicted_index for q in result.records if q.predicted_index is not None
  )
  if not picks:
    return None, 0.0
  index, count = picks.most_common(1)[0]
  return index, count / max(len(result.records), 1)


def prediction_summary(results: Sequence[results_lib.EvalResult]) -> str:
  """A Markdown table of how each result's answers are spread over the option letters.

  A model that ignores the video often answers one letter for every question; its
  accuracy is then just that letter's share of the answers. The table puts each
  result's most frequent prediction and its share next to the accuracy of always
  answering the most frequent correct letter (the majority baseline), so a reader can
  tell such a collapse from an accuracy that depends on what the model saw.
  """
  lines = [
    "| result | accuracy | most frequent answer (share) | majority baseline | unparseable |",
    "|---|---:|---|---:|---:|",
  ]
  for r in results:
    # Letters exist for multiple choice only (the other Video-R1 types have no options).
    mc = [q for q in r.records if q.problem_type == results_lib.MULTIPLE_CHOICE]
    if len(mc) < len(r.records):
      r = results_lib.EvalResult.from_records(r.name, mc, r.settings)
    n = max(len(r.records), 1)
    index, share = most_frequent_answer(r)
    gold = collections.Counter(q.answer_index for q in r.records)
    top = f"{tokenizer_lib.LETTERS[index]} ({share:.0%})" if index is not None else "none"
    majority = gold.most_common(1)[0][1] / n if gold else 0.0
    unparsed = sum(q.predicted_index is None for q in r.records) / n
    accuracy = sum(q.correct for q in r.records) / n
    lines.append(f"| {r.name} | {accuracy:.1%} | {top} | {majority:.1%} | {unparsed:.1%} |")
  return "\n".join(lines)


def write_report(
  out_dir: str | os.PathLike,
  *,
  results: Sequence[results_lib.EvalResult | str] = (),
  metrics: str | os.PathLike | Sequence[Mapping[str, Any]] | None = None,
  title: str = "ChronoForge-RL evaluation report",
  notes: Sequence[str] = (),
) -> str:
  """Writes report.md with training curves, accuracy tables and bar charts.

  Args:
    out_dir: destination folder; PNGs and per-result tables go next to report.md.
    results: EvalResults, or paths of results written by `results_lib.write_result`.
    metrics: a training workdir / metrics.jsonl / records for the curves (optional).
    title: the page title.
    notes: Markdown paragraphs placed under the title (e.g. what a run shows).

  Returns:
    The path of report.md.
  """
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  loaded = [results_lib.load_result(r) if isinstance(r, (str, os.PathLike)) else r for r in results]
  lines = [f"# {title}", ""]
  for note in notes:
    lines += [note, ""]
  if metrics is not None:
    png = training_curves(os.path.join(out_dir, "training_curves.png"), metrics)
    lines += ["## Training curves", ""]
    lines += (
      [f"![training curves]({os.path.basename(png)})", ""]
      if png
      else ["No reward, accuracy, KL or loss metrics were logged.", ""]
    )
  if loaded:
    lines += [
      "## Accuracy",
      "",
      results_lib.compare_results(loaded),
      results_lib.scoring_note(loaded),
      "",
    ]
    for r in loaded:
      settings = ", ".join(
        f"{k}={r.settings[k]}"
        for k in (
          "selector",
          "num_keyframes",
          "frame_order",
          "mode",
          "scoring",
          "prompt_template",
          "checkpoint",
          "data_dir",
        )
        if k in r.settings
      )
      paths = results_lib.write_result(r, out_dir)
      lines.append(
        f"- **{r.name}**: {settings} ([table]({os.path.basename(paths['md'])}), "
        f"[per question]({os.path.basename(paths['jsonl'])}))"
      )
    lines += ["", "### Answers by option letter", "", prediction_summary(loaded), ""]
    groups = [
      ("overall", "accuracy_overall.png"),
      ("duration_bucket", "accuracy_by_duration.png"),
      ("task_type", "accuracy_by_task.png"),
    ]
    if any(r["group"] == "problem_type" for r in results_lib.comparison_rows(loaded)):
      groups.append(("problem_type", "accuracy_by_problem_type.png"))
    for group, file in groups:
      accuracy_bars(os.path.join(out_dir, file), loaded, group)
      heading = "Overall" if group == "overall" else f"By {GROUP_TITLES[group]}"
      lines += [f"### {heading}", "", f"![accuracy: {heading.lower()}]({file})", ""]
  if metrics is None and not loaded:
    lines += ["Nothing to report: give evaluation results and/or a training workdir.", ""]
  path = os.path.join(out_dir, "report.md")
  results_lib.write_files_atomic({path: "\n".join(lines)})
  return path
