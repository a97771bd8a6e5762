"""End-to-end tests of `python -m launch.select_keyframes` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from chronoforge_jax import testing

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "launch.select_keyframes", *map(str, args)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory):
  path = tmp_path_factory.mktemp("cli") / "cuts.mp4"
  cuts = [17, 45, 71, 98]
  testing.write_cut_video(path, 120, cuts, size=(48, 64), fps=10, seed=5)
  return path, cuts


def test_json_report_and_pictures(cut_video, tmp_path):
  path, cuts = cut_video
  out = tmp_path / "out"
  proc = run_cli("--video", path, "--k", 8, "--out", out)
  assert proc.returncode == 0, proc.stderr
  report = json.loads(proc.stdout)  # stdout holds the JSON and nothing else.
  frames = np.asarray(report["frames"])
  assert len(frames) == 8 and np.all(np.diff(frames) > 0)
  for c in cuts:
    assert np.min(np.abs(frames - c)) <= 1, (c, frames)
  assert report["inflections"] == cuts
  np.testing.assert_allclose(report["timestamps"], frames / 10.0, atol=1e-6)
  assert len(report["scores"]) == report["num_frames"] == 120
  assert np.argsort(report["scores"])[-4:].tolist() == sorted(
    cuts, key=lambda c: report["scores"][c]
  )  # The four largest scores are the cuts.
  for name in ("tad_curve.png", "contact_sheet.png"):
    image = matplotlib.image.imread(out / name)
    assert image.ndim == 3 and min(image.shape[:2]) > 100


def test_resampled_uniform_selection(cut_video):
  path, _ = cut_video
  proc = run_cli("--video", path, "--k", 6, "--fps", 4, "--selector", "uniform")
  assert proc.returncode == 0, proc.stderr
  report = json.loads(proc.stdout)
  assert report["num_frames"] == 48 and report["fps"] == 4.0
  assert report["frames"] == [(2 * j + 1) * 48 // 12 for j in range(6)]
  # Frame j at 4 fps shows native frame floor(j * 10 / 4), timestamped at its own time.
  want = [np.floor(f * 2.5 + 1e-9) / 10 for f in report["frames"]]
  np.testing.assert_allclose(report["timestamps"], want, atol=1e-6)
  assert "outputs" not in report


def test_bad_files_get_one_line_and_exit_code_2(tmp_path):
  (tmp_path / "empty.mp4").write_bytes(b"")
  (tmp_path / "notes.mp4").write_text("not a video\n" * 20)
  for path, reason in [
    (tmp_path / "missing.mp4", "file not found"),
    (tmp_path / "empty.mp4", "empty"),
    (tmp_path / "notes.mp4", "not a readable video"),
  ]:
    proc = run_cli("--video", path, "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and reason in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
  assert not (tmp_path / "out").exists()


def test_bad_config_gets_one_line_and_exit_code_2(cut_video):
  proc = run_cli("--video", cut_video[0], "--k", 0)
  assert proc.returncode == 2 and "config.tad.k" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
