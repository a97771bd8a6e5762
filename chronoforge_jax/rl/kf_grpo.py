"""KF-GRPO on the model: encode each video once, gather both views, and the losses.

The Qwen2.5-VL vision tower attends only within a temporal patch (two frames), so a
batch carries the UNION of the frames both views need (data/pipeline.py): K keyframes
(K/2 patches, chronological) followed by M non-keyframe pairs. The union is encoded
once; the ordered view and the hybrid disordered view are gathers of whole encoded
temporal patches:

  union frames [B, U, H, W, 3] --tower--> tokens [B, U/2, P, D]
  ordered view    = tokens[b, ordered_patches[b]]     positions follow real time
  disordered view = tokens[b, disordered_patches[b]]  positions evenly spaced, so the
                                                      shuffled order is all it sees

Gathering equals encoding the gathered frames directly (tests/rl/kf_grpo_test.py).

Public API:
  union_grid / view_grid        the static video grids (t, h, w) of the union and a view
  encode_union(model, frames_buhwc) -> tokens [B, U/2, P, D]
  view_inputs(tokens, patches_bk, timestamps_bu, *, real_time, repeat=1) -> dict of
      video kwargs for the model (video_embeds, video_grid_thw, patch_timestamps)
  batch_views(model, batch) -> {view: video kwargs}: both views of a batch
  sft_loss(model, batch) -> (loss, metrics)
  completion_logprobs(model, batch, completions, mask, *, view, num_samples) -> [B*G, A]
  LossInputs                    one view's completions, mask, advantages, old/ref logp
  kf_grpo_loss(model, batch, inputs, loss_config=...) -> (loss, metrics)
"""

from __future__ import annotations

from typing import Any, Mapping

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from chronoforge_jax.models import vlm as vlm_lib
from chronoforge_jax.rl import grpo

Batch = Mapping[str, jax.Array]


def union_grid(
  frames_shape: tuple[int, ...], patch_size: int, temporal_patch: int
) -> tuple[int, int, int]:
  """(T patches, H patches, W patches) of one video of the union."""
  _, u, h, w, _ = frames_shape
  if u % temporal_patch or h % patch_size or w % patch_size:
    raise ValueError(
      f"frames [B, U={u}, H={h}, W={w}, 3] must divide into temporal "
      f"patches of {temporal_patch} and spatial patches of {patch_size}"
    )
  return u // temporal_patch, h // patch_size, w // patch_size


def encode_union(model: vlm_lib.VideoLanguageModel, frames_buhwc: jax.Array) -> jax.Array:
  """Encodes every video's union of frames once.

  Args:
    model: the VLM.
    frames_buhwc: uint8 frames, H and W multiples of patch * merge.

  Returns:
    [B, U/2, P, D] merged tokens: P = (H/patch/merge) * (W/patch/merge) per temporal patch.
  """
  vcfg = model.config.vision
  b = frames_buhwc.shape[0]
  t, gh, gw = union_grid(frames_buhwc.shape, vcfg.patch_size, vcfg.temporal_patch_size)
  pixels = jax.vmap(lambda f: vlm_lib.frames_to_pixel_values(f, vcfg)[0])(frames_buhwc)
  grid = np.tile(np.array([[t, gh, gw]], np.int64), (b, 1))
  tokens = model.encode_video(pixels.reshape(-1, pixels.shape[-1]), grid)
  return tokens.reshape(b, t, -1, tokens.shape[-1])


def view_grid(
  frames_shape: tuple[int, ...], num_patches: int, vision_config, repeat: int = 1
) -> np.ndarray:
  """Static [B*repeat, 3] grid (K' temporal patches, H, W patches) of a gathered view."""
  _, h, w = union_grid(frames_shape, vision_config.patch_size, vision_config.temporal_patch_size)
  return np.tile(np.array([[num_patches, h, w]], np.int64), (frames_shape[0] * repeat, 1))


def view_inputs(
  tokens_btpd: jax.Array,
  patches_bk: jax.Array,
  timestamps_bu: jax.Array,
  *,
  grid_hw: tuple[int, int],
  temporal_patch: int,
  real_time: bool,
  repeat: int = 1,
) -> dict[str, Any]:
  """Model video kwargs for one view: gathered patch tokens and their M-RoPE timing.

  Args:
    tokens_btpd: `encode_union` output.
    patches_bk: [B, K'] temporal-patch indices into the union, in view order.
    timestamps_bu: [B, U] seconds of every union frame.
    grid_hw: (H, W) patch grid of a frame (before merging).
    temporal_patch: frames per temporal patch.
    real_time: True: temporal positions follow each patch's timestamp (ordered view);
      False: evenly spaced, one second per patch (the disordered view must not leak
      the true order through its positions).
    repeat: rows per video (G samples share one encoding).

  Returns:
    dict(video_embeds [B*repeat*K'*P, D], video_grid_thw [B*repeat, 3] (static NumPy),
    patch_timestamps [B*repeat, K']).
  """
  b, k = patches_bk.shape
  view_bkpd = jnp.take_along_axis(tokens_btpd, patches_bk[:, :, None, None], axis=1)
  if real_time:
    patch_ts_bk = jnp.take_along_axis(timestamps_bu, patches_bk * temporal_patch, axis=1)
  else:
    patch_ts_bk = jnp.broadcast_to(jnp.arange(k, dtype=jnp.float32), (b, k))
  if repeat > 1:
    view_bkpd = jnp.repeat(view_bkpd, repeat, axis=0)
    patch_ts_bk = jnp.repeat(patch_ts_bk, repeat, axis=0)
  grid = np.tile(np.array([[k, *grid_hw]], np.int64), (b * repeat, 1))
  return dict(
    video_embeds=view_bkpd.reshape(-1, view_bkpd.shape[-1]),
    video_grid_thw=grid,
    patch_timestamps=patch_ts_bk.astype(jnp.float32),
  )


def batch_views(
  model: vlm_lib.VideoLanguageModel,
  batch: Batch,
  *,
  repeat: int = 1,
  views: tuple[str, ...] = ("ordered", "disordered"),
) -> dict[str, dict]:
  """The model's video kwargs for each requested view of a batch.

  Several views: the union of frames is encoded once and each view gathers its temporal
  patches. One view (the train step's ordered view): only that view's frame pairs are
  encoded, so the non-keyframes cost nothing there.
  """
  vcfg = model.config.vision
  tp = vcfg.temporal_patch_size
  frames, timestamps = batch["frames"], batch["timestamps"]
  patches = {name: batch[f"{name}_patches"] for name in views}
  if len(views) == 1:
    ((name, patches_bk),) = patches.items()
    b, k = patches_bk.shape
    frame_idx = (patches_bk[:, :, None] * tp + jnp.arange(tp)).reshape(b, k * tp)
    frames = jnp.take_along_axis(frames, frame_idx[:, :, None, None, None], axis=1)
    timestamps = jnp.take_along_axis(timestamps, frame_idx, axis=1)
    patches = {name: jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))}
  tokens = encode_union(model, frames)
  _, _, h, w, _ = frames.shape
  grid_hw = (h // vcfg.patch_size, w // vcfg.patch_size)
  return {
    name: view_inputs(
      tokens,
      patches_bk,
      timestamps,
      grid_hw=grid_hw,
      temporal_patch=tp,
      real_time=name == "ordered",
      repeat=repeat,
    )
    for name, patches_bk in patches.items()
  }


def sft_loss(
  model: vlm_lib.VideoLanguageModel, batch: Batch, *, vocab_chunk: int = 8192
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy of the reference answers given the ordered keyframe view.

  Besides the loss (mean over all target tokens), logs `sft/answer_nll`: the summed NLL
  of the tokens that spell the answer letter (`target_answer_mask`), per example. With
  short targets most tokens are fixed format tokens, so the loss alone can look small
  while the answer is still at chance (ln 4 = 1.39 nats for four options).
  """
  video = batch_views(model, batch, views=("ordered",))["ordered"]
  logp_ba = model.token_logprobs(
    batch["prompt_ids"],
    batch["prompt_mask"],
    batch["target_ids"],
    batch["target_mask"],
    vocab_chunk=vocab_chunk,
    **video,
  )
  valid_b = batch["example_valid"].astype(jnp.float32)
  mask_ba = batch["target_mask"].astype(jnp.float32) * valid_b[:, None]
  num_tokens = jnp.maximum(mask_ba.sum(), 1.0)
  loss = -(logp_ba * mask_ba).sum() / num_tokens
  metrics = {"loss": loss, "sft/nll": loss, "num_tokens": mask_ba.sum()}
  if "target_answer_mask" in batch:
    answer_ba = batch["target_answer_mask"].astype(jnp.float32) * mask_ba
    metrics["sft/answer_nll"] = -(logp_ba * answer_ba).sum() / jnp.maximum(valid_b.sum(), 1.0)
  return loss, metrics


def completion_logprobs(
  model: vlm_lib.VideoLanguageModel,
  batch: Batch,
  completions_na: jax.Array,
  mask_na: jax.Array,
  *,
  view: str,
  num_samples: int,
  return_entropy: bool = False,
  vocab_chunk: int = 8192,
):
  """Log-probs [N, A] (N = B * G) of G sampled completions per prompt on one view.

  The completions are laid out prompt-major: rows [b*G, (b+1)*G) belong to prompt b.
  These are the untempered policy's log-probs; the trainer samples at temperature 1
  (rl/rollout.py's sampler calls), so they are the sampling policy's too.
  """
  video = batch_views(model, batch, repeat=num_samples, views=(view,))[view]
  prompt_ids = jnp.repeat(batch["prompt_ids"], num_samples, axis=0)
  prompt_mask = jnp.repeat(batch["prompt_mask"], num_samples, axis=0)
  return model.token_logprobs(
    prompt_ids,
    prompt_mask,
    completions_na,
    mask_na,
    return_entropy=return_entropy,
    vocab_chunk=vocab_chunk,
    **video,
  )


@struct.dataclass
class LossInputs:
  """One view's inputs of `kf_grpo_loss` (built by `rollout.loss_inputs`).

  Attributes:
    completions: [N, A] int32; mask: [N, A]; advantages: [N] float32;
    old_logp, ref_logp: [N, A] or None (see `ViewRollout`).
  """

  completions: jax.Array
  mask: jax.Array
  advantages: jax.Array
  old_logp: jax.Array | None = None
  ref_logp: jax.Array | None = None


def kf_grpo_loss(
  model: vlm_lib.VideoLanguageModel,
  batch: Batch,
  inputs: LossInputs,
  *,
  loss_config: grpo.LossConfig,
  num_samples: int,
  view: str = "ordered",
  axis_name: str | None = None,
  vocab_chunk: int = 8192,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The GRPO objective on one view's rollouts.

  Args:
    model: the policy.
    batch: the input batch (frames, patches, prompts).
    inputs: the view's completions, mask, advantages and optional old/reference
      log-probs (N = B * G rows).
    loss_config: surrogate/KL/aggregation settings.
    num_samples: G.
    view: which view the completions were sampled on.
    axis_name: optional mapped axis for global token counts.
    vocab_chunk: vocabulary columns per step of the chunked log-softmax.

  Returns:
    (loss, metrics).
  """
  logp_na, entropy_na = completion_logprobs(
    model,
    batch,
    inputs.completions,
    inputs.mask,
    view=view,
    num_samples=num_samples,
    return_entropy=True,
    vocab_chunk=vocab_chunk,
  )
  example_valid_n = jnp.repeat(batch["example_valid"], num_samples)
  mask_na = inputs.mask.astype(jnp.float32) * example_valid_n[:, None]
  return grpo.grpo_loss(
    logp_na,
    inputs.advantages,
    mask_na,
    old_logp_na=inputs.old_logp,
    ref_logp_na=inputs.ref_logp,
    entropy_na=entropy_na,
    config=loss_config,
    axis_name=axis_name,
  )
