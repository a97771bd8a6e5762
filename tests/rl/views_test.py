"""Tests for chronoforge_jax.rl.views: ordered and hybrid disordered views of a video."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from chronoforge_jax.rl import views


def _keyframes(num_frames, k, rng):
  kept = np.sort(rng.choice(num_frames, size=min(k, num_frames), replace=False))
  idx = np.full(k, kept[-1])
  idx[: kept.size] = kept
  return idx, np.arange(k) < kept.size


@hypothesis.given(
  num_frames=st.integers(1, 60),
  half_k=st.integers(1, 8),
  ratio=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
  seed=st.integers(0, 10**6),
)
@hypothesis.settings(max_examples=150, deadline=None)
def test_view_invariants(num_frames, half_k, ratio, seed):
  k = 2 * half_k
  rng = np.random.default_rng(seed)
  key_idx, key_valid = _keyframes(num_frames, k, rng)
  m = views.default_num_pairs(k, ratio)
  v = views.build_views(
    num_frames,
    key_idx,
    key_valid,
    num_pairs=m,
    disorder_ratio=ratio,
    rng=np.random.default_rng(seed + 1),
  )
  u = k + 2 * m
  assert v.frame_indices.shape == v.frame_valid.shape == (u,)
  assert v.frame_indices.dtype == np.int32 and v.disordered_patches.dtype == np.int32
  assert (0 <= v.frame_indices).all() and (v.frame_indices < num_frames).all()
  # Keyframes first, unchanged and chronological.
  np.testing.assert_array_equal(v.frame_indices[:k][key_valid], key_idx[key_valid])
  np.testing.assert_array_equal(v.frame_valid[:k], key_valid)
  np.testing.assert_array_equal(v.ordered_patches, np.arange(half_k))
  # Non-keyframes: distinct, never a keyframe, sorted so each pair is chronological.
  non = v.frame_indices[k:][v.frame_valid[k:]]
  assert len(set(non.tolist())) == non.size
  assert not set(non.tolist()) & set(key_idx[key_valid].tolist())
  assert (np.diff(non) > 0).all()
  n_free = num_frames - int(key_valid.sum())
  assert int(v.frame_valid[k:].sum()) == min(2 * m, n_free)
  # Disordered view: K/2 distinct patches of the union, the right mix, never in order.
  d = v.disordered_patches
  assert d.shape == (half_k,) and len(set(d.tolist())) == half_k
  assert ((0 <= d) & (d < half_k + m)).all()
  valid_pairs = int(v.frame_valid[k:].reshape(-1, 2).all(-1).sum()) if m else 0
  expected_non = min(int(round(ratio * half_k)), valid_pairs)
  assert int((d >= half_k).sum()) == expected_non
  if half_k > 1:
    assert not np.array_equal(d, np.arange(half_k))
  # Every non-keyframe patch used is made of valid frames.
  for p in d[d >= half_k]:
    assert v.frame_valid[k + 2 * (p - half_k) : k + 2 * (p - half_k) + 2].all()


def test_same_seed_same_views_and_seeds_differ():
  key_idx, key_valid = np.arange(0, 64, 4), np.ones(16, bool)
  make = lambda seed: views.build_views(
    64, key_idx, key_valid, num_pairs=4, disorder_ratio=0.5, rng=np.random.default_rng(seed)
  )
  a, b = make(3), make(3)
  np.testing.assert_array_equal(a.frame_indices, b.frame_indices)
  np.testing.assert_array_equal(a.disordered_patches, b.disordered_patches)
  patterns = {tuple(make(s).disordered_patches.tolist()) for s in range(20)}
  assert len(patterns) > 10


def test_disorder_mix_is_uniform_over_patches():
  # Over many seeds every keyframe patch and every non-keyframe patch is used about
  # equally often, and every position of the view sees non-keyframes half the time.
  p, m, n = 8, 4, 4000
  counts = np.zeros(p + m)
  at_position = np.zeros(p)
  for seed in range(n):
    d = views.disordered_patches(2 * p, m, 0.5, np.random.default_rng(seed))
    counts[d] += 1
    at_position += d >= p
  np.testing.assert_allclose(counts[:p] / n, 0.5, atol=0.04)  # 4 of 8 key patches.
  np.testing.assert_allclose(counts[p:] / n, 1.0, atol=0.0)  # All 4 non-key patches.
  np.testing.assert_allclose(at_position / n, 0.5, atol=0.04)


def test_too_few_frames_marks_padding_invalid():
  # 5 frames, K=4 of them keyframes: one free frame cannot make a pair.
  v = views.build_views(
    5,
    np.array([0, 1, 3, 4]),
    np.ones(4, bool),
    num_pairs=2,
    disorder_ratio=1.0,
    rng=np.random.default_rng(0),
  )
  np.testing.assert_array_equal(v.frame_indices[4:], [2, 2, 2, 2])
  np.testing.assert_array_equal(v.frame_valid[4:], [True, False, False, False])
  assert (v.disordered_patches < 2).all()  # No valid non-keyframe pair to mix in.
  np.testing.assert_array_equal(np.sort(v.disordered_patches), [0, 1])
  np.testing.assert_array_equal(v.disordered_patches, [1, 0])


def test_bad_arguments():
  with pytest.raises(ValueError, match="even"):
    views.build_views(
      10,
      np.arange(3),
      np.ones(3, bool),
      num_pairs=1,
      disorder_ratio=0.5,
      rng=np.random.default_rng(0),
    )
  with pytest.raises(ValueError, match="disorder_ratio"):
    views.disordered_patches(4, 1, 1.5, np.random.default_rng(0))
  with pytest.raises(ValueError, match="num_frames"):
    views.build_views(
      0,
      np.zeros(2, int),
      np.zeros(2, bool),
      num_pairs=0,
      disorder_ratio=0.5,
      rng=np.random.default_rng(0),
    )


@hypothesis.given(
  num_frames=st.integers(1, 40),
  k=st.integers(1, 9),
  ratio=st.sampled_from([0.0, 0.5, 1.0]),
  seed=st.integers(0, 10**6),
)
@hypothesis.settings(max_examples=100, deadline=None)
def test_duplicate_mode_gives_every_frame_its_own_patch(num_frames, k, ratio, seed):
  rng = np.random.default_rng(seed)
  key_idx, key_valid = _keyframes(num_frames, k, rng)
  m = views.default_num_pairs(k, ratio, "duplicate")
  assert m == int(round(ratio * k))  # One non-keyframe per patch: P = K patches.
  v = views.build_views(
    num_frames,
    key_idx,
    key_valid,
    num_pairs=m,
    disorder_ratio=ratio,
    rng=np.random.default_rng(seed + 1),
    patch_mode="duplicate",
  )
  assert v.frame_indices.shape == (views.union_frames(k, m, "duplicate"),) == (2 * (k + m),)
  pairs = v.frame_indices.reshape(-1, 2)
  np.testing.assert_array_equal(pairs[:, 0], pairs[:, 1])  # Both frames of a patch equal.
  np.testing.assert_array_equal(v.frame_valid[::2], v.frame_valid[1::2])
  np.testing.assert_array_equal(pairs[:k, 0][key_valid], key_idx[key_valid])
  np.testing.assert_array_equal(v.keyframe_indices[key_valid], key_idx[key_valid])
  np.testing.assert_array_equal(v.ordered_patches, np.arange(k))
  non = pairs[k:, 0][v.frame_valid[2 * k :: 2]]
  assert not set(non.tolist()) & set(key_idx[key_valid].tolist())
  assert (np.diff(non) > 0).all()
  d = v.disordered_patches
  assert d.shape == (k,) and len(set(d.tolist())) == k and ((0 <= d) & (d < k + m)).all()
  assert int((d >= k).sum()) == min(int(round(ratio * k)), non.size)
  if k > 1:
    assert not np.array_equal(d, np.arange(k))


def test_pair_mode_layout_is_unchanged_by_the_mode_argument():
  key_idx, key_valid = np.arange(0, 64, 4), np.ones(16, bool)
  a = views.build_views(
    64, key_idx, key_valid, num_pairs=4, disorder_ratio=0.5, rng=np.random.default_rng(7)
  )
  b = views.build_views(
    64,
    key_idx,
    key_valid,
    num_pairs=4,
    disorder_ratio=0.5,
    rng=np.random.default_rng(7),
    patch_mode="pair",
  )
  for field in (
    "frame_indices",
    "frame_valid",
    "ordered_patches",
    "disordered_patches",
    "keyframe_indices",
  ):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  np.testing.assert_array_equal(a.keyframe_indices, key_idx)
  assert views.view_patches(16) == 8 and views.view_patches(16, "duplicate") == 16


def test_bad_patch_mode():
  with pytest.raises(ValueError, match="patch_mode='triple'"):
    views.build_views(
      10,
      np.arange(4),
      np.ones(4, bool),
      num_pairs=1,
      disorder_ratio=0.5,
      rng=np.random.default_rng(0),
      patch_mode="triple",
    )
