"""Building blocks shared by the vision tower and the decoder.

  Dense          y = x @ kernel (+ bias); kernel stored [in, out] (HF stores [out, in]).
  RMSNorm        HF's Qwen2 RMSNorm: normalise in float32, scale in the compute dtype.
  GatedMLP       SwiGLU: down(act(gate(x)) * up(x)).
  attention()    softmax attention with grouped-query heads and a boolean mask, logits
                 and softmax in float32 (as the reference's eager/SDPA paths do).
  apply_rotary() rotate-half rotary embedding, in float32.

Every parameter is an `nnx.Param` whose `logical_axes` metadata holds its *logical* axis
names (e.g. ('embed', 'mlp')); `chronoforge_jax.sharding` maps them onto the mesh with its
rules table. (Flax's own `out_sharding` key is not used: flax reads it as mesh axis names
whenever a mesh is active, e.g. inside `nnx.eval_shape` under `jax.set_mesh`, so models
could not be built there.)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = jnp.dtype | type

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def param(rngs: nnx.Rngs | None, shape: tuple[int, ...], axes: tuple[str | None, ...],
          dtype: Dtype, init: str = "normal", std: float = 0.02) -> nnx.Param:
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

  def __init__(self, in_features: int, out_features: int, *, axes: tuple[str, str],
               use_bias: bool, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32):
    self.kernel = param(rngs, (in_features, out_features), axes, param_dtype)
    self.bias = (param(rngs, (out_features,), (axes[1],), param_dtype, "zeros")
                 if use_bias else None)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class RMSNorm(nnx.Module):
  """RMSNorm as in HF Qwen2: x * rsqrt(mean(x^2) + eps) in float32, then * scale."""

  def __init__(self, dim: int, *, eps: float, axis_name: str = "norm",
               dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32):
    self.scale = param(None, (dim,), (axis_name,), param_dtype, "ones")
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(self.dtype) * x32.astype(self.dtype)


class GatedMLP(nnx.Module):
  """SwiGLU MLP: down(act(gate(x)) * up(x))."""

  def __init__(self, dim: int, hidden: int, *, act: str, use_bias: bool,
               axes: tuple[str, str], rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32):
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
    x_bshd: [..., S, H, hd] queries or keys.
    cos_bsd: [..., S, hd] cosines (broadcast over heads).
    sin_bsd: [..., S, hd] sines.

  Returns:
    The rotated tensor, in x's dtype.
  """
  x32 = x_bshd.astype(jnp.float32)
  cos = cos_bsd[..., None, :].astype(jnp.float32)
  sin = sin_bsd[..., None, :].astype(jnp.float32)
  return (x32 * cos + rotate_half(x32) * sin).astype(x_bshd.dtype)


def attention(q_bqhd: jax.Array, k_bkgd: jax.Array, v_bkgd: jax.Array,
              mask_bqk: jax.Array | None) -> jax.Array:
  """Scaled dot-product attention with grouped-query heads.

  Query head h attends with key/value head h // (H / G), as HF's `repeat_kv` does.
  Fully masked query rows (padding) get a uniform average instead of NaN.

  Args:
    q_bqhd: [B, Q, H, hd] queries.
    k_bkgd: [B, K, G, hd] keys (G divides H).
    v_bkgd: [B, K, G, hd] values.
    mask_bqk: [B, Q, K] boolean, True where attention is allowed; None for all.

  Returns:
    [B, Q, H, hd] outputs in q's dtype.
  """
  b, q, h, d = q_bqhd.shape
  g = k_bkgd.shape[2]
  q_bqgrd = q_bqhd.reshape(b, q, g, h // g, d)
  logits = jnp.einsum("bqgrd,bkgd->bgrqk", q_bqgrd, k_bkgd,
                      preferred_element_type=jnp.float32) * (d ** -0.5)
  if mask_bqk is not None:
    logits = jnp.where(mask_bqk[:, None, None], logits, _MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1).astype(v_bkgd.dtype)
  out = jnp.einsum("bgrqk,bkgd->bqgrd", probs, v_bkgd)
  return out.reshape(b, q, h, d).astype(q_bqhd.dtype)
