"""`python -m launch.plan`: the quick plan, and --compile's verdict line and exit status."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from chronoforge_jax import tokenizer as tokenizer_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _plan(tmp_path, *flags):
  tok = tmp_path / "tok"
  if not tok.exists():
    tokenizer_lib.build_tiny_tokenizer(tok)
  env = {**os.environ, "PYTHONPATH": REPO}
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_PLATFORMS", None)  # launch.plan itself keeps to the CPU.
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.plan",
      "--config=configs/kf_grpo.py:smoke",
      f"--tokenizer_dir={tok}",
      "--frame_size=56",
      *flags,
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_compile_reports_each_program_and_fails_on_a_chip_too_small(tmp_path):
  """The views program of the tiny config, compiled for v5e-4 against a 1 MB chip."""
  pytest.importorskip("libtpu")
  result = _plan(tmp_path, "--topology=v5e-4", "--compile", "--programs=views", "--hbm_gib=0.001")
  assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert any(line.startswith("compiling views ...") for line in lines)
  assert re.fullmatch(
    r"does not fit: peak \d+\.\d\d GiB of 0\.001 GiB per chip on "
    r"v5e-4 \(program views\)",
    lines[-1],
  ), lines[-1]
  row = next(line for line in lines if line.startswith("views "))
  assert len(row.split()) == 12  # name, runs, 6 memory columns, TFLOP, ms, util, compile


def test_compile_without_a_topology_is_a_usage_error(tmp_path):
  result = _plan(tmp_path, "--compile")
  assert result.returncode != 0 and "--compile needs --topology" in result.stderr


def test_quick_plan_with_a_topology_plans_for_its_chip_count(tmp_path):
  result = _plan(tmp_path, "--topology=v5p-16", "--config.mesh.data=1", "--config.mesh.fsdp=-1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith("mesh {'data': 1, 'fsdp': 8, 'tensor': 1} (8 devices)")
