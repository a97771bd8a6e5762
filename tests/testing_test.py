"""Tests for chronoforge_jax.testing: synthetic cut videos really cut where they say."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from chronoforge_jax import testing
from chronoforge_jax.data import decode


def test_cut_video_changes_abruptly_only_at_cuts(tmp_path):
  cuts = [7, 19, 30]
  raw = testing.cut_video_frames(40, cuts, (32, 48), seed=1)
  assert raw.shape == (40, 32, 48, 3) and raw.dtype == np.uint8
  step = np.abs(np.diff(raw.astype(int), axis=0)).mean(axis=(1, 2, 3))  # step[t-1]: t-1 -> t
  at_cuts = step[np.array(cuts) - 1]
  inside = np.delete(step, np.array(cuts) - 1)
  assert at_cuts.min() > 5 * inside.max() and inside.max() > 0  # Scenes still move.
  path = tmp_path / "v.mp4"
  testing.write_cut_video(path, 40, cuts, size=(32, 48), fps=12.5, seed=1)
  video = decode.decode_video(path)
  assert video.num_frames == 40 and video.native_fps == pytest.approx(12.5)
  assert np.abs(video.frames.astype(int) - raw).mean() < 6
  assert decode.probe_video(path).num_frames == 40


def test_bad_cut_lists_are_rejected():
  with pytest.raises(ValueError, match="strictly increasing"):
    testing.cut_video_frames(10, [5, 3], 16)
  with pytest.raises(ValueError, match="strictly increasing"):
    testing.cut_video_frames(10, [0], 16)
  with pytest.raises(ValueError, match="must be even"):
    testing.write_frames("/tmp/never.mp4", np.zeros((2, 15, 16, 3), np.uint8), 10)


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(
  num_frames=st.integers(10, 300),
  num_cuts=st.integers(0, 10),
  min_gap=st.integers(1, 10),
  seed=st.integers(0, 1000),
)
def test_random_cuts_are_spaced(num_frames, num_cuts, min_gap, seed):
  hypothesis.assume(num_frames >= min_gap * (num_cuts + 1))
  cuts = testing.random_cuts(num_frames, num_cuts, min_gap=min_gap, seed=seed)
  bounds = np.diff([0, *cuts, num_frames])
  assert len(cuts) == num_cuts and bounds.min() >= min_gap
