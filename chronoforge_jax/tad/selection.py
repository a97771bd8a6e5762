"""TAD, Temporal Apex Distillation: choose K of T frames where the video changes most.

Three pure, batched stages on frame features [B, T, D] with a validity mask [B, T]
(videos differ in length; padding never gets selected):

  1. `variation_scores`: v_t = d(f_t, f_{t-1}), cosine or L2 distance of L2-normalised
     features; v_0 = 0; optional triangular smoothing.
  2. `inflection_points`: local maxima of v (first frame of a plateau) whose prominence
     beats a threshold relative to the video's own score range.
  3. `select_keyframes`: priority = v + boost * 1[inflection], top-K in chronological
     order, ties to the earlier frame.

`soft_select` adds a differentiable relaxation (entropic-OT or Gumbel soft top-K) whose
hard forward is exactly the one-hot of `select_keyframes` (straight-through). Every
function also accepts unbatched [T, D] input, so `jax.vmap` over videos works; none has a
Python loop over frames, and all run under jit, vmap, pmap and shard_map.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from chronoforge_jax import settings as settings_lib
from chronoforge_jax.registry import Registry

_TINY = 1e-12
DISTANCES = ("cosine", "l2")
BOOST_MODES = ("add", "mul")
SOFT_METHODS = ("sinkhorn", "gumbel", "perturbed")


class TADOutput(NamedTuple):
  """Per-frame TAD diagnostics, each [B, T] (or [T] for unbatched input)."""

  scores: jax.Array  # f32 variation v_t.
  inflections: jax.Array  # bool: t is a prominent local maximum of v.
  priority: jax.Array  # f32 ranking key; -inf on padding.


def _batched(x: jax.Array, mask: jax.Array | None, event_dims: int, name: str):
  """Adds a batch axis to unbatched input; builds an all-true mask when none is given."""
  x = jnp.asarray(x)
  if x.ndim == event_dims:
    x = x[None]
    mask = None if mask is None else jnp.asarray(mask)[None]
    squeeze = True
  elif x.ndim == event_dims + 1:
    squeeze = False
  else:
    raise ValueError(
      f"{name} must have shape {'[B, T, D]' if event_dims == 2 else '[B, T]'}"
      f" (or unbatched), got {x.shape}"
    )
  b, t = x.shape[:2]
  if mask is None:
    mask = jnp.ones((b, t), bool)
  mask = jnp.asarray(mask)
  if mask.shape != (b, t):
    raise ValueError(
      f"mask shape {mask.shape} does not match {name} shape {x.shape}: "
      "expected one entry per frame, [B, T]"
    )
  return x, mask.astype(bool), squeeze


def _unbatch(squeeze: bool, *xs):
  out = tuple(x[0] if squeeze else x for x in xs)
  return out[0] if len(out) == 1 else out


def _shift_right(x_bt: jax.Array, fill) -> jax.Array:
  """x[:, t-1] at position t; `fill` at t = 0."""
  return jnp.concatenate([jnp.full_like(x_bt[:, :1], fill), x_bt[:, :-1]], axis=1)


def variation_scores(
  features_btd: jax.Array,
  mask_bt: jax.Array | None = None,
  *,
  distance: Literal["cosine", "l2"] = "cosine",
  smooth: int = 0,
) -> jax.Array:
  """Change of each frame from the previous one.

  Args:
    features_btd: frame features [B, T, D] (or [T, D]).
    mask_bt: True on real frames, False on padding; default all real.
    distance: "cosine" (1 - cos, in [0, 2]) or "l2" (Euclidean distance of the
      L2-normalised features, in [0, 2]). A zero feature vector is at distance 0 from
      another zero vector and at the maximal unit-vector distance from anything else.
    smooth: half-width w of a triangular smoothing window (weights w+1-|i|), renormalised
      over real frames; 0 turns smoothing off.

  Returns:
    f32 [B, T] scores; 0 on the first frame, on padding, and on a frame that follows
    padding.
  """
  if distance not in DISTANCES:
    raise ValueError(f"distance={distance!r}: choose one of {DISTANCES}")
  if smooth < 0:
    raise ValueError(f"smooth={smooth!r}: expected a non-negative window half-width")
  x_btd, mask_bt, squeeze = _batched(features_btd, mask_bt, 2, "features")
  x_btd = x_btd.astype(jnp.float32)
  sq_bt = jnp.sum(jnp.square(x_btd), axis=-1)
  zero_bt = sq_bt <= _TINY**2
  # Double-where keeps gradients finite at zero vectors and identical frames (sqrt'(0)).
  inv_bt = jnp.where(zero_bt, 0.0, 1.0 / jnp.sqrt(jnp.where(zero_bt, 1.0, sq_bt)))
  # Frame t against t-1 via roll (t = 0 wraps around and is zeroed below): XLA:CPU
  # reduces a rolled operand ~2x faster than a sliced one.
  prev_btd, prev_inv_bt = jnp.roll(x_btd, 1, axis=1), jnp.roll(inv_bt, 1, axis=1)
  if distance == "cosine":
    v_bt = 1.0 - jnp.sum(x_btd * prev_btd, axis=-1) * inv_bt * prev_inv_bt
  else:
    d2_bt = jnp.sum(
      jnp.square(x_btd * inv_bt[..., None] - prev_btd * prev_inv_bt[..., None]), axis=-1
    )
    v_bt = jnp.where(d2_bt > _TINY, jnp.sqrt(jnp.where(d2_bt > _TINY, d2_bt, 1.0)), 0.0)
  both_zero_bt = zero_bt & _shift_right(zero_bt, True)
  pair_bt = mask_bt & _shift_right(mask_bt, False)
  v_bt = jnp.where(pair_bt & ~both_zero_bt, jnp.maximum(v_bt, 0.0), 0.0)
  if smooth:
    v_bt = _triangular_smooth(v_bt, mask_bt, smooth)
  return _unbatch(squeeze, v_bt)


def _triangular_smooth(v_bt: jax.Array, mask_bt: jax.Array, w: int) -> jax.Array:
  """Weighted mean over real frames within +-w, weights w+1-|offset| (peaks stay put)."""
  m_bt = mask_bt.astype(v_bt.dtype)
  pad = ((0, 0), (w, w))
  vm_bt, m_pad_bt = jnp.pad(v_bt * m_bt, pad), jnp.pad(m_bt, pad)
  kernel = jnp.asarray([w + 1 - abs(i) for i in range(-w, w + 1)], v_bt.dtype)
  conv = jax.vmap(lambda row: jnp.convolve(row, kernel, mode="valid"))
  num_bt, den_bt = conv(vm_bt), conv(m_pad_bt)
  return jnp.where(mask_bt, num_bt / jnp.maximum(den_bt, _TINY), 0.0)


def _score_range(scores_bt: jax.Array, mask_bt: jax.Array) -> jax.Array:
  """max - min of the real frames' scores, [B, 1]; 0 for a video with no real frames."""
  hi = jnp.max(jnp.where(mask_bt, scores_bt, -jnp.inf), axis=1, keepdims=True)
  lo = jnp.min(jnp.where(mask_bt, scores_bt, jnp.inf), axis=1, keepdims=True)
  return jnp.where(jnp.isfinite(hi - lo), hi - lo, 0.0)


def _side_base(v_bt, mask_bt, window: int, direction: int) -> jax.Array:
  """Lowest score reached walking from each frame (up to `window` frames) before the
  walk meets a higher score or padding: scipy's prominence base, windowed."""
  t = v_bt.shape[1]
  pad_v = jnp.pad(v_bt, ((0, 0), (window, window)), constant_values=jnp.inf)
  pad_m = jnp.pad(mask_bt, ((0, 0), (window, window)), constant_values=False)

  def body(offset, carry):
    alive_bt, base_bt = carry
    start = window + direction * offset
    x_bt = jax.lax.dynamic_slice_in_dim(pad_v, start, t, axis=1)
    ok_bt = jax.lax.dynamic_slice_in_dim(pad_m, start, t, axis=1)
    alive_bt = alive_bt & ok_bt & (x_bt <= v_bt)
    return alive_bt, jnp.where(alive_bt, jnp.minimum(base_bt, x_bt), base_bt)

  # Carries built from the inputs (not fresh constants) keep shard_map's
  # varying-axis types equal between loop input and output.
  init = (jnp.ones_like(mask_bt), v_bt)
  return jax.lax.fori_loop(1, window + 1, body, init)[1]


def inflection_points(
  scores_bt: jax.Array,
  mask_bt: jax.Array | None = None,
  *,
  prominence: float = 0.1,
  min_prominence: float = 1e-6,
  window: int = 16,
) -> jax.Array:
  """Frames where the variation curve peaks: prominent local maxima.

  A frame t is an inflection when (i) the curve rises into it (v_t > v_{t-1}) and the
  next different score after t is lower (a plateau counts once, at its first frame);
  (ii) its prominence -- v_t minus the higher of the lowest scores reached on each side
  within `window` frames before meeting a higher score -- is at least
  max(prominence * (score range of the video), min_prominence). The first and last real
  frames are never inflections (a peak needs a neighbour on each side).

  Args:
    scores_bt: f32 [B, T] (or [T]) variation scores.
    mask_bt: True on real frames.
    prominence: threshold relative to the video's own max - min score, so noise in a
      static video does not count as an apex while real cuts do.
    min_prominence: absolute floor, so float noise on a flat curve is never a peak.
    window: how far (frames) each side the prominence base is searched.

  Returns:
    bool [B, T].
  """
  if window < 1:
    raise ValueError(f"window={window!r}: expected at least 1 frame")
  v_bt, mask_bt, squeeze = _batched(scores_bt, mask_bt, 1, "scores")
  v_bt = v_bt.astype(jnp.float32)
  b, t = v_bt.shape
  pair_bt = mask_bt & _shift_right(mask_bt, False)
  d_bt = v_bt - _shift_right(v_bt, 0.0)
  # A frame whose pair with the previous one is broken (padding) ends any plateau walk.
  change_bt = (d_bt != 0) | ~pair_bt
  idx = jnp.arange(t)
  next_bt = jax.lax.cummin(jnp.where(change_bt, idx, t), axis=1, reverse=True)
  next_bt = jnp.concatenate([next_bt[:, 1:], jnp.full((b, 1), t)], axis=1)
  has_next_bt = next_bt < t
  nxt = jnp.minimum(next_bt, t - 1)
  falls_bt = (
    has_next_bt
    & jnp.take_along_axis(pair_bt, nxt, axis=1)
    & (jnp.take_along_axis(d_bt, nxt, axis=1) < 0)
  )
  peak_bt = pair_bt & (d_bt > 0) & falls_bt
  base_bt = jnp.maximum(
    _side_base(v_bt, mask_bt, window, -1), _side_base(v_bt, mask_bt, window, +1)
  )
  threshold_b1 = jnp.maximum(prominence * _score_range(v_bt, mask_bt), min_prominence)
  return _unbatch(squeeze, peak_bt & (v_bt - base_bt >= threshold_b1))


def analyze(
  features_btd: jax.Array,
  mask_bt: jax.Array | None = None,
  *,
  distance: Literal["cosine", "l2"] = "cosine",
  smooth: int = 0,
  prominence: float = 0.1,
  min_prominence: float = 1e-6,
  window: int = 16,
  boost: float = 1.0,
  boost_mode: Literal["add", "mul"] = "add",
) -> TADOutput:
  """Runs TAD's scoring stages and returns scores, inflections and priorities.

  Args:
    features_btd: frame features [B, T, D] (or [T, D]).
    mask_bt: True on real frames.
    distance, smooth: see `variation_scores`.
    prominence, min_prominence, window: see `inflection_points`.
    boost: inflection bonus. "add": priority = v + boost * (score range) on inflections,
      so boost >= 1 ranks every inflection above every non-inflection (the range makes
      it independent of the feature scale). "mul": priority = v * (1 + boost).
    boost_mode: "add" or "mul".

  Returns:
    TADOutput(scores, inflections, priority), each [B, T]; priority is -inf on padding.
  """
  if boost_mode not in BOOST_MODES:
    raise ValueError(f"boost_mode={boost_mode!r}: choose one of {BOOST_MODES}")
  if isinstance(boost, (int, float)) and boost < 0:  # Traced values pass unchecked.
    raise ValueError(f"boost={boost!r}: expected a non-negative bonus")
  x_btd, mask_bt, squeeze = _batched(features_btd, mask_bt, 2, "features")
  v_bt = variation_scores(x_btd, mask_bt, distance=distance, smooth=smooth)
  infl_bt = inflection_points(
    v_bt, mask_bt, prominence=prominence, min_prominence=min_prominence, window=window
  )
  if boost_mode == "add":
    # The range only sets the bonus' units; gradients should flow through v_t alone.
    bonus_bt = boost * jax.lax.stop_gradient(_score_range(v_bt, mask_bt))
    p_bt = v_bt + jnp.where(infl_bt, bonus_bt, 0.0)
  else:
    p_bt = jnp.where(infl_bt, v_bt * (1.0 + boost), v_bt)
  p_bt = jnp.where(mask_bt, p_bt, -jnp.inf)
  return TADOutput(*_unbatch(squeeze, v_bt, infl_bt, p_bt))


def top_k_chronological(
  priority_bt: jax.Array, k: int, mask_bt: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
  """The k highest-priority real frames in time order (ties: earlier frame wins).

  Args:
    priority_bt: f32 [B, T] (or [T]) ranking key.
    k: number of slots (static).
    mask_bt: True on real frames; padding is never chosen.

  Returns:
    (indices int32 [B, k], valid bool [B, k]). Slots past the number of real frames are
    invalid and repeat the last chosen frame (frame 0 if the video has none).
  """
  if int(k) != k or k < 1:
    raise ValueError(f"k={k!r}: expected a positive integer number of keyframes")
  p_bt, mask_bt, squeeze = _batched(priority_bt, mask_bt, 1, "priority")
  b, t = p_bt.shape
  p_bt = jnp.where(mask_bt, p_bt.astype(jnp.float32), -jnp.inf)
  if k > t:  # top_k needs k <= T; the extra slots come out invalid below.
    p_bt = jnp.pad(p_bt, ((0, 0), (0, k - t)), constant_values=-jnp.inf)
  _, top_bk = jax.lax.top_k(p_bt, k)  # Equal values: lower index first.
  n_b1 = jnp.minimum(jnp.sum(mask_bt, axis=1, keepdims=True), k)
  valid_bk = jnp.arange(k)[None, :] < n_b1
  # Invalid slots sort after every real frame, then take the last real one's index.
  order_bk = jnp.sort(jnp.where(valid_bk, top_bk, t + k), axis=1)
  last_b1 = jnp.take_along_axis(order_bk, jnp.maximum(n_b1 - 1, 0), axis=1)
  last_b1 = jnp.where(n_b1 > 0, last_b1, 0)
  idx_bk = jnp.where(valid_bk, order_bk, last_b1).astype(jnp.int32)
  return _unbatch(squeeze, idx_bk, valid_bk)


SELECTORS: Registry = Registry("keyframe selector")


def analyze_defaults() -> dict[str, object]:
  """`analyze`'s settings and their defaults (what `select_keyframes(**kwargs)` takes)."""
  return {
    name: p.default
    for name, p in inspect.signature(analyze).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
  }


@SELECTORS.register("tad")
def select_keyframes(
  features_btd: jax.Array, k: int, mask_bt: jax.Array | None = None, **tad_kwargs
) -> tuple[jax.Array, jax.Array]:
  """TAD keyframes: top-k of variation + inflection boost, in chronological order.

  Args:
    features_btd: frame features [B, T, D] (or [T, D]).
    k: number of keyframes (static under jit).
    mask_bt: True on real frames; padding is never selected.
    **tad_kwargs: settings of `analyze` (distance, smooth, prominence, min_prominence,
      window, boost, boost_mode).

  Returns:
    (indices int32 [B, k] sorted ascending, valid bool [B, k]); when a video has fewer
    than k real frames the extra slots are invalid and repeat its last selected frame.
  """
  x_btd, mask_bt, squeeze = _batched(features_btd, mask_bt, 2, "features")
  out = analyze(x_btd, mask_bt, **tad_kwargs)
  return _unbatch(squeeze, *top_k_chronological(out.priority, k, mask_bt))


@SELECTORS.register("uniform")
def uniform_select(
  features_btd: jax.Array, k: int, mask_bt: jax.Array | None = None, **ignored
) -> tuple[jax.Array, jax.Array]:
  """Evenly spaced frames: slot j takes real frame floor((2j + 1) n / 2k) of n.

  Same interface as `select_keyframes` (features are used only for their shape;
  TAD settings are ignored), so configs can switch selectors by name.

  Returns:
    (indices int32 [B, k] ascending, valid bool [B, k]).
  """
  del ignored
  x_btd, mask_bt, squeeze = _batched(features_btd, mask_bt, 2, "features")
  t = x_btd.shape[1]
  n_b1 = jnp.sum(mask_bt, axis=1, keepdims=True).astype(jnp.int32)
  j_1k = jnp.arange(k, dtype=jnp.int32)[None, :]
  valid_bk = j_1k < jnp.minimum(n_b1, k)
  # With k > n, the n real frames fill the first n slots, one each.
  rank_bk = jnp.where(
    k <= n_b1, ((2 * j_1k + 1) * n_b1) // (2 * k), jnp.minimum(j_1k, jnp.maximum(n_b1 - 1, 0))
  )
  # Positions of the real frames, in time order, first (works for any mask, not just
  # a valid prefix).
  real_bt = jnp.argsort(jnp.where(mask_bt, 0, 1), axis=1, stable=True)
  idx_bk = jnp.take_along_axis(real_bt, jnp.minimum(rank_bk, t - 1), axis=1)
  return _unbatch(squeeze, idx_bk.astype(jnp.int32), valid_bk)


def select(
  name: str, features_btd: jax.Array, k: int, mask_bt: jax.Array | None = None, **kwargs
) -> tuple[jax.Array, jax.Array]:
  """Runs the selector registered as `name` ("tad" or "uniform"); see SELECTORS."""
  return SELECTORS.get(name)(features_btd, k, mask_bt, **kwargs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TADSettings:
  """Which selector picks the K keyframes, and TAD's settings: the `tad` config section.

  The one place that knows TAD's settings: the pipeline, launch/select_keyframes.py and
  configs/tad.py read them from here. Defaults are `analyze`'s.

  Attributes:
    selector: a name registered in SELECTORS ("tad", "uniform").
    k: keyframes per video (>= 1; the pipeline also needs K even when pairing).
    distance: variation distance, one of DISTANCES ("cosine", "l2").
    smooth: half-width of the triangular smoothing of the variation curve (0: off).
    prominence: inflection prominence, relative to the video's score range (>= 0).
    min_prominence: absolute prominence floor (>= 0; flat curves have no apex).
    window: frames searched each side for a peak's prominence base (>= 1).
    boost: inflection bonus (>= 0); >= 1 with "add" keeps every inflection first.
    boost_mode: one of BOOST_MODES: "add" (in units of the score range) or "mul".
  """

  selector: str = "tad"
  k: int = 16
  distance: str = "cosine"
  smooth: int = 0
  prominence: float = 0.1
  min_prominence: float = 1e-6
  window: int = 16
  boost: float = 1.0
  boost_mode: str = "add"

  def __post_init__(self):
    req, is_int, is_num = settings_lib.require, settings_lib.is_int, settings_lib.is_number
    settings_lib.choice(self, "selector", self.selector, SELECTORS)
    req(is_int(self.k, 1), self, "k", self.k, "need a positive number of keyframes")
    settings_lib.choice(self, "distance", self.distance, DISTANCES)
    req(
      is_int(self.smooth, 0),
      self,
      "smooth",
      self.smooth,
      "need a non-negative window half-width (0 = off)",
    )
    req(
      is_num(self.prominence, 0),
      self,
      "prominence",
      self.prominence,
      "need a number >= 0 (a fraction of the score range)",
    )
    req(is_num(self.min_prominence, 0), self, "min_prominence", self.min_prominence, "need >= 0")
    req(is_int(self.window, 1), self, "window", self.window, "need at least 1 frame")
    req(is_num(self.boost, 0), self, "boost", self.boost, "need a non-negative bonus")
    settings_lib.choice(self, "boost_mode", self.boost_mode, BOOST_MODES)

  @classmethod
  def from_config(cls, section: Any) -> TADSettings:
    """From a `tad` config section; a bad field is reported as `config.tad.<field>`."""
    return settings_lib.from_section(cls, section, "tad")

  def select_kwargs(self) -> dict[str, Any]:
    """`analyze`'s keyword arguments (what `select(self.selector, ...)` takes)."""
    return {name: getattr(self, name) for name in analyze_defaults()}


# ----------------------------------------------------------------------------------
# Differentiable selection.
# ----------------------------------------------------------------------------------


def _sinkhorn_membership(z_bt, mask_bt, k, temperature, n_iters):
  """Entropic-OT soft top-k (Xie et al. 2020): mass of each frame sent to the 'top' bin.

  Frames (uniform mass over real frames) are transported to two anchors, 0 and 1, with
  capacities (n - k)/n and k/n and cost (z_t - anchor)^2; z is the priority scaled to
  [0, 1]. Log-domain Sinkhorn, fixed iteration count so it differentiates as a scan.
  """
  n_b1 = jnp.sum(mask_bt, axis=1, keepdims=True).astype(jnp.float32)
  k_b1 = jnp.minimum(float(k), n_b1)
  log_mu_bt = jnp.where(mask_bt, -jnp.log(jnp.maximum(n_b1, 1.0)), -1e30)
  nu_b2 = jnp.concatenate([(n_b1 - k_b1), k_b1], axis=1) / jnp.maximum(n_b1, 1.0)
  log_nu_b2 = jnp.log(jnp.maximum(nu_b2, _TINY))
  anchors = jnp.asarray([0.0, 1.0])
  cost_bt2 = jnp.square(z_bt[..., None] - anchors)
  eps = temperature

  def body(_, fg):
    f_bt, g_b2 = fg
    f_bt = eps * log_mu_bt - eps * jax.nn.logsumexp((g_b2[:, None, :] - cost_bt2) / eps, axis=2)
    g_b2 = eps * log_nu_b2 - eps * jax.nn.logsumexp((f_bt[..., None] - cost_bt2) / eps, axis=1)
    return f_bt, g_b2

  f_bt, g_b2 = jax.lax.fori_loop(
    0, n_iters, body, (jnp.zeros_like(z_bt), jnp.zeros_like(z_bt[:, :1]) + anchors)
  )
  plan_bt = jnp.exp((f_bt + g_b2[:, None, 1] - cost_bt2[..., 1]) / eps)
  return jnp.where(mask_bt, plan_bt * n_b1, 0.0)


def _gumbel_membership(z_bt, mask_bt, k, temperature, rng):
  """Relaxed subset sampling (Xie & Ermon 2019): k successive softmaxes, each damping the
  frames already taken; Gumbel noise from `rng` makes it a sample, None makes it a
  deterministic soft top-k."""
  logits_bt = z_bt / temperature
  if rng is not None:
    logits_bt = logits_bt + jax.random.gumbel(rng, z_bt.shape)
  logits_bt = jnp.where(mask_bt, logits_bt, -1e30)

  def body(_, carry):
    logits_bt, total_bt = carry
    a_bt = jax.nn.softmax(logits_bt, axis=1)
    total_bt = total_bt + a_bt
    logits_bt = logits_bt + jnp.log(jnp.maximum(1.0 - a_bt, _TINY))
    return logits_bt, total_bt

  n_b1 = jnp.sum(mask_bt, axis=1, keepdims=True)
  _, total_bt = jax.lax.fori_loop(0, k, body, (logits_bt, jnp.zeros_like(z_bt)))
  # Steps past the number of real frames would re-take frames; cap each frame at 1.
  total_bt = jnp.minimum(total_bt, 1.0)
  return jnp.where(mask_bt & (n_b1 > 0), total_bt, 0.0)


def _perturbed_membership(z_bt, mask_bt, k, sigma, rng, num_samples):
  """Perturbed top-k (Berthet et al. 2020): E[top-k indicator of z + sigma * N(0, 1)].

  Monte Carlo over `num_samples` Gaussian draws (from `rng`; a fixed key when None, so
  the relaxation is deterministic). The gradient is the perturbation estimator
  d E[y] / dz = E[y(z + sigma Z) Z^T] / sigma, a custom VJP over the same draws: no
  gradient flows through the (piecewise constant) hard top-k itself.
  """
  key = rng if rng is not None else jax.random.key(0)
  noise_sbt = jax.random.normal(key, (num_samples,) + z_bt.shape, jnp.float32)
  return _perturbed_topk(k, z_bt, noise_sbt, jnp.asarray(sigma, jnp.float32), mask_bt)


def _topk_indicators(k, y_sbt, mask_bt):
  """[S, B, T] 0/1 membership of the top min(k, #real) real frames of each draw."""
  kk = min(k, y_sbt.shape[-1])
  _, idx_sbk = jax.lax.top_k(jnp.where(mask_bt, y_sbt, -jnp.inf), kk)
  real_bk = jnp.arange(kk) < jnp.minimum(jnp.sum(mask_bt, axis=1), k)[:, None]
  return jnp.sum(jax.nn.one_hot(idx_sbk, y_sbt.shape[-1]) * real_bk[None, :, :, None], axis=2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _perturbed_topk(k, z_bt, noise_sbt, sigma, mask_bt):
  return jnp.mean(_topk_indicators(k, z_bt + sigma * noise_sbt, mask_bt), axis=0)


def _perturbed_topk_fwd(k, z_bt, noise_sbt, sigma, mask_bt):
  y_sbt = _topk_indicators(k, z_bt + sigma * noise_sbt, mask_bt)
  return jnp.mean(y_sbt, axis=0), (y_sbt, noise_sbt, sigma, mask_bt)


def _perturbed_topk_bwd(k, res, g_bt):
  del k
  y_sbt, noise_sbt, sigma, mask_bt = res
  gy_sb = jnp.sum(g_bt[None] * y_sbt, axis=2)  # E[(g . y) Z] / sigma
  grad_bt = jnp.where(mask_bt, jnp.mean(gy_sb[..., None] * noise_sbt, axis=0) / sigma, 0.0)
  return grad_bt, jnp.zeros_like(noise_sbt), jnp.zeros_like(sigma), None


_perturbed_topk.defvjp(_perturbed_topk_fwd, _perturbed_topk_bwd)


def soft_select(
  features_btd: jax.Array,
  k: int,
  mask_bt: jax.Array | None = None,
  *,
  temperature: float = 0.05,
  method: Literal["sinkhorn", "gumbel", "perturbed"] = "sinkhorn",
  rng: jax.Array | None = None,
  n_iters: int = 50,
  num_samples: int = 256,
  **tad_kwargs,
) -> jax.Array:
  """Differentiable TAD selection matrix with a hard straight-through forward.

  The forward value is exactly one_hot(select_keyframes(...).indices) [B, k, T]. The
  backward pass uses a relaxed top-k membership s_t of the priorities (scaled to [0, 1]
  by the video's priority range), assigned to chronological slots through its running
  sum c_t: slot j gets s_t * max(0, 1 - |c_t - (j + 1)|), which for hard s is exactly
  the j-th selected frame.

  Args:
    features_btd: frame features [B, T, D] (or [T, D]).
    k: number of keyframes.
    mask_bt: True on real frames.
    temperature: relaxation strength (Sinkhorn entropy, softmax temperature, or the
      perturbation's standard deviation, in units of the scaled priority); smaller is
      closer to hard.
    method: "sinkhorn" (entropic optimal transport), "gumbel" (relaxed subset
      sampling; random when `rng` is given) or "perturbed" (expected top-k under
      Gaussian perturbations, Monte Carlo with the perturbation gradient estimator).
    rng: PRNG key for "gumbel" / "perturbed" noise; None for a deterministic
      relaxation (no noise for "gumbel", a fixed key for "perturbed").
    n_iters: Sinkhorn iterations.
    num_samples: Monte Carlo draws for "perturbed".
    **tad_kwargs: settings of `analyze`.

  Returns:
    f32 [B, k, T] selection matrix (rows: chronological keyframe slots).
  """
  if method not in SOFT_METHODS:
    raise ValueError(f"method={method!r}: choose one of {SOFT_METHODS}")
  if isinstance(temperature, (int, float)) and not temperature > 0:
    raise ValueError(f"temperature={temperature!r}: expected a positive value")
  x_btd, mask_bt, squeeze = _batched(features_btd, mask_bt, 2, "features")
  out = analyze(x_btd, mask_bt, **tad_kwargs)
  idx_bk, _ = top_k_chronological(out.priority, k, mask_bt)
  t = x_btd.shape[1]
  hard_bkt = jax.nn.one_hot(idx_bk, t, dtype=jnp.float32)

  p_bt = jnp.where(mask_bt, out.priority, 0.0)
  lo_b1 = jnp.min(jnp.where(mask_bt, p_bt, jnp.inf), axis=1, keepdims=True)
  span_b1 = jax.lax.stop_gradient(_score_range(p_bt, mask_bt))
  lo_b1 = jax.lax.stop_gradient(jnp.where(jnp.isfinite(lo_b1), lo_b1, 0.0))
  z_bt = jnp.where(mask_bt, (p_bt - lo_b1) / jnp.maximum(span_b1, _TINY), 0.0)
  if method == "sinkhorn":
    s_bt = _sinkhorn_membership(z_bt, mask_bt, k, temperature, n_iters)
  elif method == "gumbel":
    s_bt = _gumbel_membership(z_bt, mask_bt, k, temperature, rng)
  else:
    s_bt = _perturbed_membership(z_bt, mask_bt, k, temperature, rng, num_samples)
  c_bt = jnp.cumsum(s_bt, axis=1)
  slots_k1 = jnp.arange(1, k + 1, dtype=jnp.float32)[:, None]
  soft_bkt = s_bt[:, None, :] * jax.nn.relu(1.0 - jnp.abs(c_bt[:, None, :] - slots_k1))
  sel_bkt = hard_bkt + (soft_bkt - jax.lax.stop_gradient(soft_bkt))
  return _unbatch(squeeze, sel_bkt)
