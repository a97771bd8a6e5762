"""The package as a user installs it: a wheel (not editable), imported from another folder.

`pip install --no-deps --target` builds and installs the wheel exactly as `pip install .`
does, reusing this environment's dependencies instead of downloading them again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import chronoforge_jax
    from chronoforge_jax.train import loop
    assert chronoforge_jax.__file__.startswith(sys.argv[1]), chronoforge_jax.__file__
    # The library never imports the configs (or the launchers) itself.
    assert not [m for m in sys.modules if m.split(".")[0] in ("configs", "launch")]
    sys.path.append(sys.argv[2])  # The user's configs, behind the installed package.
    from configs import kf_grpo
    config = kf_grpo.get_config("smoke")
    config.input.data_dir = "data"  # Relative to this folder.
    config.sft_steps, config.total_steps = 1, 2
    kf_grpo.validate(config)
    metrics = loop.train_and_evaluate(config, "run")
    print("RESULT", json.dumps({"file": chronoforge_jax.__file__,
                                "loss": float(metrics["loss"])}))
""")


@pytest.mark.slow
def test_installed_wheel_trains_two_steps_from_another_folder(tmp_path):
  # Built from a copy of the source files, so the build leaves nothing in the checkout.
  src = tmp_path / "src"
  shutil.copytree(
    ROOT,
    src,
    ignore=shutil.ignore_patterns(
      ".*", "build", "dist", "*.egg-info", "__pycache__", "*_out", "*_out_*"
    ),
  )
  site = tmp_path / "site"
  subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "install",
      "--quiet",
      "--no-deps",
      "--no-build-isolation",
      "--target",
      str(site),
      str(src),
    ],
    check=True,
    capture_output=True,
    text=True,
    timeout=600,
  )
  for package in ("tad", "data", "models", "rl", "train", "evaluation"):
    assert (site / "chronoforge_jax" / package / "__init__.py").is_file(), package
  assert not (site / "configs").exists() and not (site / "tests").exists()
  work = tmp_path / "work"
  work.mkdir()
  # As the trainer tests' launchers run (same devices): their compiled programs are reused.
  env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
  subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.preprocess",
      "--config=configs/data.py:smoke",
      "--format=synthetic",
      f"--video_dir={work}/videos",
      f"--out={work}/data",
      "--split=train",
      "--quiet",
    ],
    check=True,
    cwd=ROOT,
    capture_output=True,
    env={**env, "PYTHONPATH": ROOT},
  )
  (work / "script.py").write_text(_SCRIPT)
  result = subprocess.run(
    [sys.executable, "script.py", str(site), ROOT],
    cwd=work,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1]
  out = json.loads(line[len("RESULT ") :])
  assert out["file"].startswith(str(site))
  records = [json.loads(x) for x in open(work / "run" / "metrics.jsonl")]
  assert [r["step"] for r in records] == [1, 2]
  assert "sft/nll" in records[0] and "reward/accuracy" in records[1]
  assert os.path.isdir(work / "run" / "checkpoints" / "2")
