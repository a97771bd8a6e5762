"""The Qwen2-style decoder: GQA attention with M-RoPE, RMSNorm, SwiGLU, and a KV cache.

`TextDecoder` owns the token embedding, the layers, the final norm and the LM head (or
ties it to the embedding). It works on embeddings, so the VLM can splice video tokens in:

  hidden(x_bsd, positions_3bs, mask_bs) -> h_bsd          full sequence (training)
  prefill(x_bsd, positions_3bs, mask_bs, cache, next_pos_b) -> (h_bsd, cache)
                                                         writes slots [0, S)
  decode(x_b1d, cache, token_mask_b) -> (h_b1d, cache)   one slot, at cache.end
      (cache: a KVCache, or a SharedPrefixCache whose suffix gets the slot)

The layers are one stack (`stack.py`): with `scan_layers` (the default) their params are
stacked [L, ...] and every path below runs them with one `nnx.scan`, so compile time does
not grow with depth; without it they are a list run by a Python loop (for debugging).

KVCache layout (a pytree, every field shardable, fixed shapes so decode jit-compiles once):
  k, v     [L, B, T, KV, hd]   keys/values per layer (keys already rotated)
  mask     [B, T] bool         True where a slot holds a real token (padding -> False)
  end      [] int32            slots [0, end) are written; the next token goes to `end`
  next_pos [B] int32           M-RoPE position of the next text token of each row
The slot index is shared by all rows (left- or right-padded prompts both work: padding
slots are masked out), positions are per row.

SharedPrefixCache (group sampling: G answers per prompt without G copies of the prompt):
  prefix   KVCache [L, B, S, KV, hd]     the prefilled prompts, one row each, read only
  suffix   KVCache [L, B*G, T, KV, hd]   row r = b * G + g's answer tokens: slot, mask and
                                         next_pos of the decode live here
Decoding attends to the row's prompt and its own answer slots and merges the two softmax
parts exactly (`layers.prefix_decode_attention`), so it computes what a KVCache holding
the prompt followed by the answer would, in S + G*T slots per prompt instead of G*(S+T).
"""

from __future__ import annotations

import dataclasses

import einops
from flax import nnx
import jax
import jax.numpy as jnp

from chronoforge_jax import sharding
from chronoforge_jax.models import layers, rope, stack
from chronoforge_jax.models.config import TextConfig
from chronoforge_jax.models.vision import remat_policy_fn

CACHE_AXES = ("cache_layers", "cache_batch", "cache_seq", "cache_kv_heads", "cache_head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  """Decoder KV cache; see the module docstring for the layout."""

  k: jax.Array
  v: jax.Array
  mask: jax.Array
  end: jax.Array
  next_pos: jax.Array

  @property
  def max_len(self) -> int:
    return self.k.shape[2]

  def constrain(self) -> KVCache:
    """Applies the cache's logical shardings (a no-op without a mesh)."""
    return KVCache(
      k=sharding.shard(self.k, CACHE_AXES),
      v=sharding.shard(self.v, CACHE_AXES),
      mask=sharding.shard(self.mask, ("cache_batch", "cache_seq")),
      end=self.end,
      next_pos=sharding.shard(self.next_pos, ("cache_batch",)),
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SharedPrefixCache:
  """A group decoding cache: each prompt once, each row's answer on its own (module
  docstring). G = suffix rows / prefix rows."""

  prefix: KVCache
  suffix: KVCache

  @property
  def num_samples(self) -> int:
    return self.suffix.k.shape[1] // self.prefix.k.shape[1]

  def constrain(self) -> SharedPrefixCache:
    return SharedPrefixCache(prefix=self.prefix.constrain(), suffix=self.suffix.constrain())


class Attention(nnx.Module):
  """Grouped-query self-attention with M-RoPE (q/k/v biases, no o bias, as Qwen2)."""

  def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype, param_dtype):
    d, hd = cfg.hidden_size, cfg.head_dim
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.q = layers.Dense(
      d, cfg.num_attention_heads * hd, axes=("embed", "heads"), use_bias=True, **kw
    )
    self.k = layers.Dense(
      d, cfg.num_key_value_heads * hd, axes=("embed", "kv_heads"), use_bias=True, **kw
    )
    self.v = layers.Dense(
      d, cfg.num_key_value_heads * hd, axes=("embed", "kv_heads"), use_bias=True, **kw
    )
    self.o = layers.Dense(
      cfg.num_attention_heads * hd, d, axes=("heads", "embed"), use_bias=False, **kw
    )
    self.num_heads, self.num_kv, self.head_dim = (
      cfg.num_attention_heads,
      cfg.num_key_value_heads,
      hd,
    )

  def qkv(self, x_bsd, cos_bsd, sin_bsd):
    heads = lambda x, n: einops.rearrange(x, "b s (h d) -> b s h d", h=n)
    q = heads(self.q(x_bsd), self.num_heads)
    k = heads(self.k(x_bsd), self.num_kv)
    v = heads(self.v(x_bsd), self.num_kv)
    q = sharding.shard(
      layers.apply_rotary(q, cos_bsd, sin_bsd), ("batch", "act_seq", "act_heads", None)
    )
    k = sharding.shard(
      layers.apply_rotary(k, cos_bsd, sin_bsd), ("batch", "act_seq", "act_kv_heads", None)
    )
    v = sharding.shard(v, ("batch", "act_seq", "act_kv_heads", None))
    return q, k, v

  def out(self, o_bshd):
    return self.o(einops.rearrange(o_bshd, "b s h d -> b s (h d)"))


class DecoderLayer(nnx.Module):
  """x + attn(input_norm(x)); x + mlp(post_norm(x))."""

  def __init__(
    self,
    cfg: TextConfig,
    *,
    rngs: nnx.Rngs,
    dtype,
    param_dtype,
    attention_impl: str = "xla",
    attention_chunk: int = 512,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.attention_impl, self.attention_chunk = attention_impl, attention_chunk
    self.input_norm = layers.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, **kw)
    self.attn = Attention(cfg, rngs=rngs, **kw)
    self.post_norm = layers.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, **kw)
    self.mlp = layers.GatedMLP(
      cfg.hidden_size,
      cfg.intermediate_size,
      act=cfg.hidden_act,
      use_bias=False,
      axes=("embed", "mlp"),
      rngs=rngs,
      **kw,
    )

  def qkv(self, x_bsd, cos_bsd, sin_bsd):
    """Rotated queries [B,S,H,hd], keys and values [B,S,KV,hd] of this layer."""
    return self.attn.qkv(self.input_norm(x_bsd), cos_bsd, sin_bsd)

  def finish(self, x_bsd, o_bshd):
    """Output projection, residual, MLP block."""
    x_bsd = x_bsd + self.attn.out(o_bshd)
    x_bsd = sharding.shard(x_bsd, ("batch", "act_seq", "act_embed"))
    x_bsd = x_bsd + self.mlp(self.post_norm(x_bsd))
    return sharding.shard(x_bsd, ("batch", "act_seq", "act_embed"))

  def __call__(self, x_bsd, cos_bsd, sin_bsd, mask_bqk):
    """Full-sequence layer; returns (x, (k, v)) with this layer's rotated keys/values."""
    q, k, v = self.qkv(x_bsd, cos_bsd, sin_bsd)
    o = layers.attention(
      q, k, v, mask_bqk, impl=self.attention_impl, chunk_size=self.attention_chunk
    )
    return self.finish(x_bsd, o), (k, v)


class TextDecoder(nnx.Module):
  """Embedding, decoder layers, final norm, LM head (tied or not).

  Args:
    cfg: the decoder config.
    rngs: parameter RNG streams.
    dtype, param_dtype: compute and storage dtypes.
    remat_policy: what each layer saves for the backward pass (`vision.remat_policy_fn`).
    attention_impl, attention_chunk: the attention (`layers.attention`).
    scan_layers: stack the layers' params [L, ...] and scan them (True), or keep one
      module per layer run by a Python loop (False: slower to compile, for debugging).
  """

  def __init__(
    self,
    cfg: TextConfig,
    *,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    remat_policy: str = "none",
    attention_impl: str = "xla",
    attention_chunk: int = 512,
    scan_layers: bool = True,
  ):
    if attention_impl not in layers.ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={attention_impl!r}: choose one of {layers.ATTENTION_IMPLS}")
    if attention_chunk < 1:
      raise ValueError(f"attention_chunk={attention_chunk}: need >= 1")
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.embed = layers.param(
      rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), param_dtype
    )
    self.layers = stack.create(
      lambda r: DecoderLayer(
        cfg, rngs=r, attention_impl=attention_impl, attention_chunk=attention_chunk, **kw
      ),
      cfg.num_hidden_layers,
      rngs,
      scan=scan_layers,
    )
    self.norm = layers.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, **kw)
    self.lm_head = (
      None
      if cfg.tie_word_embeddings
      else layers.param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), param_dtype)
    )
    self.cfg = cfg
    self.dtype = dtype
    self.remat_policy = remat_policy
    self.scan_layers = scan_layers
    remat_policy_fn(remat_policy)  # validate early

  # -- embeddings and head ---------------------------------------------------------
  def embed_tokens(self, ids_bs: jax.Array) -> jax.Array:
    return jnp.take(self.embed[...], ids_bs, axis=0).astype(self.dtype)

  def head_weight(self) -> jax.Array:
    """The [D, V] LM head matrix (the embedding's transpose when tied)."""
    return self.embed[...].T if self.lm_head is None else self.lm_head[...]

  def logits(self, h_bsd: jax.Array) -> jax.Array:
    """Float32 logits [B, S, V]."""
    w = self.head_weight().astype(self.dtype)
    logits = jnp.einsum(
      "bsd,dv->bsv", h_bsd.astype(self.dtype), w, preferred_element_type=jnp.float32
    )
    return sharding.shard(logits, ("batch", "act_seq", "act_vocab"))

  def _cos_sin(self, positions_3bs):
    cfg = self.cfg
    cos, sin = rope.mrope_cos_sin(positions_3bs, cfg.head_dim, cfg.rope_theta, cfg.mrope_section)
    # The reference casts the tables to the activation dtype before rotating.
    return cos.astype(self.dtype), sin.astype(self.dtype)

  def _run_layers(self, body, carry, *, remat: bool = False):
    """Folds body(layer, carry, i) -> (carry, y) over the layers (see `stack.run`)."""
    policy = remat_policy_fn(self.remat_policy) if remat else None
    return stack.run(self.layers, body, carry, scan=self.scan_layers, remat_policy=policy)

  # -- full sequence -----------------------------------------------------------------
  def hidden(
    self, x_bsd: jax.Array, positions_3bs: jax.Array, mask_bs: jax.Array | None
  ) -> jax.Array:
    """Runs all layers over a full sequence (causal + padding mask).

    Args:
      x_bsd: [B, S, D] input embeddings.
      positions_3bs: [3, B, S] M-RoPE positions.
      mask_bs: [B, S] 1 = real token, 0 = padding (None: all real).

    Returns:
      [B, S, D] final-normed hidden states.
    """
    h, _ = self._run(x_bsd, positions_3bs, mask_bs, want_kv=False)
    return h

  def _run(self, x_bsd, positions_3bs, mask_bs, want_kv):
    """All layers over a full sequence; with want_kv also every layer's keys/values,
    stacked [L, B, S, KV, hd] (prefill: no backward pass, so no remat)."""
    cos, sin = self._cos_sin(positions_3bs)
    # Causal + padding, kept as [B, S] so attention_impl="splash" can use it as is.
    mask = layers.CausalMask(None if mask_bs is None else mask_bs.astype(bool))
    x = sharding.shard(x_bsd.astype(self.dtype), ("batch", "act_seq", "act_embed"))

    def body(layer, x, i):
      x, kv = layer(x, cos, sin, mask)
      # Only the hidden state leaves a rematerialised layer (keys/values stay inside).
      return x, (kv if want_kv else None)

    x, kvs = self._run_layers(body, x, remat=not want_kv)
    return self.norm(x), kvs

  # -- KV cache ----------------------------------------------------------------------
  def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache for `batch` rows and `max_len` slots (prompt + completion)."""
    cfg = self.cfg
    shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
    dtype = dtype or self.dtype
    return KVCache(
      k=jnp.zeros(shape, dtype),
      v=jnp.zeros(shape, dtype),
      mask=jnp.zeros((batch, max_len), bool),
      end=jnp.zeros((), jnp.int32),
      next_pos=jnp.zeros((batch,), jnp.int32),
    ).constrain()

  def prefill(self, x_bsd, positions_3bs, mask_bs, cache: KVCache, next_pos_b):
    """Runs the prompt and writes its keys/values into cache slots [0, S).

    Args:
      x_bsd: [B, S] prompt embeddings.
      positions_3bs: [3, B, S] prompt positions.
      mask_bs: [B, S] prompt mask.
      cache: an (empty) cache with max_len >= S.
      next_pos_b: [B] position of each row's first generated token.

    Returns:
      (h_bsd final-normed hidden states, filled cache).
    """
    s = x_bsd.shape[1]
    if s > cache.max_len:
      raise ValueError(f"prompt length {s} exceeds the cache's max_len {cache.max_len}")
    h, (k_new, v_new) = self._run(x_bsd, positions_3bs, mask_bs, want_kv=True)
    k_new, v_new = k_new.astype(cache.k.dtype), v_new.astype(cache.v.dtype)
    k = jax.lax.dynamic_update_slice_in_dim(cache.k, k_new, 0, axis=2)
    v = jax.lax.dynamic_update_slice_in_dim(cache.v, v_new, 0, axis=2)
    mask = jax.lax.dynamic_update_slice_in_dim(
      cache.mask,
      jnp.ones(x_bsd.shape[:2], bool) if mask_bs is None else mask_bs.astype(bool),
      0,
      axis=1,
    )
    new = KVCache(
      k=k, v=v, mask=mask, end=jnp.asarray(s, jnp.int32), next_pos=next_pos_b.astype(jnp.int32)
    )
    return h, new.constrain()

  def decode(
    self, x_b1d, cache: KVCache | SharedPrefixCache, token_mask_b: jax.Array | None = None
  ):
    """Appends one token per row at its cache's slot `end` and returns its hidden state.

    Args:
      x_b1d: [B, 1, D] embeddings of the new tokens (B: the cache's rows; for a
        SharedPrefixCache its suffix rows, prompt-major).
      cache: a KVCache, or a SharedPrefixCache: the token goes to the suffix, and the
        row attends to its prompt (prefix, unchanged) and its answer so far.
      token_mask_b: [B] False for rows whose token is padding (e.g. finished rows): the
        slot is masked and the row's position does not advance.

    Returns:
      (h_b1d final-normed hidden state, updated cache of the same kind).
    """
    shared = isinstance(cache, SharedPrefixCache)
    own = cache.suffix if shared else cache  # The cache the new token is written to.
    b = x_b1d.shape[0]
    valid_b = jnp.ones((b,), bool) if token_mask_b is None else token_mask_b.astype(bool)
    slot = own.end
    positions = jnp.broadcast_to(own.next_pos[None, :, None], (3, b, 1))
    cos, sin = self._cos_sin(positions)
    kv_mask = jax.lax.dynamic_update_slice_in_dim(own.mask, valid_b[:, None], slot, axis=1)
    # The new token always sees itself, so a padding row never attends to nothing.
    attn_mask = kv_mask | (jnp.arange(own.max_len) == slot)[None]

    def attend(q, k, v, i):
      if not shared:
        return layers.attention(q, k, v, attn_mask[:, None, :])
      prefix = cache.prefix
      return layers.prefix_decode_attention(
        q, prefix.k[i].astype(q.dtype), prefix.v[i].astype(q.dtype), prefix.mask, k, v, attn_mask
      )

    def body(layer, carry, i):
      x, k_cache, v_cache = carry
      q, k, v = layer.qkv(x, cos, sin)
      # Write into layer i's slice of the stacked cache in place (the buffer is donated
      # under jit and is the scan's carry), then attend over that slice, which now
      # includes the new token.
      k_cache = jax.lax.dynamic_update_slice(
        k_cache, k[None].astype(k_cache.dtype), (i, 0, slot, 0, 0)
      )
      v_cache = jax.lax.dynamic_update_slice(
        v_cache, v[None].astype(v_cache.dtype), (i, 0, slot, 0, 0)
      )
      o = attend(q, k_cache[i].astype(q.dtype), v_cache[i].astype(q.dtype), i)
      return (layer.finish(x, o), k_cache, v_cache), None

    (x, k_cache, v_cache), _ = self._run_layers(body, (x_b1d.astype(self.dtype), own.k, own.v))
    new = KVCache(
      k=k_cache,
      v=v_cache,
      mask=kv_mask,
      end=slot + 1,
      next_pos=own.next_pos + valid_b.astype(jnp.int32),
    )
    if shared:
      new = SharedPrefixCache(prefix=cache.prefix, suffix=new)
    return self.norm(x), new.constrain()
