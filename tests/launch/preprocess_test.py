"""Tests for launch/preprocess.py (run as a subprocess) and its config, configs/data.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from configs import common
from configs import data as data_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args, timeout=240):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run(
    [sys.executable, "-m", "launch.preprocess", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_synthetic_end_to_end_and_resume(tmp_path):
  args = [
    "--config=configs/data.py:smoke",
    "--format=synthetic",
    "--quiet",
    f"--video_dir={tmp_path / 'src'}",
    f"--out={tmp_path / 'train'}",
    "--workers=0",
  ]
  first = _run(*args)
  assert first.returncode == 0, first.stderr
  assert "preprocess: 8 questions on 4 videos" in first.stdout
  assert "0 rejected" in first.stdout and "2 shards written, 0 already done" in first.stdout
  index = json.loads((tmp_path / "train" / "index.json").read_text())
  assert index["frame_shape"] == [56, 56, 3] and index["settings"]["format"] == "synthetic"
  assert index["settings"]["fps"] == 2.0 and index["settings"]["max_frames"] == 32
  assert (tmp_path / "train" / "tokenizer" / "tokenizer.json").exists()
  again = _run(*args)
  assert again.returncode == 0 and "0 shards written, 2 already done" in again.stdout
  evals = _run(*args[:-2], f"--out={tmp_path / 'eval'}", "--split=eval", "--workers=0")
  assert evals.returncode == 0 and "4 questions on 2 videos" in evals.stdout
  changed = _run(*args, "--size=28")
  assert changed.returncode == 2 and "different ['size']" in changed.stderr


def test_nothing_written_exits_nonzero(tmp_path):
  rows = [
    {
      "problem_id": n,
      "problem": "q?",
      "data_type": "video",
      "problem_type": "multiple choice",
      "options": ["A. a", "B. b"],
      "solution": "<answer>A</answer>",
      "path": name,
    }
    for n, name in enumerate(["missing.mp4", "empty.mp4"])
  ]
  (tmp_path / "empty.mp4").write_bytes(b"")
  (tmp_path / "ann.json").write_text(json.dumps(rows + [{"problem_id": 9}]))
  out = tmp_path / "out"
  result = _run(
    "--format=videor1",
    f"--annotations={tmp_path / 'ann.json'}",
    f"--video_dir={tmp_path}",
    f"--out={out}",
    "--size=56",
    "--workers=0",
    "--quiet",
  )
  assert result.returncode == 1, result.stderr
  assert "0 questions on 0 videos" in result.stdout and "3 rejected" in result.stdout
  reasons = [json.loads(x)["reason"] for x in open(out / "rejected.jsonl")]
  assert any("file not found" in r for r in reasons)
  assert any("empty (0 bytes)" in r for r in reasons)
  assert any("missing field" in r for r in reasons)


def test_bad_arguments_exit_2(tmp_path):
  missing = _run(
    "--format=videomme",
    f"--annotations={tmp_path / 'none.json'}",
    f"--video_dir={tmp_path}",
    f"--out={tmp_path / 'o'}",
  )
  assert missing.returncode == 2 and "not found" in missing.stderr
  bad_size = _run(
    "--format=videomme",
    f"--annotations={tmp_path / 'none.json'}",
    f"--video_dir={tmp_path}",
    f"--out={tmp_path / 'o'}",
    "--size=50",
  )
  assert bad_size.returncode == 2 and "config.preprocess.size" in bad_size.stderr
  assert not (tmp_path / "o").exists()
  helped = _run("--help")
  # absl prints the usage and exits 1 on --help.
  assert "--annotations" in helped.stdout and "--workers" in helped.stdout


@pytest.mark.parametrize("variant", data_config.VARIANTS)
def test_config_variants_validate(variant):
  config = data_config.get_config(variant)
  assert config.tad.k % 2 == 0 and config.preprocess.size % 28 == 0
  assert config.input.eval_num_keyframes % 2 == 0


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("input.batch_size", 0, "config.input.batch_size"),
    ("input.prompt_buckets", (256, 128), "config.input.prompt_buckets"),
    ("input.disorder_ratio", 1.5, "config.input.disorder_ratio"),
    ("tad.k", 7, "config.tad.k"),
    ("preprocess.size", 100, "config.preprocess.size"),
    ("preprocess.resize", "stretch", "config.preprocess.resize"),
    ("preprocess.compression", "gzip", "config.preprocess.compression"),
  ],
)
def test_config_errors_name_the_field(field, value, message):
  config = data_config.get_config("smoke")
  section, name = field.split(".")
  with config.unlocked():
    config[section][name] = value
  with pytest.raises(common.ConfigError, match=message.replace(".", r"\.")):
    data_config.validate_data(config)
  with pytest.raises(common.ConfigError, match="variant"):
    data_config.get_config("huge")
