"""`make demo`'s job end to end (fewer training steps): every stage leaves its outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_demo_runs_every_stage_and_writes_the_report(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
  env.pop("XLA_FLAGS", None)
  out = tmp_path / "demo"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.demo",
      f"--out={out}",
      "--sft_steps=12",
      "--rl_steps=4",
      "--train_questions=48",
      "--eval_questions=16",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  for stage in ("1/5 data", "2/5 tad", "3/5 sft", "4/5 kf-grpo", "5/5 report"):
    assert f"== {stage}" in result.stdout
  for split, n in (("train", 48), ("eval", 16)):
    assert json.load(open(out / "data" / split / "index.json"))["num_questions"] == n
  recall = json.load(open(out / "tad" / "event_recall.json"))["recall"]
  assert set(recall) == {"tad", "uniform"}
  sft = [json.loads(line) for line in open(out / "sft" / "metrics.jsonl")]
  rl = [json.loads(line) for line in open(out / "kf_grpo" / "metrics.jsonl")]
  assert [m["step"] for m in sft] == list(range(1, 13))
  assert [m["step"] for m in rl] == list(range(1, 5))
  assert "sft/answer_nll" in sft[0] and "reward/accuracy" in rl[-1]
  assert 0 <= rl[-1]["time/data_wait_frac"] <= 1
  report = open(out / "report" / "report.md").read()
  assert f"inside {recall['tad']:.0%} of the eval videos' events" in report
  for name in (
    "init_tad",
    "sft_tad",
    "sft_uniform",
    "sft_tad_shuffled",
    "sft_tad_zeroed",
    "kf_grpo_tad",
    "kf_grpo_uniform",
    "kf_grpo_tad_shuffled",
  ):
    assert f"({name}.md)" in report and os.path.exists(out / "report" / f"{name}.jsonl")
  assert "Answers by option letter" in report
  assert "After SFT the model answers" in report and "After KF-GRPO" in report
  for png in ("training_curves.png", "accuracy_overall.png"):
    assert os.path.getsize(out / "report" / png) > 1000
