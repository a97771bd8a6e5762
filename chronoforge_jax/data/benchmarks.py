"""Annotation loaders for VideoMME, LVBench and Video-R1-style JSON, read as published.

Each loader turns one annotation file into `QAItem`s (one per multiple-choice question)
plus a list of rejects (the raw item and the reason), so one malformed entry never stops
a preprocessing run:

- VideoMME (lmms-lab/Video-MME `videomme/test-00000-of-00001.parquet`, or the same rows
  as JSON/JSONL): video_id, duration (short/medium/long), domain, sub_category, videoID,
  question_id, task_type, question, options ["A. ...", ...], answer letter. Video file:
  `<videoID>.mp4`.
- LVBench (THUDM/LVBench `video_info.meta.jsonl`): one line per video, `key` (the video
  id), `qa` list of {uid, question with "(A) ..." option lines, answer, question_type
  list, time_reference}. Video file: `<key>.mp4` (or the row's `video_path`).
- Video-R1 (`Video-R1-260k.json` / `Video-R1-COT-165k.json`): a list of {problem_id,
  problem, data_type ("video" or "image"), problem_type (Video-R1's five: multiple choice,
  numerical, OCR, free-form, regression), options (lettered, multiple choice only),
  solution "<answer>X</answer>", path, data_source, optional process
  "<think>...</think>" (the COT set's reasoning, kept for SFT targets)}. An item is
  rejected, with the reason, for an unknown data_type or problem_type (Video-R1 would
  crash), a solution without answer tags (Video-R1 would give full credit to any answer
  without tags) or one its type cannot score (a letter outside the options, a number that
  does not parse, an empty text). Image items keep `media="image"` and the duration
  bucket "image": preprocessing decodes the still as a one-frame video (PyAV reads
  PNG/JPEG), see `records` and the README. The synthetic set uses this format plus
  `video_id`, `duration` and `task_type`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import string
from typing import Any, Callable, Iterable

from chronoforge_jax.rl import answer_rules

FORMATS = ("videomme", "lvbench", "videor1", "synthetic")
DURATION_BUCKETS = ("short", "medium", "long")
_LETTER_PREFIX = re.compile(r"^\s*\(?([A-Z])\s*[\.\):]\s*")
_LVBENCH_OPTION = re.compile(r"^\s*\(([A-Z])\)\s*(.*)$")
_ANSWER_TAG = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.S)
_THINK_TAG = re.compile(r"<think>(.*?)</think>", re.S)


@dataclasses.dataclass(frozen=True)
class QAItem:
  """One multiple-choice question about one video.

  Attributes:
    question_id: unique id of the question.
    video_id: id of the video (questions sharing it share one decoded copy).
    video_path: path of the video file.
    question: question text without options.
    options: option texts without letters.
    answer_index: 0-based index of the correct option (-1 for the other problem types).
    duration_bucket: "short", "medium", "long" or "" (filled from the decoded length).
    task_type: task/question category for per-category tables.
    reasoning: reference reasoning for SFT targets ("" if none).
    source: the annotation format.
    extra: everything else worth keeping (domain, time reference, ...).
    problem_type: one of Video-R1's five problem types (`answer_rules.PROBLEM_TYPES`).
    solution: the reference answer as Video-R1 writes it, "<answer>X</answer>"; its
      problem type's rule (`answer_rules.ANSWER_RULES`) scores answers against it.
    media: "video", or "image" for a still image (a one-frame video).
  """

  question_id: str
  video_id: str
  video_path: str
  question: str
  options: tuple[str, ...]
  answer_index: int
  duration_bucket: str = ""
  task_type: str = ""
  reasoning: str = ""
  source: str = ""
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)
  problem_type: str = "multiple choice"
  solution: str = ""
  media: str = "video"

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["options"] = list(self.options)
    return d


class AnnotationError(ValueError):
  """One annotation entry is malformed; the message names the field."""


def duration_bucket(seconds: float) -> str:
  """VideoMME's buckets: short < 2 min, medium < 15 min, long otherwise."""
  return "short" if seconds < 120 else "medium" if seconds < 900 else "long"


def _need(row: dict, key: str, kind=str):
  if not isinstance(row, dict):
    raise AnnotationError(f"entry is a {type(row).__name__}, expected an object")
  if key not in row or row[key] is None or (kind is str and str(row[key]).strip() == ""):
    raise AnnotationError(f"missing field {key!r}")
  value = row[key]
  if kind is str:
    return str(value).strip()
  if not isinstance(value, kind):
    raise AnnotationError(f"field {key!r} is a {type(value).__name__}, expected {kind.__name__}")
  return value


def strip_letters(options: Iterable[str]) -> tuple[str, ...]:
  """["A. cat", "B. dog"] -> ("cat", "dog"); checks the letters run A, B, C, ..."""
  out = []
  for i, option in enumerate(options):
    if not isinstance(option, str):
      raise AnnotationError(f"option {i} is a {type(option).__name__}, expected text")
    m = _LETTER_PREFIX.match(option)
    if m:
      if m.group(1) != string.ascii_uppercase[i]:
        raise AnnotationError(
          f"option {i} is lettered {m.group(1)!r}, expected {string.ascii_uppercase[i]!r}"
        )
      option = option[m.end() :]
    out.append(option.strip())
  if len(out) < 2:
    raise AnnotationError(f"a multiple-choice question needs >= 2 options, got {len(out)}")
  return tuple(out)


def letter_index(answer: str, num_options: int) -> int:
  """'B' (or 'B. dog', '(B)') -> 1, checked against the number of options."""
  m = re.match(r"^\s*\(?([A-Za-z])\b", str(answer))
  if not m:
    raise AnnotationError(f"answer {answer!r} is not an option letter")
  index = string.ascii_uppercase.index(m.group(1).upper())
  if index >= num_options:
    raise AnnotationError(f"answer {answer!r} but only {num_options} options")
  return index


def _read_rows(path: str) -> list[Any]:
  """Rows of a JSON list, JSONL file, or (VideoMME) parquet file."""
  if path.endswith(".parquet"):
    try:
      import pyarrow.parquet as pq  # Optional: only for the official VideoMME file.
    except ImportError:
      raise AnnotationError(
        f"{path}: reading parquet needs pyarrow (pip install pyarrow), or export the "
        "rows to JSON/JSONL"
      ) from None
    return pq.read_table(path).to_pylist()
  with open(path, encoding="utf-8") as f:
    text = f.read()
  stripped = text.lstrip()
  if stripped.startswith("["):
    try:
      return json.loads(text)
    except json.JSONDecodeError as e:
      raise AnnotationError(f"{path}: not valid JSON ({e})") from None
  rows = []
  for n, line in enumerate(text.splitlines(), 1):
    if line.strip():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        # A bad line is rejected on its own; the others still load.
        rows.append(_BadLine(n, line, str(e)))
  return rows


@dataclasses.dataclass
class _BadLine:
  number: int
  text: str
  error: str


@dataclasses.dataclass
class _Reject:
  """A question rejected inside an otherwise good entry (one LVBench video's qa list)."""

  item: Any
  reason: str


def _video_path(video_dir: str, rel: str) -> str:
  return rel if os.path.isabs(rel) else os.path.normpath(os.path.join(video_dir, rel))


def _videomme(row: dict, video_dir: str) -> list[QAItem]:
  options = strip_letters(_need(row, "options", list))
  bucket = _need(row, "duration")
  if bucket not in DURATION_BUCKETS:
    raise AnnotationError(f"duration {bucket!r}: expected one of {DURATION_BUCKETS}")
  video = _need(row, "videoID")
  return [
    QAItem(
      question_id=_need(row, "question_id"),
      video_id=video,
      video_path=_video_path(video_dir, f"{video}.mp4"),
      question=_need(row, "question"),
      options=options,
      answer_index=letter_index(_need(row, "answer"), len(options)),
      duration_bucket=bucket,
      task_type=_need(row, "task_type"),
      source="videomme",
      extra={
        "domain": row.get("domain", ""),
        "sub_category": row.get("sub_category", ""),
        "videomme_video_id": row.get("video_id", ""),
      },
    )
  ]


def _lvbench_question(text: str) -> tuple[str, tuple[str, ...]]:
  """Splits 'Question?\\n(A) x\\n(B) y' into the question and ('x', 'y')."""
  lines = text.split("\n")
  first = next((i for i, line in enumerate(lines) if _LVBENCH_OPTION.match(line)), None)
  if first is None:
    raise AnnotationError("question has no '(A) ...' option lines")
  options = []
  for line in lines[first:]:
    m = _LVBENCH_OPTION.match(line)
    if not m:
      if line.strip():
        raise AnnotationError(f"unexpected text after the options: {line[:60]!r}")
      continue
    if m.group(1) != string.ascii_uppercase[len(options)]:
      raise AnnotationError(f"option lettered {m.group(1)!r} out of order")
    options.append(m.group(2).strip())
  if len(options) < 2:
    raise AnnotationError(f"a multiple-choice question needs >= 2 options, got {len(options)}")
  return "\n".join(lines[:first]).strip(), tuple(options)


def _lvbench(row: dict, video_dir: str) -> list[QAItem | _Reject]:
  key = _need(row, "key")
  rel = row.get("video_path") or f"{key}.mp4"
  info = row.get("video_info") or {}
  minutes = info.get("duration_minutes") if isinstance(info, dict) else None
  bucket = duration_bucket(60.0 * float(minutes)) if minutes else "long"
  items = []
  for n, qa in enumerate(_need(row, "qa", list)):
    try:
      question, options = _lvbench_question(_need(qa, "question"))
      types = qa.get("question_type") or []
      types = [types] if isinstance(types, str) else list(types)
      items.append(
        QAItem(
          question_id=str(_need(qa, "uid")),
          video_id=key,
          video_path=_video_path(video_dir, rel),
          question=question,
          options=options,
          answer_index=letter_index(_need(qa, "answer"), len(options)),
          duration_bucket=bucket,
          task_type=types[0] if types else "",
          source="lvbench",
          extra={
            "question_types": types,
            "time_reference": qa.get("time_reference", ""),
            "video_type": row.get("type", ""),
          },
        )
      )
    except AnnotationError as e:
      items.append(_Reject({"key": key, "qa": qa}, f"video {key!r} question {n}: {e}"))
  return items


MEDIA = ("video", "image")
IMAGE_BUCKET = "image"


def _videor1(row: dict, video_dir: str, source: str = "videor1") -> list[QAItem]:
  if not isinstance(row, dict):
    raise AnnotationError(f"entry is a {type(row).__name__}, expected an object")
  media = row.get("data_type", "video")
  if media not in MEDIA:
    raise AnnotationError(f"data_type {media!r}: expected one of {list(MEDIA)}")
  problem_type = _need(row, "problem_type")
  if problem_type not in answer_rules.PROBLEM_TYPES:
    raise AnnotationError(
      f"unknown problem_type {problem_type!r}; Video-R1's are {list(answer_rules.PROBLEM_TYPES)}"
    )
  solution = _need(row, "solution")
  m = _ANSWER_TAG.search(solution)
  if not m:
    raise AnnotationError(f"malformed solution {solution[:60]!r}: no <answer>...</answer>")
  answer = m.group(1).strip()
  options, answer_index = (), -1
  if problem_type == "multiple choice":
    options = strip_letters(_need(row, "options", list))
    if not re.fullmatch(r"[A-Z]", answer):
      raise AnnotationError(
        f"malformed solution {solution[:60]!r}: a multiple-choice answer is one option letter"
      )
    answer_index = letter_index(answer, len(options))
  elif problem_type in ("numerical", "regression"):
    if answer_rules.ANSWER_RULES.get(problem_type)(solution, solution) <= 0.5:
      raise AnnotationError(
        f"malformed solution {solution[:60]!r}: a {problem_type} answer is a finite number"
      )
  elif not answer:
    raise AnnotationError(f"malformed solution {solution[:60]!r}: empty {problem_type} answer")
  rel = _need(row, "path")
  think = _THINK_TAG.search(str(row.get("process", "")))
  bucket = str(row.get("duration", ""))
  if bucket and bucket not in DURATION_BUCKETS:
    raise AnnotationError(f"duration {bucket!r}: expected one of {DURATION_BUCKETS}")
  return [
    QAItem(
      question_id=str(_need(row, "problem_id")),
      video_id=str(row.get("video_id") or os.path.normpath(rel)),
      video_path=_video_path(video_dir, rel),
      question=_need(row, "problem"),
      options=options,
      answer_index=answer_index,
      duration_bucket=IMAGE_BUCKET if media == "image" else bucket,
      task_type=str(row.get("task_type") or row.get("data_source", "")),
      reasoning=think.group(1).strip() if think else "",
      source=source,
      extra={k: row[k] for k in ("data_source", "events") if k in row},
      problem_type=problem_type,
      solution=f"<answer>{answer}</answer>",
      media=media,
    )
  ]


_PARSERS: dict[str, Callable[[dict, str], list[Any]]] = {
  "videomme": _videomme,
  "lvbench": _lvbench,
  "videor1": _videor1,
  "synthetic": lambda row, d: _videor1(row, d, "synthetic"),
}


def load_annotations(
  fmt: str, path: str | os.PathLike, video_dir: str | os.PathLike
) -> tuple[list[QAItem], list[dict[str, Any]]]:
  """Reads an annotation file; malformed entries are rejected, not fatal.

  Args:
    fmt: one of FORMATS.
    path: the annotation file as published (JSON, JSONL or, for VideoMME, parquet).
    video_dir: folder the video paths are relative to.

  Returns:
    (items, rejects); each reject is {"item": raw entry, "reason": text}. Duplicate
    question ids are rejected after the first.

  Raises:
    AnnotationError: when the file itself cannot be read (missing, not JSON).
  """
  if fmt not in _PARSERS:
    raise ValueError(f"unknown annotation format {fmt!r}; choose one of {list(FORMATS)}")
  path, video_dir = os.fspath(path), os.fspath(video_dir)
  if not os.path.isfile(path):
    raise AnnotationError(f"annotation file {path!r} not found")
  rows = _read_rows(path)
  if isinstance(rows, dict):  # Some exports wrap the list: {"data": [...]}.
    rows = next((v for v in rows.values() if isinstance(v, list)), None)
    if rows is None:
      raise AnnotationError(f"{path}: expected a list of entries")
  items, rejects, seen = [], [], set()
  for n, row in enumerate(rows):
    if isinstance(row, _BadLine):
      rejects.append(
        {
          "item": {"line": row.number, "text": row.text[:200]},
          "reason": f"{path}:{row.number}: not valid JSON ({row.error})",
        }
      )
      continue
    try:
      parsed = _PARSERS[fmt](row, video_dir)
    except AnnotationError as e:
      rejects.append({"item": row, "reason": f"{path} entry {n}: {e}"})
      continue
    for item in parsed:
      if isinstance(item, _Reject):
        rejects.append({"item": item.item, "reason": f"{path} entry {n}: {item.reason}"})
        continue
      if item.question_id in seen:
        rejects.append(
          {"item": item.to_dict(), "reason": f"duplicate question id {item.question_id!r}"}
        )
        continue
      seen.add(item.question_id)
      items.append(item)
  return items, rejects
