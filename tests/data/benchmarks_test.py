"""Tests for chronoforge_jax.data.benchmarks on small hand-written files in the exact formats."""

from __future__ import annotations

import json

import pytest

from chronoforge_jax.data import benchmarks

# Rows as in lmms-lab/Video-MME videomme/test-00000-of-00001.parquet (exported as JSON).
VIDEOMME = [
  {
    "video_id": "001",
    "duration": "short",
    "domain": "Knowledge",
    "sub_category": "Humanity & History",
    "url": "https://www.youtube.com/watch?v=fFjv93ACGo8",
    "videoID": "fFjv93ACGo8",
    "question_id": "001-1",
    "task_type": "Counting Problem",
    "question": "When demonstrating the Germany modern Christmas tree is initially decorated "
    "with apples, candles and berries, which kind of the decoration has the "
    "largest number?",
    "options": [
      "A. Apples.",
      "B. Candles.",
      "C. Berries.",
      "D. The three kinds are of the same number.",
    ],
    "answer": "C",
  },
  {
    "video_id": "001",
    "duration": "short",
    "domain": "Knowledge",
    "sub_category": "Humanity & History",
    "url": "https://www.youtube.com/watch?v=fFjv93ACGo8",
    "videoID": "fFjv93ACGo8",
    "question_id": "001-2",
    "task_type": "Information Synopsis",
    "question": "What is the genre of this video?",
    "options": [
      "A. It is a news report.",
      "B. It is a documentary.",
      "C. It is a vlog.",
      "D. It is a cartoon.",
    ],
    "answer": "B",
  },
  # Malformed: answer letter outside the options.
  {
    "video_id": "002",
    "duration": "medium",
    "domain": "Sports Competition",
    "sub_category": "Football",
    "url": "u",
    "videoID": "abc",
    "question_id": "002-1",
    "task_type": "Action Recognition",
    "question": "Who scores?",
    "options": ["A. x", "B. y", "C. z", "D. w"],
    "answer": "E",
  },
  # Malformed: unknown duration bucket.
  {
    "video_id": "003",
    "duration": "tiny",
    "domain": "Life Record",
    "sub_category": "Travel",
    "url": "u",
    "videoID": "def",
    "question_id": "003-1",
    "task_type": "OCR Problems",
    "question": "What is written?",
    "options": ["A. a", "B. b", "C. c", "D. d"],
    "answer": "A",
  },
]

# Lines as in THUDM/LVBench video_info.meta.jsonl.
LVBENCH = [
  {
    "key": "sxGq7iTjSrs",
    "type": "cartoon",
    "video_info": {
      "duration_minutes": 67.2,
      "fps": 30.0,
      "resolution": {"width": 1280, "height": 720},
    },
    "qa": [
      {
        "uid": "0",
        "question": "What year appears in the opening caption of the video?\n"
        "(A) 1636\n(B) 1366\n(C) 1363\n(D) 1633",
        "answer": "D",
        "question_type": ["key information retrieval"],
        "time_reference": "00:15-00:19",
      },
      {
        "uid": "1",
        "question": "What does the boy do after the storm?\n(A) He runs home\n"
        "(B) He climbs a tree\n(C) He hides\n(D) He sings",
        "answer": "B",
        "question_type": ["event understanding", "reasoning"],
        "time_reference": "12:01-12:40",
      },
      {
        "uid": "2",
        "question": "A question without options",
        "answer": "A",
        "question_type": ["reasoning"],
        "time_reference": "",
      },
    ],
  },
]

# Items as in Video-R1-COT-165k.json / Video-R1-260k.json.
VIDEOR1 = [
  {
    "problem_id": 2,
    "problem": "What appears on the screen in Russian during the missile's ascent?",
    "data_type": "video",
    "problem_type": "multiple choice",
    "options": [
      "A. A YouTube subscription notification",
      "B. A military command",
      "C. A warning message",
      "D. A weather update",
    ],
    "process": "<think>Let me think. It looks like a YouTube pop-up.</think>",
    "solution": "<answer>A</answer>",
    "path": (
      "./LLaVA-Video-178K/liwei_youtube_videos/videos/youtube_video_2024/ytb_7nRmsEw7nsE.mp4"
    ),
    "data_source": "LLaVA-Video-178K/2_3_m_youtube_v0_1",
  },
  {
    "problem_id": 3,
    "problem": "How many cars?",
    "data_type": "video",
    "problem_type": "numerical",
    "options": [],
    "solution": "<answer>3</answer>",
    "path": "./x.mp4",
    "data_source": "STAR",
  },
  {
    "problem_id": 4,
    "problem": "Which chart?",
    "data_type": "image",
    "problem_type": "multiple choice",
    "options": ["A. a", "B. b"],
    "solution": "<answer>A</answer>",
    "path": "./Chart/a.png",
    "data_source": "Chart",
  },
  {
    "problem_id": 5,
    "problem": "No tags",
    "data_type": "video",
    "problem_type": "multiple choice",
    "options": ["A. a", "B. b"],
    "solution": "B",
    "path": "./y.mp4",
    "data_source": "NeXT-QA",
  },
]


def _write(tmp_path, name, rows, jsonl=False):
  path = tmp_path / name
  with open(path, "w") as f:
    if jsonl:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    else:
      json.dump(rows, f)
  return path


@pytest.mark.parametrize("jsonl", [False, True])
def test_videomme(tmp_path, jsonl):
  items, rejects = benchmarks.load_annotations(
    "videomme", _write(tmp_path, "vm.json", VIDEOMME, jsonl), "/videos"
  )
  assert [i.question_id for i in items] == ["001-1", "001-2"]
  a = items[0]
  assert a.video_id == "fFjv93ACGo8" and a.video_path == "/videos/fFjv93ACGo8.mp4"
  assert a.options == ("Apples.", "Candles.", "Berries.", "The three kinds are of the same number.")
  assert a.answer_index == 2 and items[1].answer_index == 1
  assert a.duration_bucket == "short" and a.task_type == "Counting Problem"
  assert a.extra["domain"] == "Knowledge"
  assert len(rejects) == 2
  assert "answer 'E'" in rejects[0]["reason"] and rejects[0]["item"]["question_id"] == "002-1"
  assert "duration 'tiny'" in rejects[1]["reason"]


def test_lvbench(tmp_path):
  items, rejects = benchmarks.load_annotations(
    "lvbench", _write(tmp_path, "meta.jsonl", LVBENCH, jsonl=True), "/lv"
  )
  assert [i.question_id for i in items] == ["0", "1"]
  a, b = items
  assert a.question == "What year appears in the opening caption of the video?"
  assert a.options == ("1636", "1366", "1363", "1633") and a.answer_index == 3
  assert a.video_id == "sxGq7iTjSrs" and a.video_path == "/lv/sxGq7iTjSrs.mp4"
  assert a.duration_bucket == "long"  # 67 minutes.
  assert b.task_type == "event understanding"
  assert b.extra["question_types"] == ["event understanding", "reasoning"]
  assert b.extra["time_reference"] == "12:01-12:40"
  # One bad question in a video's list is rejected alone.
  assert len(rejects) == 1 and "option lines" in rejects[0]["reason"]


def test_videor1(tmp_path):
  items, rejects = benchmarks.load_annotations(
    "videor1", _write(tmp_path, "r1.json", VIDEOR1), "/r1"
  )
  assert len(items) == 3
  a = items[0]
  assert a.question_id == "2" and a.answer_index == 0
  assert a.options[0] == "A YouTube subscription notification"
  assert a.video_path == (
    "/r1/LLaVA-Video-178K/liwei_youtube_videos/videos/youtube_video_2024/ytb_7nRmsEw7nsE.mp4"
  )
  assert a.reasoning == "Let me think. It looks like a YouTube pop-up."
  assert a.task_type == "LLaVA-Video-178K/2_3_m_youtube_v0_1" and a.duration_bucket == ""
  assert (a.problem_type, a.media, a.solution) == ("multiple choice", "video", "<answer>A</answer>")
  num, image = items[1:]
  assert (num.problem_type, num.answer_index, num.options, num.solution) == (
    "numerical",
    -1,
    (),
    "<answer>3</answer>",
  )
  assert (image.media, image.duration_bucket, image.answer_index) == ("image", "image", 0)
  reasons = [r["reason"] for r in rejects]
  assert len(reasons) == 1 and "malformed solution 'B'" in reasons[0]


def test_bad_lines_duplicates_and_missing_file(tmp_path):
  path = tmp_path / "broken.jsonl"
  path.write_text(json.dumps(LVBENCH[0]) + "\n{not json\n" + json.dumps(LVBENCH[0]) + "\n")
  items, rejects = benchmarks.load_annotations("lvbench", path, "/lv")
  assert len(items) == 2
  reasons = [r["reason"] for r in rejects]
  assert any(":2: not valid JSON" in r for r in reasons)
  assert sum("duplicate question id" in r for r in reasons) == 2
  with pytest.raises(benchmarks.AnnotationError, match="not found"):
    benchmarks.load_annotations("videomme", tmp_path / "nope.json", "/v")
  (tmp_path / "garbage.json").write_text("[{")
  with pytest.raises(benchmarks.AnnotationError, match="not valid JSON"):
    benchmarks.load_annotations("videor1", tmp_path / "garbage.json", "/v")
  with pytest.raises(ValueError, match="unknown annotation format"):
    benchmarks.load_annotations("kinetics", path, "/v")


def test_helpers():
  assert benchmarks.strip_letters(["(A) x", "B) y", "C: z"]) == ("x", "y", "z")
  assert benchmarks.strip_letters(["plain", "text"]) == ("plain", "text")
  with pytest.raises(benchmarks.AnnotationError, match="lettered 'C'"):
    benchmarks.strip_letters(["A. x", "C. y"])
  assert benchmarks.letter_index("(b)", 4) == 1
  assert benchmarks.letter_index("C. Berries", 4) == 2
  assert [benchmarks.duration_bucket(s) for s in (30, 119.9, 120, 899, 900)] == [
    "short",
    "short",
    "medium",
    "medium",
    "long",
  ]


def test_parquet_videomme(tmp_path):
  pq = pytest.importorskip("pyarrow.parquet")
  import pyarrow as pa

  pq.write_table(pa.Table.from_pylist(VIDEOMME[:2]), tmp_path / "test-00000-of-00001.parquet")
  items, _ = benchmarks.load_annotations("videomme", tmp_path / "test-00000-of-00001.parquet", "/v")
  assert [i.answer_index for i in items] == [2, 1]
