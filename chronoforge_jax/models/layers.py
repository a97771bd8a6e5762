"""Building blocks shared by the vision tower and the decoder.

  Dense          y = x @ kernel (+ bias); kernel stored [in, out] (HF stores [out, in]).
  RMSNorm        HF's Qwen2 RMSNorm: normalise in float32, scale in the compute dtype.
  GatedMLP       SwiGLU: down(act(gate(x)) * up(x)).
  attention()    softmax attention with grouped-query heads and a boolean mask, logits
                 and softmax in float32 (as the reference's eager/SDPA paths do), in one of
                 ATTENTION_IMPLS: "xla" (one [B, H, Q, S] logits tensor; lowered for a CPU
                 it runs in query blocks instead, see `_cpu_blocked_attention`), "chunked"
                 (query blocks under jax.checkpoint: the logits of one block live at a
                 time, forward and backward), "cudnn" (cuDNN's fused flash attention
                 through jax.nn.dot_product_attention; NVIDIA GPUs only), "splash" (the
                 Pallas TPU flash kernel, `models/splash.py`; TPUs only) or
                 "splash_interpret" (that kernel in Pallas interpret mode: any backend,
                 slow, for tests).
  CausalMask     the decoder's mask (causal + padding) as a [B, S] vector, which splash
                 can use and the other paths expand to [B, S, S].
  apply_rotary() rotate-half rotary embedding, in float32.
  prefix_decode_attention()  a decode step of rows that share a prompt: the prompt's keys
                 (stored once per prompt) and the row's own answer keys, as two softmax
                 parts (`softmax_part`) merged exactly by log-sum-exp
                 (`merge_softmax_parts`), as flash-decoding combines its blocks.

Every parameter is an `nnx.Param` whose `logical_axes` metadata holds its *logical* axis
names (e.g. ('embed', 'mlp')); `chronoforge_jax.sharding` maps them onto the mesh with its
rules table. (Flax's own `out_sharding` key is not used: flax reads it as mesh axis names
whenever a mesh is active, e.g. inside `nnx.eval_shape` under `jax.set_mesh`, so models
could not be built there.)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import einops
from flax import nnx
import jax
import jax.numpy as jnp

from chronoforge_jax.models import splash

Dtype = jnp.dtype | type

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "silu": jax.nn.silu,
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "relu": jax.nn.relu,
}


def param(
  rngs: nnx.Rngs | None,
  shape: tuple[int, ...],
  axes: tuple[str | None, ...],
  dtype: Dtype,
  init: str = "normal",
  std: float = 0.02,
) -> nnx.Param:
  """Creates a Param with logical axis names.

  Args:
    rngs: random streams (unused for 'zeros'/'ones').
    shape: the parameter shape.
    axes: one logical axis name (or None) per dimension.
    dtype: parameter storage dtype.
    init: 'normal' (std `std`, as HF's initializer_range), 'zeros' or 'ones'.
    std: standard deviation for 'normal'.

  Returns:
    The nnx.Param.
  """
  if len(axes) != len(shape):
    raise ValueError(f"param of shape {shape} got {len(axes)} axis names {axes}")
  if init == "normal":
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
  elif init == "zeros":
    value = jnp.zeros(shape, jnp.float32)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    raise ValueError(f"unknown init {init!r}")
  return nnx.Param(value.astype(dtype), logical_axes=tuple(axes))


class Dense(nnx.Module):
  """A linear layer with logical axis names on its kernel ([in, out]) and bias ([out])."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    axes: tuple[str, str],
    use_bias: bool,
    rngs: nnx.Rngs,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
  ):
    self.kernel = param(rngs, (in_features, out_features), axes, param_dtype)
    self.bias = param(rngs, (out_features,), (axes[1],), param_dtype, "zeros") if use_bias else None
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class RMSNorm(nnx.Module):
  """RMSNorm as in HF Qwen2: x * rsqrt(mean(x^2) + eps) in float32, then * scale."""

  def __init__(
    self,
    dim: int,
    *,
    eps: float,
    axis_name: str = "norm",
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
  ):
    self.scale = param(None, (dim,), (axis_name,), param_dtype, "ones")
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(self.dtype) * x32.astype(self.dtype)


class GatedMLP(nnx.Module):
  """SwiGLU MLP: down(act(gate(x)) * up(x))."""

  def __init__(
    self,
    dim: int,
    hidden: int,
    *,
    act: str,
    use_bias: bool,
    axes: tuple[str, str],
    rngs: nnx.Rngs,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
  ):
    embed_axis, mlp_axis = axes
    kw = dict(use_bias=use_bias, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.gate = Dense(dim, hidden, axes=(embed_axis, mlp_axis), **kw)
    self.up = Dense(dim, hidden, axes=(embed_axis, mlp_axis), **kw)
    self.down = Dense(hidden, dim, axes=(mlp_axis, embed_axis), **kw)
    self.act = act

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(ACTIVATIONS[self.act](self.gate(x)) * self.up(x))


def rotate_half(x: jax.Array) -> jax.Array:
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x_bshd: jax.Array, cos_bsd: jax.Array, sin_bsd: jax.Array) -> jax.Array:
  """Applies a rotate-half rotary embedding in float32.

  Args:
    x_bshd: [..., S, H, D] queries or keys.
    cos_bsd: [..., S, D] cosines (broadcast over heads).
    sin_bsd: [..., S, D] sines.

  Returns:
    The rotated tensor, in x's dtype.
  """
  x32 = x_bshd.astype(jnp.float32)
  cos = cos_bsd[..., None, :].astype(jnp.float32)
  sin = sin_bsd[..., None, :].astype(jnp.float32)
  return (x32 * cos + rotate_half(x32) * sin).astype(x_bshd.dtype)


ATTENTION_IMPLS = ("xla", "chunked", "cudnn", "splash", "splash_interpret")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CausalMask:
  """Causal self-attention with per-token padding, kept as a [B, S] vector.

  Query i may attend to key j when j <= i and key j is a real token. The decoder passes
  this instead of the dense [B, S, S] mask so that "splash" can run its causal kernel with
  padding as segment ids; the other paths call `dense()`.

  Attributes:
    valid_bs: [B, S] bool, True for real tokens; None when all tokens are real.
  """

  valid_bs: jax.Array | None = None

  def dense(self, seq_len: int) -> jax.Array:
    """The [B, S, S] (or [1, S, S] without padding) boolean mask."""
    causal = jnp.tril(jnp.ones((seq_len, seq_len), bool))[None]
    return causal if self.valid_bs is None else causal & self.valid_bs[:, None, :]


def attention(
  q_bqhd: jax.Array,
  k_bsjd: jax.Array,
  v_bsjd: jax.Array,
  mask_bqs: jax.Array | CausalMask | None,
  *,
  impl: str = "xla",
  chunk_size: int = 512,
) -> jax.Array:
  """Scaled dot-product attention with grouped-query heads.

  Query head h attends with key/value head h // R (R = H / J), as HF's `repeat_kv` does.
  Fully masked query rows (padding) get a uniform average instead of NaN.

  "splash" and "splash_interpret" serve only a `CausalMask` over equal query and key
  lengths (the decoder's full-sequence and prefill passes); any other call, e.g. KV-cache
  decode (one query over the cache) or a dense mask, falls back to "xla". With splash,
  padding query rows differ from "xla" (see `models/splash.py`); real rows agree.

  Args:
    q_bqhd: [B, Q, H, D] queries.
    k_bsjd: [B, S, J, D] keys (J divides H).
    v_bsjd: [B, S, J, D] values.
    mask_bqs: [B, Q, S] boolean, True where attention is allowed; a CausalMask (Q == S);
      or None for all.
    impl: one of ATTENTION_IMPLS (module docstring). They agree to rounding.
    chunk_size: query rows per block with impl="chunked".

  Returns:
    [B, Q, H, D] outputs in q's dtype.
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention impl {impl!r}: choose one of {ATTENTION_IMPLS}")
  causal = False
  if isinstance(mask_bqs, CausalMask):
    if q_bqhd.shape[1] != k_bsjd.shape[1]:
      raise ValueError(
        f"CausalMask is for self-attention: {q_bqhd.shape[1]} queries, {k_bsjd.shape[1]} keys"
      )
    if impl in ("splash", "splash_interpret"):
      return splash.splash_attention(
        q_bqhd, k_bsjd, v_bsjd, mask_bqs.valid_bs, interpret=impl == "splash_interpret"
      )
    mask_bqs, causal = mask_bqs.dense(q_bqhd.shape[1]), True
  if impl == "chunked" and q_bqhd.shape[1] > chunk_size:
    return _chunked_attention(q_bqhd, k_bsjd, v_bsjd, mask_bqs, chunk_size)
  if impl == "cudnn":
    return _cudnn_attention(q_bqhd, k_bsjd, v_bsjd, mask_bqs)
  if q_bqhd.shape[1] == 1 or not CPU_BLOCKED:  # KV-cache decode: nothing to block.
    return _xla_attention(q_bqhd, k_bsjd, v_bsjd, mask_bqs)
  # Chosen when the program is lowered, for the platform it is lowered for (so an AOT
  # compile for a TPU on a CPU host gets the TPU program). Only the chosen branch is
  # lowered, and XLA drops the other's (zero) residuals: the TPU/GPU program is the one
  # `_xla_attention` alone gives.
  return jax.lax.platform_dependent(
    q_bqhd,
    k_bsjd,
    v_bsjd,
    mask_bqs,
    cpu=functools.partial(_cpu_blocked_attention, causal=causal),
    default=_xla_attention,
  )


def _xla_attention(q_bqhd, k_bsjd, v_bsjd, mask_bqs):
  d = q_bqhd.shape[-1]
  q_bqjrd = einops.rearrange(q_bqhd, "b q (j r) d -> b q j r d", j=k_bsjd.shape[2])
  logits = jnp.einsum("bqjrd,bsjd->bjrqs", q_bqjrd, k_bsjd, preferred_element_type=jnp.float32) * (
    d**-0.5
  )
  if mask_bqs is not None:
    logits = jnp.where(mask_bqs[:, None, None], logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(v_bsjd.dtype)
  out = jnp.einsum("bjrqs,bsjd->bqjrd", probs, v_bsjd)
  return einops.rearrange(out, "b q j r d -> b q (j r) d").astype(q_bqhd.dtype)


# "xla" lowered for a CPU runs `_cpu_blocked_attention` (False: `_xla_attention`, as on
# accelerators; read when a program is traced, e.g. by benchmarks/model_bench.py).
CPU_BLOCKED = True
# Query rows per block of `_cpu_blocked_attention`, and the most blocks it unrolls.
CPU_QUERY_BLOCK = 64
CPU_MAX_BLOCKS = 32


def _cpu_blocked_attention(q_bqhd, k_bsjd, v_bsjd, mask_bqs, *, causal: bool):
  """ "xla" attention as lowered for a CPU: query blocks, no [Q, S] tensor kept.

  The same function as `_xla_attention` (to float rounding, padding rows included), laid
  out for a CPU's caches rather than an accelerator's: the queries go in blocks of
  `CPU_QUERY_BLOCK` rows (more when that would unroll over `CPU_MAX_BLOCKS` blocks), so
  one block's logits (B*H*block*S floats) stay in cache through the masking, softmax and
  both matmuls; with a causal mask a block skips the keys after its last row (about half
  the work); and the backward pass recomputes each block's probabilities from the saved
  row max and normaliser (as flash attention does) instead of storing a [B, H, Q, S]
  float32 tensor per layer and reading it back. On the CPU model benchmark this takes the
  attention's forward+backward from over a third of a 512-token step to a tenth; on
  accelerators the fused [B, H, Q, S] path (or "splash"/"cudnn") is the better program, so
  `attention` picks this one only when lowering for a CPU.

  Args:
    q_bqhd, k_bsjd, v_bsjd, mask_bqs: as `_xla_attention` (mask [B or 1, Q, S] or None).
    causal: the mask allows no key after its query (key j > query i), as a dense
      `CausalMask` does: blocks then skip those keys.
  """
  b, q = q_bqhd.shape[:2]
  k_len = k_bsjd.shape[1]
  block = max(CPU_QUERY_BLOCK, -(-q // CPU_MAX_BLOCKS))
  if mask_bqs is not None:
    mask_bqs = jnp.broadcast_to(mask_bqs, (b, q, k_len))
  out = _blocked_softmax_attention(
    einops.rearrange(q_bqhd, "b q (j r) d -> b q j r d", j=k_bsjd.shape[2]),
    k_bsjd,
    v_bsjd,
    mask_bqs,
    causal and q == k_len,
    block,
  )
  return einops.rearrange(out, "b q j r d -> b q (j r) d")


def _query_blocks(q: int, k_len: int, block: int, causal: bool):
  """[(first row, end row, keys the block needs)] of each query block."""
  return [
    (lo, min(q, lo + block), min(k_len, lo + block) if causal else k_len)
    for lo in range(0, q, block)
  ]


def _block_logits(q_bqjrd, k_bsjd, mask_bqs, lo, hi, kh):
  d = q_bqjrd.shape[-1]
  logits = jnp.einsum(
    "bqjrd,bsjd->bjrqs", q_bqjrd[:, lo:hi], k_bsjd[:, :kh], preferred_element_type=jnp.float32
  ) * (d**-0.5)
  if mask_bqs is not None:
    logits = jnp.where(mask_bqs[:, None, None, lo:hi, :kh], logits, _MASK_VALUE)
  return logits


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _blocked_softmax_attention(q_bqjrd, k_bsjd, v_bsjd, mask_bqs, causal, block):
  return _blocked_fwd(q_bqjrd, k_bsjd, v_bsjd, mask_bqs, causal, block)[0]


def _blocked_fwd(q_bqjrd, k_bsjd, v_bsjd, mask_bqs, causal, block):
  q, k_len = q_bqjrd.shape[1], k_bsjd.shape[1]
  outs, maxes, inv_sums = [], [], []
  blocks = _query_blocks(q, k_len, block, causal)
  for lo, hi, kh in blocks:
    logits = _block_logits(q_bqjrd, k_bsjd, mask_bqs, lo, hi, kh)
    row_max = jnp.max(logits, axis=-1)  # [b, j, r, q]
    p = jnp.exp(logits - row_max[..., None])
    inv_sum = 1.0 / jnp.sum(p, axis=-1)
    o = jnp.einsum(
      "bjrqs,bsjd->bqjrd",
      p.astype(v_bsjd.dtype),
      v_bsjd[:, :kh],
      preferred_element_type=jnp.float32,
    )
    outs.append(o * jnp.moveaxis(inv_sum, 3, 1)[..., None])
    maxes.append(row_max)
    inv_sums.append(inv_sum)
  o = jnp.concatenate(outs, axis=1)
  row_max, inv_sum = jnp.concatenate(maxes, axis=3), jnp.concatenate(inv_sums, axis=3)
  dead = None
  if mask_bqs is not None and any(kh < k_len for _, _, kh in blocks):
    # A row with no allowed key is a uniform average over all S keys in one softmax over
    # S (`_xla_attention`), but its block saw only its first keys: average them all here.
    dead = ~jnp.any(mask_bqs, axis=-1)  # [b, q]
    v_mean = jnp.mean(v_bsjd.astype(jnp.float32), axis=1)  # [b, j, d]
    o = jnp.where(dead[:, :, None, None, None], v_mean[:, None, :, None, :], o)
    inv_sum = jnp.where(dead[:, None, None, :], 0.0, inv_sum)  # and out of the blocks.
  o = o.astype(q_bqjrd.dtype)
  return o, (q_bqjrd, k_bsjd, v_bsjd, mask_bqs, o, row_max, inv_sum, dead)


def _blocked_bwd(causal, block, res, do_bqjrd):
  q_bqjrd, k_bsjd, v_bsjd, mask_bqs, o, row_max, inv_sum, dead = res
  q, k_len, d = q_bqjrd.shape[1], k_bsjd.shape[1], q_bqjrd.shape[-1]
  # sum_k p * dp per row, from the outputs (flash attention's delta).
  delta = jnp.moveaxis(
    jnp.sum(do_bqjrd.astype(jnp.float32) * o.astype(jnp.float32), -1), 1, 3
  )  # [b, j, r, q]
  dqs = []
  dk = jnp.zeros(k_bsjd.shape, jnp.float32)
  dv = jnp.zeros(v_bsjd.shape, jnp.float32)
  for lo, hi, kh in _query_blocks(q, k_len, block, causal):
    logits = _block_logits(q_bqjrd, k_bsjd, mask_bqs, lo, hi, kh)
    p = jnp.exp(logits - row_max[..., lo:hi, None]) * inv_sum[..., lo:hi, None]
    do = do_bqjrd[:, lo:hi]
    dv_blk = jnp.einsum(
      "bjrqs,bqjrd->bsjd", p.astype(do.dtype), do, preferred_element_type=jnp.float32
    )
    dp = jnp.einsum("bqjrd,bsjd->bjrqs", do, v_bsjd[:, :kh], preferred_element_type=jnp.float32)
    dlogits = p * (dp - delta[..., lo:hi, None])
    if mask_bqs is not None:
      dlogits = jnp.where(mask_bqs[:, None, None, lo:hi, :kh], dlogits, 0.0)
    dlogits = (dlogits * (d**-0.5)).astype(q_bqjrd.dtype)
    dqs.append(
      jnp.einsum("bjrqs,bsjd->bqjrd", dlogits, k_bsjd[:, :kh], preferred_element_type=jnp.float32)
    )
    dk_blk = jnp.einsum(
      "bjrqs,bqjrd->bsjd", dlogits, q_bqjrd[:, lo:hi], preferred_element_type=jnp.float32
    )
    if kh == k_len:
      dk, dv = dk + dk_blk, dv + dv_blk
    else:
      dk, dv = dk.at[:, :kh].add(dk_blk), dv.at[:, :kh].add(dv_blk)
  if dead is not None:
    dead_do = jnp.where(dead[:, :, None, None, None], do_bqjrd.astype(jnp.float32), 0.0)
    dv = dv + (jnp.sum(dead_do, axis=(1, 3)) / k_len)[:, None]
  dq = jnp.concatenate(dqs, axis=1)
  return (dq.astype(q_bqjrd.dtype), dk.astype(k_bsjd.dtype), dv.astype(v_bsjd.dtype), None)


_blocked_softmax_attention.defvjp(_blocked_fwd, _blocked_bwd)


def _chunked_attention(q_bqhd, k_bsjd, v_bsjd, mask_bqs, chunk_size: int):
  """Attention over query blocks of `chunk_size` rows, one block's logits at a time.

  Each block is exact (a full softmax over all keys), so the result equals "xla". The
  block function is rematerialised: the backward pass recomputes a block's logits
  instead of storing all of them, so peak memory is O(chunk_size * S) per head rather
  than O(Q * S), at the price of a second logits matmul in the backward pass.
  """
  b, q, h, d = q_bqhd.shape
  n = -(-q // chunk_size)
  pad = n * chunk_size - q
  if mask_bqs is None:
    mask_bqs = jnp.ones((b, q, k_bsjd.shape[1]), bool)
  mask_bqs = jnp.broadcast_to(mask_bqs, (b, q, k_bsjd.shape[1]))
  if pad:  # Padded query rows attend to everything and are dropped below.
    q_bqhd = jnp.pad(q_bqhd, ((0, 0), (0, pad), (0, 0), (0, 0)))
    mask_bqs = jnp.pad(mask_bqs, ((0, 0), (0, pad), (0, 0)), constant_values=True)
  q_chunks = q_bqhd.reshape(b, n, chunk_size, h, d).swapaxes(0, 1)
  mask_chunks = mask_bqs.reshape(b, n, chunk_size, -1).swapaxes(0, 1)

  @jax.checkpoint
  def block(q_chunk, mask_chunk):
    return _xla_attention(q_chunk, k_bsjd, v_bsjd, mask_chunk)

  out_chunks = jax.lax.map(lambda args: block(*args), (q_chunks, mask_chunks))
  return out_chunks.swapaxes(0, 1).reshape(b, n * chunk_size, h, d)[:, :q]


def _cudnn_attention(q_bqhd, k_bsjd, v_bsjd, mask_bqs):
  """cuDNN fused attention (flash attention on Ampere and newer NVIDIA GPUs)."""
  if jax.default_backend() != "gpu":
    raise ValueError(
      f"attention impl 'cudnn' needs an NVIDIA GPU; this is a "
      f"{jax.default_backend()} backend: use 'chunked' or 'xla'"
    )
  if q_bqhd.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(
      f"attention impl 'cudnn' computes in bfloat16/float16, got "
      f"{q_bqhd.dtype}; set model.dtype=bfloat16 or use 'chunked'"
    )
  mask = None if mask_bqs is None else mask_bqs[:, None]  # [B, 1, Q, S]: all heads.
  out = jax.nn.dot_product_attention(q_bqhd, k_bsjd, v_bsjd, mask=mask, implementation="cudnn")
  return out.astype(q_bqhd.dtype)


# ------------------------------------------------------------------------------------
# Decode attention over a shared prompt (the sampler's `text.SharedPrefixCache`).
# ------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SoftmaxPart:
  """Softmax attention over one block of keys, not yet normalised (flash-decoding).

  For logits x_j (masked ones set to the mask value) and values v_j of the block:
  max = max_j x_j, sum = sum_j exp(x_j - max), out = sum_j exp(x_j - max) v_j.
  `merge_softmax_parts` combines blocks into the softmax over all their keys.

  Attributes:
    max_bqh: [B, Q, H] float32.
    sum_bqh: [B, Q, H] float32.
    out_bqhd: [B, Q, H, D] float32.
  """

  max_bqh: jax.Array
  sum_bqh: jax.Array
  out_bqhd: jax.Array


def softmax_part(
  q_bqhd: jax.Array, k_bsjd: jax.Array, v_bsjd: jax.Array, mask_bqs: jax.Array | None
) -> SoftmaxPart:
  """One block's `SoftmaxPart` (grouped-query heads and masking as `attention`).

  Args:
    q_bqhd: [B, Q, H, D] queries.
    k_bsjd, v_bsjd: [B, S, J, D] keys and values of the block (J divides H).
    mask_bqs: [B, Q, S] boolean (broadcastable), True where attention is allowed.

  Returns:
    The block's SoftmaxPart. A fully masked query row gets max = the mask value and
    sum = S, so it drops out of a merge with any block that has a real key (and a merge
    of only such rows averages all values uniformly, as `attention` does).
  """
  d = q_bqhd.shape[-1]
  q_bqjrd = einops.rearrange(q_bqhd, "b q (j r) d -> b q j r d", j=k_bsjd.shape[2])
  logits = jnp.einsum("bqjrd,bsjd->bjrqs", q_bqjrd, k_bsjd, preferred_element_type=jnp.float32) * (
    d**-0.5
  )
  if mask_bqs is not None:
    logits = jnp.where(mask_bqs[:, None, None], logits, _MASK_VALUE)
  m = jnp.max(logits, axis=-1)
  p = jnp.exp(logits - m[..., None])
  out = jnp.einsum(
    "bjrqs,bsjd->bqjrd", p.astype(v_bsjd.dtype), v_bsjd, preferred_element_type=jnp.float32
  )
  to_bqh = lambda x: einops.rearrange(x, "b j r q -> b q (j r)")
  return SoftmaxPart(
    max_bqh=to_bqh(m),
    sum_bqh=to_bqh(jnp.sum(p, axis=-1)),
    out_bqhd=einops.rearrange(out, "b q j r d -> b q (j r) d"),
  )


def merge_softmax_parts(parts: list[SoftmaxPart], dtype: Dtype) -> jax.Array:
  """Exact softmax attention over the union of the parts' keys (log-sum-exp merge).

  With M = max_i max_i-part: out = sum_i exp(max_i - M) out_i / sum_i exp(max_i - M) sum_i.

  Returns:
    [B, Q, H, D] in `dtype`.
  """
  m = functools.reduce(jnp.maximum, [p.max_bqh for p in parts])
  scales = [jnp.exp(p.max_bqh - m) for p in parts]
  num = sum(s[..., None] * p.out_bqhd for s, p in zip(scales, parts))
  den = sum(s * p.sum_bqh for s, p in zip(scales, parts))
  return (num / den[..., None]).astype(dtype)


def prefix_decode_attention(
  q_n1hd: jax.Array,
  prefix_k_bsjd: jax.Array,
  prefix_v_bsjd: jax.Array,
  prefix_mask_bs: jax.Array,
  suffix_k_najd: jax.Array,
  suffix_v_najd: jax.Array,
  suffix_mask_na: jax.Array,
) -> jax.Array:
  """One decode step's attention for groups of rows that share a prompt.

  Row n = b * G + g (G = N / B rows per prompt, `jnp.repeat` order) attends to its
  prompt's keys (stored once per prompt) and to its own answer keys; the two softmax
  parts are merged exactly (`merge_softmax_parts`), so the result equals `attention`
  over the row's prompt keys followed by its answer keys. The G rows of a prompt read
  its keys together, as G queries of one [G, S] attention.

  Args:
    q_n1hd: [N, 1, H, D] the new tokens' queries.
    prefix_k_bsjd, prefix_v_bsjd: [B, S, J, D] the prompts' keys and values.
    prefix_mask_bs: [B, S] bool, True for real prompt tokens.
    suffix_k_najd, suffix_v_najd: [N, A, J, D] each row's answer keys and values.
    suffix_mask_na: [N, A] bool, True for the answer slots the row may attend to.

  Returns:
    [N, 1, H, D] in q's dtype.
  """
  n, _, h, d = q_n1hd.shape
  b = prefix_k_bsjd.shape[0]
  if n % b:
    raise ValueError(f"{n} rows do not split into groups over {b} prompts")
  # A prompt's G rows are G queries of one attention over its keys.
  prefix = softmax_part(
    einops.rearrange(q_n1hd, "(b g) 1 h d -> b g h d", b=b),
    prefix_k_bsjd,
    prefix_v_bsjd,
    prefix_mask_bs[:, None, :],
  )
  prefix = SoftmaxPart(
    max_bqh=einops.rearrange(prefix.max_bqh, "b g h -> (b g) 1 h"),
    sum_bqh=einops.rearrange(prefix.sum_bqh, "b g h -> (b g) 1 h"),
    out_bqhd=einops.rearrange(prefix.out_bqhd, "b g h d -> (b g) 1 h d"),
  )
  suffix = softmax_part(q_n1hd, suffix_k_najd, suffix_v_najd, suffix_mask_na[:, None, :])
  return merge_softmax_parts([prefix, suffix], q_n1hd.dtype)
