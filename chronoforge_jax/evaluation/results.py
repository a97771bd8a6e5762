"""Evaluation results: per-question records, accuracy tables, atomic files, comparisons.

  result = EvalResult.from_records(name, records, settings)
  write_result(result, "out/eval")      # <name>.jsonl, <name>.json, <name>.md
  print(compare_results([uniform_result, tad_result]))

Tables: overall, per duration bucket (short/medium/long) and per task type, each with the
unparseable fraction. Files are written to temporary names and renamed only once all of
a result's files are complete, so a crash never replaces an earlier result with a partial
one. `chronoforge_jax.evaluation.evaluator` produces these results and re-exports this
module's names.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

from chronoforge_jax.data import benchmarks
from chronoforge_jax.rl import answer_rules

GROUPS = ("duration_bucket", "task_type")
# Tabled too, and shown where a result holds more than multiple-choice questions.
TYPE_GROUP = "problem_type"
MULTIPLE_CHOICE = "multiple choice"
NO_CATEGORY = "(none)"


# ---------------------------------------------------------------------------------------
# Results and accuracy tables.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuestionResult:
  """One evaluated question.

  Attributes:
    question_id, video_id: ids from the annotations.
    duration_bucket: "short" / "medium" / "long" (or "" when unknown).
    task_type: the benchmark's task / question category ("" when none).
    answer_index: the correct option (0-based).
    predicted_index: the model's option, or None when its answer names no option.
    num_options: how many options the question has.
    text: the generated answer ("generate") or the winning completion ("likelihood").
    option_scores: summed log-probs of each option's completion ("likelihood"), else None.
    keyframe_indices: the K frames the model saw (indices into the stored frames).
    problem_type: Video-R1's problem type; the other types have no options
      (answer_index -1, predicted_index None) and are scored by their rule instead.
    score: that rule's reward in [0, 1] (None for multiple choice); a question counts as
      correct at >= 0.5, and a table's accuracy is the mean score (for multiple choice
      the mean of 0/1 correctness, as before).
  """

  question_id: str
  video_id: str
  duration_bucket: str
  task_type: str
  answer_index: int
  predicted_index: int | None
  num_options: int
  text: str
  option_scores: tuple[float, ...] | None = None
  keyframe_indices: tuple[int, ...] = ()
  problem_type: str = MULTIPLE_CHOICE
  score: float | None = None

  @property
  def correct(self) -> bool:
    if self.score is not None:
      return self.score >= 0.5
    return self.predicted_index is not None and self.predicted_index == self.answer_index

  @property
  def value(self) -> float:
    """The question's contribution to accuracy: its score, else 0/1 correctness."""
    return float(self.score) if self.score is not None else float(self.correct)

  @property
  def unparseable(self) -> bool:
    if self.problem_type != MULTIPLE_CHOICE:
      return answer_rules.videor1_answer(self.text) is None
    return self.predicted_index is None

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["correct"] = self.correct
    d["option_scores"] = None if self.option_scores is None else list(self.option_scores)
    d["keyframe_indices"] = list(self.keyframe_indices)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> QuestionResult:
    fields = {f.name for f in dataclasses.fields(cls)}
    d = {k: v for k, v in d.items() if k in fields}
    if d.get("option_scores") is not None:
      d["option_scores"] = tuple(float(s) for s in d["option_scores"])
    d["keyframe_indices"] = tuple(int(i) for i in d.get("keyframe_indices", ()))
    return cls(**d)


def summarize(records_: Iterable[QuestionResult]) -> dict[str, Any]:
  """Counts of one group of questions: total, correct, accuracy, unparseable."""
  rs = list(records_)
  n = len(rs)
  correct = sum(r.correct for r in rs)
  unparseable = sum(r.unparseable for r in rs)
  return {
    "num_questions": n,
    "num_correct": correct,
    "accuracy": sum(r.value for r in rs) / n if n else math.nan,
    "num_unparseable": unparseable,
    "unparseable_fraction": unparseable / n if n else math.nan,
  }


def _category_order(names: Iterable[str], group: str) -> list[str]:
  names = set(names)
  first = [b for b in benchmarks.DURATION_BUCKETS if b in names and group == "duration_bucket"]
  return first + sorted(names - set(first))


def accuracy_tables(records_: Sequence[QuestionResult]) -> dict[str, Any]:
  """Accuracy overall and per duration bucket / task type.

  Args:
    records_: evaluated questions.

  Returns:
    {"overall": summary, "duration_bucket": {bucket: summary}, "task_type": {type:
    summary}, "problem_type": {Video-R1 type: summary}}; summaries as `summarize`;
    questions without a category are grouped under "(none)"; duration buckets come in
    short/medium/long order, other keys sorted.
  """
  tables: dict[str, Any] = {"overall": summarize(records_)}
  for group in (*GROUPS, TYPE_GROUP):
    by: dict[str, list[QuestionResult]] = {}
    for r in records_:
      by.setdefault(getattr(r, group) or NO_CATEGORY, []).append(r)
    tables[group] = {k: summarize(by[k]) for k in _category_order(by, group)}
  return tables


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """Per-question records, accuracy tables and the settings that produced them."""

  name: str
  records: tuple[QuestionResult, ...]
  tables: dict[str, Any]
  settings: dict[str, Any]

  @classmethod
  def from_records(
    cls, name: str, records_: Sequence[QuestionResult], settings: Mapping[str, Any] | None = None
  ) -> EvalResult:
    return cls(
      name=name,
      records=tuple(records_),
      tables=accuracy_tables(records_),
      settings=dict(settings or {}),
    )

  @property
  def accuracy(self) -> float:
    return self.tables["overall"]["accuracy"]

  def to_markdown(self) -> str:
    """The tables as Markdown (accuracy in percent)."""
    s = self.settings
    lines = [f"# Evaluation: {self.name}", ""]
    keys = (
      "data_dir",
      "selector",
      "num_keyframes",
      "mode",
      "prompt_template",
      "checkpoint",
      "num_questions",
    )
    info = [f"{k}={s[k]}" for k in keys if k in s]
    if info:
      lines += ["Settings: " + ", ".join(info), ""]
    lines += [f"Scoring: {scoring_label(s)}", ""]
    header = [
      "| group | questions | correct | accuracy | unparseable |",
      "|---|---:|---:|---:|---:|",
    ]

    def row(label, t):
      return (
        f"| {label} | {t['num_questions']} | {t['num_correct']} | "
        f"{_pct(t['accuracy'])} | {_pct(t['unparseable_fraction'])} |"
      )

    lines += ["## Overall", "", *header, row("all", self.tables["overall"]), ""]
    groups = [("duration_bucket", "By duration"), ("task_type", "By task type")]
    if _mixed_types([self]):
      groups.append((TYPE_GROUP, "By problem type (accuracy: mean reward of the type's rule)"))
    for group, title in groups:
      lines += [f"## {title}", "", *header]
      lines += [row(k, t) for k, t in self.tables[group].items()]
      lines.append("")
    return "\n".join(lines)


def scoring_label(settings: Mapping[str, Any]) -> str:
  """How a result's answers were read, for every table and report."""
  name = settings.get("scoring")
  if name is None:
    return "not recorded (written before scorings were named: the lenient reader)"
  notes = {
    "lmms_eval": "lmms-eval's VideoMME rule, comparable with published numbers",
    "lenient": "the project's lenient reader, NOT comparable with published numbers",
    "likelihood": "argmax of the options' log-probabilities (no text read)",
  }
  return f"{name} ({notes[name]})" if name in notes else str(name)


def _pct(x: float) -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


# ---------------------------------------------------------------------------------------
# Writing and reading results (atomically).
# ---------------------------------------------------------------------------------------


def result_paths(out_dir: str | os.PathLike, name: str) -> dict[str, str]:
  """Where `write_result` puts a result: {"jsonl", "json", "md"} paths."""
  base = os.path.join(os.fspath(out_dir), name)
  return {"jsonl": base + ".jsonl", "json": base + ".json", "md": base + ".md"}


def write_files_atomic(contents: Mapping[str, str]) -> None:
  """Writes several text files so that none is replaced unless all were written.

  Each file goes to `<path>.tmp<pid>` (flushed and fsynced); only when every one is
  complete are they renamed into place. On any failure the temporary files are removed
  and the existing files are untouched.

  Args:
    contents: path -> text.
  """
  for path in contents:
    if os.path.isdir(path):
      raise IsADirectoryError(f"cannot write {path!r}: a directory is in the way")
  tmps = {}
  try:
    for path, text in contents.items():
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      tmp = f"{path}.tmp{os.getpid()}"
      tmps[path] = tmp
      with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    for path, tmp in tmps.items():
      os.replace(tmp, path)
  finally:
    for tmp in tmps.values():
      if os.path.exists(tmp):
        os.remove(tmp)


def _json(obj: Any) -> str:
  # NaN (an empty group's accuracy) is written as null: strict JSON readers accept it.
  def clean(x):
    if isinstance(x, float) and not math.isfinite(x):
      return None
    if isinstance(x, dict):
      return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [clean(v) for v in x]
    return x

  return json.dumps(clean(obj), indent=1, default=str)


def write_result(
  result: EvalResult, out_dir: str | os.PathLike, name: str | None = None
) -> dict[str, str]:
  """Writes `<name>.jsonl` (one line per question), `<name>.json` and `<name>.md`.

  Args:
    result: the evaluation result.
    out_dir: destination folder (created).
    name: file name stem (default `result.name`).

  Returns:
    The written paths (see `result_paths`).
  """
  paths = result_paths(out_dir, name or result.name)
  lines = "".join(json.dumps(r.to_dict()) + "\n" for r in result.records)
  summary = {"name": result.name, "settings": result.settings, "tables": result.tables}
  write_files_atomic(
    {paths["jsonl"]: lines, paths["json"]: _json(summary) + "\n", paths["md"]: result.to_markdown()}
  )
  return paths


def load_result(path: str | os.PathLike) -> EvalResult:
  """Reads a result written by `write_result` (path of its .json, .jsonl or stem)."""
  stem = os.fspath(path)
  for ext in (".jsonl", ".json", ".md"):
    if stem.endswith(ext):
      stem = stem[: -len(ext)]
      break
  with open(stem + ".json") as f:
    summary = json.load(f)
  with open(stem + ".jsonl") as f:
    recs = [QuestionResult.from_dict(json.loads(line)) for line in f if line.strip()]
  return EvalResult.from_records(summary["name"], recs, summary.get("settings"))


# ---------------------------------------------------------------------------------------
# Comparing results.
# ---------------------------------------------------------------------------------------


def comparison_rows(results: Sequence[EvalResult]) -> list[dict[str, Any]]:
  """One row per (group, category) present in any result, with each result's summary.

  Returns:
    [{"group": "overall" | "duration_bucket" | "task_type", "category": str,
      "summaries": {result name: summary or None}}], overall first.
  """
  names = _unique_names(results)
  rows = [
    {
      "group": "overall",
      "category": "all",
      "summaries": {n: r.tables["overall"] for n, r in zip(names, results)},
    }
  ]
  for group in (*GROUPS, TYPE_GROUP) if _mixed_types(results) else GROUPS:
    cats = _category_order({c for r in results for c in r.tables.get(group, {})}, group)
    for c in cats:
      rows.append(
        {
          "group": group,
          "category": c,
          "summaries": {n: r.tables.get(group, {}).get(c) for n, r in zip(names, results)},
        }
      )
  return rows


def _mixed_types(results: Sequence[EvalResult]) -> bool:
  """True when some result holds questions other than multiple choice."""
  return any(set(r.tables.get(TYPE_GROUP, {})) - {MULTIPLE_CHOICE} for r in results)


def _unique_names(results: Sequence[EvalResult]) -> list[str]:
  names = [r.name for r in results]
  if len(set(names)) != len(names):
    names = [f"{n} ({i})" for i, n in enumerate(names)]
  return names


def compare_results(results: Sequence[EvalResult]) -> str:
  """A Markdown table of several results side by side (e.g. TAD vs uniform keyframes).

  Columns: the group, its question count(s), each result's accuracy, and (for two or
  more results) the change of the last result over the first in percentage points.
  """
  if not results:
    raise ValueError("compare_results: no results given")
  names = _unique_names(results)
  delta = len(results) > 1
  head = ["group", "questions", *names] + ([f"{names[-1]} - {names[0]}"] if delta else [])
  lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
  labels = {
    "overall": "",
    "duration_bucket": "duration: ",
    "task_type": "task: ",
    TYPE_GROUP: "type: ",
  }
  for row in comparison_rows(results):
    sums = [row["summaries"][n] for n in names]
    counts = {s["num_questions"] for s in sums if s}
    count = (
      str(counts.pop())
      if len(counts) == 1
      else "/".join(str(s["num_questions"]) if s else "-" for s in sums)
    )
    cells = [
      labels[row["group"]] + row["category"],
      count,
      *(_pct(s["accuracy"]) if s else "-" for s in sums),
    ]
    if delta:
      first, last = sums[0], sums[-1]
      cells.append(
        f"{100 * (last['accuracy'] - first['accuracy']):+.1f}"
        if first and last and first["num_questions"] and last["num_questions"]
        else "-"
      )
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def scoring_note(results: Sequence[EvalResult]) -> str:
  """One line saying how the results' answers were read (and whether they compare)."""
  labels = {scoring_label(r.settings) for r in results}
  if len(labels) == 1:
    return f"Scoring: {labels.pop()}"
  return "Scoring differs, so these columns are not comparable: " + "; ".join(
    f"{n}: {scoring_label(r.settings)}" for n, r in zip(_unique_names(results), results)
  )


def write_comparison(
  out_dir: str | os.PathLike, results: Sequence[EvalResult], name: str = "comparison"
) -> dict[str, str]:
  """Writes `<name>.md` (the `compare_results` table) and `<name>.json` (its rows)."""
  base = os.path.join(os.fspath(out_dir), name)
  md = (
    f"# Comparison: {', '.join(_unique_names(results))}\n\n"
    + compare_results(results)
    + "\n"
    + scoring_note(results)
    + "\n"
  )
  rows = _json({"results": _unique_names(results), "rows": comparison_rows(results)})
  write_files_atomic({base + ".md": md, base + ".json": rows + "\n"})
  return {"md": base + ".md", "json": base + ".json"}
