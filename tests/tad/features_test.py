"""Tests for chronoforge_jax.tad.features against a NumPy float64 block-mean reference."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from chronoforge_jax.tad import features


def ref_features(frames_thwc, grid, color="rgb", center=True):
  """Loops over frames and blocks; centre crop to a multiple of grid."""
  t, h, w, _ = frames_thwc.shape
  bh, bw = h // grid, w // grid
  top, left = (h - bh * grid) // 2, (w - bw * grid) // 2
  out = []
  for f in frames_thwc.astype(np.float64) / 255.0:
    vec = []
    for i in range(grid):
      for j in range(grid):
        block = f[top + i * bh : top + (i + 1) * bh, left + j * bw : left + (j + 1) * bw]
        mean = block.reshape(-1, 3).mean(axis=0)
        if color == "luma":
          mean = np.array([0.299 * mean[0] + 0.587 * mean[1] + 0.114 * mean[2]])
        vec.extend(2 * mean - 1 if center else mean)
    out.append(vec)
  return np.asarray(out)


@pytest.mark.parametrize("shape,grid", [((5, 32, 48), 8), ((3, 37, 29), 5), ((2, 9, 9), 3)])
@pytest.mark.parametrize("color", ["rgb", "luma"])
@pytest.mark.parametrize("center", [True, False])
def test_frame_features_match_numpy(shape, grid, color, center):
  frames = np.random.default_rng(0).integers(0, 256, size=shape + (3,), dtype=np.uint8)
  got = np.asarray(features.frame_features(frames, grid=grid, color=color, center=center))
  want = ref_features(frames, grid, color, center)
  assert got.shape == (shape[0], features.feature_dim(grid, color)) == want.shape
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_batched_and_jitted_equal_unbatched():
  frames = np.random.default_rng(1).integers(0, 256, size=(2, 4, 16, 24, 3), dtype=np.uint8)
  batched = np.asarray(jax.jit(features.frame_features)(frames))
  for b in range(2):
    np.testing.assert_allclose(batched[b], ref_features(frames[b], 8), atol=2e-6)


def test_video_features_chunks_equal_one_call():
  frames = np.random.default_rng(2).integers(0, 256, size=(11, 16, 16, 3), dtype=np.uint8)
  whole = ref_features(frames, 4)
  np.testing.assert_allclose(features.video_features(frames, chunk=4, grid=4), whole, atol=2e-6)
  # A generator works too (the decoder streams frames one at a time).
  np.testing.assert_allclose(
    features.video_features(iter(frames), chunk=64, grid=4), whole, atol=2e-6
  )
  assert features.video_features(iter([]), grid=4).shape == (0, 48)
  # One frame (a still image) and a partial last chunk: padded to a power of two only.
  np.testing.assert_allclose(
    features.video_features(frames[:1], chunk=256, grid=4), whole[:1], atol=2e-6
  )
  np.testing.assert_allclose(features.video_features(frames, chunk=8, grid=4), whole, atol=2e-6)


def test_uniform_brightness_change_is_visible_to_cosine():
  # Centring is what lets a cosine distance see a fade from dark to bright.
  dark = np.full((1, 8, 8, 3), 40, np.uint8)
  bright = np.full((1, 8, 8, 3), 220, np.uint8)
  f = np.asarray(features.frame_features(np.concatenate([dark, bright]), grid=2))
  cos = f[0] @ f[1] / np.linalg.norm(f[0]) / np.linalg.norm(f[1])
  assert cos < 0


def test_bad_frames_have_clear_errors():
  with pytest.raises(ValueError, match="smaller than grid=8"):
    features.frame_features(np.zeros((2, 4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
    features.frame_features(np.zeros((2, 16, 16), np.uint8))
  with pytest.raises(ValueError, match="color='hsv'"):
    features.frame_features(np.zeros((2, 16, 16, 3), np.uint8), color="hsv")
