"""Attention implementations against a float64 NumPy transcription of softmax attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chronoforge_jax.models import layers


def _np_attention(q, k, v, mask):
  """softmax(q k^T / sqrt(d) + mask) v, head h reading kv head h // (H / G), in float64."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, nq, h, d = q.shape
  g = k.shape[2]
  out = np.zeros((b, nq, h, d))
  for i in range(b):
    for head in range(h):
      kv = head // (h // g)
      logits = q[i, :, head] @ k[i, :, kv].T / np.sqrt(d)
      logits = np.where(mask[i], logits, -1e30)
      w = np.exp(logits - logits.max(-1, keepdims=True))
      out[i, :, head] = (w / w.sum(-1, keepdims=True)) @ v[i, :, kv]
  return out


def _inputs(rng, b=2, nq=11, nk=11, h=6, g=2, d=8):
  q = rng.standard_normal((b, nq, h, d)).astype(np.float32)
  k = rng.standard_normal((b, nk, g, d)).astype(np.float32)
  v = rng.standard_normal((b, nk, g, d)).astype(np.float32)
  causal = np.tril(np.ones((nq, nk), bool))
  real = np.ones((b, nk), bool)
  real[-1, :3] = False  # The last row is left-padded: its first 3 queries see nothing.
  return q, k, v, causal[None] & real[:, None, :]


@pytest.mark.parametrize(
  "impl,chunk", [("xla", 512), ("chunked", 4), ("chunked", 11), ("chunked", 3)]
)
def test_attention_matches_numpy(impl, chunk):
  q, k, v, mask = _inputs(np.random.default_rng(0))
  got = jax.jit(lambda *a: layers.attention(*a, impl=impl, chunk_size=chunk))(q, k, v, mask)
  want = _np_attention(q, k, v, mask)
  real = mask.any(-1)  # Fully masked (padding) rows: any finite value is fine.
  np.testing.assert_allclose(np.asarray(got)[real], want[real], rtol=1e-5, atol=1e-5)
  assert np.isfinite(np.asarray(got)).all()


def test_chunked_gradients_equal_xla():
  q, k, v, mask = _inputs(np.random.default_rng(1), nq=13, nk=13)
  cot = np.random.default_rng(2).standard_normal(q.shape).astype(np.float32)

  def loss(impl):
    return jax.jit(
      jax.grad(
        lambda q, k, v: jnp.sum(layers.attention(q, k, v, mask, impl=impl, chunk_size=5) * cot),
        argnums=(0, 1, 2),
      )
    )

  for a, b in zip(loss("chunked")(q, k, v), loss("xla")(q, k, v)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_chunked_holds_one_block_of_logits():
  """XLA's memory analysis: chunked fwd+bwd temp memory falls with the block size."""
  q, k, v, mask = _inputs(np.random.default_rng(3), b=1, nq=512, nk=512, h=4, g=2, d=16)

  def temp_bytes(impl):
    fn = jax.jit(
      jax.grad(lambda q: jnp.sum(layers.attention(q, k, v, mask, impl=impl, chunk_size=64)))
    )
    return fn.lower(q).compile().memory_analysis().temp_size_in_bytes

  full, chunked = temp_bytes("xla"), temp_bytes("chunked")
  logits = 4 * 512 * 512 * 4  # One [H, Q, K] float32 tensor.
  assert full >= logits and chunked < full / 2, (full, chunked)


def test_unknown_and_unavailable_impls_say_what_to_use():
  q, k, v, mask = _inputs(np.random.default_rng(4))
  with pytest.raises(ValueError, match="choose one of"):
    layers.attention(q, k, v, mask, impl="flash")
  if jax.default_backend() != "gpu":
    with pytest.raises(ValueError, match="needs an NVIDIA GPU.*'chunked'"):
      layers.attention(q, k, v, mask, impl="cudnn")


def test_prefix_decode_attention_is_softmax_over_prompt_then_answer():
  """The log-sum-exp merge of the prompt part and the answer part equals one softmax over
  the concatenated keys (float64 NumPy), with prompt padding and masked answer slots."""
  rng = np.random.default_rng(5)
  b, n, s, t, h, g, d = 3, 4, 9, 5, 6, 2, 8
  r = b * n
  q = rng.standard_normal((r, 1, h, d)).astype(np.float32)
  pk, pv = (3 * rng.standard_normal((b, s, g, d)).astype(np.float32) for _ in range(2))
  sk, sv = (3 * rng.standard_normal((r, t, g, d)).astype(np.float32) for _ in range(2))
  pmask = np.ones((b, s), bool)
  pmask[1, :4] = False  # a left-padded prompt
  pmask[2, 6:] = False  # a right-padded one
  smask = rng.random((r, t)) < 0.6
  smask[:, 0] = True  # every row sees at least its newest token
  smask[5] = [True, False, False, False, False]
  got = jax.jit(layers.prefix_decode_attention)(q, pk, pv, pmask, sk, sv, smask)
  rows = np.arange(r) // n  # row r reads prompt r // n
  k = np.concatenate([pk[rows], sk], axis=1)
  v = np.concatenate([pv[rows], sv], axis=1)
  mask = np.concatenate([pmask[rows], smask], axis=1)[:, None, :]
  want = _np_attention(q, k, v, mask)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  # The same as the one-block attention over the concatenation.
  np.testing.assert_allclose(
    np.asarray(got), np.asarray(layers.attention(q, k, v, mask)), rtol=1e-5, atol=1e-6
  )


def test_merge_of_a_fully_masked_part_drops_it():
  rng = np.random.default_rng(6)
  q = rng.standard_normal((2, 1, 4, 8)).astype(np.float32)
  k, v = (rng.standard_normal((2, 5, 2, 8)).astype(np.float32) for _ in range(2))
  real = layers.softmax_part(q, k, v, np.ones((2, 1, 5), bool))
  masked = layers.softmax_part(q, 100 * k, 100 * v, np.zeros((2, 1, 5), bool))
  merged = layers.merge_softmax_parts([masked, real], jnp.float32)
  want = _np_attention(q, k, v, np.ones((2, 1, 5), bool))
  np.testing.assert_allclose(np.asarray(merged), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask_kind", ["causal_padded", "causal", "dense", "none"])
def test_cpu_query_blocks_equal_one_logits_tensor(monkeypatch, mask_kind):
  """ "xla" lowered for the CPU (query blocks, causal blocks skipping later keys, a
  flash-style backward) computes `_xla_attention`'s function, padding rows included."""
  monkeypatch.setattr(layers, "CPU_QUERY_BLOCK", 4)
  rng = np.random.default_rng(5)
  q, k, v, dense = _inputs(rng, nq=13, nk=13)
  valid = dense[:, -1, :]  # [B, K]: the last row's first 3 keys are padding.
  mask = {
    "causal_padded": layers.CausalMask(jnp.asarray(valid)),
    "causal": layers.CausalMask(None),
    "dense": dense & (rng.random(dense.shape) > 0.3),
    "none": None,
  }[mask_kind]
  plain = mask.dense(13) if isinstance(mask, layers.CausalMask) else mask
  cot = rng.standard_normal(q.shape).astype(np.float32)

  def value_and_grads(fn):
    return jax.jit(
      jax.value_and_grad(lambda q, k, v: jnp.sum(fn(q, k, v) * cot), argnums=(0, 1, 2))
    )(q, k, v)

  out = jax.jit(lambda q, k, v: layers.attention(q, k, v, mask))(q, k, v)
  ref = layers._xla_attention(q, k, v, plain)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
  got = value_and_grads(lambda q, k, v: layers.attention(q, k, v, mask))
  want = value_and_grads(lambda q, k, v: layers._xla_attention(q, k, v, plain))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_cpu_query_blocks_keep_no_logits_for_the_backward(monkeypatch):
  """On the CPU, "xla" under a layer scan saves no [H, Q, K] tensor per layer for the
  backward pass (the dense path stacks one per layer)."""
  q, k, v, _ = _inputs(np.random.default_rng(6), b=1, nq=512, nk=512, h=4, g=2, d=16)
  mask = layers.CausalMask(None)
  n_layers = 4

  def loss(q):
    def layer(x, _):
      return layers.attention(x, k, v, mask), None

    return jnp.sum(jax.lax.scan(layer, q, None, length=n_layers)[0])

  def temp_bytes():
    return jax.jit(jax.grad(loss)).lower(q).compile().memory_analysis().temp_size_in_bytes

  blocked = temp_bytes()
  monkeypatch.setattr(layers, "CPU_BLOCKED", False)
  full = temp_bytes()
  logits = 4 * 512 * 512 * 4  # One [H, Q, K] float32 tensor.
  assert full >= n_layers * logits and blocked < 2 * logits, (full, blocked)
