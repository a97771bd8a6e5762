"""Tests for launch/eval.py: --help, clear argument errors, and one end-to-end run."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

from flax import nnx
import numpy as np
import pytest

from chronoforge_jax import testing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
  env.pop("XLA_FLAGS", None)  # One CPU device per process.
  return env


def _run(*args, timeout=300, cwd=REPO):
  return subprocess.run(
    [sys.executable, "-m", "launch.eval", *args],
    cwd=cwd,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _make_data(out_dir):
  """Three questions on two 10-frame videos at 56x56, with a tiny tokenizer."""
  from chronoforge_jax import tokenizer as tokenizer_lib
  from chronoforge_jax.data import records

  rng = np.random.default_rng(1)
  tok = tokenizer_lib.build_tiny_tokenizer(os.path.join(out_dir, "tokenizer"), vocab_size=300)
  questions = [
    [
      (
        "Which event happens first?",
        ["a red circle", "a blue square", "the screen flashes", "a cyan cross"],
        1,
        "short",
        "first",
      )
    ],
    [
      (
        "Which event happens last?",
        ["a green square", "a red cross", "a white circle"],
        2,
        "long",
        "last",
      ),
      (
        "What happened right after the flash?",
        ["a purple circle", "a red square", "a blue cross", "an orange diamond"],
        0,
        "long",
        "after",
      ),
    ],
  ]
  with records.ShardWriter(out_dir, 0) as writer:
    for v, qs in enumerate(questions):
      pos = writer.add_video(
        f"vid{v}",
        rng.integers(0, 256, (10, 56, 56, 3), dtype=np.uint8),
        np.arange(10) * 1.0,
        rng.normal(size=(10, 8)).astype(np.float32),
        {},
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
          },
          pos,
        )
    writer.commit({"max_video_frames": 10, "feature_dim": 8})
  records.write_index(out_dir, {})
  return tok


def _save_random_params(path, tok):
  """The tiny model's params for `tok`, NumPy-drawn (eager initialisers compile ~10 s)."""
  import jax

  from chronoforge_jax import models
  from chronoforge_jax.models import vlm
  from chronoforge_jax.train import checkpoint as ckpt_lib

  cfg = models.match_tokenizer(models.get_preset("tiny"), tok)
  abstract = nnx.state(
    nnx.eval_shape(lambda: vlm.VideoLanguageModel(cfg, rngs=nnx.Rngs(0))), nnx.Param
  )
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: np.asarray(rng.normal(0, 0.2, a.shape), a.dtype), abstract)
  ckpt_lib.save_params(str(path), params)


def test_help():
  out = _run("--help")
  assert out.returncode in (0, 1), out.stderr  # absl prints the usage and exits 1.
  assert "Evaluates a checkpoint" in out.stdout
  assert "configs/eval.py[:default|demo|smoke]" in out.stdout
  assert "--config.FIELD=VALUE" in out.stdout
  for field in ("data_dir", "checkpoint", "model.hf_dir", "eval.selectors", "eval.scoring"):
    assert field in out.stdout, field
  for flag in ("--num_processes", "--[no]quiet"):
    assert flag in out.stdout
  for gone in ("--data_dir", "--model_preset", "--selector"):  # Config fields now.
    assert gone not in out.stdout


def test_clear_errors_for_missing_inputs(tmp_path):
  def run(*args):
    return _run("--config=configs/eval.py:smoke", *args)

  out = run(f"--config.data_dir={tmp_path / 'nope'}", f"--config.checkpoint={tmp_path}")
  assert out.returncode == 2
  assert "no such directory" in out.stderr and "launch.preprocess" in out.stderr
  os.mkdir(tmp_path / "data")
  out = run(f"--config.data_dir={tmp_path / 'data'}", f"--config.checkpoint={tmp_path}")
  assert out.returncode == 2 and "index.json" in out.stderr
  _make_data(str(tmp_path / "data"))
  data = f"--config.data_dir={tmp_path / 'data'}"
  out = run(data, f"--config.checkpoint={tmp_path / 'ckpt'}")
  assert out.returncode == 2 and "--config.checkpoint" in out.stderr and "no such" in out.stderr
  os.mkdir(tmp_path / "ckpt")
  out = run(data, f"--config.checkpoint={tmp_path / 'ckpt'}")
  assert out.returncode == 2 and "is empty" in out.stderr
  out = run(data)
  assert out.returncode == 2
  assert "--config.checkpoint" in out.stderr and "--config.model.hf_dir" in out.stderr
  # Bad settings: the config field named, with the choices, before any model loads.
  out = run(data, "--config.random_init=true", "--config.eval.mode=beam")
  assert out.returncode == 2 and "config.eval.mode" in out.stderr and "'likelihood'" in out.stderr
  out = run(data, "--config.random_init=true", "--config.tad.k=3")
  assert out.returncode == 2 and "config.tad.k" in out.stderr and "even K" in out.stderr
  out = run(data, "--config.random_init=true", "--config.eval.selectors=('tad', 'best')")
  assert out.returncode == 2 and "config.eval.selectors" in out.stderr and "'best'" in out.stderr
  out = run(data, "--config.random_init=true", "--config.mesh.fsdp=0")
  assert out.returncode == 2 and "config.mesh.fsdp" in out.stderr
  out = run(data, "--config.random_init=true", "--config.eval.batch_sise=2")
  assert out.returncode != 0 and "batch_sise" in out.stderr  # A typo fails at once.
  assert not os.path.exists(tmp_path / "eval_out")


@pytest.mark.slow
def test_end_to_end_both_selectors(tmp_path):
  data = str(tmp_path / "data")
  _save_random_params(tmp_path / "params", _make_data(data))
  workdir = tmp_path / "run"
  os.makedirs(workdir)
  with open(workdir / "metrics.jsonl", "w") as f:
    for s in range(1, 4):
      f.write(
        json.dumps(
          {
            "step": s,
            "loss": 1.0 / s,
            "reward/accuracy": 0.2 * s,
            "ordered_acc": 0.3,
            "disordered_acc": 0.1,
            "kl": 0.01,
          }
        )
        + "\n"
      )
  out_dir = tmp_path / "eval"
  # Every path relative to the folder the command runs in, as a user types them.
  out = _run(
    f"--config={REPO}/configs/eval.py:smoke",
    "--config.data_dir=data",
    "--config.checkpoint=params",
    "--config.out_dir=eval",
    "--config.workdir=run",
    "--config.eval.frame_orders=('ordered', 'zeroed')",
    "--quiet",
    cwd=tmp_path,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "eval: tad: accuracy" in out.stdout and "eval: uniform: accuracy" in out.stdout
  assert "eval: tad (zeroed frames): accuracy" in out.stdout
  files = set(os.listdir(out_dir))
  for name in ("tad_k4_likelihood_zeroed", "uniform_k4_likelihood_zeroed"):
    summary = json.load(open(out_dir / f"{name}.json"))
    assert summary["settings"]["frame_order"] == "zeroed"
  for name in ("tad_k4_likelihood", "uniform_k4_likelihood"):
    assert {f"{name}.jsonl", f"{name}.json", f"{name}.md"} <= files
    lines = [json.loads(x) for x in open(out_dir / f"{name}.jsonl")]
    summary = json.load(open(out_dir / f"{name}.json"))
    assert [r["question_id"] for r in lines] == ["v0q0", "v1q0", "v1q1"]
    assert [len(r["option_scores"]) for r in lines] == [4, 3, 4]
    for r in lines:
      assert r["predicted_index"] == int(np.argmax(r["option_scores"]))
    tables = summary["tables"]
    assert tables["overall"]["num_correct"] == sum(
      r["predicted_index"] == r["answer_index"] for r in lines
    )
    by_bucket = collections.Counter(r["duration_bucket"] for r in lines)
    assert {k: v["num_questions"] for k, v in tables["duration_bucket"].items()} == by_bucket
    assert summary["settings"]["checkpoint"] == str(tmp_path / "params")
  assert {
    "comparison.md",
    "comparison.json",
    "report.md",
    "training_curves.png",
    "accuracy_by_duration.png",
    "accuracy_by_task.png",
  } <= files
  comparison = open(out_dir / "comparison.md").read()
  # Frame orders outer, selectors inner: the last run minus the first.
  assert "tad_k4_likelihood_zeroed - uniform_k4_likelihood" in comparison
  assert "Scoring: likelihood" in comparison
  assert "Scoring: likelihood" in open(out_dir / "report.md").read()
  assert "eval: prompt template 'short', scoring 'lenient'" in out.stdout
  assert not [f for f in files if ".tmp" in f]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["likelihood", "generate"])
def test_two_processes_give_the_single_process_results(tmp_path, mode):
  """Two processes (one CPU device each, one mesh over both) vs one process."""
  data = str(tmp_path / "data")
  _save_random_params(tmp_path / "params", _make_data(data))
  args = [
    "--config=configs/eval.py:smoke",
    f"--config.data_dir={data}",
    f"--config.checkpoint={tmp_path / 'params'}",
    f"--config.eval.mode={mode}",
    "--config.eval.max_new_tokens=6",
    "--config.eval.selectors=('tad',)",
    "--quiet",
  ]
  single = _run(*args, f"--config.out_dir={tmp_path / 'one'}")
  assert single.returncode == 0, single.stderr[-3000:]
  port = testing.free_port()
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "launch.eval",
        *args,
        f"--config.out_dir={tmp_path / 'two'}",
        "--num_processes=2",
        f"--process_id={i}",
        f"--coordinator_address=localhost:{port}",
      ],
      cwd=REPO,
      env=_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "eval: tad: accuracy" in outs[0] and "eval: tad: accuracy" not in outs[1]
  name = f"tad_k4_{mode}.jsonl"
  one = [json.loads(x) for x in open(tmp_path / "one" / name)]
  two = [json.loads(x) for x in open(tmp_path / "two" / name)]
  assert (
    [r["question_id"] for r in two] == [r["question_id"] for r in one] == ["v0q0", "v1q0", "v1q1"]
  )
  for a, b in zip(one, two):
    assert (a["predicted_index"], a["text"]) == (b["predicted_index"], b["text"])
    if mode == "likelihood":
      np.testing.assert_allclose(b["option_scores"], a["option_scores"], rtol=1e-5)
