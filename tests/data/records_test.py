"""Tests for chronoforge_jax.data.records: record format, atomic shards, preprocess + resume."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from chronoforge_jax.data import benchmarks, decode, records, synthetic
from chronoforge_jax.tad import features

SETTINGS = records.PreprocessSettings(
  fps=2.0, max_frames=20, size=56, videos_per_shard=2, feature_grid=4
)
SMALL = synthetic.SyntheticSettings(
  num_train_questions=10,
  num_eval_questions=2,
  min_video_seconds=11.0,
  max_video_seconds=12.0,
  size=48,
  fps=6.0,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """Synthetic videos plus bad files, and Video-R1 annotations naming all of them."""
  root = tmp_path_factory.mktemp("src")
  paths = synthetic.write_dataset(root, SMALL)
  rows = json.loads(open(paths["train"]).read())
  (root / "empty.mp4").write_bytes(b"")
  (root / "notes.mp4").write_text("this is not a video\n" * 50)
  good = open(root / rows[0]["path"], "rb").read()
  (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
  bad = []
  for n, name in enumerate(["empty.mp4", "notes.mp4", "truncated.mp4", "missing.mp4"]):
    bad.append({**rows[0], "problem_id": f"bad-{n}", "path": name, "video_id": name})
  # Bad files sit between good videos so good shards follow bad ones.
  rows = rows[:4] + bad + rows[4:] + [{"problem_id": "no-options", "problem": "?"}]
  with open(root / "annotations.json", "w") as f:
    json.dump(rows, f)
  items, rejects = benchmarks.load_annotations("synthetic", root / "annotations.json", root)
  return root, items, rejects


def test_encode_decode_roundtrip():
  arrays = {
    "a": np.arange(12, dtype=np.float64).reshape(3, 4),
    "b": np.array([True, False]),
    "c": np.zeros((0, 5), np.int16),
    "d": np.array(7, np.uint8),
  }
  record = records.encode_arrays(arrays, {"name": "x", "n": [1, 2]})
  out, meta = records.decode_arrays(record)
  assert meta == {"name": "x", "n": [1, 2]}
  for k, v in arrays.items():
    assert out[k].dtype == v.dtype and out[k].shape == v.shape
    np.testing.assert_array_equal(out[k], v)
  with pytest.raises(ValueError, match="bad magic"):
    records.decode_arrays(b"XXXX" + record[4:])
  with pytest.raises(TypeError, match="object"):
    records.encode_arrays({"s": np.array(["a"], object)})


def _video(t, h, w, seed):
  rng = np.random.default_rng(seed)
  return (
    rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
    np.arange(t) * 0.5,
    rng.normal(size=(t, 6)).astype(np.float32),
  )


def test_shards_read_back_exactly(tmp_path):
  videos = {}
  for shard, names in enumerate([["v0", "v1"], ["v2"]]):
    with records.ShardWriter(tmp_path, shard) as w:
      for name in names:
        frames, times, feats = _video(3 + len(videos), 8, 10, len(videos))
        videos[name] = (frames, times, feats)
        pos = w.add_video(name, frames, times, feats, {"path": name})
        w.add_question({"question_id": f"q-{name}", "video_id": name}, pos)
        w.add_question({"question_id": f"r-{name}", "video_id": name}, pos)
      w.commit()
  index = records.write_index(tmp_path, {"s": 1})
  assert (index["num_videos"], index["num_questions"], index["num_frames"]) == (3, 6, 12)
  assert (index["max_frames_per_video"], index["feature_dim"]) == (5, 6)
  data = records.PreprocessedData(tmp_path)
  assert len(data) == 6 and data.frame_shape == (8, 10, 3)
  seen = {}
  for i in range(len(data)):
    q = data.question(i)
    v = data.video(q["video_key"])
    assert v.video_id == q["video_id"] and v.meta["path"] == q["video_id"]
    frames, times, feats = videos[v.video_id]
    np.testing.assert_array_equal(v.timestamps, times)
    np.testing.assert_array_equal(v.features, feats)
    pick = np.array([v.num_frames - 1, 0, 1])
    np.testing.assert_array_equal(data.frames(v, pick), frames[pick])
    seen.setdefault(v.video_id, set()).add(q["video_key"])
  assert all(len(keys) == 1 for keys in seen.values()) and len(seen) == 3
  with pytest.raises(IndexError, match="has 3 frames"):
    data.frames(data.video(0), [3])


def test_uncommitted_shard_leaves_nothing(tmp_path):
  with pytest.raises(RuntimeError):
    with records.ShardWriter(tmp_path, 0) as w:
      w.add_video("v", *_video(2, 4, 4, 0), {})
      raise RuntimeError("killed")
  assert os.listdir(tmp_path / "shards") == []
  assert records.finished_shards(tmp_path) == {}
  with pytest.raises(ValueError, match="uint8"):
    with records.ShardWriter(tmp_path, 1) as w:
      w.add_video("v", np.zeros((2, 4, 4, 3), np.float32), np.zeros(2), np.zeros((2, 1)), {})


def test_preprocess_writes_rejects_and_matches_direct_decode(source, tmp_path):
  root, items, rejects = source
  out = tmp_path / "out"
  index = records.preprocess(items, out, SETTINGS, annotation_rejects=rejects, progress=False)
  good = [i for i in items if not i.question_id.startswith("bad-")]
  assert index["num_questions"] == len(good) == 10
  assert index["num_videos"] == len({i.video_id for i in good}) == 5  # Shared videos once.
  assert index["frame_shape"] == [56, 56, 3] and index["feature_dim"] == 48
  lines = [json.loads(x) for x in open(out / records.REJECTED)]
  by_id = {r["item"].get("question_id", r["item"].get("problem_id")): r["reason"] for r in lines}
  assert len(lines) == 5
  assert "empty" in by_id["bad-0"] and "not a readable video" in by_id["bad-1"]
  assert "truncated.mp4" in by_id["bad-2"] and "not found" in by_id["bad-3"]
  assert "missing field 'problem_type'" in by_id["no-options"]
  # Stored frames, timestamps and features equal decoding the file directly.
  data = records.PreprocessedData(out)
  for i in range(len(data)):
    q = data.question(i)
    v = data.video(q["video_key"])
    ref = decode.decode_video(v.meta["path"], fps=2.0, max_frames=20, size=56)
    np.testing.assert_array_equal(data.frames(v, np.arange(v.num_frames)), ref.frames)
    np.testing.assert_allclose(v.timestamps, ref.timestamps)
    np.testing.assert_allclose(v.features, features.video_features(ref.frames, grid=4), atol=1e-6)
    assert q["duration_bucket"] in benchmarks.DURATION_BUCKETS


class _Killed(BaseException):
  """Like a kill: not an Exception, so no per-video handler swallows it."""


def test_resume_after_interrupt(source, tmp_path, monkeypatch):
  root, items, rejects = source
  clean = records.preprocess(items, tmp_path / "clean", SETTINGS, progress=False)
  out = tmp_path / "out"
  calls, armed = [], [True]
  real = decode.decode_video

  def flaky(path, **kw):
    calls.append(path)
    if len(calls) == 5 and armed[0]:  # Dies in the middle of the third shard, like a kill.
      armed[0] = False
      raise _Killed
    return real(path, **kw)

  monkeypatch.setattr(decode, "decode_video", flaky)
  with pytest.raises(_Killed):
    records.preprocess(items, out, SETTINGS, progress=False)
  done = records.finished_shards(out)
  assert sorted(done) == [0, 1]  # Committed shards survive; the third left nothing.
  assert not [n for n in os.listdir(out / "shards") if n.startswith("shard-00002")]
  # A hard kill can leave temporary files; they are never taken as a shard.
  (out / "shards" / "shard-00002.frames.array_record.tmp999").write_bytes(b"junk")
  marker = (out / "shards" / "shard-00000.json").read_text()
  calls.clear()
  index = records.preprocess(items, out, SETTINGS, progress=False)
  assert index["skipped_shards"] == 2 and index["written_shards"] == 3
  assert len(calls) == 5  # Only the videos of unfinished shards were decoded again.
  assert (out / "shards" / "shard-00000.json").read_text() == marker
  assert not [n for n in os.listdir(out / "shards") if ".tmp" in n]
  for key in ("num_questions", "num_videos", "num_frames", "num_rejected"):
    assert index[key] == clean[key]
  a, b = records.PreprocessedData(out), records.PreprocessedData(tmp_path / "clean")
  for i in range(len(a)):
    qa, qb = a.question(i), b.question(i)
    assert qa == qb
    va, vb = a.video(qa["video_key"]), b.video(qb["video_key"])
    np.testing.assert_array_equal(
      a.frames(va, [0, va.num_frames - 1]), b.frames(vb, [0, vb.num_frames - 1])
    )
  # Other settings in the same folder are refused, naming what changed.
  with pytest.raises(ValueError, match="size"):
    records.preprocess(items, out, records.PreprocessSettings(size=28), progress=False)


def test_worker_processes_give_the_same_shards(source, tmp_path):
  root, items, _ = source
  good = [i for i in items if not i.question_id.startswith("bad-")]
  one = records.preprocess(good, tmp_path / "one", SETTINGS, workers=0, progress=False)
  two = records.preprocess(good, tmp_path / "two", SETTINGS, workers=2, progress=False)
  assert one["shards"] == two["shards"]
  for name in sorted(os.listdir(tmp_path / "one" / "shards")):
    if name.endswith(".array_record"):
      assert (tmp_path / "one" / "shards" / name).read_bytes() == (
        tmp_path / "two" / "shards" / name
      ).read_bytes(), name


def test_empty_dataset_is_a_clear_error(tmp_path):
  records.write_index(tmp_path, {})
  with pytest.raises(ValueError, match="no questions"):
    records.PreprocessedData(tmp_path)
  shutil.rmtree(tmp_path)
  with pytest.raises(FileNotFoundError, match="launch.preprocess"):
    records.PreprocessedData(tmp_path)
