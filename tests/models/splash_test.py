"""Splash attention (Pallas interpret mode on CPU) against the "xla" attention path.

The reference is `layers.attention(..., impl="xla")` with the dense causal & padding mask
(itself checked against a float64 NumPy transcription in layers_test.py). Tolerance: float32
inputs, rtol = atol = 2e-5 for outputs and gradients; splash's online softmax sums tiles in
a different order than one full softmax, nothing more. Padding query rows are compared
only through the gradients (their cotangents are zero): splash lets them attend to
padding keys, "xla" to nothing (see models/splash.py).
"""

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chronoforge_jax import sharding
from chronoforge_jax.models import layers, splash, text
from chronoforge_jax.models.config import PRESETS
from configs import common
from configs import model as model_section

TOL = dict(rtol=2e-5, atol=2e-5)


def _inputs(seed, b=2, s=37, h=6, g=2, d=8, pad="left"):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((b, s, h, d)).astype(np.float32)
  k = rng.standard_normal((b, s, g, d)).astype(np.float32)
  v = rng.standard_normal((b, s, g, d)).astype(np.float32)
  valid = np.ones((b, s), bool)
  if pad in ("left", "both"):
    valid[-1, :5] = False
  if pad in ("right", "both"):
    valid[0, -7:] = False
  return q, k, v, (None if pad == "none" else valid)


def _both(q, k, v, valid, impl="splash_interpret"):
  mask = layers.CausalMask(None if valid is None else jnp.asarray(valid))
  fn = jax.jit(lambda q, k, v, m: layers.attention(q, k, v, m, impl=impl))
  return np.asarray(fn(q, k, v, mask)), np.asarray(fn(q, k, v, mask.dense(q.shape[1])))


@pytest.mark.parametrize("pad", ["both", "none"])
def test_forward_matches_xla(pad):
  """GQA (6 query heads on 2 K/V heads), 37 tokens (one 128-token tile); row 0 is
  right-padded and row 1 left-padded, or no padding (no segment ids)."""
  q, k, v, valid = _inputs(0, pad=pad)
  got = _both(q, k, v, valid)[0]
  want = _both(q, k, v, valid, impl="xla")[0]
  real = np.ones(q.shape[:2], bool) if valid is None else valid
  np.testing.assert_allclose(got[real], want[real], **TOL)
  assert np.isfinite(got).all()


def test_gradients_match_xla_over_several_tiles(monkeypatch):
  """dq, dk, dv with 128-token tiles over 300 tokens (3 x 3 tiles, causal tiles skipped)."""
  monkeypatch.setattr(splash, "MAX_BLOCK", 128)
  assert splash.block_size(300) == 128
  q, k, v, valid = _inputs(1, b=1, s=300, h=2, g=1, d=8, pad="left")
  valid[0, :9] = False  # left padding
  valid[0, 150:160] = False  # and a hole in the middle
  cot = np.random.default_rng(2).standard_normal(q.shape).astype(np.float32)
  cot[~valid] = 0.0  # padding rows are garbage in both paths and masked in every loss
  mask = layers.CausalMask(jnp.asarray(valid))

  def grads(impl):
    loss = lambda q, k, v: jnp.sum(layers.attention(q, k, v, mask, impl=impl) * cot)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)

  (got_loss, got), (want_loss, want) = grads("splash_interpret"), grads("xla")
  np.testing.assert_allclose(got_loss, want_loss, rtol=2e-5)
  for name, a, b in zip("qkv", got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL, err_msg=f"d{name}")


def test_block_size_pads_to_a_multiple_of_128_and_caps_at_512():
  assert [splash.block_size(s) for s in (1, 128, 129, 500, 513, 8192)] == [
    128,
    128,
    256,
    512,
    512,
    512,
  ]


def test_dense_masks_fall_back_to_xla_and_splash_needs_a_tpu():
  q, k, v, valid = _inputs(3, s=11)
  dense = layers.CausalMask(jnp.asarray(valid)).dense(11)
  # A dense mask (the KV-cache decode's, the vision tower's) takes the "xla" path as is.
  np.testing.assert_array_equal(
    np.asarray(layers.attention(q, k, v, dense, impl="splash")),
    np.asarray(layers.attention(q, k, v, dense, impl="xla")),
  )
  if jax.default_backend() != "tpu":
    with pytest.raises(ValueError, match="Pallas TPU kernel.*'splash_interpret'"):
      layers.attention(q, k, v, layers.CausalMask(jnp.asarray(valid)), impl="splash")


def test_sharded_over_batch_and_heads_matches_xla():
  """shard_map over data x fsdp x tensor = 2 x 2 x 2; one K/V head, so K/V are repeated."""
  q, k, v, valid = _inputs(4, b=4, s=20, h=4, g=1, pad="right")
  want = _both(q, k, v, valid, impl="xla")[0]
  mesh = sharding.make_mesh((2, 2, 2))
  with jax.set_mesh(mesh):
    got = _both(q, k, v, valid)[0]
  np.testing.assert_allclose(got[valid], want[valid], **TOL)


def test_text_decoder_forward_matches_xla():
  """The tiny decoder cut to 2 layers (3 query heads on 1 K/V head), left padding."""
  cfg = dataclasses.replace(PRESETS["tiny"]().text, num_hidden_layers=2)

  def build(impl):
    return text.TextDecoder(cfg, rngs=nnx.Rngs(0), attention_impl=impl)

  b, s = 2, 13
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((b, s, cfg.hidden_size)), jnp.float32)
  mask = np.ones((b, s), np.int32)
  mask[1, :4] = 0
  pos = np.broadcast_to(np.maximum(np.cumsum(mask, 1) - 1, 0), (3, b, s))
  run = nnx.jit(lambda m, x, p, mk: m.hidden(x, p, mk))
  got = np.asarray(run(build("splash_interpret"), x, jnp.asarray(pos), jnp.asarray(mask)))
  want = np.asarray(run(build("xla"), x, jnp.asarray(pos), jnp.asarray(mask)))
  real = mask.astype(bool)
  np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-4)


def test_config_section_accepts_the_library_impls():
  for impl in layers.ATTENTION_IMPLS:
    section = model_section.get_config("smoke")
    section.attention_impl = impl
    model_section.validate(section)
  section.attention_impl = "splash_tpu"
  with pytest.raises(common.ConfigError, match="model.attention_impl"):
    model_section.validate(section)
