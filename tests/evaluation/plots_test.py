"""Tests for chronoforge_jax.evaluation.plots: the PNGs exist and show what they claim to show."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from chronoforge_jax.evaluation import plots

_RED = np.array([0.839, 0.153, 0.157])  # matplotlib "tab:red", the inflection marker.


def _pixels_near(image_hwc, rgb, tol=0.06):
  return int(np.sum(np.all(np.abs(image_hwc[..., :3] - rgb) < tol, axis=-1)))


def test_tad_curve_marks_inflections(tmp_path):
  scores = np.abs(np.sin(np.linspace(0, 6, 80)))
  infl = np.zeros(80, bool)
  infl[[13, 40, 66]] = True
  with_marks = matplotlib.image.imread(
    plots.tad_curve(
      tmp_path / "a.png",
      scores,
      infl,
      [13, 40, 66, 70],
      np.arange(80) / 4.0,
      title="t",
      cuts=[13, 40],
    )
  )
  without = matplotlib.image.imread(plots.tad_curve(tmp_path / "sub/b.png", scores))
  assert with_marks.shape[:2] == without.shape[:2] == (320, 1000)
  assert _pixels_near(with_marks, _RED) > 50
  assert _pixels_near(without, _RED) == 0


def test_contact_sheet_shows_every_frame(tmp_path):
  colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]])
  frames = np.broadcast_to(colours[:, None, None, :], (5, 24, 32, 3)).astype(np.uint8)
  image = matplotlib.image.imread(
    plots.contact_sheet(tmp_path / "sheet.png", frames, [f"#{i}" for i in range(5)], title="x")
  )
  for c in colours / 255.0:
    assert _pixels_near(image, c) > 500, c  # Each tile is ~100x130 px of its colour.
  with pytest.raises(ValueError, match="2 labels for 5 frames"):
    plots.contact_sheet(tmp_path / "bad.png", frames, ["a", "b"])
  with pytest.raises(ValueError, match=r"\[K, H, W, 3\]"):
    plots.contact_sheet(tmp_path / "bad.png", frames[..., 0])
