"""Video-R1 data as published: five problem types, image and video items, bad items.

A Video-R1-format file with all five problem types on videos and still images, plus bad
items, goes through `launch.preprocess.run` (the CLI's library call): exactly the bad
items are rejected, each with its reason; every media file is decoded once though several
items share it; a rerun resumes (nothing redone). The pipeline then builds batches whose
prompts, targets and host metadata carry each item's type and media.
"""

from __future__ import annotations

import collections
import json
import os

import av
import numpy as np
import pytest

from chronoforge_jax import testing
from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax.data import decode, pipeline, prompts, records
from chronoforge_jax.rl import rewards

SIZE = 56
MC_OPTIONS = ["A. a red circle", "B. a blue square", "C. a green cross", "D. a flash"]


def write_image(path: str, image_hwc: np.ndarray) -> None:
  """A PNG written with PyAV's image2 muxer (no imaging library needed)."""
  h, w, _ = image_hwc.shape
  with av.open(path, "w", format="image2") as container:
    stream = container.add_stream("png", rate=1)
    stream.width, stream.height, stream.pix_fmt = w, h, "rgb24"
    container.mux(stream.encode(av.VideoFrame.from_ndarray(image_hwc, format="rgb24")))
    container.mux(stream.encode(None))


def _row(pid, problem_type, solution, path, data_type="video", options=(), **kw):
  return {
    "problem_id": pid,
    "problem": f"Question {pid}?",
    "data_type": data_type,
    "problem_type": problem_type,
    "options": list(options),
    "solution": solution,
    "path": path,
    "data_source": f"src_{problem_type}",
    **kw,
  }


# (problem_id -> the reason's telling fragment) of the items that must be rejected.
BAD = {
  "missing_file": "file not found",
  "unknown_type": "unknown problem_type 'counting'",
  "no_tags": "malformed solution",
  "not_a_number": "a numerical answer is a finite number",
  "letter_out": "but only 4 options",
  "audio": "data_type 'audio'",
}


def videor1_rows() -> list[dict]:
  good = [
    _row(
      "mc_v",
      "multiple choice",
      "<answer>B</answer>",
      "./videos/a.mp4",
      options=MC_OPTIONS,
      process="<think>The square comes first.</think>",
    ),
    _row("num_v", "numerical", "<answer>3</answer>", "./videos/a.mp4"),
    _row("ocr_v", "OCR", "<answer>STOP AHEAD</answer>", "./videos/b.mp4"),
    _row("ff_v", "free-form", "<answer>a man opens the door</answer>", "./videos/b.mp4"),
    _row("reg_v", "regression", "<answer>12.5</answer>", "./videos/b.mp4"),
    _row("mc_i", "multiple choice", "<answer>A</answer>", "./images/c.png", "image", MC_OPTIONS),
    _row("num_i", "numerical", "<answer>7</answer>", "./images/c.png", "image"),
    _row("ocr_i", "OCR", "<answer>EXIT</answer>", "./images/d.png", "image"),
    _row("ff_i", "free-form", "<answer>a cat sleeps</answer>", "./images/d.png", "image"),
    _row("reg_i", "regression", "<answer>0.25</answer>", "./images/d.png", "image"),
  ]
  bad = [
    _row("missing_file", "numerical", "<answer>2</answer>", "./videos/nope.mp4"),
    _row("unknown_type", "counting", "<answer>2</answer>", "./videos/a.mp4"),
    _row("no_tags", "multiple choice", "B", "./videos/a.mp4", options=MC_OPTIONS),
    _row("not_a_number", "numerical", "<answer>three</answer>", "./videos/a.mp4"),
    _row(
      "letter_out", "multiple choice", "<answer>E</answer>", "./images/c.png", "image", MC_OPTIONS
    ),
    _row("audio", "free-form", "<answer>x</answer>", "./videos/a.mp4", "audio"),
  ]
  rows = good[:3] + bad[:3] + good[3:7] + bad[3:] + good[7:]
  return rows


def write_media(root: str) -> None:
  rng = np.random.default_rng(0)
  os.makedirs(os.path.join(root, "videos"), exist_ok=True)
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  for name, cuts in (("a", [4]), ("b", [3, 7])):
    testing.write_cut_video(
      os.path.join(root, "videos", f"{name}.mp4"),
      10,
      cuts,
      64,
      fps=4.0,
      seed=int(rng.integers(100)),
    )
  for name in ("c", "d"):
    write_image(
      os.path.join(root, "images", f"{name}.png"), rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    )


def preprocess_mixed(root, *, size=SIZE):
  """Writes media + annotations under `root` and preprocesses them; returns (out, index)."""
  from configs import data as data_config
  from launch import preprocess

  root = os.fspath(root)
  write_media(root)
  ann = os.path.join(root, "videor1.json")
  with open(ann, "w") as f:
    json.dump(videor1_rows(), f)
  config = data_config.get_config("smoke")
  config.preprocess.size, config.preprocess.videos_per_shard = size, 2
  out = os.path.join(root, "data")
  index = preprocess.run(
    config, fmt="videor1", annotations=ann, video_dir=root, out=out, progress=False
  )
  tokenizer_lib.build_tiny_tokenizer(os.path.join(out, "tokenizer"), vocab_size=400)
  return out, index


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  calls = collections.Counter()
  real = decode.decode_video

  def counting(path, *a, **kw):
    calls[os.path.basename(path)] += 1
    return real(path, *a, **kw)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(decode, "decode_video", counting)
    out, index = preprocess_mixed(tmp_path_factory.mktemp("videor1"))
    first_calls = dict(calls)
    calls.clear()
    again = preprocess_mixed(os.path.dirname(out))[1]
  return out, index, first_calls, again, dict(calls)


def test_exactly_the_bad_items_are_rejected_each_with_its_reason(mixed):
  out, index, _, _, _ = mixed
  rejected = [json.loads(line) for line in open(os.path.join(out, records.REJECTED))]
  by_id = {
    str(r["item"].get("problem_id", r["item"].get("question_id"))): r["reason"] for r in rejected
  }
  assert set(by_id) == set(BAD)
  for pid, fragment in BAD.items():
    assert fragment in by_id[pid], (pid, by_id[pid])
  data = records.PreprocessedData(out)
  got = {data.question(i)["question_id"] for i in range(len(data))}
  good = {str(r["problem_id"]) for r in videor1_rows()} - set(BAD)
  assert got == good and index["num_questions"] == 10 and index["num_rejected"] == 6


def test_every_media_file_is_decoded_once_and_a_rerun_resumes(mixed):
  out, index, first_calls, again, rerun_calls = mixed
  # The missing file is tried once and rejected; each real file is decoded exactly once
  # though two to three items share it.
  assert first_calls == {"a.mp4": 1, "b.mp4": 1, "c.png": 1, "d.png": 1, "nope.mp4": 1}
  assert rerun_calls == {} and again["written_shards"] == 0
  assert again["skipped_shards"] == index["written_shards"] > 0
  assert again["num_questions"] == index["num_questions"]


def test_questions_keep_type_media_and_solution(mixed):
  out = mixed[0]
  data = records.PreprocessedData(out)
  qs = {data.question(i)["question_id"]: data.question(i) for i in range(len(data))}
  assert {q["problem_type"] for q in qs.values()} == set(rewards.PROBLEM_TYPES)
  assert qs["mc_v"]["answer_index"] == 1 and qs["mc_v"]["media"] == "video"
  assert qs["mc_v"]["reasoning"] == "The square comes first."
  assert qs["reg_i"]["answer_index"] == -1 and qs["reg_i"]["options"] == []
  assert qs["reg_i"]["solution"] == "<answer>0.25</answer>"
  assert qs["ocr_i"]["media"] == "image" and qs["ocr_i"]["duration_bucket"] == "image"
  # A still is a one-frame video; the videos keep their frames at the configured fps.
  assert data.video(qs["ocr_i"]["video_key"]).num_frames == 1
  assert data.video(qs["ocr_v"]["video_key"]).num_frames > 1


def test_pipeline_batches_of_mixed_types_and_media(mixed):
  out = mixed[0]
  tok = tokenizer_lib.Tokenizer.from_dir(os.path.join(out, "tokenizer"))
  s = pipeline.eval_settings(
    10,
    num_keyframes=4,
    prompt_buckets=(128, 192),
    target_buckets=(32, 64),
    select_kwargs={"window": 4},
  )
  batch = next(iter(pipeline.make_dataset(out, tok, s)))
  host = pipeline.split_host(batch)[1]
  assert batch["frames"].shape[:2] == (10, 4) and batch["example_valid"].all()
  data = records.PreprocessedData(out)
  for b in range(10):
    q = data.question(b)
    assert host["problem_type"][b] == q["problem_type"]
    assert host["media"][b] == q["media"]
    target = tok.decode(batch["target_ids"][b][batch["target_mask"][b]])
    answer = rewards.solution_answer(q["solution"])
    # Video-R1-COT style: the SFT target is <think>process</think><answer>X</answer>.
    assert target == f"<think>{q['reasoning']}</think><answer>{answer}</answer><|im_end|>"
    # The answer tokens (target_answer_mask) spell the answer.
    assert tok.decode(batch["target_ids"][b][batch["target_answer_mask"][b]]).strip() in (
      answer,
      f"<answer>{answer}",
      f"{answer}</answer>",
      f"<answer>{answer}</answer>",
    )
    prompt = tok.decode(batch["prompt_ids"][b][batch["prompt_mask"][b]])
    assert prompt == prompts.prompt_text(
      "short", q["question"], q["options"], q["problem_type"], prompt.count("<|video_pad|>")
    )
    if q["media"] == "image":  # Every keyframe slot repeats the one frame.
      frames = batch["frames"][b]
      assert all(np.array_equal(frames[0], f) for f in frames)
  # Each item's solution, scored by its own type's rule, gives it full marks.
  texts = [
    [f"<think>x</think><answer>{rewards.solution_answer(s)}</answer>"] for s in host["solution"]
  ]
  answers = [
    int(a) if t == "multiple choice" else s
    for a, t, s in zip(batch["answer_index"], host["problem_type"], host["solution"])
  ]
  result = rewards.REWARDS.get("accuracy")(
    texts, answers, host["options"], problem_types_b=host["problem_type"], mc_rule="videor1"
  )
  np.testing.assert_allclose(result.values_bg, 1.0, atol=1e-6)


@pytest.mark.slow
def test_smoke_run_trains_on_mixed_types_and_media_and_logs_per_type(mixed, tmp_path):
  from chronoforge_jax.train import loop
  from configs import kf_grpo

  out = mixed[0]
  config = kf_grpo.get_config("smoke")
  config.input.data_dir = out
  config.input.batch_size = 10  # One KF-GRPO batch sees all ten items.
  config.rl.num_generations = config.rl.num_disordered = 4  # One sampler program.
  config.ckpt.save_every = 100
  # KF-GRPO only: an SFT phase would compile a third program (~1 min on 2 CPU cores);
  # SFT targets of every type are checked in test_pipeline_batches_of_mixed_types_and_media.
  config.sft_steps, config.total_steps = 0, 1
  loop.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  assert [r["step"] for r in rows] == list(range(1, config.total_steps + 1))
  logged = set()
  for r in rows[config.sft_steps :]:
    types = {k.split("/")[-1] for k in r if k.startswith("accuracy/type/")}
    assert types and all(0.0 <= r[f"accuracy/type/{t}"] <= 1.0 for t in types)
    assert {k for k in r if k.startswith("disordered/accuracy/type/")}
    logged |= types
  assert logged == {rewards.type_metric_name(t) for t in rewards.PROBLEM_TYPES}
  with open(tmp_path / "eval_defaults.json") as f:
    assert json.load(f) == {"prompt_template": "short", "scoring": "lenient"}


def test_evaluation_tables_per_problem_type(mixed, monkeypatch):
  """Generate mode on the mixed set: each type scored by its rule, a per-type table."""
  from flax import nnx
  import jax
  import jax.numpy as jnp

  from chronoforge_jax import models
  from chronoforge_jax.evaluation import evaluator as eval_lib
  from chronoforge_jax.evaluation import results as results_lib
  from chronoforge_jax.models import sampling, vlm

  out = mixed[0]
  tok = tokenizer_lib.Tokenizer.from_dir(os.path.join(out, "tokenizer"))
  cfg = models.match_tokenizer(models.get_preset("tiny"), tok)
  graphdef, abstract = nnx.split(
    nnx.eval_shape(lambda: vlm.VideoLanguageModel(cfg, rngs=nnx.Rngs(0)))
  )
  rng = np.random.default_rng(0)
  model = nnx.merge(
    graphdef, jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.2, a.shape), a.dtype), abstract)
  )
  data = records.PreprocessedData(out)
  qs = [data.question(i) for i in range(len(data))]
  # Right answers for even items, half-right or wrong ones for odd items.
  texts = [
    f"<think>x</think><answer>{rewards.solution_answer(q['solution'])}</answer>"
    if i % 2 == 0
    else "<think>x</think><answer>B 12 STOP a man</answer>"
    for i, q in enumerate(qs)
  ]

  def fake_generate(model_, inputs, **kw):
    b = inputs["input_ids"].shape[0]
    start = fake_generate.done
    fake_generate.done += b
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

  fake_generate.done = 0
  monkeypatch.setattr(sampling, "generate", fake_generate)
  r = eval_lib.evaluate(
    model,
    out,
    tok,
    eval_lib.EvalSettings(
      selector="uniform",
      num_keyframes=4,
      batch_size=5,
      mode="generate",
      prompt_buckets=(128, 192),
      scoring="lmms_eval",
    ),
    progress=False,
  )
  want = collections.defaultdict(list)
  for q, text, rec in zip(qs, texts, r.records):
    assert rec.question_id == q["question_id"] and rec.problem_type == q["problem_type"]
    if q["problem_type"] == "multiple choice":
      score = float("ABCD"[q["answer_index"]] == (re_first_abcd(text) or "?"))
    else:
      score = rewards.ANSWER_RULES.get(q["problem_type"])(text, q["solution"])
      assert rec.score == pytest.approx(score)
    want[q["problem_type"]].append(score)
  table = r.tables["problem_type"]
  assert set(table) == set(rewards.PROBLEM_TYPES)
  for ptype, scores in want.items():
    assert table[ptype]["accuracy"] == pytest.approx(np.mean(scores)), ptype
  assert r.tables["overall"]["accuracy"] == pytest.approx(
    np.mean([s for v in want.values() for s in v])
  )
  assert "By problem type" in r.to_markdown()
  assert any(row["group"] == "problem_type" for row in results_lib.comparison_rows([r]))
  with pytest.raises(ValueError, match="use mode 'generate'"):
    eval_lib.evaluate(
      model,
      out,
      tok,
      eval_lib.EvalSettings(
        selector="uniform",
        num_keyframes=4,
        batch_size=5,
        mode="likelihood",
        prompt_buckets=(128, 192),
      ),
      progress=False,
    )


def re_first_abcd(text: str) -> str | None:
  """lmms-eval's reading of these texts: the first capital A-D (no prefixes occur)."""
  import re

  m = re.search(r"[ABCD]", text)
  return m[0] if m else None
