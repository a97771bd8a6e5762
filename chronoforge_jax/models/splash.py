"""Splash attention: JAX's Pallas TPU flash-attention kernel for the decoder's causal mask.

`layers.attention(..., impl="splash")` calls `splash_attention` here when the mask is a
`layers.CausalMask` (causal self-attention plus per-token padding: what
`TextDecoder.hidden`/`prefill` build). The kernel
(`jax.experimental.pallas.ops.tpu.splash_attention`) walks [block, block] tiles of the
logits with an online softmax and skips the tiles the causal mask zeroes, so neither the
forward nor the backward pass holds the [B, H, S, S] logits that the "xla" path keeps.

How the decoder's attention maps onto the kernel:
  scale        the kernel does not scale the logits: q is multiplied by head_dim**-0.5
               (in float32, then cast back) before the call.
  causal       a static `CausalMask((S, S))` per head (`MultiHeadMask`), with the tiles
               above the diagonal skipped.
  padding      segment ids: real tokens 1, padding 0, for queries and keys alike. A real
               query sees exactly the real keys at or before it, as with the "xla" mask.
               A padding query sees the padding keys at or before it (never an empty row,
               so never a NaN), where "xla" gives it an average over the allowed keys:
               padding rows differ between the two paths, real rows agree to rounding,
               and nothing reads padding rows (their keys are masked for real queries and
               their losses are masked out).
  GQA          the kernel's multi-head form takes K/V with J heads and H = J * R query
               heads (query head h reads key head h // R, as HF's `repeat_kv`), so
               keys and values are not repeated.
  lengths      the kernel needs sequence tiles of a multiple of 128. S is padded to a
               multiple of the block (`block_size(S)`: 128..512) with zeros in segment 0
               and the output sliced back; causality keeps padded keys away from real
               queries.
  sharding     under a mesh (`jax.set_mesh`) the kernel runs inside `jax.shard_map`: batch
               split over the axes of the "batch" rule (data, fsdp), heads over
               "act_heads" (tensor), each device running the kernel on its slice. When the
               tensor axis divides the query heads but not the K/V heads, K/V are repeated
               to H heads first. The sequence is never split (the kernel would need
               q-sequence shards; the decoder's rules keep "act_seq" unsharded).

The kernel is TPU code. `interpret=True` runs the same kernel in Pallas interpret mode on
any backend, for tests: exact but slow (seconds for a few hundred tokens). `impl="splash"`
off a TPU raises a ValueError naming the alternatives. The target platform is read from the
mesh's devices when a mesh is set, so compiling for a TPU topology from a CPU host works.
"""

from __future__ import annotations

import functools

import jax
from jax.experimental.pallas.ops.tpu import splash_attention as sa
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from chronoforge_jax import sharding

LANES = 128  # the kernel's tiles are multiples of 128 tokens
MAX_BLOCK = 512  # maxtext's default splash tile; fewer grid steps than 128 on long sequences


def block_size(seq_len: int) -> int:
  """The kernel's query/key tile for a sequence: the length rounded up to 128, at most 512."""
  return min(MAX_BLOCK, -(-seq_len // LANES) * LANES)


def target_platform() -> str:
  """The platform jit is compiling for: the mesh's devices if a mesh is set, else the default."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def _kernel(num_heads: int, seq_len: int, block: int, interpret: bool):
  """The splash kernel (and its mask tables) for one [H, S, S] causal problem.

  Built at every trace: the NumPy mask tables are cached by the library
  (`splash_attention_mask_info._process_mask`), and their jnp copies must belong to the
  trace that uses them (a compile-only TPU mesh cannot hold concrete arrays).
  """
  mask = sa.MultiHeadMask([sa.CausalMask((seq_len, seq_len))] * num_heads)
  sizes = sa.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  return sa.make_splash_mha(
    mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
  )


def _local_attention(q_bhsd, k_bjsd, v_bjsd, seg_bs, *, block: int, interpret: bool):
  """The kernel over one device's (or the whole) batch: vmapped over B."""
  kernel = _kernel(q_bhsd.shape[1], q_bhsd.shape[2], block, interpret)
  if seg_bs is None:
    return jax.vmap(kernel)(q_bhsd, k_bjsd, v_bjsd)
  seg = sa.SegmentIds(q=seg_bs, kv=seg_bs)
  return jax.vmap(kernel)(q_bhsd, k_bjsd, v_bjsd, seg)


def splash_attention(
  q_bqhd: jax.Array,
  k_bsjd: jax.Array,
  v_bsjd: jax.Array,
  valid_bs: jax.Array | None,
  *,
  interpret: bool = False,
) -> jax.Array:
  """Causal grouped-query self-attention with a padding mask, by the splash kernel.

  Args:
    q_bqhd: [B, S, H, D] queries.
    k_bsjd: [B, S, J, D] keys (J divides H); same length as the queries.
    v_bsjd: [B, S, J, D] values.
    valid_bs: [B, S] bool, True for real tokens; None when every token is real.
    interpret: run the kernel in Pallas interpret mode (any backend; slow).

  Returns:
    [B, S, H, D] in q's dtype. Real query rows equal `layers.attention(..., impl="xla")`
    with the mask causal & valid[:, None, :] to rounding; padding rows differ (see the
    module docstring).

  Raises:
    ValueError: off a TPU without `interpret`, or when keys and queries differ in length.
  """
  if not interpret and target_platform() != "tpu":
    raise ValueError(
      f"attention impl 'splash' runs a Pallas TPU kernel; this is a {target_platform()} "
      "target: use 'chunked' or 'xla' (or 'cudnn' on an NVIDIA GPU), or "
      "'splash_interpret' to run the kernel in Pallas interpret mode (slow; for tests)"
    )
  b, s, h, d = q_bqhd.shape
  j = k_bsjd.shape[2]
  if k_bsjd.shape[1] != s:
    raise ValueError(f"splash attention is self-attention: {s} queries but {k_bsjd.shape[1]} keys")
  block = block_size(s)
  pad = -(-s // block) * block - s
  scale = d**-0.5
  q_bhsd = (q_bqhd.astype(jnp.float32) * scale).astype(q_bqhd.dtype).transpose(0, 2, 1, 3)
  k_bjsd, v_bjsd = k_bsjd.transpose(0, 2, 1, 3), v_bsjd.transpose(0, 2, 1, 3)
  seg_bs = None if valid_bs is None else valid_bs.astype(jnp.int32)
  if pad:  # padded keys sit after every real query, so causality hides them.
    widths = ((0, 0), (0, 0), (0, pad), (0, 0))
    q_bhsd, k_bjsd, v_bjsd = (jnp.pad(x, widths) for x in (q_bhsd, k_bjsd, v_bjsd))
    if seg_bs is not None:
      seg_bs = jnp.pad(seg_bs, ((0, 0), (0, pad)))
  run = functools.partial(_local_attention, block=block, interpret=interpret)

  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.size > 1:
    s_pad = s + pad
    q_spec = sharding.logical_to_spec(
      ("batch", "act_heads", None, None), shape=(b, h, s_pad, d), mesh=mesh
    )
    kv_spec = sharding.logical_to_spec(
      ("batch", "act_kv_heads", None, None), shape=(b, j, s_pad, d), mesh=mesh
    )
    if kv_spec[1] != q_spec[1]:
      # The tensor axis splits the query heads but not the K/V heads: give K/V H heads
      # so each device holds the K/V heads of its query heads.
      k_bjsd, v_bjsd = (jnp.repeat(x, h // j, axis=1) for x in (k_bjsd, v_bjsd))
    kv_spec = q_spec
    seg_spec = P(q_spec[0], None)
    in_specs = (q_spec, kv_spec, kv_spec, None if seg_bs is None else seg_spec)
    run = jax.shard_map(run, mesh=mesh, in_specs=in_specs, out_specs=q_spec, check_vma=False)
  out_bhsd = run(q_bhsd, k_bjsd, v_bjsd, seg_bs)
  return out_bhsd[:, :, :s].transpose(0, 2, 1, 3).astype(q_bqhd.dtype)
