"""Tests for chronoforge_jax.tad against a plain NumPy float64 transcription of TAD."""

from __future__ import annotations

import dataclasses
import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from chronoforge_jax import tad, testing
from chronoforge_jax.data import decode
from chronoforge_jax.tad import features, selection

ref_variation = testing.reference_variation
ref_inflections = testing.reference_inflections
ref_select = testing.reference_select


def random_case(seed, b=3, t=37, d=11, holes=False):
  rng = np.random.default_rng(seed)
  # A random walk gives the variation curve real peaks and valleys.
  x_btd = np.cumsum(rng.normal(size=(b, t, d)), axis=1).astype(np.float32)
  lengths = rng.integers(1, t + 1, size=b)
  lengths[0] = t
  mask_bt = np.arange(t)[None] < lengths[:, None]
  if holes:
    mask_bt &= rng.random((b, t)) > 0.2
  return x_btd, mask_bt


# ------------------------------------------------------------------------------------
# The three stages match the reference.
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("distance", ["cosine", "l2"])
@pytest.mark.parametrize("smooth", [0, 2])
@pytest.mark.parametrize("holes", [False, True])
def test_variation_scores_match_numpy(distance, smooth, holes):
  x_btd, mask_bt = random_case(1, holes=holes)
  x_btd[0, 5] = 0.0  # Zero vectors: one next to a real frame, then a pair.
  x_btd[1, 8:10] = 0.0
  got = np.asarray(tad.variation_scores(x_btd, mask_bt, distance=distance, smooth=smooth))
  for b in range(len(x_btd)):
    want = ref_variation(x_btd[b], mask_bt[b], distance, smooth)
    np.testing.assert_allclose(got[b], want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("prominence,window", [(0.0, 16), (0.13, 3), (0.33, 40)])
def test_inflection_points_match_numpy(seed, prominence, window):
  rng = np.random.default_rng(seed)
  # Multiples of 1/8 are exact in float32 and give plenty of plateaus and ties.
  v_bt = (rng.integers(0, 9, size=(4, 41)) / 8.0).astype(np.float32)
  mask_bt = np.arange(41)[None] < np.array([[41], [30], [2], [17]])
  got = np.asarray(tad.inflection_points(v_bt, mask_bt, prominence=prominence, window=window))
  for b in range(4):
    want = ref_inflections(v_bt[b], mask_bt[b], prominence, window=window)
    np.testing.assert_array_equal(got[b], want, err_msg=f"row {b}")


def test_inflections_plateau_counts_once_and_noise_is_ignored():
  v = np.array(
    [0, 0.1, 0.5, 0.5, 0.5, 0.1, 0.12, 0.11, 0.13, 0.9, 0.2, 0.2, 0.6, 0.6, 0.7], np.float32
  )
  got = np.asarray(tad.inflection_points(v, prominence=0.1))
  # Plateau 2..4 -> frame 2 only; 0.12/0.13 wiggles are below 10% of the 0.9 range;
  # the rising last frame has no right neighbour.
  np.testing.assert_array_equal(np.flatnonzero(got), [2, 9])
  np.testing.assert_array_equal(got, ref_inflections(v, np.ones(15, bool), 0.1))
  # With no threshold the wiggle at 6 is a peak; 8 is not (it rises into 9).
  np.testing.assert_array_equal(np.flatnonzero(tad.inflection_points(v, prominence=0.0)), [2, 6, 9])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [1, 5, 37, 50])
@pytest.mark.parametrize(
  "kw",
  [
    {},
    dict(distance="l2", smooth=1, prominence=0.05, window=5, boost=0.3),
    dict(boost=0.5, boost_mode="mul", prominence=0.2),
  ],
)
def test_select_keyframes_matches_numpy(seed, k, kw):
  x_btd, mask_bt = random_case(seed + 10, holes=seed == 2)
  idx, valid = tad.select_keyframes(x_btd, k, mask_bt, **kw)
  out = tad.analyze(x_btd, mask_bt, **kw)
  for b in range(len(x_btd)):
    want_idx, want_valid, want_v, want_infl = ref_select(x_btd[b], k, mask_bt[b], **kw)
    np.testing.assert_allclose(out.scores[b], want_v, atol=2e-5, rtol=1e-4)
    np.testing.assert_array_equal(out.inflections[b], want_infl)
    np.testing.assert_array_equal(idx[b], want_idx)
    np.testing.assert_array_equal(valid[b], want_valid)
  assert idx.dtype == jnp.int32 and idx.shape == valid.shape == (len(x_btd), k)


def test_ties_go_to_the_earlier_frame():
  # Features alternating between two directions: every variation is exactly equal.
  x_td = np.tile(np.eye(2, dtype=np.float32), (6, 1))
  idx, valid = tad.select_keyframes(x_td, 4, boost=0.0)
  np.testing.assert_array_equal(idx, [1, 2, 3, 4])
  assert valid.all()


# ------------------------------------------------------------------------------------
# Properties.
# ------------------------------------------------------------------------------------


_T = 24  # Hypothesis varies the real length through the mask: one compile per k.


@functools.partial(jax.jit, static_argnames=("name", "k", "smooth", "distance"))
def _select_jit(x_td, mask_t, *, name, k, smooth, distance):
  return tad.select(name, x_td, k, mask_t, smooth=smooth, distance=distance)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
  k=st.sampled_from([1, 4, 23, 24, 31]),
  n=st.integers(0, _T),
  seed=st.integers(0, 2**16),
  smooth=st.sampled_from([0, 2]),
  distance=st.sampled_from(["cosine", "l2"]),
)
def test_indices_sorted_unique_within_valid_length(k, n, seed, smooth, distance):
  x_td = np.random.default_rng(seed).normal(size=(_T, 3)).astype(np.float32)
  mask_t = np.arange(_T) < n
  for name in ("tad", "uniform"):
    idx, valid = map(
      np.asarray, _select_jit(x_td, mask_t, name=name, k=k, smooth=smooth, distance=distance)
    )
    real = idx[valid]
    assert valid.sum() == min(k, n) and valid[: min(k, n)].all(), name
    assert np.all(np.diff(real) > 0), (name, idx)  # Sorted and unique.
    assert np.all((idx >= 0) & (idx < _T)), (name, idx)  # Even invalid slots.
    assert np.all(real < n), (name, idx)  # Never padding.
    if n:
      assert np.all(idx[~valid] == real[-1]), (name, idx)


def circle_features(steps_t):
  """Unit vectors whose angle advances by steps_t[t] at frame t: v_t = 1 - cos(steps_t)."""
  angles_t = np.cumsum(steps_t)
  return np.stack([np.cos(angles_t), np.sin(angles_t)], axis=1).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("mode",))
def _analyze_select_jit(x_td, mask_t, boost, *, mode):
  infl_t = tad.analyze(x_td, mask_t).inflections
  return infl_t, tad.select_keyframes(x_td, 2, mask_t, boost=boost, boost_mode=mode)[0]


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(
  delta=st.floats(0.1, 0.6),
  calm=st.floats(0.0, 0.5),
  pos_a=st.integers(2, 8),
  gap=st.integers(3, 8),
  tail=st.integers(2, 6),
  boost=st.floats(0.05, 2.0),
  mode=st.sampled_from(["add", "mul"]),
  a_first=st.booleans(),
)
def test_inflection_beats_non_inflection_of_equal_variation(
  delta, calm, pos_a, gap, tail, boost, mode, a_first
):
  # Frame a is an isolated peak of step delta; frame b has the same step (so the same
  # variation) but sits on the rise to a bigger peak c = b + 1. Padding (random
  # content) fills the video to a fixed 30 frames.
  t = pos_a + gap + tail + 3
  steps_t = np.full(30, calm * delta)
  steps_t[0] = 0.0
  steps_t[t:] = np.random.default_rng(t).uniform(0, 3, size=30 - t)
  a, b = (pos_a, pos_a + gap) if a_first else (pos_a + gap + 1, pos_a)
  steps_t[a], steps_t[b], steps_t[b + 1] = delta, delta, 2 * delta
  infl, idx = _analyze_select_jit(
    circle_features(steps_t), np.arange(30) < t, np.float32(boost), mode=mode
  )
  assert infl[a] and not infl[b]
  assert list(np.asarray(idx)) == sorted([a, b + 1])


@pytest.mark.parametrize("k_extra", [0, 1, 9])
def test_k_at_least_t_selects_every_real_frame(k_extra):
  x_btd, mask_bt = random_case(3, b=4, t=9)
  k = 9 + k_extra
  for name in ("tad", "uniform"):
    idx, valid = map(np.asarray, tad.select(name, x_btd, k, mask_bt))
    for row in range(4):
      n = int(mask_bt[row].sum())
      np.testing.assert_array_equal(idx[row, :n], np.arange(n))
      np.testing.assert_array_equal(idx[row, n:], n - 1)
      np.testing.assert_array_equal(valid[row], np.arange(k) < n)


def test_uniform_matches_formula_and_registry():
  assert set(tad.SELECTORS.names()) == {"tad", "uniform"}
  x_btd, mask_bt = random_case(4, b=3, t=50, holes=True)
  idx, valid = tad.select("uniform", x_btd, 7, mask_bt, prominence=0.5)  # TAD kw ignored.
  for b in range(3):
    real = np.flatnonzero(mask_bt[b])
    n = len(real)
    want = [real[(2 * j + 1) * n // 14] for j in range(7)] if n >= 7 else real
    np.testing.assert_array_equal(np.asarray(idx[b])[np.asarray(valid[b])], want)
  with pytest.raises(KeyError, match="unknown keyframe selector 'random'"):
    tad.select("random", x_btd, 3)


def test_bad_arguments_have_clear_errors():
  x_btd, _ = random_case(0)
  with pytest.raises(ValueError, match="distance='cos'"):
    tad.variation_scores(x_btd, distance="cos")
  with pytest.raises(ValueError, match="mask shape"):
    tad.select_keyframes(x_btd, 3, np.ones((3, 5), bool))
  with pytest.raises(ValueError, match="k=0"):
    tad.select_keyframes(x_btd, 0)
  with pytest.raises(ValueError, match=r"\[B, T, D\]"):
    tad.select_keyframes(np.zeros(5), 3)
  with pytest.raises(ValueError, match="method='topk'"):
    tad.soft_select(x_btd, 3, method="topk")


def test_tad_settings_are_analyze_settings_plus_selector_and_k():
  """TADSettings' fields are exactly `analyze`'s keyword arguments (with its defaults),
  the selector and K; select_kwargs() feeds `analyze` / `select` unchanged."""
  s = tad.TADSettings()
  assert s.select_kwargs() == tad.analyze_defaults()
  names = [f.name for f in dataclasses.fields(tad.TADSettings)]
  assert names == ["selector", "k", *tad.analyze_defaults()]
  x_btd, mask_bt = random_case(5, b=2, t=40)
  tuned = tad.TADSettings(k=6, window=3, smooth=1, boost_mode="mul", boost=0.5)
  got = tad.select(tuned.selector, x_btd, tuned.k, mask_bt, **tuned.select_kwargs())
  want = tad.select_keyframes(x_btd, 6, mask_bt, window=3, smooth=1, boost_mode="mul", boost=0.5)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("selector", "random", r"TADSettings.selector='random': choose one of \['tad', 'uniform'\]"),
    ("k", 0, "TADSettings.k=0: need a positive number"),
    ("k", 2.0, "TADSettings.k=2.0"),
    ("distance", "cos", "TADSettings.distance='cos'"),
    ("smooth", -1, "TADSettings.smooth=-1"),
    ("prominence", float("nan"), "TADSettings.prominence=nan"),
    ("min_prominence", -1e-3, "TADSettings.min_prominence"),
    ("window", 0, "TADSettings.window=0: need at least 1 frame"),
    ("boost", -1.0, "TADSettings.boost=-1.0"),
    ("boost_mode", "pow", "TADSettings.boost_mode='pow'"),
  ],
)
def test_tad_settings_name_the_bad_field(field, value, match):
  with pytest.raises(ValueError, match=match):
    tad.TADSettings(**{field: value})
  section = {**dataclasses.asdict(tad.TADSettings()), field: value}
  with pytest.raises(ValueError, match="config." + match.replace("TADSettings", "tad")):
    tad.TADSettings.from_config(section)


# ------------------------------------------------------------------------------------
# Differentiable selection.
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "method,rng",
  [
    ("sinkhorn", None),
    ("gumbel", None),
    ("gumbel", jax.random.key(3)),
    ("perturbed", None),
    ("perturbed", jax.random.key(4)),
  ],
)
def test_soft_select_forward_is_hard_and_gradients_flow(method, rng):
  x_btd, mask_bt = random_case(5, b=3, t=23, d=7)
  k = 6
  soft = jax.jit(
    functools.partial(tad.soft_select, k=k, mask_bt=mask_bt, method=method, rng=rng, n_iters=20)
  )
  sel = soft(x_btd)
  idx, _ = tad.select_keyframes(x_btd, k, mask_bt)
  np.testing.assert_array_equal(sel, np.eye(23, dtype=np.float32)[np.asarray(idx)])

  weights_bkt = jax.random.normal(jax.random.key(0), sel.shape)
  loss = lambda x: jnp.sum(soft(x) * weights_bkt)
  grad_btd = np.asarray(jax.grad(loss)(jnp.asarray(x_btd)))
  assert np.isfinite(grad_btd).all()
  for b in range(3):
    n = int(mask_bt[b].sum())
    if n > k:  # With every frame selected the selection cannot change.
      assert np.abs(grad_btd[b, :n]).sum() > 1e-6, b
    np.testing.assert_array_equal(grad_btd[b, n:], 0.0)  # Padding gets nothing.


@pytest.mark.parametrize("method", ["sinkhorn", "perturbed"])
def test_soft_select_gradient_points_the_right_way(method):
  # Raising the variation of the best unselected frame j must raise the selection mass
  # on j. Rotating every frame from j on by e changes v_j = 1 - cos(step_j + e) only.
  rng = np.random.default_rng(6)
  steps_t = rng.uniform(0.05, 0.6, size=30)
  steps_t[0] = 0.0
  k = 5
  out = tad.analyze(circle_features(steps_t))
  chosen = set(np.asarray(tad.top_k_chronological(out.priority, k)[0]).tolist())
  j = max(set(range(30)) - chosen, key=lambda i: float(out.priority[i]))

  def mass_on_j(e):
    angles_t = jnp.cumsum(jnp.asarray(steps_t)) + jnp.where(jnp.arange(30) >= j, e, 0.0)
    x_td = jnp.stack([jnp.cos(angles_t), jnp.sin(angles_t)], axis=1)
    return jnp.sum(
      tad.soft_select(x_td, k, temperature=0.2, n_iters=20, method=method, num_samples=4096)[:, j]
    )

  assert jax.jit(mass_on_j)(0.0) == 0.0  # Hard forward: j is not selected.
  assert jax.jit(jax.grad(mass_on_j))(0.0) > 0


def test_perturbed_membership_matches_the_gaussian_closed_form():
  # k = 1 of two frames: frame 0 wins with P = Phi(d / (sigma sqrt 2)), d = z0 - z1, and
  # dP/dz0 = -dP/dz1 = phi(d / (sigma sqrt 2)) / (sigma sqrt 2).
  from scipy import stats

  sigma, z = 0.3, jnp.asarray([[0.5, 0.3], [0.1, 0.6]])
  mask = jnp.ones((2, 2), bool)
  member = jax.jit(
    lambda z: selection._perturbed_membership(z, mask, 1, sigma, jax.random.key(1), 40000)
  )
  d = np.asarray(z[:, 0] - z[:, 1]) / (sigma * np.sqrt(2))
  p0 = stats.norm.cdf(d)
  np.testing.assert_allclose(np.asarray(member(z)), np.stack([p0, 1 - p0], 1), atol=0.01)
  grad = np.asarray(jax.jacrev(lambda z: member(z)[:, 0])(z))  # [B, B, T]
  want = stats.norm.pdf(d) / (sigma * np.sqrt(2))
  for b in range(2):
    np.testing.assert_allclose(grad[b, b], [want[b], -want[b]], rtol=0.08, atol=0.02)
    np.testing.assert_array_equal(grad[b, 1 - b], 0.0)  # Videos are independent.


# ------------------------------------------------------------------------------------
# Same numbers under jit, vmap, pmap and shard_map (8 fake CPU devices).
# ------------------------------------------------------------------------------------


def test_identical_under_jit_vmap_pmap_shard_map():
  assert jax.device_count() == 8
  x_btd, mask_bt = random_case(7, b=8, t=29, d=6)
  k = 5

  def all_outputs(x, m):
    idx, valid = tad.select_keyframes(x, k, m, smooth=1)
    out = tad.analyze(x, m, smooth=1)
    sel = tad.soft_select(x, k, m, smooth=1, n_iters=8)
    return idx, valid, out.scores, out.inflections, sel

  # jit is the baseline: eager and vmap-without-jit dispatch op by op (slow, same
  # numbers); the NumPy reference tests above run eagerly.
  eager = jax.jit(all_outputs)(x_btd, mask_bt)
  vmapped = jax.jit(jax.vmap(all_outputs))(x_btd, mask_bt)  # Each call sees one [T, D].
  pmapped = jax.pmap(all_outputs)(x_btd[:, None], mask_bt[:, None])
  mesh = jax.make_mesh((8,), ("data",))
  on_mesh = jax.sharding.NamedSharding(mesh, P("data"))
  sharded = jax.jit(
    jax.shard_map(all_outputs, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P("data"))
  )(jax.device_put(x_btd, on_mesh), jax.device_put(mask_bt, on_mesh))
  for name, got in [
    ("vmap", vmapped),
    ("shard_map", sharded),
    ("pmap", [g.reshape(e.shape) for g, e in zip(pmapped, eager)]),
  ]:
    for e, g in zip(eager, got):
      np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=1e-6, err_msg=name)


# ------------------------------------------------------------------------------------
# Real encoded video: TAD finds every cut, uniform sampling misses most.
# ------------------------------------------------------------------------------------


def _recall(selected, cuts, tol=1):
  return np.mean([np.any(np.abs(np.asarray(selected) - c) <= tol) for c in cuts])


@pytest.mark.parametrize("seed", range(3))
def test_tad_finds_scene_cuts_in_h264_video(tmp_path, seed):
  num_frames, num_cuts = 150, 5
  cuts = testing.random_cuts(num_frames, num_cuts, min_gap=8, seed=seed)
  path = tmp_path / f"cuts{seed}.mp4"
  testing.write_cut_video(path, num_frames, cuts, size=(48, 64), fps=25, seed=seed)
  video = decode.decode_video(path)
  assert video.num_frames == num_frames
  feats_td = features.frame_features(video.frames)
  k = num_cuts + 3
  tad_idx, _ = tad.select_keyframes(feats_td, k)
  uni_idx, _ = tad.uniform_select(feats_td, k)
  assert _recall(tad_idx, cuts) == 1.0, (cuts, tad_idx)
  assert _recall(uni_idx, cuts) < 0.5, (cuts, uni_idx)
  # The cuts are exactly the inflections: nothing inside a scene is an apex.
  infl = np.flatnonzero(tad.analyze(feats_td).inflections)
  np.testing.assert_array_equal(infl, cuts)
