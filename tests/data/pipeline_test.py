"""Tests for chronoforge_jax.data.pipeline: batch contents, determinism, resume, sharding."""

from __future__ import annotations

import dataclasses
import itertools
import json

import jax
import numpy as np
import pytest

from chronoforge_jax import tad
from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax.data import benchmarks, decode, pipeline, records, synthetic

K = 4
SIZE = 56  # Two 28-pixel units per side: 4 video tokens per temporal patch.
SMALL = synthetic.SyntheticSettings(
  num_train_questions=12,
  num_eval_questions=2,
  questions_per_video=2,
  min_video_seconds=11.0,
  max_video_seconds=13.0,
  size=48,
  fps=6.0,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipe")
  paths = synthetic.write_dataset(root / "src", SMALL)
  items, _ = benchmarks.load_annotations("synthetic", paths["train"], paths["video_dir"])
  records.preprocess(
    items,
    root / "data",
    records.PreprocessSettings(
      fps=2.0, max_frames=24, size=SIZE, videos_per_shard=2, feature_grid=4
    ),
    progress=False,
  )
  tok = tokenizer_lib.Tokenizer.from_dir(paths["tokenizer_dir"])
  rows = {r["problem_id"]: r for r in json.load(open(paths["train"]))}
  return str(root / "data"), tok, rows


def _settings(**kw):
  base = dict(
    num_keyframes=K,
    prompt_buckets=(100, 128, 192),
    target_buckets=(48, 64),
    select_kwargs={"window": 4},
  )
  return pipeline.train_settings(kw.pop("batch_size", 4), **{**base, **kw})


def _take(ds_or_it, n):
  return list(itertools.islice(iter(ds_or_it), n))


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    if a[k].dtype == object:
      assert a[k].tolist() == b[k].tolist(), k
    else:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_contents_match_independent_references(dataset):
  data_dir, tok, rows = dataset
  s = _settings()
  batch = _take(pipeline.make_dataset(data_dir, tok, s), 1)[0]
  m = s.num_pairs
  u = K + 2 * m
  assert m == 1 and batch["frames"].shape == (4, u, SIZE, SIZE, 3)
  assert batch["frames"].dtype == np.uint8 and batch["timestamps"].dtype == np.float32
  num_video = (K // 2) * (SIZE // 28) ** 2
  data = records.PreprocessedData(data_dir)
  by_id = {data.question(i)["question_id"]: data.question(i) for i in range(len(data))}
  lengths = []
  select = jax.jit(lambda f: tad.select("tad", f, K, window=4))
  for j in range(4):
    row = rows[batch["question_id"][j]]
    q = by_id[row["problem_id"]]
    video = data.video(q["video_key"])
    # Keyframes: TAD on the stored features directly (no padding), by name.
    ref_idx, ref_valid = select(video.features)
    np.testing.assert_array_equal(batch["keyframe_indices"][j], np.asarray(ref_idx))
    assert np.asarray(ref_valid).all()
    # Frames: decoding the source file again, at the stored rate and size.
    ref = decode.decode_video(video.meta["path"], fps=2.0, max_frames=24, size=SIZE)
    idx = np.concatenate([batch["keyframe_indices"][j], np.zeros(2 * m, int)])
    np.testing.assert_array_equal(batch["frames"][j, :K], ref.frames[idx[:K]])
    np.testing.assert_allclose(batch["timestamps"][j, :K], ref.timestamps[idx[:K]], rtol=1e-6)
    assert batch["frame_valid"][j].all() and batch["example_valid"][j]
    np.testing.assert_array_equal(batch["ordered_patches"][j], np.arange(K // 2))
    # Prompt: the chat template around the question, left-padded.
    options = [o.split(". ", 1)[1] for o in row["options"]]
    mask = batch["prompt_mask"][j]
    assert not mask[: np.argmax(mask)].any() and mask[np.argmax(mask) :].all()
    assert (batch["prompt_ids"][j][~mask] == tok.pad_id).all()
    assert tok.decode(batch["prompt_ids"][j][mask]) == tok.chat_prompt(
      row["problem"], options, num_video
    )
    lengths.append(int(mask.sum()) - num_video)
    # Answer and SFT target from the annotation.
    letter = row["solution"][len("<answer>")]
    assert batch["answer_index"][j] == "ABCD".index(letter)
    tmask = batch["target_mask"][j]
    assert tok.decode(batch["target_ids"][j][tmask]) == (
      f"{row['process']}<answer>{letter}</answer><|im_end|>"
    )
    # The answer mask covers the tokens that spell the letter, inside the target.
    amask = batch["target_answer_mask"][j]
    assert amask.any() and not (amask & ~tmask).any()
    assert tok.decode(batch["target_ids"][j][amask]).strip("<>/answer") == letter
    assert batch["options"][j] == options and batch["task_type"][j] == row["task_type"]
  # The prompt bucket is the smallest that fits the longest prompt of the batch.
  expected = min(b for b in s.prompt_buckets if b >= max(lengths))
  assert batch["prompt_ids"].shape == (4, num_video + expected)
  device, host = pipeline.split_host(batch)
  assert set(host) == set(pipeline.HOST_KEYS) and not set(device) & set(host)


def test_duplicate_patch_mode_repeats_each_frame_into_its_own_patch(dataset):
  data_dir, tok, _ = dataset
  k = 3  # Any K: every keyframe is a patch of its own.
  dup = _take(
    pipeline.make_dataset(data_dir, tok, _settings(num_keyframes=k, patch_mode="duplicate")), 1
  )[0]
  s = _settings(num_keyframes=k, patch_mode="duplicate")
  assert (s.num_patches, s.num_pairs, s.num_frames) == (3, 2, 10)
  assert dup["frames"].shape == (4, 10, SIZE, SIZE, 3)
  np.testing.assert_array_equal(dup["frames"][:, 0::2], dup["frames"][:, 1::2])
  np.testing.assert_array_equal(dup["timestamps"][:, 0::2], dup["timestamps"][:, 1::2])
  np.testing.assert_array_equal(dup["ordered_patches"], np.tile(np.arange(k), (4, 1)))
  assert dup["disordered_patches"].shape == (4, k) and (dup["disordered_patches"] < 5).all()
  # The same questions and keyframes as TAD chose them; one patch of video tokens each.
  data = records.PreprocessedData(data_dir)
  by_id = {data.question(i)["question_id"]: data.question(i) for i in range(len(data))}
  select = jax.jit(lambda f: tad.select("tad", f, k, window=4))
  for j in range(4):
    video = data.video(by_id[dup["question_id"][j]]["video_key"])
    ref_idx, _ = select(video.features)
    np.testing.assert_array_equal(dup["keyframe_indices"][j], np.asarray(ref_idx))
    np.testing.assert_array_equal(
      dup["frames"][j, 0 : 2 * k : 2], data.frames(video, np.asarray(ref_idx))
    )
  num_video = k * (SIZE // 28) ** 2
  assert int(np.sum(dup["prompt_ids"][0] == tok.video_pad_id)) == num_video
  with pytest.raises(ValueError, match="patch_mode"):
    _settings(patch_mode="triple")
  with pytest.raises(ValueError, match="num_keyframes"):
    _settings(num_keyframes=3)  # Pairing needs an even K.


def test_uniform_selector_by_name(dataset):
  data_dir, tok, _ = dataset
  batch = _take(pipeline.make_dataset(data_dir, tok, _settings(selector="uniform")), 1)[0]
  data = records.PreprocessedData(data_dir)
  for j in range(4):
    q = next(
      data.question(i)
      for i in range(len(data))
      if data.question(i)["question_id"] == batch["question_id"][j]
    )
    t = data.video(q["video_key"]).num_frames
    expected = [(2 * i + 1) * t // (2 * K) for i in range(K)]
    np.testing.assert_array_equal(batch["keyframe_indices"][j], expected)


def test_same_seed_same_batches_other_seed_other_order(dataset):
  data_dir, tok, _ = dataset
  a = _take(pipeline.make_dataset(data_dir, tok, _settings()), 4)
  b = _take(pipeline.make_dataset(data_dir, tok, _settings()), 4)
  for x, y in zip(a, b):
    _same(x, y)
  c = _take(pipeline.make_dataset(data_dir, tok, _settings(seed=1)), 3)
  order = lambda bs: [q for x in bs for q in x["question_id"]]
  assert order(a[:3]) != order(c)
  # Epochs are reshuffled: 12 questions, 3 batches per epoch, each epoch a permutation.
  six = order(_take(pipeline.make_dataset(data_dir, tok, _settings()), 6))
  assert sorted(six[:12]) == sorted(six[12:]) and len(set(six[:12])) == 12
  assert six[:12] != six[12:]


def test_iterator_state_restores_exactly(dataset):
  data_dir, tok, _ = dataset
  ds = pipeline.make_dataset(data_dir, tok, _settings())
  it = iter(ds)
  _take(it, 4)  # Mid-epoch (3 batches per epoch).
  state = it.get_state()
  expected = _take(it, 4)
  fresh = iter(pipeline.make_dataset(data_dir, tok, _settings()))
  fresh.set_state(state)
  for x, y in zip(_take(fresh, 4), expected):
    _same(x, y)


@pytest.mark.slow
def test_state_restores_with_worker_processes(dataset):
  data_dir, tok, _ = dataset
  s = _settings(prefetch_workers=2)
  it = iter(pipeline.make_dataset(data_dir, tok, s))
  first = _take(it, 3)
  state = it.get_state()
  expected = _take(it, 3)
  it.close()
  # Same batches as building them in this process, and the same continuation.
  for x, y in zip(first + expected, _take(pipeline.make_dataset(data_dir, tok, _settings()), 6)):
    _same(x, y)
  fresh = iter(pipeline.make_dataset(data_dir, tok, s))
  fresh.set_state(state)
  for x, y in zip(_take(fresh, 3), expected):
    _same(x, y)
  fresh.close()


def test_two_processes_get_disjoint_shards_covering_the_data(dataset):
  data_dir, tok, _ = dataset
  s = _settings(num_epochs=1)
  whole = _take(pipeline.make_dataset(data_dir, tok, s), 10)
  parts = [
    _take(pipeline.make_dataset(data_dir, tok, s, shard_index=p, shard_count=2), 10) for p in (0, 1)
  ]
  assert len(whole) == len(parts[0]) == len(parts[1]) == 3
  ids = [[q for b in part for q in b["question_id"]] for part in parts]
  assert not set(ids[0]) & set(ids[1])
  assert sorted(ids[0] + ids[1]) == sorted(q for b in whole for q in b["question_id"])
  assert len(set(ids[0] + ids[1])) == 12
  for step, b in enumerate(whole):
    # Each process holds its half of the global batch, built exactly as in one process.
    for p in (0, 1):
      part = parts[p][step]
      assert part["frames"].shape[0] == 2
      assert part["prompt_ids"].shape[1:] == b["prompt_ids"].shape[1:]  # Agree globally.
      half = {k: v[2 * p : 2 * p + 2] for k, v in b.items()}
      _same(part, half)


def test_eval_pads_the_last_batch_and_sees_everything_once(dataset):
  data_dir, tok, _ = dataset
  s = pipeline.eval_settings(
    5, num_keyframes=6, prompt_buckets=(128, 192), target_buckets=(64,), selector="uniform"
  )
  batches = _take(pipeline.make_dataset(data_dir, tok, s), 10)
  assert len(batches) == 3 and batches[0]["frames"].shape[1] == 6  # U = K: no non-keyframes.
  valid = np.concatenate([b["example_valid"] for b in batches])
  assert valid.sum() == 12 and not valid[12:].any()
  ids = np.concatenate([b["question_id"] for b in batches])[valid]
  data = records.PreprocessedData(data_dir)
  assert ids.tolist() == [data.question(i)["question_id"] for i in range(12)]
  assert not batches[-1]["frame_valid"][2:].any()


def test_settings_from_config_and_errors(dataset):
  from configs import data as data_config

  data_dir, tok, _ = dataset
  config = data_config.get_config("smoke")
  s = pipeline.settings_from_config(config)
  assert (s.num_keyframes, s.batch_size, s.selector) == (4, 2, "tad")
  assert s.select_kwargs["window"] == 4 and s.num_pairs == 1
  e = pipeline.settings_from_config(config, train=False, selector="uniform")
  assert (e.num_keyframes, e.shuffle, e.num_pairs, e.selector) == (4, False, 0, "uniform")
  assert s.patch_mode == "pair" and s.target_reasoning is False
  config.input.patch_mode, config.tad.k = "duplicate", 5
  data_config.validate_data(config)  # Any K when every keyframe has its own patch.
  d = pipeline.settings_from_config(config)
  assert (d.patch_mode, d.num_patches, d.num_pairs) == ("duplicate", 5, 2)
  config.input.patch_mode = "pair"
  with pytest.raises(data_config.common.ConfigError, match="config.tad.k=5: need an even K"):
    data_config.validate_data(config)
  config.input.patch_mode = "triple"
  with pytest.raises(data_config.common.ConfigError, match="input.patch_mode"):
    data_config.validate_data(config)
  with pytest.raises(ValueError, match="num_keyframes"):
    _settings(num_keyframes=3)
  with pytest.raises(ValueError, match="not divisible by 3 processes"):
    pipeline.make_dataset(data_dir, tok, _settings(), shard_index=0, shard_count=3)
  with pytest.raises(ValueError, match="input.prompt_buckets"):
    pipeline.make_dataset(data_dir, tok, _settings(prompt_buckets=(16,)))
  with pytest.raises(ValueError, match="multiple of 42"):
    pipeline.make_dataset(data_dir, tok, _settings(patch_size=21))
  with pytest.raises(ValueError, match="cannot fill one global batch"):
    pipeline.make_dataset(data_dir, tok, _settings(batch_size=16, num_epochs=1))
  assert dataclasses.replace(s, seed=3).seed == 3


def test_prompt_template_by_name(dataset):
  from chronoforge_jax.data import prompts
  from configs import data as data_config

  data_dir, tok, _ = dataset
  data = records.PreprocessedData(data_dir)
  s = _settings(prompt_template="videor1", prompt_buckets=(512, 640), shuffle=False)
  batch = _take(pipeline.make_dataset(data_dir, tok, s), 1)[0]
  num_video = pipeline.num_video_tokens(s.num_patches, SIZE, SIZE)
  for b in range(2):
    q = data.question(b)
    want = prompts.encode_prompt(tok, "videor1", q["question"], q["options"], num_video)
    got = batch["prompt_ids"][b][batch["prompt_mask"][b]].tolist()
    assert got == want
    assert "Please think about this question as if you were a human" in tok.decode(got)
  config = data_config.get_config("smoke")
  assert pipeline.settings_from_config(config).prompt_template == "short"
  config.input.prompt_template = "video_r1"
  with pytest.raises(data_config.common.ConfigError, match="input.prompt_template"):
    data_config.validate_data(config)
  with pytest.raises(ValueError, match="prompt_template"):
    _settings(prompt_template="video_r1")
