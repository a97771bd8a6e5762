"""VideoLanguageModel: the Qwen2.5-VL architecture in Flax NNX (vision tower + decoder).

Interface (the trainer, the sampler and the converter rely on these names):

  model = VideoLanguageModel(config, rngs=nnx.Rngs(0), dtype=jnp.bfloat16,
                             param_dtype=jnp.float32, remat_policy='dots_no_batch',
                             scan_layers=True)
      `scan_layers` (default True) stacks each layer stack's params [L, ...]
      (`text.layers`, `visual.blocks`) and runs it with `nnx.scan`: compile time stays
      flat in depth. False keeps one module per layer (`text.layers[i]`), run by a
      Python loop, for debugging; `stack.stack_paths` / `unstack_paths` convert params
      between the two layouts.

  model(input_ids_bs, attention_mask_bs, pixel_values_videos=None, video_grid_thw=None,
        second_per_grid_ts=None, patch_timestamps=None, *, video_embeds=None) -> logits_bsv
      The HF processor's inputs. `video_grid_thw` is static (host NumPy/tuple; it fixes
      shapes), so close over it under jit. Instead of pixels, `video_embeds` may carry
      tokens from `encode_video` (e.g. gathered temporal patches of a precomputed
      encoding); the grid / timestamps then describe those tokens for M-RoPE.
      `patch_timestamps` [V, T] (seconds per temporal patch) overrides
      `second_per_grid_ts` so uneven keyframes get positions that follow real time.

  model.encode_video(pixel_values_videos, video_grid_thw) -> [N_tokens, D_text]
      Tower + merger. Tokens come video by video, temporal patch by temporal patch, so
      each temporal patch's H*W/merge^2 tokens are contiguous.

  model.token_logprobs(prompt_ids_bs, prompt_mask_bs, completion_ids_ba,
                       completion_mask_ba=None, *, <video args>, vocab_chunk=8192,
                       return_entropy=False) -> logprobs_ba (, entropy_ba)
      Log-probabilities of the completion tokens given the prompt and the preceding
      completion tokens, chunked over the vocabulary (never [B, S, V]). Completion tokens
      take positions after the prompt exactly as the decode path gives them.

  KV-cache path for the sampler (fixed shapes; jit each once):
    cache = model.init_cache(batch, max_len)
    last_logits_bv, cache, rope_deltas_b = model.prefill(prompt_ids_bs, prompt_mask_bs,
                                                          cache, *, <video args>)
    logits_bv, cache = model.decode_step(tokens_b, cache, token_mask_b=None)
    Prompts may be left- or right-padded (the mask marks real tokens); `last_logits_bv`
    are taken at each row's last real token. `decode_step` writes slot `cache.end`;
    a row with token_mask_b False (finished) writes a masked slot and keeps its position.
    See `text.KVCache` for the cache layout and its logical shardings. `decode_step`
    also takes a `text.SharedPrefixCache` (G answer rows per prefilled prompt, the
    prompt stored once; `sampling.share_prefix` builds one from a prefilled cache).

  frames_to_pixel_values(frames_thwc_uint8, vision_config) -> (pixel_values, grid_thw)
      The HF Qwen2-VL video processor's rescale / normalise / patch flattening for frames
      already resized to multiples of patch*merge pixels, in jnp (runs on device).

Videos only: still-image inputs (`pixel_values`, `image_grid_thw`, image placeholder
tokens) are not supported; a still image can be fed as a video of temporal_patch_size
identical frames. Attention is plain softmax attention (logits [B, heads, S, S] per
layer); no fused flash/splash kernel yet.
"""

from __future__ import annotations

from typing import Sequence

import einops
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from chronoforge_jax.models import rope
from chronoforge_jax.models.config import ModelConfig, VisionConfig
from chronoforge_jax.models.text import KVCache, SharedPrefixCache, TextDecoder
from chronoforge_jax.models.vision import VisionTower, static_grid

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VideoLanguageModel(nnx.Module):
  """Qwen2.5-VL: `visual` (VisionTower) + `text` (TextDecoder)."""

  def __init__(
    self,
    config: ModelConfig,
    *,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    remat_policy: str = "none",
    attention_impl: str = "xla",
    attention_chunk: int = 512,
    scan_layers: bool = True,
  ):
    self.config = config
    self.dtype = dtype
    self.scan_layers = scan_layers
    self.visual = VisionTower(
      config.vision,
      rngs=rngs,
      dtype=dtype,
      param_dtype=param_dtype,
      remat_policy=remat_policy,
      scan_layers=scan_layers,
    )
    # The decoder's attention implementation (layers.ATTENTION_IMPLS); the vision tower's
    # attention stays within one temporal patch's windows and always uses "xla".
    self.text = TextDecoder(
      config.text,
      rngs=rngs,
      dtype=dtype,
      param_dtype=param_dtype,
      remat_policy=remat_policy,
      attention_impl=attention_impl,
      attention_chunk=attention_chunk,
      scan_layers=scan_layers,
    )

  # -- vision ------------------------------------------------------------------------
  def encode_video(self, pixel_values_videos: jax.Array, video_grid_thw) -> jax.Array:
    """Vision tower + merger: [N_patches, patch_dim] -> [N_patches / merge^2, D_text]."""
    return self.visual(jnp.asarray(pixel_values_videos), video_grid_thw)

  def _embed(self, input_ids_bs, pixel_values_videos, video_grid_thw, video_embeds):
    x_bsd = self.text.embed_tokens(input_ids_bs)
    if pixel_values_videos is None and video_embeds is None:
      return x_bsd
    if pixel_values_videos is not None and video_embeds is not None:
      raise ValueError("pass either pixel_values_videos or video_embeds, not both")
    grid = static_grid(video_grid_thw)
    n = int(np.sum(np.prod(grid, axis=1))) // self.config.vision.spatial_merge_size**2
    is_vid = input_ids_bs == self.config.video_token_id
    if not isinstance(is_vid, jax.core.Tracer):  # checkable outside jit, before the tower
      count = int(jnp.sum(is_vid))
      if count != n:
        raise ValueError(
          f"input_ids hold {count} video tokens (id "
          f"{self.config.video_token_id}) but the video gives {n} embeddings "
          f"(video_grid_thw={grid.tolist()}); the prompt's placeholders must "
          "match the grid"
        )
    if video_embeds is None:
      video_embeds = self.encode_video(pixel_values_videos, grid)
    elif video_embeds.shape[0] != n:
      raise ValueError(
        f"video_embeds has {video_embeds.shape[0]} rows; video_grid_thw={grid.tolist()} needs {n}"
      )
    b, s, d = x_bsd.shape
    # Video tokens take the embeddings in row-major order, as the reference's
    # masked_scatter does.
    idx = jnp.clip(jnp.cumsum(is_vid.reshape(-1)) - 1, 0, n - 1)
    gathered = jnp.take(video_embeds.astype(x_bsd.dtype), idx, axis=0).reshape(b, s, d)
    return jnp.where(is_vid[..., None], gathered, x_bsd)

  def position_ids(
    self,
    input_ids_bs: jax.Array,
    attention_mask_bs: jax.Array | None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    patch_timestamps=None,
  ) -> tuple[jax.Array, jax.Array]:
    """M-RoPE positions [3, B, S] and rope deltas [B] (see `rope.mrope_position_ids`)."""
    cfg = self.config
    grid = None if video_grid_thw is None else static_grid(video_grid_thw)
    return rope.mrope_position_ids(
      input_ids_bs,
      attention_mask_bs,
      video_token_id=cfg.video_token_id,
      grids_v3=grid,
      spatial_merge_size=cfg.vision.spatial_merge_size,
      tokens_per_second=cfg.vision.tokens_per_second,
      second_per_grid_ts=second_per_grid_ts,
      patch_timestamps=patch_timestamps,
      text_after_video=cfg.text_position_after_video,
    )

  def _prepare(
    self,
    input_ids_bs,
    attention_mask_bs,
    pixel_values_videos,
    video_grid_thw,
    second_per_grid_ts,
    patch_timestamps,
    video_embeds,
  ):
    input_ids_bs = jnp.asarray(input_ids_bs)
    if attention_mask_bs is None:
      attention_mask_bs = jnp.ones(input_ids_bs.shape, jnp.int32)
    if (pixel_values_videos is not None or video_embeds is not None) and video_grid_thw is None:
      raise ValueError("video inputs need video_grid_thw (for positions and the tower)")
    x_bsd = self._embed(input_ids_bs, pixel_values_videos, video_grid_thw, video_embeds)
    positions, deltas = self.position_ids(
      input_ids_bs, attention_mask_bs, video_grid_thw, second_per_grid_ts, patch_timestamps
    )
    return x_bsd, positions, deltas, jnp.asarray(attention_mask_bs)

  # -- full forward ------------------------------------------------------------------
  def hidden_states(
    self,
    input_ids_bs,
    attention_mask_bs,
    pixel_values_videos=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    patch_timestamps=None,
    *,
    video_embeds=None,
  ) -> jax.Array:
    """Final-normed decoder hidden states [B, S, D]."""
    x, pos, _, mask = self._prepare(
      input_ids_bs,
      attention_mask_bs,
      pixel_values_videos,
      video_grid_thw,
      second_per_grid_ts,
      patch_timestamps,
      video_embeds,
    )
    return self.text.hidden(x, pos, mask)

  def __call__(
    self,
    input_ids_bs,
    attention_mask_bs,
    pixel_values_videos=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    patch_timestamps=None,
    *,
    video_embeds=None,
  ) -> jax.Array:
    """Float32 logits [B, S, V]; see the module docstring for the arguments."""
    h = self.hidden_states(
      input_ids_bs,
      attention_mask_bs,
      pixel_values_videos,
      video_grid_thw,
      second_per_grid_ts,
      patch_timestamps,
      video_embeds=video_embeds,
    )
    return self.text.logits(h)

  # -- per-token log-probs -----------------------------------------------------------
  def token_logprobs(
    self,
    prompt_ids_bs,
    prompt_mask_bs,
    completion_ids_ba,
    completion_mask_ba=None,
    *,
    pixel_values_videos=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    patch_timestamps=None,
    video_embeds=None,
    vocab_chunk: int = 8192,
    return_entropy: bool = False,
  ):
    """Log-probs [B, A] of completion tokens (and entropies [B, A] if asked).

    Args:
      prompt_ids_bs: [B, S] prompt ids (left- or right-padded).
      prompt_mask_bs: [B, S] prompt mask.
      completion_ids_ba: [B, A] sampled completion ids.
      completion_mask_ba: [B, A] 1 for real completion tokens (default all); masked
        tokens neither attend nor advance positions, their outputs are meaningless.
      pixel_values_videos, video_grid_thw, second_per_grid_ts, patch_timestamps,
      video_embeds: the prompt's video, as in `__call__`.
      vocab_chunk: vocabulary columns per chunk of the log-softmax.
      return_entropy: also return the entropy of each predictive distribution.

    Returns:
      logprobs_ba (float32), or (logprobs_ba, entropy_ba).
    """
    x_bsd, pos_3bs, deltas_b, mask_bs = self._prepare(
      prompt_ids_bs,
      prompt_mask_bs,
      pixel_values_videos,
      video_grid_thw,
      second_per_grid_ts,
      patch_timestamps,
      video_embeds,
    )
    completion_ids_ba = jnp.asarray(completion_ids_ba)
    b, a = completion_ids_ba.shape
    mask_ba = (
      jnp.ones((b, a), jnp.int32)
      if completion_mask_ba is None
      else jnp.asarray(completion_mask_ba).astype(jnp.int32)
    )
    # Completion tokens are text: they continue from the prompt's next position, exactly
    # as decode_step numbers them.
    next_pos_b = jnp.sum(mask_bs, axis=1).astype(jnp.int32) + deltas_b
    pos_ba = next_pos_b[:, None] + jnp.cumsum(mask_ba, axis=1) - mask_ba
    pos_ba = jnp.where(mask_ba > 0, pos_ba, 0)
    x = jnp.concatenate([x_bsd, self.text.embed_tokens(completion_ids_ba)], axis=1)
    pos = jnp.concatenate([pos_3bs, jnp.broadcast_to(pos_ba[None], (3, b, a))], axis=2)
    mask = jnp.concatenate([mask_bs.astype(jnp.int32), mask_ba], axis=1)
    h = self.text.hidden(x, pos, mask)  # [B, S + A, D]
    s = x_bsd.shape[1]
    # Token j of the completion is predicted from position s + j - 1. With a
    # right-padded prompt that position would be padding, so use each row's last real
    # prompt token for j = 0.
    last_b = _last_valid_index(mask_bs)
    h_first = jnp.take_along_axis(h, last_b[:, None, None], axis=1)
    predicting = jnp.concatenate([h_first, h[:, s : s + a - 1]], axis=1)  # [B, A, D]
    return chunked_logprobs(
      predicting,
      self.text.head_weight(),
      completion_ids_ba,
      chunk=vocab_chunk,
      dtype=self.dtype,
      return_entropy=return_entropy,
    )

  # -- KV cache ----------------------------------------------------------------------
  def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty KV cache for `batch` rows of up to `max_len` tokens (prompt + answer)."""
    return self.text.init_cache(batch, max_len, dtype)

  def prefill(
    self,
    input_ids_bs,
    attention_mask_bs,
    cache: KVCache,
    *,
    pixel_values_videos=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    patch_timestamps=None,
    video_embeds=None,
  ):
    """Runs the prompt into the cache.

    Returns:
      last_logits_bv: float32 logits at each row's last real prompt token.
      cache: the filled cache (end = S).
      rope_deltas_b: next position - number of real prompt tokens, per row.
    """
    x, pos, deltas, mask = self._prepare(
      input_ids_bs,
      attention_mask_bs,
      pixel_values_videos,
      video_grid_thw,
      second_per_grid_ts,
      patch_timestamps,
      video_embeds,
    )
    next_pos = jnp.sum(mask, axis=1).astype(jnp.int32) + deltas
    h, cache = self.text.prefill(x, pos, mask, cache, next_pos)
    h_last = jnp.take_along_axis(h, _last_valid_index(mask)[:, None, None], axis=1)
    return self.text.logits(h_last)[:, 0], cache, deltas

  def decode_step(
    self,
    tokens_b: jax.Array,
    cache: KVCache | SharedPrefixCache,
    token_mask_b: jax.Array | None = None,
  ) -> tuple[jax.Array, KVCache | SharedPrefixCache]:
    """Feeds one token per row; returns float32 logits [B, V] and the updated cache."""
    x = self.text.embed_tokens(jnp.asarray(tokens_b)[:, None])
    h, cache = self.text.decode(x, cache, token_mask_b)
    return self.text.logits(h)[:, 0], cache


def _last_valid_index(mask_bs: jax.Array) -> jax.Array:
  s = mask_bs.shape[1]
  return (s - 1 - jnp.argmax(jnp.flip(mask_bs.astype(bool), axis=1), axis=1)).astype(jnp.int32)


def chunked_logprobs(
  hidden: jax.Array,
  w_dv: jax.Array,
  targets_ba: jax.Array,
  *,
  chunk: int = 8192,
  dtype=jnp.float32,
  return_entropy: bool = False,
):
  """log softmax(h @ w)[target] (and entropy) without materialising [B, A, V].

  A scan over vocabulary chunks keeps a running max, sum of exponentials and (for the
  entropy) the exponential-weighted logit sum; the scan body is rematerialised so the
  backward pass stores only the [B, A] carries.

  Args:
    hidden: [B, A, D] hidden states.
    w_dv: [D, V] head matrix.
    targets_ba: [B, A] token ids.
    chunk: vocabulary columns per step.
    dtype: matmul input dtype (accumulation is float32).
    return_entropy: also return the entropy.

  Returns:
    logprobs_ba float32, or (logprobs_ba, entropy_ba).
  """
  v = w_dv.shape[1]
  chunk = max(1, min(chunk, v))
  num_chunks = -(-v // chunk)
  h = hidden.astype(dtype)
  w = jnp.pad(w_dv.astype(dtype), ((0, 0), (0, num_chunks * chunk - v)))
  # The scan runs over the chunks: [chunks, D, columns of a chunk].
  w_chunks = einops.rearrange(w, "d (n v) -> n d v", n=num_chunks)
  valid_chunks = einops.rearrange(jnp.arange(num_chunks * chunk) < v, "(n v) -> n v", n=num_chunks)

  @jax.checkpoint
  def body(carry, xs):
    m, s, t = carry
    w_chunk, valid_chunk = xs  # [D, columns], [columns]
    logits = jnp.einsum("bad,dv->bav", h, w_chunk, preferred_element_type=jnp.float32)
    logits = jnp.where(valid_chunk, logits, -1e30)
    m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
    scale = jnp.exp(m - m_new)
    p = jnp.exp(logits - m_new[..., None])
    s = s * scale + jnp.sum(p, axis=-1)
    t = t * scale + jnp.sum(p * jnp.where(valid_chunk, logits, 0.0), axis=-1)
    return (m_new, s, t), None

  b, a = targets_ba.shape
  init = (
    jnp.full((b, a), -jnp.inf, jnp.float32),
    jnp.zeros((b, a), jnp.float32),
    jnp.zeros((b, a), jnp.float32),
  )
  (m, s, t), _ = jax.lax.scan(body, init, (w_chunks, valid_chunks))
  lse = m + jnp.log(s)
  w_target = jnp.take(w_dv.astype(dtype).T, targets_ba, axis=0)  # [B, A, D]
  target_logit = jnp.einsum("bad,bad->ba", h, w_target, preferred_element_type=jnp.float32)
  logprobs = target_logit - lse
  if not return_entropy:
    return logprobs
  return logprobs, lse - t / s


def frames_to_pixel_values(
  frames_thwc: jax.Array,
  vision: VisionConfig,
  *,
  image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
  image_std: Sequence[float] = OPENAI_CLIP_STD,
) -> tuple[jax.Array, np.ndarray]:
  """HF Qwen2-VL video processing for already-resized uint8 frames, in jnp.

  Rescales by 1/255 and normalises (fused as the HF processor does: (x - 255 mean) /
  (255 std) in float32), pads the frame count to a multiple of temporal_patch_size by
  repeating the last frame, and flattens patches in the processor's order.

  Args:
    frames_thwc: [T, H, W, C] uint8 frames of one video, or [B, T, H, W, C] for several
      videos of equal shape (concatenated, in order). H and W must be multiples of
      patch_size * spatial_merge_size.
    vision: the vision config (patch sizes, channels).
    image_mean, image_std: per-channel normalisation (OpenAI CLIP, as Qwen2.5-VL).

  Returns:
    pixel_values: [N, C * temporal_patch * patch * patch] float32.
    grid_thw: [B (or 1), 3] NumPy int64 (temporal patches, patch rows, patch columns).
  """
  frames = jnp.asarray(frames_thwc)
  if frames.ndim == 4:
    frames = frames[None]
  if frames.ndim != 5:
    raise ValueError(f"frames must be [T, H, W, C] or [B, T, H, W, C], got {frames.shape}")
  b, t, h, w, c = frames.shape
  p, tp, m = vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size
  if c != vision.in_channels:
    raise ValueError(f"frames have {c} channels; the model expects {vision.in_channels}")
  if h % (p * m) or w % (p * m):
    raise ValueError(
      f"frame size {h}x{w} is not a multiple of patch*merge = {p * m}; resize "
      "the frames first (e.g. to the nearest multiple, as the HF processor's "
      "smart_resize does)"
    )
  if pad := -t % tp:
    frames = jnp.concatenate([frames, jnp.repeat(frames[:, -1:], pad, axis=1)], axis=1)
    t += pad
  mean = jnp.asarray(image_mean, jnp.float32) * jnp.float32(255.0)
  std = jnp.asarray(image_std, jnp.float32) * jnp.float32(255.0)
  x = (frames.astype(jnp.float32) - mean) / std  # [B, T, H, W, C]
  gt, gh, gw = t // tp, h // p, w // p
  # The processor's patch order (merge units row-major, then the m x m patches of a
  # unit) and layout inside a patch (channel, frame, pixel row, pixel column).
  pixel_values = einops.rearrange(
    x,
    "b (gt tp) (hm mh ph) (wm mw pw) c -> (b gt hm wm mh mw) (c tp ph pw)",
    tp=tp,
    mh=m,
    ph=p,
    mw=m,
    pw=p,
  )
  grid = np.tile(np.array([[gt, gh, gw]], np.int64), (b, 1))
  return pixel_values, grid
