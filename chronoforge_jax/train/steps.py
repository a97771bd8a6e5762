"""The pure, jitted programs of a training step.

  sft_step:     cross-entropy of the reference answers on the ordered keyframe view.
  kf_grpo_step: rewards -> saliency bonus -> advantages over the GLOBAL batch -> clipped
                surrogate + KL on the trained views -> AdamW update.
  views_fn:     encodes each video's union of frames once; both views' video arrays.
  logp_fn:      per-token log-probs of one view's rollouts (old policy or reference).

Both update steps donate the state; a non-finite loss or gradient leaves it unchanged
(the loop's guard names the metric). `step_functions` jits them for the loop and for
`planning.compile_programs`.
"""

from __future__ import annotations

import functools
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax

from chronoforge_jax.rl import grpo, kf_grpo
from chronoforge_jax.rl import rewards as rewards_lib


def _apply_if_finite(state, grads, loss, tx):
  grad_norm = optax.global_norm(grads)
  updates, new_opt = tx.update(grads, state["opt_state"], state["params"])
  new_params = optax.apply_updates(state["params"], updates)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  new_state = dict(
    state,
    params=keep(new_params, state["params"]),
    opt_state=keep(new_opt, state["opt_state"]),
    step=state["step"] + 1,
  )
  return new_state, {
    "grad_norm": grad_norm,
    "step_ok": ok.astype(jnp.float32),
    "param_norm": optax.global_norm(state["params"]),
  }


def sft_step(graphdef, tx, vocab_chunk: int, state, batch):
  """One cross-entropy step on the reference answers (ordered keyframe view)."""

  def loss_fn(params):
    return kf_grpo.sft_loss(nnx.merge(graphdef, params), batch, vocab_chunk=vocab_chunk)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  state, opt_metrics = _apply_if_finite(state, grads, loss, tx)
  return state, {**metrics, **opt_metrics}


def kf_grpo_step(
  graphdef, tx, rl: ml_collections.ConfigDict, vocab_chunk: int, state, batch, rollout
):
  """Rewards -> advantages -> clipped surrogate + KL -> update, on the global batch.

  With `rl.train_on_disordered` the disordered rollouts get a gradient too: their own
  group-relative advantages from accuracy + format (+ length) without the saliency
  bonus, and the loss is the rollout-weighted mean (G L_ordered + G' L_disordered) /
  (G + G'), so every rollout counts the same.
  """
  b, g = rollout["accuracy"].shape
  components = _text_rewards(rl, rollout["accuracy"], rollout["format"], rollout["mask"])
  total_bg, bonus_bg, metrics = rewards_lib.kf_grpo_rewards(
    components,
    rollout["disordered_accuracy"],
    weights=dict(rl.reward_weights),
    saliency=rl.saliency.enabled,
    alpha=rl.saliency.alpha,
    mu=rl.saliency.mu,
    rule=rl.saliency.rule,
    eligible_b=(
      rollout["saliency_eligible"][:, 0] > 0.5 if "saliency_eligible" in rollout else None
    ),
  )
  adv_bg = grpo.compute_advantages(total_bg, rl.advantage_estimator, eps=rl.advantage_eps)
  metrics["adv/bonus_shift"] = grpo.bonus_advantage_shift(
    total_bg, bonus_bg, rl.advantage_estimator, eps=rl.advantage_eps
  )
  metrics["adv/abs_mean"] = jnp.abs(adv_bg).mean()
  loss_rollout = dict(
    completions=rollout["completions"], mask=rollout["mask"], advantages=adv_bg.reshape(b * g)
  )
  for key in ("old_logp", "ref_logp"):
    if key in rollout:
      loss_rollout[key] = rollout[key]
  loss_config = grpo.LossConfig.from_config(rl)
  dis_rollout, h = None, rl.num_disordered
  if rl.train_on_disordered:
    dis_rollout, dis_metrics = _disordered_loss_inputs(rl, rollout, b, h)
    metrics.update(dis_metrics)

  def loss_fn(params):
    model = nnx.merge(graphdef, params)
    loss, loss_metrics = kf_grpo.kf_grpo_loss(
      model, batch, loss_rollout, loss_config=loss_config, num_samples=g, vocab_chunk=vocab_chunk
    )
    if dis_rollout is None:
      return loss, loss_metrics
    dis_loss, dis_metrics = kf_grpo.kf_grpo_loss(
      model,
      batch,
      dis_rollout,
      loss_config=loss_config,
      num_samples=h,
      view="disordered",
      vocab_chunk=vocab_chunk,
    )
    total = (g * loss + h * dis_loss) / (g + h)
    return total, {
      **loss_metrics,
      **{f"disordered/{k}": v for k, v in dis_metrics.items()},
      "ordered/loss": loss,
      "loss": total,
    }

  (loss, loss_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  state, opt_metrics = _apply_if_finite(state, grads, loss, tx)
  return state, {**metrics, **loss_metrics, **opt_metrics}


def _text_rewards(
  rl: ml_collections.ConfigDict, accuracy_bg, format_bg, mask_nt
) -> dict[str, jax.Array]:
  """One view's reward components before any saliency bonus: accuracy, format, length."""
  components = {"accuracy": accuracy_bg, "format": format_bg}
  if rl.length_bonus.enabled:
    lb = rl.length_bonus
    components["length"] = rewards_lib.length_bonus(
      accuracy_bg,
      mask_nt.sum(-1).reshape(accuracy_bg.shape),
      bonus=lb.bonus,
      min_tokens=lb.min_tokens,
      max_tokens=lb.max_tokens,
      min_correct=lb.min_correct,
    )
  return components


def _disordered_loss_inputs(rl: ml_collections.ConfigDict, rollout, b: int, h: int):
  """The disordered rollouts' loss inputs: their own rewards (no bonus) and advantages."""
  components = _text_rewards(
    rl, rollout["disordered_accuracy"], rollout["disordered_format"], rollout["disordered_mask"]
  )
  total_bh, metrics = rewards_lib.combine_rewards(components, dict(rl.reward_weights))
  adv_bh = grpo.compute_advantages(total_bh, rl.advantage_estimator, eps=rl.advantage_eps)
  out = dict(
    completions=rollout["disordered_completions"],
    mask=rollout["disordered_mask"],
    advantages=adv_bh.reshape(b * h),
  )
  for key in ("old_logp", "ref_logp"):
    if f"disordered_{key}" in rollout:
      out[key] = rollout[f"disordered_{key}"]
  return out, {f"disordered/{k}": v for k, v in metrics.items()}


def views_fn(graphdef, params, batch):
  """Encodes each union once; the video arrays of both views (grids are static, host)."""
  views = kf_grpo.batch_views(nnx.merge(graphdef, params), batch)
  return {
    name: {k: v for k, v in view.items() if k != "video_grid_thw"} for name, view in views.items()
  }


def logp_fn(
  graphdef,
  vocab_chunk: int,
  params,
  batch,
  completions,
  mask,
  *,
  view: str = "ordered",
  num_samples: int,
):
  """Per-token log-probs of one view's rollouts (old policy or frozen reference)."""
  return kf_grpo.completion_logprobs(
    nnx.merge(graphdef, params),
    batch,
    completions,
    mask,
    view=view,
    num_samples=num_samples,
    vocab_chunk=vocab_chunk,
  )


def step_functions(
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  graphdef,
  tx: optax.GradientTransformation,
  state_shardings,
) -> dict[str, Any]:
  """The jitted programs of a step: sft_step, grpo_step (both donate the state), views,
  logprobs. `setup` gives them to the loop; `planning.compile_programs` lowers them."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  chunk = config.model.vocab_chunk
  return dict(
    sft_step=jax.jit(
      functools.partial(sft_step, graphdef, tx, chunk),
      donate_argnums=0,
      out_shardings=(state_shardings, replicated),
    ),
    grpo_step=jax.jit(
      functools.partial(kf_grpo_step, graphdef, tx, config.rl, chunk),
      donate_argnums=0,
      out_shardings=(state_shardings, replicated),
    ),
    views=jax.jit(functools.partial(views_fn, graphdef)),
    logprobs=jax.jit(
      functools.partial(logp_fn, graphdef, chunk), static_argnames=("view", "num_samples")
    ),
  )
