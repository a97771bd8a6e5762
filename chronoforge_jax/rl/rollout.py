"""KF-GRPO rollouts: what is sampled on each view, how it is scored, and the loss inputs.

  sampler_calls: the sampler inputs of each view (G on the ordered keyframes, G' on the
                 hybrid disordered view when the saliency bonus is on).
  sample_views:  runs them through the KV-cache sampler.
  score_views:   decodes every completion on the host and scores accuracy and format.
  ViewRollout:   one view's completions, their rewards and (optional) old/reference
                 log-probs; `Rollout` holds both views.
  loss_inputs:   rewards -> saliency bonus (ordered view) -> advantages: a view's
                 `kf_grpo.LossInputs`, the same code for both views.

Shapes follow the dimension letters: B prompts, G rollouts per prompt on the view,
N = B * G completions (prompt-major: rows [b*G, (b+1)*G) answer prompt b), A answer tokens.
"""

from __future__ import annotations

from typing import Any

from flax import struct
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from chronoforge_jax import sharding
from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax.models import sampling
from chronoforge_jax.rl import grpo, kf_grpo
from chronoforge_jax.rl import rewards as rewards_lib
from chronoforge_jax.rl import settings as settings_lib

Batch = dict[str, Any]
VIEWS = ("ordered", "disordered")


@struct.dataclass
class ViewRollout:
  """One view's sampled completions and their host-scored rewards.

  Attributes:
    completions: [N, A] int32 sampled tokens.
    mask: [N, A] 1 on generated tokens (the stop token included).
    accuracy: [B, G] accuracy reward.
    format: [B, G] format reward.
    old_logp: [N, A] the sampling policy's log-probs (only with rl.num_iterations > 1).
    ref_logp: [N, A] the frozen reference's log-probs (only with rl.beta > 0).
  """

  completions: jax.Array
  mask: jax.Array
  accuracy: jax.Array
  format: jax.Array
  old_logp: jax.Array | None = None
  ref_logp: jax.Array | None = None


@struct.dataclass
class Rollout:
  """A train step's rollouts: the ordered keyframe view and, with the saliency bonus on,
  the hybrid disordered view (its accuracy decides the bonus; its completions get a
  gradient only with rl.train_on_disordered).

  Attributes:
    ordered: the ordered-keyframe view.
    disordered: the hybrid disordered view, None when the saliency bonus is off.
    saliency_eligible: [B, G] 1 where a prompt may earn the bonus (still images may not);
      None: every prompt may.
  """

  ordered: ViewRollout
  disordered: ViewRollout | None = None
  saliency_eligible: jax.Array | None = None


def text_rewards(rl: settings_lib.RLSettings, view: ViewRollout) -> dict[str, jax.Array]:
  """A view's reward components before any saliency bonus: accuracy, format, length."""
  components = {"accuracy": view.accuracy, "format": view.format}
  if rl.length_bonus.enabled:
    lb = rl.length_bonus
    components["length"] = rewards_lib.length_bonus(
      view.accuracy,
      view.mask.sum(-1).reshape(view.accuracy.shape),
      bonus=lb.bonus,
      min_tokens=lb.min_tokens,
      max_tokens=lb.max_tokens,
      min_correct=lb.min_correct,
    )
  return components


def loss_inputs(
  rl: settings_lib.RLSettings,
  view: ViewRollout,
  *,
  bonus_against: jax.Array | None = None,
  eligible_b: jax.Array | None = None,
) -> tuple[kf_grpo.LossInputs, dict[str, jax.Array]]:
  """Rewards -> advantages over the whole (global) batch: one view's loss inputs.

  Args:
    rl: the RL settings.
    view: the view's rollouts.
    bonus_against: [B, G'] the disordered view's accuracy, for the ordered view: its
      correct answers earn the saliency bonus where ordered accuracy beats this
      (`rewards.kf_grpo_rewards`, rl.saliency). None (the disordered view): text rewards
      only.
    eligible_b: [B] bool, prompts that may earn the bonus (None: all).

  Returns:
    (LossInputs, metrics: reward/*, saliency/* (ordered view), adv/abs_mean and, with a
    bonus, adv/bonus_shift: how much the bonus moved the advantages).
  """
  components = text_rewards(rl, view)
  if bonus_against is None:
    total_bg, metrics = rewards_lib.combine_rewards(components, rl.weights)
    bonus_bg = None
  else:
    total_bg, bonus_bg, metrics = rewards_lib.kf_grpo_rewards(
      components,
      bonus_against,
      weights=rl.weights,
      saliency=rl.saliency.enabled,
      alpha=rl.saliency.alpha,
      mu=rl.saliency.mu,
      rule=rl.saliency.rule,
      eligible_b=eligible_b,
    )
  adv_bg = grpo.compute_advantages(total_bg, rl.advantage_estimator, eps=rl.advantage_eps)
  if bonus_bg is not None:
    metrics["adv/bonus_shift"] = grpo.bonus_advantage_shift(
      total_bg, bonus_bg, rl.advantage_estimator, eps=rl.advantage_eps
    )
  metrics["adv/abs_mean"] = jnp.abs(adv_bg).mean()
  inputs = kf_grpo.LossInputs(
    completions=view.completions,
    mask=view.mask,
    advantages=adv_bg.reshape(-1),
    old_logp=view.old_logp,
    ref_logp=view.ref_logp,
  )
  return inputs, metrics


def sampler_calls(
  vision_config,
  views: dict,
  batch: Batch,
  prompt_ids,
  prompt_mask,
  rl: settings_lib.RLSettings,
  stop_tokens: tuple[int, ...],
) -> list[tuple[str, int, dict[str, Any], dict[str, Any]]]:
  """(view, rng fold-in key, sampler inputs, sampler kwargs but rng) of each rollout view:
  G samples on the ordered view, G' on the disordered one (with the saliency bonus).

  `sample_views` runs these through `sampling.generate`; `planning.compile_programs`
  lowers the same calls with `sampling.lower_generate`.
  """
  grid = kf_grpo.view_grid(batch["frames"].shape, batch["ordered_patches"].shape[1], vision_config)
  calls = []
  for key, (name, g) in enumerate(rl.sampled_views):
    inputs = dict(
      input_ids=prompt_ids, attention_mask=prompt_mask, video_grid_thw=grid, **views[name]
    )
    # The sampler's log-probs are read only as old_logp (rl.use_rollout_logps, mu > 1) of
    # a view that is trained on; otherwise it computes none.
    trained = name in dict(rl.trained_views)
    own_logps = rl.num_iterations > 1 and rl.use_rollout_logps and trained
    calls.append(
      (
        name,
        key,
        inputs,
        dict(
          max_new_tokens=rl.max_new_tokens,
          num_samples=g,
          temperature=1.0,  # The ratio and KL use the untempered policy.
          top_k=rl.top_k,
          top_p=rl.top_p,
          stop_tokens=stop_tokens,
          logprobs=("model_logprobs",) if own_logps else (),
        ),
      )
    )
  return calls


def sample_views(
  model, views: dict, batch: Batch, rl: settings_lib.RLSettings, stop_tokens: tuple[int, ...], rng
) -> dict[str, Any]:
  """Samples G completions on the ordered view and G' on the disordered view."""
  # The sampler checks prompts on the host: give every process the whole
  # (small) global prompt batch; the video embeddings stay sharded on device.
  prompt_ids, prompt_mask = multihost_utils.process_allgather(
    (batch["prompt_ids"], batch["prompt_mask"]), tiled=True
  )
  return {
    name: sampling.generate(model, inputs, rng=jax.random.fold_in(rng, key), **kwargs)
    for name, key, inputs, kwargs in sampler_calls(
      model.config.vision, views, batch, prompt_ids, prompt_mask, rl, stop_tokens
    )
  }


def score_rollouts(
  tok: tokenizer_lib.Tokenizer,
  tokens: np.ndarray,
  mask: np.ndarray,
  answers_b: np.ndarray,
  num_samples: int,
  options_b=None,
  *,
  problem_types_b=None,
  solutions_b=None,
  mc_rule: str = "lenient",
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """Decodes [N, A] completions (N = B * G) and scores accuracy and format, [B, G] each.

  Items of the other Video-R1 problem types (`problem_types_b`) are scored against their
  solution text (`solutions_b`) by the type's rule (`rewards.ANSWER_RULES`).

  Returns:
    ({name: [B, G]}, host metrics such as "accuracy/unparseable_frac" and the per-type
    mean accuracy "accuracy/type/<type>").
  """
  texts = [tok.decode(t[m.astype(bool)], skip_special_tokens=True) for t, m in zip(tokens, mask)]
  b = len(answers_b)
  texts_bg = [texts[i * num_samples : (i + 1) * num_samples] for i in range(b)]
  types_b = list(problem_types_b) if problem_types_b is not None else [None] * b
  if problem_types_b is None and (np.asarray(answers_b) < 0).any():
    raise ValueError(
      "the batch holds items without options (Video-R1 numerical, OCR, "
      "free-form or regression), whose rewards need their solution text; "
      "that is only on one process: train such data on one process"
    )
  answers = [
    int(a) if t in (None, "", "multiple choice") else solutions_b[i]
    for i, (a, t) in enumerate(zip(answers_b, types_b))
  ]
  return rewards_lib.score_text_rewards(
    ("accuracy", "format"), texts_bg, answers, options_b, problem_types_b=types_b, mc_rule=mc_rule
  )


def score_views(
  mesh: jax.sharding.Mesh,
  tok: tokenizer_lib.Tokenizer,
  rl: settings_lib.RLSettings,
  batch: Batch,
  host: dict,
  samples: dict[str, tuple[jax.Array, jax.Array]],
) -> tuple[dict[str, dict[str, jax.Array]], jax.Array | None, int, dict[str, float]]:
  """Rewards of every view's samples, scored on the host (every process, whole batch).

  Args:
    mesh: the device mesh (rewards come back sharded over its batch axes).
    tok: decodes the completions.
    rl: the RL settings (group sizes, multiple-choice rule).
    batch: the global device batch (answer_index).
    host: this process's host-side batch (options, problem types, solutions, media).
    samples: {view: (completions [N, A], mask [N, A])}.

  Returns:
    ({view: {"accuracy": [B, G], "format": [B, G]}}, saliency_eligible [B, G] or None,
    completion tokens sampled on the ordered view, host metrics (the disordered view's
    prefixed "disordered/")).
  """
  # Every process scores the whole global batch (cheap), so rewards need no gather later.
  gathered = multihost_utils.process_allgather(
    {"answer": batch["answer_index"], **samples},
    tiled=True,
  )
  options = host.get("options") if jax.process_count() == 1 else None
  # Text metadata is this process's slice: non-multiple-choice items need one process.
  typed = (
    dict(
      problem_types_b=host.get("problem_type"), solutions_b=host.get("solution"), mc_rule=rl.mc_rule
    )
    if jax.process_count() == 1
    else dict(mc_rule=rl.mc_rule)
  )
  group = dict(rl.sampled_views)
  scores, host_metrics = {}, {}
  for view in samples:
    tokens, mask = gathered[view]
    comps, metrics = score_rollouts(
      tok, tokens, mask, gathered["answer"], group[view], options, **typed
    )
    scores[view] = {k: sharding.global_from_full(mesh, comps[k]) for k in ("accuracy", "format")}
    prefix = "" if view == "ordered" else f"{view}/"
    host_metrics.update({f"{prefix}{k}": v for k, v in metrics.items()})
  eligible = None
  if typed.get("problem_types_b") is not None:  # Still images earn no saliency bonus.
    still_b = np.array([m == "image" for m in host["media"]])
    shape = (len(still_b), rl.num_generations)
    eligible = sharding.global_from_full(
      mesh, np.broadcast_to(~still_b[:, None], shape).astype(np.float32)
    )
  num_tokens = int(np.asarray(gathered["ordered"][1]).sum())
  return scores, eligible, num_tokens, host_metrics
