"""Tests for chronoforge_jax.evaluation.evaluator on a tiny preprocessed set and a tiny model."""

from __future__ import annotations

import collections
import dataclasses
import json
import os

from flax import nnx
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chronoforge_jax import models, tad
from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax.data import pipeline, records
from chronoforge_jax.evaluation import evaluator as eval_lib
from chronoforge_jax.evaluation import results as results_lib
from chronoforge_jax.models import sampling, vlm
from chronoforge_jax.rl import rewards, scoring
from chronoforge_jax.train import checkpoint as ckpt_lib

QR = results_lib.QuestionResult
K = 4
SIZE = 56  # Two merged 28-px units per side: 4 video tokens per temporal patch.

# (question, options, answer, duration bucket, task type) per video.
QUESTIONS = [
  [
    (
      "Which event happens first?",
      ["a red circle appears", "a blue square moves", "the screen flashes", "a cyan cross appears"],
      2,
      "short",
      "first",
    ),
    (
      "Which event happens last?",
      ["the screen flashes", "a green square", "an orange diamond"],
      0,
      "short",
      "last",
    ),
  ],
  [
    (
      "What happened right after the flash?",
      ["a purple circle", "a red cross", "a white square", "a yellow diamond"],
      1,
      "long",
      "after",
    ),
    (
      "Which event happens first?",
      ["a cyan triangle", "a blue circle", "a red square", "the screen flashes white"],
      3,
      "medium",
      "first",
    ),
    (
      "What happened right before the cross?",
      ["a green diamond", "an orange circle", "a red triangle", "a blue cross"],
      0,
      "",
      "before",
    ),
  ],
]


def make_dataset(out_dir: str, *, seed: int = 0) -> tokenizer_lib.Tokenizer:
  """Writes a 5-question preprocessed set (2 videos of 14 and 10 frames) + tokenizer."""
  rng = np.random.default_rng(seed)
  tok = tokenizer_lib.build_tiny_tokenizer(os.path.join(out_dir, "tokenizer"), vocab_size=300)
  with records.ShardWriter(out_dir, 0) as writer:
    for v, qs in enumerate(QUESTIONS):
      t = 14 - 4 * v
      frames = rng.integers(0, 256, (t, SIZE, SIZE, 3), dtype=np.uint8)
      pos = writer.add_video(
        f"vid{v}",
        frames,
        np.arange(t) * 0.5,
        rng.normal(size=(t, 12)).astype(np.float32),
        {"duration": t / 2},
      )
      for n, (q, opts, ans, bucket, task) in enumerate(qs):
        writer.add_question(
          {
            "question_id": f"v{v}q{n}",
            "video_id": f"vid{v}",
            "question": q,
            "options": opts,
            "answer_index": ans,
            "duration_bucket": bucket,
            "task_type": task,
            "reasoning": "",
          },
          pos,
        )
    writer.commit({"max_video_frames": 14, "feature_dim": 12})
  records.write_index(out_dir, {})
  return tok


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("bench"))
  return out, make_dataset(out)


def random_model(cfg, seed: int = 3, std: float = 0.25) -> vlm.VideoLanguageModel:
  """The tiny model with NumPy-drawn weights.

  Skips the eager initialisers (each compiles on first use, ~10 s in all), and weights
  larger than the default init make outputs depend visibly on the video and positions.
  """
  graphdef, abstract = nnx.split(
    nnx.eval_shape(lambda: vlm.VideoLanguageModel(cfg, rngs=nnx.Rngs(0)))
  )
  rng = np.random.default_rng(seed)
  state = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, std, a.shape), a.dtype), abstract)
  return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def model(data):
  return random_model(models.match_tokenizer(models.get_preset("tiny"), data[1]))


def fake_scores(calls: list, fail_at: int | None = None):
  """A stand-in for the compiled option scorer: fixed scores, optionally failing."""

  def score(graphdef, state, batch, completions_na, mask_na):
    calls.append(batch["prompt_ids"].shape[0])
    if fail_at is not None and len(calls) == fail_at:
      raise RuntimeError("device lost")
    b, n = batch["prompt_ids"].shape[0], completions_na.shape[0]
    return -np.abs(np.arange(b * n, dtype=np.float32).reshape(b, n) - 1.5)

  return score


# ------------------------------------------------------------------ tables


def _record(i, bucket, task, answer, pred, n=4):
  return QR(
    question_id=f"q{i}",
    video_id="v",
    duration_bucket=bucket,
    task_type=task,
    answer_index=answer,
    predicted_index=pred,
    num_options=n,
    text="",
  )


def test_grouping_of_hand_made_records():
  recs = [
    _record(0, "short", "count", 1, 1),
    _record(1, "short", "order", 2, None),
    _record(2, "long", "count", 0, 3),
    _record(3, "long", "count", 0, 0),
    _record(4, "", "order", 3, 3),
    _record(5, "medium", "", 1, None),
  ]
  t = results_lib.accuracy_tables(recs)
  assert t["overall"] == {
    "num_questions": 6,
    "num_correct": 3,
    "accuracy": 0.5,
    "num_unparseable": 2,
    "unparseable_fraction": 2 / 6,
  }
  assert list(t["duration_bucket"]) == ["short", "medium", "long", "(none)"]
  assert t["duration_bucket"]["short"]["accuracy"] == 0.5
  assert t["duration_bucket"]["short"]["unparseable_fraction"] == 0.5
  assert t["duration_bucket"]["medium"]["num_correct"] == 0
  assert t["duration_bucket"]["long"]["num_questions"] == 2
  assert t["duration_bucket"]["(none)"]["accuracy"] == 1.0
  assert list(t["task_type"]) == ["(none)", "count", "order"]
  assert t["task_type"]["count"]["num_correct"] == 2
  assert t["task_type"]["order"]["num_unparseable"] == 1


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
  st.lists(
    st.tuples(
      st.sampled_from(["short", "medium", "long", "", "x"]),
      st.sampled_from(["a", "b", ""]),
      st.integers(0, 3),
      st.one_of(st.none(), st.integers(0, 3)),
    ),
    max_size=30,
  )
)
def test_tables_equal_a_plain_recount(rows):
  recs = [_record(i, *r) for i, r in enumerate(rows)]
  t = results_lib.accuracy_tables(recs)
  for group, col in (("duration_bucket", 0), ("task_type", 1)):
    count, correct, none = (collections.Counter(), collections.Counter(), collections.Counter())
    for r in rows:
      key = r[col] or "(none)"
      count[key] += 1
      correct[key] += r[3] is not None and r[3] == r[2]
      none[key] += r[3] is None
    assert set(t[group]) == set(count)
    for key, n in count.items():
      assert t[group][key]["num_questions"] == n
      assert t[group][key]["num_correct"] == correct[key]
      assert t[group][key]["accuracy"] == pytest.approx(correct[key] / n)
      assert t[group][key]["unparseable_fraction"] == pytest.approx(none[key] / n)
  assert t["overall"]["num_correct"] == sum(r[3] is not None and r[3] == r[2] for r in rows)


def test_compare_and_round_trip(tmp_path):
  a = results_lib.EvalResult.from_records(
    "uniform",
    [_record(0, "short", "t", 0, 0), _record(1, "long", "t", 1, 0)],
    {"selector": "uniform"},
  )
  b = results_lib.EvalResult.from_records(
    "tad", [_record(0, "short", "t", 0, 0), _record(1, "long", "t", 1, 1)], {"selector": "tad"}
  )
  table = results_lib.compare_results([a, b])
  lines = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
  assert [c.strip() for c in lines["all"].split("|")[2:6]] == ["2", "50.0%", "100.0%", "+50.0"]
  assert [c.strip() for c in lines["duration: short"].split("|")[3:6]] == [
    "100.0%",
    "100.0%",
    "+0.0",
  ]
  assert [c.strip() for c in lines["duration: long"].split("|")[3:6]] == [
    "0.0%",
    "100.0%",
    "+100.0",
  ]
  paths = results_lib.write_result(b, tmp_path)
  back = results_lib.load_result(paths["json"])
  assert back.records == b.records and back.tables == b.tables and back.name == "tad"
  cmp_paths = results_lib.write_comparison(tmp_path, [a, b])
  rows = json.load(open(cmp_paths["json"]))["rows"]
  assert rows[0]["summaries"]["tad"]["accuracy"] == 1.0


# ------------------------------------------------------------------ likelihood mode


def _reference_scores(model, tok, batch, b, num_options):
  """Option log-probs by full forwards of prompt + completion on re-encoded pixels.

  Independent of the evaluated path: pixels instead of gathered tower outputs, the
  full-sequence logits instead of `token_logprobs`, unpadded prompts.
  """
  pixels, grid = vlm.frames_to_pixel_values(batch["frames"][b, :K], model.config.vision)
  patch_t = batch["timestamps"][b, :K:2][None]
  prompt = batch["prompt_ids"][b][batch["prompt_mask"][b]].tolist()
  comps = [
    tok.encode(eval_lib.ANSWER_TEMPLATE.format(letter="ABCD"[j])) for j in range(num_options)
  ]
  # Right padding to one length keeps a single compile; causal attention means the
  # padding cannot change the logits of the real tokens before it.
  ids = np.full((num_options, _REF_LEN), tok.pad_id, np.int32)
  mask = np.zeros_like(ids)
  for j, c in enumerate(comps):
    ids[j, : len(prompt) + len(c)] = prompt + c
    mask[j, : len(prompt) + len(c)] = 1
  out = []
  for j, c in enumerate(comps):
    logits = _ref_forward(model, ids[j : j + 1], mask[j : j + 1], pixels, grid, patch_t)
    logp = np.asarray(jax.nn.log_softmax(logits[0]), np.float64)
    out.append(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(c)))
  return np.array(out)


_REF_LEN = 320


def _ref_forward(model, ids, mask, pixels, grid, patch_t):
  graphdef, state = nnx.split(model)
  key = (id(model), tuple(map(tuple, grid)))
  if key not in _REF_CACHE:
    _REF_CACHE[key] = jax.jit(
      lambda s, i, m, p, t: nnx.merge(graphdef, s)(i, m, p, grid, patch_timestamps=t)
    )
  return _REF_CACHE[key](state, ids, mask, pixels, patch_t)


_REF_CACHE = {}


@pytest.mark.slow
def test_likelihood_mode_matches_full_forward_and_mesh(model, data, tmp_path):
  data_dir, tok = data
  result = eval_lib.evaluate(
    model,
    data_dir,
    tok,
    eval_lib.EvalSettings(selector="tad", num_keyframes=K, batch_size=2, mode="likelihood"),
    progress=False,
  )
  settings = pipeline.eval_settings(
    2,
    num_keyframes=K,
    selector="tad",
    select_kwargs=result.settings["select_kwargs"],
    prefetch_workers=0,
  )
  by_id = {r.question_id: r for r in result.records}
  assert len(by_id) == 5
  checked = 0
  for batch in pipeline.make_dataset(data_dir, tok, settings):
    for b in range(2):
      if not batch["example_valid"][b]:
        continue
      rec = by_id[batch["question_id"][b]]
      ref = _reference_scores(model, tok, batch, b, rec.num_options)
      np.testing.assert_allclose(rec.option_scores, ref, rtol=0, atol=2e-5)
      assert rec.predicted_index == int(np.argmax(ref))
      assert rec.text == f"<answer>{'ABCD'[rec.predicted_index]}</answer>"
      assert rec.keyframe_indices == tuple(batch["keyframe_indices"][b])
      checked += 1
  assert checked == 5
  # The random model's options must differ, or the argmax check proves nothing.
  assert all(np.ptp(r.option_scores) > 1e-3 for r in result.records)
  # The tables recount the records.
  recs = result.records
  assert [r.num_options for r in recs] == [4, 3, 4, 4, 4]
  t = result.tables
  assert t["overall"]["num_correct"] == sum(r.predicted_index == r.answer_index for r in recs)
  assert t["overall"]["num_unparseable"] == 0
  for bucket, summary in t["duration_bucket"].items():
    mine = [r for r in recs if (r.duration_bucket or "(none)") == bucket]
    assert summary["num_questions"] == len(mine)
    assert summary["num_correct"] == sum(r.correct for r in mine)
  assert set(t["task_type"]) == {"first", "last", "after", "before"}

  # The same answers from params sharded over data/fsdp/tensor on the 8 fake devices.
  from chronoforge_jax import sharding

  ckpt_lib.save_params(str(tmp_path / "p"), _params(model))
  mesh = sharding.make_mesh((2, 2, 2))
  sharded = eval_lib.load_model(model.config, checkpoint=str(tmp_path / "p"), mesh=mesh)
  specs = {v.get_value().sharding.spec for _, v in nnx.to_flat_state(_params(sharded))}
  assert any(any(axis is not None for axis in spec) for spec in specs)
  on_mesh = eval_lib.evaluate(
    sharded,
    data_dir,
    tok,
    eval_lib.EvalSettings(selector="tad", num_keyframes=K, batch_size=4, mode="likelihood"),
    mesh=mesh,
    progress=False,
  )
  for got, want in zip(on_mesh.records, result.records):
    assert got.question_id == want.question_id
    np.testing.assert_allclose(got.option_scores, want.option_scores, atol=1e-4, rtol=0)
    assert got.predicted_index == want.predicted_index


def test_max_questions(model, data, monkeypatch):
  calls = []
  monkeypatch.setattr(eval_lib, "_option_scores", fake_scores(calls))
  r = eval_lib.evaluate(
    model,
    data[0],
    data[1],
    eval_lib.EvalSettings(
      selector="uniform", num_keyframes=K, batch_size=2, mode="likelihood", max_questions=3
    ),
    progress=False,
  )
  assert [q.question_id for q in r.records] == ["v0q0", "v0q1", "v1q0"]
  assert r.settings["num_questions"] == 3
  assert calls == [2, 2]  # The third batch is never built.
  # Fake scores -|4 row + j - 1.5|: a batch's first row picks B (the first of the tied
  # maxima), its second row A.
  assert [q.predicted_index for q in r.records] == [1, 0, 1]


# ------------------------------------------------------------------ generate mode


def test_generate_mode_reads_answers_from_text(model, data, monkeypatch):
  """Greedy texts go through extract_choice; a text naming no option is unparseable."""
  tok = data[1]
  texts = [
    "<think>x</think><answer>C</answer>",
    "no idea",
    "<answer>B</answer>",
    "<answer>a blue circle</answer>",
    "so the answer is D",
  ]
  calls = []

  def fake_generate(model_, inputs, **kw):
    calls.append((inputs, kw))
    b = inputs["input_ids"].shape[0]
    start = 2 * (len(calls) - 1)
    rows = [
      tok.encode(texts[start + i]) + [tok.eos_id] if start + i < len(texts) else [tok.eos_id]
      for i in range(b)
    ]
    width = max(map(len, rows))
    tokens = np.array([r + [tok.pad_id] * (width - len(r)) for r in rows], np.int32)
    mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], np.int32)
    return sampling.SampleOutput(
      tokens=tokens,
      completion_mask=mask,
      logprobs=None,
      policy_logprobs=None,
      model_logprobs=None,
      lengths=mask.sum(1),
      stopped=None,
    )

  monkeypatch.setattr(sampling, "generate", fake_generate)
  r = eval_lib.evaluate(
    model,
    data[0],
    tok,
    eval_lib.EvalSettings(
      selector="uniform", num_keyframes=K, batch_size=2, mode="generate", max_new_tokens=7
    ),
    progress=False,
  )
  assert [q.text for q in r.records] == texts
  assert [q.predicted_index for q in r.records] == [2, None, 1, 1, 3]
  options = [q[1] for qs in QUESTIONS for q in qs]
  for q, opts in zip(r.records, options):
    assert q.predicted_index == rewards.extract_choice(q.text, opts)
  assert r.tables["overall"]["num_unparseable"] == 1
  assert r.tables["overall"]["num_correct"] == 2  # v0q0 (C) and v1q0 (B).
  assert r.settings["scoring"] == "lenient" and "Scoring: lenient" in r.to_markdown()
  inputs, kw = calls[0]
  assert kw["temperature"] == 0.0 and kw["max_new_tokens"] == 7
  # The same texts read by lmms-eval's VideoMME rule: the first capital A-D.
  calls.clear()
  lm = eval_lib.evaluate(
    model,
    data[0],
    tok,
    eval_lib.EvalSettings(
      selector="uniform",
      num_keyframes=K,
      batch_size=2,
      mode="generate",
      max_new_tokens=7,
      scoring="lmms_eval",
    ),
    progress=False,
  )
  assert [q.predicted_index for q in lm.records] == [
    scoring.score("lmms_eval", t, o) for t, o in zip(texts, options)
  ]
  assert [q.predicted_index for q in lm.records] == [2, None, 1, None, 3]
  assert lm.settings["scoring"] == "lmms_eval"
  assert "lmms-eval's VideoMME rule" in results_lib.scoring_note([lm])
  assert "not comparable" in results_lib.scoring_note([r, lm])
  assert kw["stop_tokens"] == tok.eos_ids
  assert inputs["video_embeds"].shape[0] == 2 * (K // 2) * 4
  np.testing.assert_array_equal(inputs["video_grid_thw"], [[K // 2, 4, 4]] * 2)


@pytest.mark.slow
def test_generate_mode_is_greedy_on_the_keyframe_view(model, data, monkeypatch):
  """The sampler gets the right video and prompt: its tokens equal a greedy reference."""
  tok = data[1]
  outputs = []
  real = sampling.generate

  def spy(*args, **kwargs):
    # Eval reads no log-probs (it asks for none); this test reads the model's below. The
    # tokens do not depend on which log-probs are computed (tests/sampling_test.py).
    assert kwargs.get("logprobs") == ()
    outputs.append(real(*args, **{**kwargs, "logprobs": ("model_logprobs",)}))
    return outputs[-1]

  monkeypatch.setattr(sampling, "generate", spy)
  r = eval_lib.evaluate(
    model,
    data[0],
    tok,
    eval_lib.EvalSettings(
      selector="uniform", num_keyframes=K, batch_size=2, mode="generate", max_new_tokens=3
    ),
    progress=False,
  )
  settings = pipeline.eval_settings(2, num_keyframes=K, selector="uniform", prefetch_workers=0)
  checked = 0
  for batch, out in zip(pipeline.make_dataset(data[0], tok, settings), outputs):
    for b in range(2):
      if not batch["example_valid"][b]:
        continue
      pixels, grid = vlm.frames_to_pixel_values(batch["frames"][b, :K], model.config.vision)
      patch_t = batch["timestamps"][b, :K:2][None]
      seq = batch["prompt_ids"][b][batch["prompt_mask"][b]].tolist()
      want, want_lp = [], []
      for _ in range(3):
        ids = np.full((1, _REF_LEN), tok.pad_id, np.int32)
        ids[0, : len(seq)] = seq
        mask = (np.arange(_REF_LEN) < len(seq))[None].astype(np.int32)
        logits = _ref_forward(model, ids, mask, pixels, grid, patch_t)
        want.append(int(np.argmax(logits[0, len(seq) - 1])))
        want_lp.append(float(jax.nn.log_softmax(logits[0, len(seq) - 1])[want[-1]]))
        if want[-1] in tok.eos_ids:
          break
        seq.append(want[-1])
      mask = np.asarray(out.completion_mask[b]).astype(bool)
      got = np.asarray(out.tokens[b])[mask].tolist()
      assert got == want
      # Log-probs are continuous, so they see any change of the video or its positions.
      # The first comes from the prefill; later ones from the KV cache, whose float32
      # rounding differs from the full forward's.
      got_lp = np.asarray(out.model_logprobs[b])[mask]
      np.testing.assert_allclose(got_lp[0], want_lp[0], atol=5e-6, rtol=0)
      np.testing.assert_allclose(got_lp, want_lp, atol=1e-4, rtol=0)
      rec = r.records[checked]
      assert rec.question_id == batch["question_id"][b]
      assert rec.text == tok.decode(got, skip_special_tokens=True)
      checked += 1
  assert checked == 5


# ------------------------------------------------------------------ atomic writes


def test_failure_mid_evaluation_keeps_earlier_result(model, data, tmp_path, monkeypatch):
  earlier = results_lib.EvalResult.from_records("run", [_record(0, "short", "t", 1, 1)])
  paths = results_lib.write_result(earlier, tmp_path)
  before = {k: open(p).read() for k, p in paths.items()}
  calls = []
  monkeypatch.setattr(eval_lib, "_option_scores", fake_scores(calls, fail_at=2))
  with pytest.raises(RuntimeError, match="device lost"):
    eval_lib.evaluate(
      model,
      data[0],
      data[1],
      eval_lib.EvalSettings(selector="tad", num_keyframes=K, batch_size=2, mode="likelihood"),
      name="run",
      out_dir=tmp_path,
      progress=False,
    )
  assert len(calls) == 2  # It failed after a batch was done: mid-evaluation.
  assert {k: open(p).read() for k, p in paths.items()} == before
  assert sorted(os.listdir(tmp_path)) == ["run.json", "run.jsonl", "run.md"]
  # Without the failure the same call replaces the files with the complete result.
  monkeypatch.setattr(eval_lib, "_option_scores", fake_scores([]))
  eval_lib.evaluate(
    model,
    data[0],
    data[1],
    eval_lib.EvalSettings(selector="tad", num_keyframes=K, batch_size=2, mode="likelihood"),
    name="run",
    out_dir=tmp_path,
    progress=False,
  )
  assert len(results_lib.load_result(paths["json"]).records) == 5


def test_failed_write_leaves_files_untouched(tmp_path):
  good = tmp_path / "a.json"
  good.write_text("old")
  with pytest.raises(UnicodeEncodeError):  # The second file cannot be written.
    results_lib.write_files_atomic({str(good): "new", str(tmp_path / "b.json"): "\ud800"})
  os.mkdir(tmp_path / "c.md")  # A destination that cannot be replaced: caught up front.
  with pytest.raises(IsADirectoryError):
    results_lib.write_files_atomic({str(good): "new", str(tmp_path / "c.md"): "x"})
  assert good.read_text() == "old"
  assert sorted(os.listdir(tmp_path)) == ["a.json", "c.md"]


# ------------------------------------------------------------------ loading


def _params(model):
  return nnx.state(model, nnx.Param)


def test_load_model_from_params_and_training_checkpoints(model, data, tmp_path):
  cfg = model.config
  params_dir = str(tmp_path / "params")
  ckpt_lib.save_params(params_dir, _params(model))
  loaded = eval_lib.load_model(cfg, checkpoint=params_dir)
  with ckpt_lib.Checkpointer(str(tmp_path / "run"), save_every=1, keep=1, async_save=False) as ckpt:
    ckpt.save(7, {"params": _params(model), "opt_state": {"mu": jnp.ones(3)}, "step": jnp.int32(7)})
  from_run = eval_lib.load_model(cfg, checkpoint=str(tmp_path / "run"))
  want = jax.tree.leaves(_params(model))
  for m in (loaded, from_run):
    got = jax.tree.leaves(_params(m))
    assert len(got) == len(want)
    for g, w in zip(got, want):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_clear_errors(model, data, tmp_path):
  with pytest.raises(FileNotFoundError, match="no such directory"):
    eval_lib.load_model(model.config, checkpoint=str(tmp_path / "nope"))
  os.mkdir(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="is empty"):
    eval_lib.load_model(model.config, checkpoint=str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="no weights"):
    eval_lib.load_model(model.config)
  with pytest.raises(FileNotFoundError, match="preprocess"):
    eval_lib.evaluate(
      model, str(tmp_path / "missing"), data[1], eval_lib.EvalSettings(mode="likelihood")
    )
  with pytest.raises(FileNotFoundError, match="index.json"):
    eval_lib.evaluate(
      model, str(tmp_path / "empty"), data[1], eval_lib.EvalSettings(mode="likelihood")
    )
  with pytest.raises(ValueError, match="mode"):
    eval_lib.evaluate(model, data[0], data[1], eval_lib.EvalSettings(mode="beam"))
  with pytest.raises(TypeError, match="EvalSettings"):
    eval_lib.evaluate(model, data[0], data[1], {"mode": "likelihood"})


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
  "field, value, words",
  [
    ("selector", "random", "'tad', 'uniform'"),
    ("mode", "beam", "'generate', 'likelihood'"),
    ("patch_mode", "triple", "'duplicate', 'pair'"),
    ("frame_order", "reversed", "'ordered', 'shuffled', 'zeroed'"),
    ("scoring", "strict", "'lenient', 'lmms_eval'"),
    ("prompt_template", "long", "'short', 'videor1'"),
    ("num_keyframes", 3, "even K"),
    ("num_keyframes", 0, ">= 1"),
    ("batch_size", 0, ">= 1"),
    ("max_new_tokens", 2.5, ">= 1"),
    ("max_questions", 0, ">= 1"),
    ("answer_template", "<answer></answer>", "{letter}"),
    ("prompt_buckets", (), "ints >= 1"),
    ("select_kwargs", {"prominance": 0.1}, "prominance"),
  ],
)
def test_settings_reject_bad_fields_naming_them_and_the_choices(field, value, words):
  with pytest.raises(ValueError, match=f"EvalSettings.{field}") as e:
    eval_lib.EvalSettings(**{field: value})
  assert words in str(e.value)


def test_settings_fill_tad_defaults_and_name_results():
  s = eval_lib.EvalSettings(
    selector="uniform", num_keyframes=3, patch_mode="duplicate", select_kwargs={"smooth": 2}
  )
  assert s.select_kwargs == {**tad.analyze_defaults(), "smooth": 2}
  assert s.name == "uniform_k3_generate"
  shuffled = s.replace(frame_order="shuffled", mode="likelihood")
  assert shuffled.name == "uniform_k3_likelihood_shuffled" and s.frame_order == "ordered"
  with pytest.raises(ValueError, match="EvalSettings.frame_order"):
    s.replace(frame_order="upside_down")
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.mode = "likelihood"
  record = shuffled.record()
  assert record["scoring"] == "likelihood" and record["max_new_tokens"] is None
  assert record["select_kwargs"] == {}  # Uniform keyframes use no TAD settings.
  assert s.record()["answer_template"] is None and s.record()["scoring"] == "lenient"


def test_reorder_frames_shuffles_patches_and_keeps_timestamps():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 255, size=(3, 8, 4, 4, 3), dtype=np.uint8)
  batch = {"frames": frames, "timestamps": np.arange(24, dtype=np.float32).reshape(3, 8)}
  out = eval_lib.reorder_frames(batch, "shuffled", np.random.default_rng(1), 2)
  np.testing.assert_array_equal(out["timestamps"], batch["timestamps"])
  moved = 0
  for b in range(3):
    patches = frames[b].reshape(4, 2, -1)
    got = out["frames"][b].reshape(4, 2, -1)
    # Each output patch is one input patch, whole (frames of a patch stay together).
    perm = [next(j for j in range(4) if (got[i] == patches[j]).all()) for i in range(4)]
    assert sorted(perm) == [0, 1, 2, 3]
    moved += perm != [0, 1, 2, 3]
  assert moved >= 2
  zeroed = eval_lib.reorder_frames(batch, "zeroed", np.random.default_rng(1), 2)
  assert not zeroed["frames"].any() and zeroed["frames"].shape == frames.shape
  assert eval_lib.reorder_frames(batch, "ordered", None, 2)["frames"] is frames
  with pytest.raises(ValueError, match="frame_order"):
    eval_lib.reorder_frames(batch, "reversed", None, 2)
