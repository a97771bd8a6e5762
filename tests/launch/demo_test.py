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
      [sys.executable, "-m", "launch.demo", f"--out={out}", "--steps=16", "--sft_steps=12"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  for stage in ("1/5 data", "2/5 tad", "3/5 train", "4/5 eval", "5/5 report"):
    assert f"== {stage}" in result.stdout
  for split in ("train", "eval"):
    assert json.load(open(out / "data" / split / "index.json"))["num_questions"] > 0
  recall = json.load(open(out / "tad" / "event_recall.json"))["recall"]
  assert set(recall) == {"tad", "uniform"}
  metrics = [json.loads(line) for line in open(out / "run" / "metrics.jsonl")]
  assert [m["step"] for m in metrics] == list(range(1, 17))
  assert "reward/accuracy" in metrics[-1] and "sft/nll" in metrics[0]
  report = open(out / "report" / "report.md").read()
  assert f"inside {recall['tad']:.0%} of the eval videos' events" in report
  for name in ("before_tad", "before_uniform", "after_tad", "after_uniform"):
    assert f"({name}.md)" in report and os.path.exists(out / "report" / f"{name}.jsonl")
  assert "Answers by option letter" in report
  for png in ("training_curves.png", "accuracy_overall.png"):
    assert os.path.getsize(out / "report" / png) > 1000
