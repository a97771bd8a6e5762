"""Batched generation with a KV cache: group sampling for KF-GRPO rollouts and evaluation.

  out = generate(model, inputs, max_new_tokens=256, num_samples=8, temperature=1.0,
                 top_k=0, top_p=1.0, stop_tokens=None, rng=jax.random.key(0))

One jit-compiled program per (batch, prompt length, max_new_tokens, num_samples,
sampling settings, video grid) does all of it on device, with no host round trip per token:

1. Prefill: the vision tower and the prompt run once per prompt (B rows), into a cache
   of the prompt's length S.
2. Group sharing (`share_prefix`): the prompt cache is kept as it is, once per prompt,
   and each of the N = B*G rows gets its own answer cache of A - 1 slots (the first token
   comes from the prefill logits); the last logits and the next positions are repeated
   G = `num_samples` times. Row n = b * G + g is sample g of prompt b (`jnp.repeat`
   order). Each decode step attends to the row's prompt and its own answer and merges
   the two softmax parts exactly (`layers.prefix_decode_attention`): the cache holds
   S + G*(A-1) slots per prompt instead of G*(S+A-1) (`kv_cache_bytes`), and the G rows
   of a prompt read its keys together. `shared_prefix=False` runs the former layout
   (`repeat_cache`: G full copies of the prompt), kept for comparison.
3. Decode: a `lax.while_loop` samples one token per row and feeds it back through
   `decode_step` until every row has stopped or `max_new_tokens` are out. Finished rows
   keep running (fixed shapes) with their slot masked and their position frozen.

`inputs` holds the VLM's prefill inputs under the HF processor's names: `input_ids`,
`attention_mask`, and optionally `pixel_values_videos`, `video_grid_thw` (static: NumPy
or tuples), `second_per_grid_ts`, `patch_timestamps`, or `video_embeds` (precomputed
tokens, e.g. temporal patches gathered from one `encode_video` call, with the grid that
describes them). Prompts may be left- or right-padded; they are used at the length they
come with (the input pipeline pads prompts to a few bucket lengths, `prompt_buckets`, so
a stream of prompts compiles a handful of programs, not one per length).

Randomness: `rng` is split into one key per row as fold_in(fold_in(rng, b), g), and each
step folds in the step index, so the same key gives the same samples, group members get
different keys, and sample g of prompt b does not depend on the other rows.

Log-probs (all float32 [N, A], 0 at masked positions) of each sampled token, each
computed only when asked for (`generate(..., logprobs=...)`; default all three; a field
not asked for is None):
  `logprobs`         the distribution actually sampled from: softmax of the processed
                     logits (temperature, then top-k, then top-p, as HF's warpers). For
                     greedy decoding that is a point mass, so 0.
  `policy_logprobs`  log_softmax(logits / temperature), no truncation (temperature 1 for
                     greedy): the "old policy" log-prob of a trainer that divides its
                     training logits by the sampling temperature, as TRL does.
  `model_logprobs`   log_softmax(logits): what `VideoLanguageModel.token_logprobs`
                     computes in the training forward.

Public API:
  SamplingParams(temperature, top_k, top_p, suppress)   frozen, validated.
  SamplingSettings.from_config(section).generate_kwargs()   the `sampling` config section.
  SampleOutput                                   frozen pytree (fields above + tokens,
                                                 completion_mask, lengths, stopped).
  generate(model, inputs, *, ...) -> SampleOutput
  lower_generate(model, inputs, **same kwargs) -> jax.stages.Lowered   (AOT, memory use)
  process_logits(logits_bv, params) -> logits_bv               pure; -inf outside support
  sample_step(keys_b, logits_bv, params, want=LOGPROBS)
      -> (tokens_b, logprobs_b, policy_lp_b, model_lp_b)    (None where not wanted)
  row_keys(rng, batch, num_samples) -> [N] keys
  share_prefix(cache, num_samples, answer_len) -> SharedPrefixCache   group sharing
  repeat_cache(cache, num_samples, max_len) -> KVCache    the former one (G copies)
  answer_slots(max_new_tokens) -> int                     answer cache slots per row
  kv_cache_bytes(text_config, ...) -> int                 K+V bytes per prompt
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from chronoforge_jax import settings as settings_lib
from chronoforge_jax.models.text import KVCache, SharedPrefixCache

INPUT_KEYS = (
  "input_ids",
  "attention_mask",
  "pixel_values_videos",
  "video_grid_thw",
  "second_per_grid_ts",
  "patch_timestamps",
  "video_embeds",
)
_VIDEO_ARRAY_KEYS = (
  "pixel_values_videos",
  "second_per_grid_ts",
  "patch_timestamps",
  "video_embeds",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
  """How each token is drawn from the model's logits.

  Attributes:
    temperature: 0 for greedy decoding (argmax), else logits are divided by it.
    top_k: keep the k most likely tokens (0: no top-k filter). Ignored when greedy.
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p
      (1.0: no nucleus filter). Applied after top-k, as HF's warpers. Ignored when greedy.
    suppress: token ids that are never drawn (greedy included), applied before the
      temperature as HF's `suppress_tokens`. `generate` suppresses the image and video
      placeholders by default: they stand for vision embeddings, so an answer holding
      one could not be read back by a forward pass that splices video in.
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  suppress: tuple[int, ...] = ()

  def __post_init__(self):
    # Errors name the field bare (`top_p=1.5: ...`): it is `generate`'s argument too.
    req = settings_lib.require
    req(
      settings_lib.is_number(self.temperature, 0),
      None,
      "temperature",
      self.temperature,
      "use 0 for greedy or a positive finite number",
    )
    req(
      settings_lib.is_int(self.top_k, 0),
      None,
      "top_k",
      self.top_k,
      "use a non-negative int (0 turns it off)",
    )
    req(
      settings_lib.is_number(self.top_p) and 0.0 < self.top_p <= 1.0,
      None,
      "top_p",
      self.top_p,
      "need a value in (0, 1] (1 turns it off)",
    )
    object.__setattr__(self, "temperature", float(self.temperature))
    object.__setattr__(self, "top_k", int(self.top_k))
    object.__setattr__(self, "top_p", float(self.top_p))
    object.__setattr__(self, "suppress", tuple(sorted({int(i) for i in self.suppress})))

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0


CACHE_DTYPES = ("", "float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingSettings:
  """How `generate` draws answers: the `sampling` config section.

  The token-drawing fields are checked by SamplingParams (`params`); the rest here.

  Attributes:
    max_new_tokens: answer buffer length A (>= 1; one compile per value).
    num_samples: G answers per prompt, sharing the prompt's prefill (>= 1).
    temperature, top_k, top_p: see SamplingParams.
    cache_dtype: KV cache dtype, a name in CACHE_DTYPES ("" = the model's compute dtype).
  """

  max_new_tokens: int = 768
  num_samples: int = 8
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  cache_dtype: str = ""

  def __post_init__(self):
    req, is_int = settings_lib.require, settings_lib.is_int
    for field in ("max_new_tokens", "num_samples"):
      value = getattr(self, field)
      req(is_int(value, 1), self, field, value, "need an int >= 1")
    with settings_lib.renamed(type(self).__name__):
      self.params  # noqa: B018  (SamplingParams checks the drawing fields)
    settings_lib.choice(self, "cache_dtype", self.cache_dtype, CACHE_DTYPES)

  @classmethod
  def from_config(cls, section: Any) -> SamplingSettings:
    """From a `sampling` config section; a bad field is reported as `config.sampling.*`."""
    return settings_lib.from_section(cls, section, "sampling")

  @property
  def params(self) -> SamplingParams:
    return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)

  def generate_kwargs(self) -> dict[str, Any]:
    """The matching `generate` keyword arguments."""
    return dict(
      max_new_tokens=self.max_new_tokens,
      num_samples=self.num_samples,
      temperature=float(self.temperature),
      top_k=self.top_k,
      top_p=float(self.top_p),
      cache_dtype=self.cache_dtype or None,
    )


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=(
    "tokens",
    "completion_mask",
    "logprobs",
    "policy_logprobs",
    "model_logprobs",
    "lengths",
    "stopped",
  ),
  meta_fields=("num_samples",),
)
@dataclasses.dataclass(frozen=True)
class SampleOutput:
  """Generated answers; rows are prompt-major (row n = sample n % G of prompt n // G).

  Attributes:
    tokens: [N, A] int32 sampled ids; `pad_id` after a row's end.
    completion_mask: [N, A] int32, 1 for generated tokens (a stop token included).
    logprobs: [N, A] float32 log-prob under the processed sampling distribution.
    policy_logprobs: [N, A] float32 log_softmax(logits / temperature)[token].
    model_logprobs: [N, A] float32 log_softmax(logits)[token] (the training forward's).
    lengths: [N] int32 number of generated tokens (sum of completion_mask).
    stopped: [N] bool, True where the row ended with one of its stop tokens.
    num_samples: G (static).
  """

  tokens: jax.Array
  completion_mask: jax.Array
  logprobs: jax.Array
  policy_logprobs: jax.Array
  model_logprobs: jax.Array
  lengths: jax.Array
  stopped: jax.Array
  num_samples: int = 1

  def grouped(self, x: jax.Array) -> jax.Array:
    """Reshapes a [B*G, ...] field to [B, G, ...]."""
    return x.reshape(-1, self.num_samples, *x.shape[1:])


# ------------------------------------------------------------------------------------
# Pure sampling math.
# ------------------------------------------------------------------------------------


def process_logits(logits_bv: jax.Array, params: SamplingParams) -> jax.Array:
  """Temperature, then top-k, then top-p (HF warper order); -inf outside the support.

  Tokens tied with the last kept one are kept too (HF breaks such ties by sort order;
  exact float ties at the boundary are the only difference).

  Args:
    logits_bv: [B, V] logits.
    params: sampling settings (not greedy).

  Returns:
    [B, V] float32 processed logits; softmax of them is the sampling distribution.
  """
  if params.greedy:
    raise ValueError("process_logits is for sampling; greedy decoding takes the argmax")
  logits = _suppress(logits_bv.astype(jnp.float32), params.suppress) / params.temperature
  v = logits.shape[-1]
  k = params.top_k if 0 < params.top_k < v else 0
  if not k and params.top_p >= 1.0:
    return logits
  # Candidates sorted in descending order: the top k, or the whole vocabulary.
  sorted_bk = jax.lax.top_k(logits, k)[0] if k else jnp.flip(jnp.sort(logits, axis=-1), -1)
  threshold_b = sorted_bk[:, -1]
  if params.top_p < 1.0:
    probs_bk = jax.nn.softmax(sorted_bk, axis=-1)
    before_bk = jnp.cumsum(probs_bk, axis=-1) - probs_bk
    # Keep a token while the mass strictly before it is below top_p (the first always).
    keep_bk = (before_bk < params.top_p).at[:, 0].set(True)
    threshold_b = jnp.min(jnp.where(keep_bk, sorted_bk, jnp.inf), axis=-1)
  return jnp.where(logits >= threshold_b[:, None], logits, -jnp.inf)


def _suppress(logits_bv: jax.Array, ids: tuple[int, ...]) -> jax.Array:
  if not ids:
    return logits_bv
  return logits_bv.at[:, jnp.asarray(ids)].set(-jnp.inf)


def _gather_logprob(logits_bv: jax.Array, tokens_b: jax.Array) -> jax.Array:
  picked = jnp.take_along_axis(logits_bv, tokens_b[:, None], axis=-1)[:, 0]
  return picked - jax.nn.logsumexp(logits_bv, axis=-1)


# The log-probs the sampler can return, by SampleOutput field: "logprobs" (the sampled,
# processed distribution), "policy_logprobs", "model_logprobs".
LOGPROBS = ("logprobs", "policy_logprobs", "model_logprobs")


def sample_step(
  keys_b: jax.Array, logits_bv: jax.Array, params: SamplingParams, want: Sequence[str] = LOGPROBS
) -> tuple[jax.Array, jax.Array | None, jax.Array | None, jax.Array | None]:
  """Draws one token per row and the log-probs in `want` (see the module docstring).

  Args:
    keys_b: [B] PRNG keys, one per row (unused when greedy).
    logits_bv: [B, V] model logits.
    params: sampling settings.
    want: which of LOGPROBS to compute; the others are returned as None (each costs a
      log-sum-exp over the vocabulary per token).

  Returns:
    tokens_b int32, logprobs_b (processed distribution), policy_logprobs_b
    (log_softmax(logits / temperature)), model_logprobs_b (log_softmax(logits)).
  """
  logits = logits_bv.astype(jnp.float32)
  if params.greedy:
    tokens = jnp.argmax(_suppress(logits, params.suppress), axis=-1).astype(jnp.int32)
    model_lp = (
      _gather_logprob(logits, tokens) if {"policy_logprobs", "model_logprobs"} & set(want) else None
    )
    return (
      tokens,
      jnp.zeros(tokens.shape, jnp.float32) if "logprobs" in want else None,
      model_lp if "policy_logprobs" in want else None,
      model_lp if "model_logprobs" in want else None,
    )
  processed = process_logits(logits, params)
  tokens = jax.vmap(jax.random.categorical)(keys_b, processed).astype(jnp.int32)
  model_lp = (
    _gather_logprob(logits, tokens)
    if "model_logprobs" in want or ("policy_logprobs" in want and params.temperature == 1.0)
    else None
  )
  policy_lp = None
  if "policy_logprobs" in want:
    policy_lp = (
      model_lp
      if params.temperature == 1.0
      else _gather_logprob(logits / params.temperature, tokens)
    )
  return (
    tokens,
    _gather_logprob(processed, tokens) if "logprobs" in want else None,
    policy_lp,
    model_lp if "model_logprobs" in want else None,
  )


def row_keys(rng: jax.Array, batch: int, num_samples: int) -> jax.Array:
  """One key per row n = b * G + g: fold_in(fold_in(rng, b), g)."""
  b_n = jnp.repeat(jnp.arange(batch), num_samples)
  g_n = jnp.tile(jnp.arange(num_samples), batch)
  return jax.vmap(lambda b, g: jax.random.fold_in(jax.random.fold_in(rng, b), g))(b_n, g_n)


def answer_slots(max_new_tokens: int) -> int:
  """Answer cache slots per row: A - 1 (the first token comes from the prefill logits,
  each later one is written before the next is drawn); at least 1 for fixed shapes."""
  return max(int(max_new_tokens) - 1, 1)


def share_prefix(cache: KVCache, num_samples: int, answer_len: int) -> SharedPrefixCache:
  """Shares a prefilled cache across a group, the prompt stored once.

  Args:
    cache: the prefilled [B]-row cache (its max_len is the prompt length S); it becomes
      the prefix, unchanged.
    num_samples: G.
    answer_len: answer slots per row (`answer_slots(max_new_tokens)`).

  Returns:
    A SharedPrefixCache whose suffix has B*G empty rows of answer_len slots, row
    b * G + g starting at prompt b's next position.
  """
  if answer_len < 1:
    raise ValueError(f"answer_len {answer_len} must be >= 1")
  n_layers, b, _, kv, hd = cache.k.shape
  shape = (n_layers, b * num_samples, answer_len, kv, hd)
  suffix = KVCache(
    k=jnp.zeros(shape, cache.k.dtype),
    v=jnp.zeros(shape, cache.v.dtype),
    mask=jnp.zeros((b * num_samples, answer_len), bool),
    end=jnp.zeros((), jnp.int32),
    next_pos=jnp.repeat(cache.next_pos, num_samples, axis=0),
  )
  return SharedPrefixCache(prefix=cache, suffix=suffix).constrain()


def kv_cache_bytes(
  text_config,
  *,
  prompt_len: int,
  max_new_tokens: int,
  num_samples: int,
  dtype,
  shared_prefix: bool = True,
) -> int:
  """Bytes of keys and values the sampler's cache holds per prompt.

  Shared prefix: (S + G * answer_slots(A)) slots; the former layout (`repeat_cache`):
  G * (S + A - 1). A slot is 2 (K and V) * layers * kv_heads * head_dim elements of
  `dtype`. The [rows, slots] bool masks (1 byte a slot and row) are not counted.

  Args:
    text_config: the decoder's config (`ModelConfig.text`).
    prompt_len: S, the (bucketed) prompt length.
    max_new_tokens: A.
    num_samples: G.
    dtype: the cache dtype.
    shared_prefix: the layout.
  """
  s, g = int(prompt_len), int(num_samples)
  slots = (
    s + g * answer_slots(max_new_tokens) if shared_prefix else g * (s + int(max_new_tokens) - 1)
  )
  per_slot = (
    2
    * text_config.num_hidden_layers
    * text_config.num_key_value_heads
    * text_config.head_dim
    * jnp.dtype(dtype).itemsize
  )
  return slots * per_slot


def repeat_cache(cache: KVCache, num_samples: int, max_len: int) -> KVCache:
  """The former group sharing (`shared_prefix=False`): G full copies of each prompt,
  [B] rows of S slots -> [N] rows of max_len.

  Row b * G + g holds a copy of row b; slots [S, max_len) are empty and masked, and
  `end` stays at S so decoding continues right after the prompt.

  Args:
    cache: the prefilled cache (its max_len is the prompt length S).
    num_samples: G.
    max_len: slots of the new cache (>= S).

  Returns:
    The [N]-row cache, with the cache's logical shardings applied.
  """
  s = cache.k.shape[2]
  if max_len < s:
    raise ValueError(f"max_len {max_len} is shorter than the prefilled prompt ({s} slots)")
  pad_kv = ((0, 0), (0, 0), (0, max_len - s), (0, 0), (0, 0))
  rep = functools.partial(jnp.repeat, repeats=num_samples, axis=1)
  return KVCache(
    k=jnp.pad(rep(cache.k), pad_kv),
    v=jnp.pad(rep(cache.v), pad_kv),
    mask=jnp.pad(jnp.repeat(cache.mask, num_samples, axis=0), ((0, 0), (0, max_len - s))),
    end=cache.end,
    next_pos=jnp.repeat(cache.next_pos, num_samples, axis=0),
  ).constrain()


# ------------------------------------------------------------------------------------
# The compiled program.
# ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Static:
  """Everything that fixes the compiled program besides array shapes."""

  max_new_tokens: int
  num_samples: int
  params: SamplingParams
  pad_id: int
  video_grid_thw: tuple[tuple[int, int, int], ...] | None
  cache_dtype: Any
  shared_prefix: bool = True
  logprobs: tuple[str, ...] = LOGPROBS


def _decode_loop(
  model, last_logits_nv, cache: KVCache, keys_n, stops_n, static: _Static
) -> SampleOutput:
  """Samples up to max_new_tokens tokens per row inside one lax.while_loop."""
  n = last_logits_nv.shape[0]
  t_max = static.max_new_tokens
  params = static.params

  want = static.logprobs

  def sample(step, logits_nv, done_n):
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_n, step)
    tok, *lps = sample_step(keys, logits_nv, params, want)
    live = ~done_n
    tok = jnp.where(live, tok, static.pad_id)
    hit_stop = live & jnp.any(tok[:, None] == stops_n, axis=-1)
    done = done_n | hit_stop | (step + 1 >= t_max)
    # Buffers: tokens, mask, then the wanted log-probs (0 where the row has ended).
    values = (tok, live) + tuple(jnp.where(live, lp, 0.0) for lp in lps if lp is not None)
    return values, hit_stop, done

  def write(bufs, step, values):
    return tuple(
      jax.lax.dynamic_update_slice_in_dim(buf, val[:, None].astype(buf.dtype), step, axis=1)
      for buf, val in zip(bufs, values)
    )

  bufs = (jnp.full((n, t_max), static.pad_id, jnp.int32), jnp.zeros((n, t_max), jnp.int32)) + tuple(
    jnp.zeros((n, t_max), jnp.float32) for _ in want
  )
  # The first token comes from the prefill logits; every later one costs a decode step.
  values, stopped, done = sample(0, last_logits_nv, jnp.zeros((n,), bool))
  bufs = write(bufs, 0, values)
  tok, live = values[:2]

  def cond(carry):
    step, _, _, _, done, _, _ = carry
    return (step < t_max) & ~jnp.all(done)

  def body(carry):
    step, cache, prev_tok, prev_live, done, stopped, bufs = carry
    logits, cache = model.decode_step(prev_tok, cache, token_mask_b=prev_live)
    values, hit, done = sample(step, logits, done)
    bufs = write(bufs, step, values)
    return step + 1, cache, values[0], values[1], done, stopped | hit, bufs

  carry = (jnp.asarray(1, jnp.int32), cache, tok, live, done, stopped, bufs)
  _, _, _, _, _, stopped, bufs = jax.lax.while_loop(cond, body, carry)
  tokens, mask, *lps = bufs
  logps = dict.fromkeys(LOGPROBS) | dict(zip(want, lps))
  return SampleOutput(
    tokens=tokens,
    completion_mask=mask,
    **logps,
    lengths=jnp.sum(mask, axis=1, dtype=jnp.int32),
    stopped=stopped,
    num_samples=static.num_samples,
  )


@functools.partial(jax.jit, static_argnames=("graphdef", "static"))
def _generate_jit(
  graphdef, state, arrays: dict[str, jax.Array], rng: jax.Array, static: _Static
) -> SampleOutput:
  model = nnx.merge(graphdef, state)
  ids_bs, mask_bs = arrays["input_ids"], arrays["attention_mask"]
  b, s = ids_bs.shape
  g = static.num_samples
  video = {k: arrays[k] for k in _VIDEO_ARRAY_KEYS if k in arrays}
  grid = None if static.video_grid_thw is None else np.asarray(static.video_grid_thw)
  # Prefill into a prompt-sized cache: answers get their own slots (share_prefix) or,
  # in the former layout, rows of prompt + answer (repeat_cache).
  cache = model.init_cache(b, s, static.cache_dtype)
  last_logits_bv, cache, _ = model.prefill(ids_bs, mask_bs, cache, video_grid_thw=grid, **video)
  if static.shared_prefix:
    cache = share_prefix(cache, g, answer_slots(static.max_new_tokens))
  else:
    cache = repeat_cache(cache, g, s + static.max_new_tokens - 1)
  last_logits_nv = jnp.repeat(last_logits_bv, g, axis=0)
  keys_n = row_keys(rng, b, g)
  stops_n = jnp.repeat(arrays["stop_tokens"], g, axis=0)
  return _decode_loop(model, last_logits_nv, cache, keys_n, stops_n, static)


# ------------------------------------------------------------------------------------
# Host-side entry point: validation, then one call of the compiled program.
# ------------------------------------------------------------------------------------


def _check_inputs(inputs: Mapping[str, Any], vocab: int, video_token_id: int) -> tuple[Any, Any]:
  """Checks names, shapes and (where this process can see them) the token values."""
  unknown = sorted(set(inputs) - set(INPUT_KEYS))
  if unknown:
    raise ValueError(f"generate(): unknown inputs {unknown}; known: {list(INPUT_KEYS)}")
  if "input_ids" not in inputs:
    raise ValueError("generate(): inputs need 'input_ids' [B, S]")
  ids = inputs["input_ids"]
  if getattr(ids, "ndim", None) != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(
      f"input_ids must be an integer [B, S] array, got "
      f"{getattr(ids, 'dtype', type(ids))} {getattr(ids, 'shape', None)}"
    )
  mask = inputs.get("attention_mask")
  if mask is None:
    mask = np.ones(ids.shape, np.int32)
  if tuple(mask.shape) != tuple(ids.shape):
    raise ValueError(f"attention_mask {tuple(mask.shape)} must match input_ids {tuple(ids.shape)}")
  has_video = any(inputs.get(k) is not None for k in ("pixel_values_videos", "video_embeds"))
  if has_video and inputs.get("video_grid_thw") is None:
    raise ValueError("video inputs need video_grid_thw (host NumPy [V, 3])")
  # Value checks need the tokens on this host; a multi-host global batch skips them.
  if all(
    getattr(x, "is_fully_addressable", True) and not isinstance(x, jax.ShapeDtypeStruct)
    for x in (ids, mask)
  ):
    ids_host, mask_host = np.asarray(ids), np.asarray(mask)
    if not mask_host.any(axis=1).all():
      rows = np.flatnonzero(~mask_host.any(axis=1)).tolist()
      raise ValueError(f"prompt rows {rows} have no real tokens (attention_mask all 0)")
    if ids_host.min() < 0 or ids_host.max() >= vocab:
      raise ValueError(f"input_ids hold ids outside [0, vocab_size={vocab})")
    if not has_video and ((ids_host == video_token_id) & (mask_host > 0)).any():
      raise ValueError(
        f"input_ids hold video placeholders (id {video_token_id}) but no "
        "pixel_values_videos or video_embeds were given"
      )
  return ids, mask


def _stop_array(stop_tokens, batch: int, default: Sequence[int], vocab: int) -> np.ndarray:
  if stop_tokens is None:
    stop_tokens = default
  stop = np.asarray(stop_tokens, np.int32)
  if stop.ndim <= 1:
    stop = np.broadcast_to(stop.reshape(1, -1), (batch, stop.size))
  if stop.ndim != 2 or stop.shape[0] != batch:
    raise ValueError(
      f"stop_tokens has shape {stop.shape}; give a list of ids for all "
      f"prompts or a [B={batch}, stops] array (pad with -1) per prompt"
    )
  if (stop >= vocab).any() or (stop < -1).any():
    raise ValueError(f"stop_tokens {stop.tolist()} must be ids in [0, {vocab}) or -1 (none)")
  if stop.shape[1] == 0:
    stop = np.full((batch, 1), -1, np.int32)
  return np.ascontiguousarray(stop)


def _check_logprobs(logprobs: Sequence[str]) -> tuple[str, ...]:
  """The wanted log-prob fields in LOGPROBS order; an unknown name fails here."""
  if isinstance(logprobs, str):
    logprobs = (logprobs,)
  unknown = set(logprobs) - set(LOGPROBS)
  if unknown:
    raise ValueError(
      f"logprobs={tuple(logprobs)!r}: unknown {sorted(unknown)}; choose from {LOGPROBS}"
    )
  return tuple(name for name in LOGPROBS if name in logprobs)


def _prepare_call(
  model,
  inputs: Mapping[str, Any],
  *,
  max_new_tokens: int,
  num_samples: int = 1,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  stop_tokens=None,
  rng: jax.Array | None = None,
  suppress_tokens: Sequence[int] | None = None,
  pad_id: int | None = None,
  cache_dtype=None,
  shared_prefix: bool = True,
  logprobs: Sequence[str] = LOGPROBS,
) -> tuple[Any, ...]:
  """Validates on the host; returns the compiled program's arguments."""
  cfg = model.config
  vocab = cfg.text.vocab_size
  if suppress_tokens is None:
    suppress_tokens = (cfg.image_token_id, cfg.video_token_id)
  if any(not 0 <= int(i) < vocab for i in suppress_tokens):
    raise ValueError(f"suppress_tokens {list(suppress_tokens)} must be ids in [0, {vocab})")
  params = SamplingParams(
    temperature=temperature, top_k=top_k, top_p=top_p, suppress=tuple(suppress_tokens)
  )
  if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive int")
  if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
    raise ValueError(f"num_samples={num_samples!r} must be a positive int")
  if rng is None:
    if not params.greedy:
      raise ValueError("sampling with temperature > 0 needs rng=jax.random.key(seed)")
    rng = jax.random.key(0)
  pad_id = cfg.pad_token_id if pad_id is None else pad_id
  pad_id = 0 if pad_id is None else int(pad_id)
  if pad_id == cfg.video_token_id or not 0 <= pad_id < vocab:
    raise ValueError(
      f"pad_id={pad_id} must be a vocabulary id other than the video "
      f"placeholder {cfg.video_token_id}"
    )
  ids, mask = _check_inputs(inputs, vocab, cfg.video_token_id)
  b, s = ids.shape

  arrays = {k: inputs[k] for k in _VIDEO_ARRAY_KEYS if inputs.get(k) is not None}
  # Device arrays stay on device (the compiled call's key is their shape).
  xp = np if isinstance(ids, np.ndarray) and isinstance(mask, np.ndarray) else jnp
  if isinstance(ids, jax.ShapeDtypeStruct):  # Abstract prompts: lower_generate, planning.
    arrays["input_ids"], arrays["attention_mask"] = (
      jax.ShapeDtypeStruct((b, s), jnp.int32, sharding=x.sharding) for x in (ids, mask)
    )
  else:
    arrays["input_ids"] = xp.asarray(ids).astype(np.int32)
    arrays["attention_mask"] = xp.asarray(mask).astype(np.int32)
  arrays["stop_tokens"] = _stop_array(stop_tokens, b, cfg.eos_token_ids, vocab)
  grid = inputs.get("video_grid_thw")
  grid = (
    None
    if grid is None
    else tuple(tuple(int(x) for x in row) for row in np.asarray(grid).reshape(-1, 3))
  )
  static = _Static(
    max_new_tokens=int(max_new_tokens),
    num_samples=int(num_samples),
    params=params,
    pad_id=pad_id,
    video_grid_thw=grid,
    cache_dtype=None if cache_dtype is None else jnp.dtype(cache_dtype),
    shared_prefix=bool(shared_prefix),
    logprobs=_check_logprobs(logprobs),
  )
  graphdef, state = nnx.split(model)
  return graphdef, state, arrays, rng, static


def generate(
  model,
  inputs: Mapping[str, Any],
  *,
  max_new_tokens: int,
  num_samples: int = 1,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  stop_tokens: Sequence[int] | np.ndarray | None = None,
  rng: jax.Array | None = None,
  suppress_tokens: Sequence[int] | None = None,
  pad_id: int | None = None,
  cache_dtype=None,
  shared_prefix: bool = True,
  logprobs: Sequence[str] = LOGPROBS,
) -> SampleOutput:
  """Samples `num_samples` answers per prompt with a shared prefill and a KV cache.

  Args:
    model: a VideoLanguageModel (anything with init_cache / prefill / decode_step and a
      `config` holding token ids).
    inputs: prefill inputs by HF processor name (see the module docstring); arrays may be
      NumPy or jax (already sharded under a mesh is fine).
    max_new_tokens: A, the answer buffer length (static: one compile per value).
    num_samples: G answers per prompt, sharing the prompt's prefill.
    temperature: 0 for greedy; else the softmax temperature.
    top_k: keep the k most likely tokens (0: off).
    top_p: nucleus mass (1.0: off).
    stop_tokens: ids that end a row (included in the answer): a list for every prompt,
      or a [B, stops] array per prompt padded with -1. None: the model's eos ids.
    rng: a PRNG key (required unless greedy).
    suppress_tokens: ids never generated; None: the image and video placeholders.
    pad_id: id written after a row ends (default: the model's pad id, else 0). Must not
      be the video placeholder id.
    cache_dtype: KV cache dtype (default: the model's compute dtype).
    shared_prefix: True (default): each prompt's keys/values once, plus each row's own
      answer cache (`share_prefix`); False: the former layout, G full copies of the
      prompt (`repeat_cache`), for comparison. Same tokens for the same rng (up to
      float rounding of the attention, which may flip near-ties).
    logprobs: the log-prob fields to compute (of LOGPROBS; the others are None): a
      trainer that reads none passes ().

  Returns:
    A SampleOutput with [B * num_samples] rows.
  """
  return _generate_jit(
    *_prepare_call(
      model,
      inputs,
      max_new_tokens=max_new_tokens,
      num_samples=num_samples,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      stop_tokens=stop_tokens,
      rng=rng,
      suppress_tokens=suppress_tokens,
      pad_id=pad_id,
      cache_dtype=cache_dtype,
      shared_prefix=shared_prefix,
      logprobs=logprobs,
    )
  )


def lower_generate(model, inputs: Mapping[str, Any], **kwargs: Any) -> jax.stages.Lowered:
  """Lowers the program `generate(model, inputs, **kwargs)` would run, without running it.

  For ahead-of-time compilation and inspection, e.g.
  `lower_generate(...).compile().memory_analysis()` before a training loop.

  Args:
    model: as in `generate`, or an abstract one (ShapeDtypeStruct params).
    inputs: as in `generate`, or jax.ShapeDtypeStructs (then no value checks).
    **kwargs: `generate`'s keyword arguments.

  Returns:
    The jax.stages.Lowered program.
  """
  return _generate_jit.lower(*_prepare_call(model, inputs, **kwargs))
