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

from chronoforge_jax.rl import kf_grpo
from chronoforge_jax.rl import rollout as rollout_lib
from chronoforge_jax.rl import settings as settings_lib


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
  graphdef, tx, rl: settings_lib.RLSettings, vocab_chunk: int, state, batch, rollout
):
  """Rewards -> advantages -> clipped surrogate + KL -> update, on the global batch.

  The ordered view's correct answers earn the saliency bonus against the disordered
  view's accuracy. With `rl.train_on_disordered` the disordered rollouts get a gradient
  too: their own group-relative advantages from the text rewards without the bonus, and
  the loss is the rollout-weighted mean (G L_ordered + G' L_disordered) / (G + G'), so
  every rollout counts the same.

  Args:
    graphdef, tx, rl, vocab_chunk: static (closed over by `step_functions`).
    state: {params, opt_state, step[, ref]}, donated.
    batch: the global input batch.
    rollout: an `rollout.Rollout`.
  """
  ordered, disordered = rollout.ordered, rollout.disordered
  eligible_b = None
  if rollout.saliency_eligible is not None:
    eligible_b = rollout.saliency_eligible[:, 0] > 0.5
  against = disordered.accuracy if disordered is not None else jnp.zeros_like(ordered.accuracy)
  inputs, metrics = rollout_lib.loss_inputs(
    rl, ordered, bonus_against=against, eligible_b=eligible_b
  )
  trained = {"ordered": inputs}
  if rl.train_on_disordered:
    trained["disordered"], dis_metrics = rollout_lib.loss_inputs(rl, disordered)
    metrics.update({f"disordered/{k}": v for k, v in dis_metrics.items()})
  group = dict(rl.trained_views)

  def loss_fn(params):
    model = nnx.merge(graphdef, params)
    losses, out = {}, {}
    for view, view_inputs in trained.items():
      losses[view], view_metrics = kf_grpo.kf_grpo_loss(
        model,
        batch,
        view_inputs,
        loss_config=rl.loss,
        num_samples=group[view],
        view=view,
        vocab_chunk=vocab_chunk,
      )
      prefix = "" if view == "ordered" else f"{view}/"
      out.update({f"{prefix}{k}": v for k, v in view_metrics.items()})
    if len(losses) == 1:
      return losses["ordered"], out
    total = sum(group[v] * losses[v] for v in losses) / sum(group[v] for v in losses)
    return total, {**out, "ordered/loss": losses["ordered"], "loss": total}

  (loss, loss_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  state, opt_metrics = _apply_if_finite(state, grads, loss, tx)
  return state, {**metrics, **loss_metrics, **opt_metrics}


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
      functools.partial(
        kf_grpo_step, graphdef, tx, settings_lib.RLSettings.from_config(config.rl), chunk
      ),
      donate_argnums=0,
      out_shardings=(state_shardings, replicated),
    ),
    views=jax.jit(functools.partial(views_fn, graphdef)),
    logprobs=jax.jit(
      functools.partial(logp_fn, graphdef, chunk), static_argnames=("view", "num_samples")
    ),
  )
