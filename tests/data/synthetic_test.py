"""Tests for chronoforge_jax.data.synthetic: the temporal-QA videos and their questions."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import numpy as np
import pytest

from chronoforge_jax import tad
from chronoforge_jax.data import benchmarks, decode, synthetic
from chronoforge_jax.tad import features

SMALL = synthetic.SyntheticSettings(num_train_questions=16, num_eval_questions=6, size=48, fps=6.0)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  root = tmp_path_factory.mktemp("syn")
  return root, synthetic.write_dataset(root, SMALL)


def _rows(path):
  with open(path) as f:
    return json.load(f)


def _expected_answer(row) -> str:
  """The correct option, worked out from the event list alone."""
  events = sorted(row["events"], key=lambda e: e["start"])
  desc = [e["description"] for e in events]
  task = row["task_type"]
  if task == "first":
    return desc[0]
  if task == "last":
    return desc[-1]
  anchor = re.match(r"Which event happens right (?:after|before) (.*)\?$", row["problem"])[1]
  i = desc.index(anchor)
  return desc[i + 1] if task == "after" else desc[i - 1]


def test_splits_load_and_answers_follow_the_events(written):
  root, paths = written
  for split, n in (("train", 16), ("eval", 6)):
    rows = _rows(paths[split])
    items, rejects = benchmarks.load_annotations("synthetic", paths[split], root)
    assert len(items) == n and not rejects
    assert len({r["video_id"] for r in rows}) == n // SMALL.questions_per_video
    for row, item in zip(rows, items):
      assert item.options[item.answer_index] == _expected_answer(row)
      assert len(item.options) == 4 and len(set(item.options)) == 4
      assert item.duration_bucket in benchmarks.DURATION_BUCKETS and item.reasoning
      events = row["events"]
      assert len({e["description"] for e in events}) == SMALL.num_events
      starts = [e["start"] for e in events]
      assert starts == sorted(starts)
      for a, b in zip(events, events[1:]):  # Separated by uneventful stretches.
        assert b["start"] - a["end"] >= SMALL.event_seconds - 1e-6
  train_videos = {r["video_id"] for r in _rows(paths["train"])}
  assert not train_videos & {r["video_id"] for r in _rows(paths["eval"])}
  tasks = {r["task_type"] for r in _rows(paths["train"])}
  assert tasks == set(synthetic.TASKS)


def test_events_are_visible_and_the_rest_is_still(written):
  root, paths = written
  row = _rows(paths["train"])[0]
  video = decode.decode_video(os.path.join(root, row["path"]))
  frames = video.frames.astype(np.float32)
  quiet = np.ones(len(frames), bool)
  for e in row["events"]:
    inside = (video.timestamps >= e["start"]) & (video.timestamps < e["end"])
    assert inside.sum() >= 3
    quiet &= ~((video.timestamps >= e["start"] - 0.2) & (video.timestamps < e["end"] + 0.2))
    # Mid-event frames differ clearly from the empty background.
    background = frames[quiet.argmax()]
    mid = frames[np.flatnonzero(inside)[inside.sum() // 2]]
    assert np.abs(mid - background).max() > 80
  # Between events nothing changes beyond compression noise.
  still = frames[quiet]
  assert np.abs(still - still[0]).mean() < 2.0


@pytest.mark.slow
def test_tad_finds_events_uniform_sampling_misses(written):
  root, paths = written
  videos = {r["video_id"]: r for r in _rows(paths["train"])}
  k = 8
  hits = {"tad": 0, "uniform": 0}
  select = {name: jax.jit(lambda f, name=name: tad.select(name, f, k, window=4)) for name in hits}
  for row in videos.values():
    v = decode.decode_video(os.path.join(root, row["path"]), fps=2.0, size=56)
    feats = features.video_features(v.frames, grid=4, chunk=48)
    for name in hits:
      idx, _ = select[name](feats)
      t = v.timestamps[np.asarray(idx)]
      hits[name] += sum(bool(((t >= e["start"]) & (t < e["end"])).any()) for e in row["events"])
  total = len(videos) * SMALL.num_events
  # Short events between long still stretches: uniform frames miss most of them.
  assert hits["uniform"] < 0.6 * total
  assert hits["tad"] >= hits["uniform"] + total // 4


def test_deterministic_and_idempotent(written, tmp_path):
  root, paths = written
  again = synthetic.write_dataset(tmp_path / "again", SMALL)
  assert _rows(again["train"]) == _rows(paths["train"])
  assert (
    open(os.path.join(again["tokenizer_dir"], "tokenizer.json")).read()
    == open(os.path.join(paths["tokenizer_dir"], "tokenizer.json")).read()
  )
  row = _rows(paths["train"])[0]
  a = decode.decode_video(os.path.join(root, row["path"])).frames
  b = decode.decode_video(os.path.join(tmp_path / "again", row["path"])).frames
  np.testing.assert_array_equal(a, b)
  stamp = os.path.getmtime(os.path.join(root, row["path"]))
  synthetic.write_dataset(root, SMALL)  # Same settings: nothing is redone.
  assert os.path.getmtime(os.path.join(root, row["path"])) == stamp
  other = synthetic.write_dataset(
    tmp_path / "other",
    synthetic.SyntheticSettings(
      num_train_questions=4, num_eval_questions=2, size=48, fps=6.0, seed=1
    ),
  )
  assert [r["events"] for r in _rows(other["train"])] != [
    r["events"] for r in _rows(paths["train"])[:4]
  ]


def test_render_matches_event_timing():
  s = synthetic.SyntheticSettings(size=32, fps=4.0)
  ev = synthetic.Event(
    kind="recolour",
    shape="square",
    colour="red",
    colour2="blue",
    direction="",
    start=2.0,
    end=3.0,
    x=0.5,
    y=0.5,
  )
  frames = synthetic.render_frames([ev], 4.0, s, seed=0)
  assert frames.shape == (16, 32, 32, 3)
  centre = frames[:, 16, 16].astype(int)
  red, blue = np.array(synthetic.COLOURS["red"]), np.array(synthetic.COLOURS["blue"])
  # Frame j shows time j/4: red for 2.0-2.5 s (frames 8, 9), blue for 2.5-3.0 (10, 11).
  np.testing.assert_array_equal(centre[8], red)
  np.testing.assert_array_equal(centre[9], red)
  np.testing.assert_array_equal(centre[10], blue)
  np.testing.assert_array_equal(centre[11], blue)
  for j in (0, 7, 12, 15):
    assert not (centre[j] == red).all() and not (centre[j] == blue).all()
  assert ev.description == "a square changes colour from red to blue"


def test_bad_settings():
  with pytest.raises(ValueError, match="num_events"):
    synthetic.SyntheticSettings(num_events=3)
  with pytest.raises(ValueError, match="size"):
    synthetic.SyntheticSettings(size=47)
  with pytest.raises(ValueError, match="min_video_seconds"):
    synthetic.SyntheticSettings(min_video_seconds=5.0, max_video_seconds=6.0)


COLOUR = synthetic.SyntheticSettings(
  variant="colour_order",
  num_events=4,
  num_train_questions=12,
  num_eval_questions=4,
  size=32,
  fps=4.0,
)


def test_colour_order_answers_are_the_first_and_last_flash(tmp_path):
  paths = synthetic.write_dataset(tmp_path, COLOUR)
  rows = _rows(paths["train"])
  assert len(rows) == 12 and {r["task_type"] for r in rows} == {"first", "last"}
  for row in rows:
    assert row["options"] == ["A. red", "B. green", "C. blue", "D. yellow"]
    events = sorted(row["events"], key=lambda e: e["start"])
    flash = events[0] if row["task_type"] == "first" else events[-1]
    colour = flash["description"].split()[-1]
    letter = "ABCD"["red green blue yellow".split().index(colour)]
    assert row["solution"] == f"<answer>{letter}</answer>"
    # The flash really is on screen, full frame, in that colour, during its second.
    video = decode.decode_video(os.path.join(tmp_path, row["path"]))
    mid = int(np.argmin(np.abs(video.timestamps - (flash["start"] + flash["end"]) / 2)))
    np.testing.assert_allclose(
      video.frames[mid].reshape(-1, 3).mean(0), synthetic.COLOURS[colour], atol=12
    )


def test_colour_order_letters_are_balanced():
  rng = np.random.default_rng(0)
  counts = np.zeros(4)
  for _ in range(2000):
    events = synthetic.make_events(rng, 16.0, COLOUR)
    for q in synthetic.make_colour_questions(events, rng, 2):
      counts[q["answer_index"]] += 1
  # 4000 answers, 1000 expected per letter: binomial sd ~27, so 900-1100 is > 3.5 sd.
  assert counts.min() > 900 and counts.max() < 1100, counts


def test_tokenizer_and_videos_do_not_depend_on_the_seed(tmp_path):
  a = synthetic.write_dataset(tmp_path / "a", COLOUR)
  b = synthetic.write_dataset(tmp_path / "b", dataclasses.replace(COLOUR, seed=5))
  read = lambda p: open(os.path.join(p["tokenizer_dir"], "tokenizer.json")).read()
  assert read(a) == read(b)
  # Another seed in the same folder renders new videos instead of reusing stale ones.
  ra = _rows(a["train"])
  c = synthetic.write_dataset(tmp_path / "a", dataclasses.replace(COLOUR, seed=5))
  rc = _rows(c["train"])
  assert all(x["path"] != y["path"] for x, y in zip(ra, rc))
  assert [r["events"] for r in rc] == [r["events"] for r in _rows(b["train"])]


def test_colour_order_settings_are_checked():
  with pytest.raises(ValueError, match="num_events"):
    synthetic.SyntheticSettings(variant="colour_order", num_events=5)
  with pytest.raises(ValueError, match="questions_per_video"):
    synthetic.SyntheticSettings(variant="colour_order", num_events=4, questions_per_video=3)
  with pytest.raises(ValueError, match="variant"):
    synthetic.SyntheticSettings(variant="colours")
