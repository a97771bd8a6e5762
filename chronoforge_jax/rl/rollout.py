"""KF-GRPO rollouts: sample both views, score them on the host.

sampler_calls: the sampler inputs of each view (G on the ordered keyframes, G' on the
               hybrid disordered view when the saliency bonus is on).
sample_views:  runs them through the KV-cache sampler.
score_views:   decodes every completion on the host and scores accuracy and format.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from chronoforge_jax import sharding
from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax.models import sampling
from chronoforge_jax.rl import kf_grpo
from chronoforge_jax.rl import rewards as rewards_lib

Batch = dict[str, Any]


def sampler_calls(
  vision_config,
  views: dict,
  batch: Batch,
  prompt_ids,
  prompt_mask,
  rl: ml_collections.ConfigDict,
  stop_tokens: tuple[int, ...],
) -> list[tuple[str, int, dict[str, Any], dict[str, Any]]]:
  """(view, rng fold-in key, sampler inputs, sampler kwargs but rng) of each rollout view:
  G samples on the ordered view, G' on the disordered one (with the saliency bonus).

  `sample_views` runs these through `sampling.generate`; `planning.compile_programs`
  lowers the same calls with `sampling.lower_generate`.
  """
  grid = kf_grpo.view_grid(batch["frames"].shape, batch["ordered_patches"].shape[1], vision_config)
  calls = []
  for name, g, key in (("ordered", rl.num_generations, 0), ("disordered", rl.num_disordered, 1)):
    if name == "disordered" and not rl.saliency.enabled:
      continue
    inputs = dict(
      input_ids=prompt_ids, attention_mask=prompt_mask, video_grid_thw=grid, **views[name]
    )
    # The sampler's log-probs are read only as old_logp (rl.use_rollout_logps, mu > 1) of
    # a view that is trained on; otherwise it computes none.
    trained = name == "ordered" or rl.train_on_disordered
    own_logps = rl.num_iterations > 1 and rl.get("use_rollout_logps", False) and trained
    calls.append(
      (
        name,
        key,
        inputs,
        dict(
          max_new_tokens=rl.max_new_tokens,
          num_samples=g,
          temperature=rl.temperature,
          top_k=rl.top_k,
          top_p=rl.top_p,
          stop_tokens=stop_tokens,
          logprobs=("model_logprobs",) if own_logps else (),
        ),
      )
    )
  return calls


def sample_views(
  model, views: dict, batch: Batch, rl: ml_collections.ConfigDict, stop_tokens: tuple[int, ...], rng
) -> dict[str, Any]:
  """Samples G completions on the ordered view and G' on the disordered view."""
  # The sampler checks and buckets prompts on the host: give every process the whole
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
  """Decodes [B*G, T] completions and scores accuracy and format, [B, G] each.

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
  rl: ml_collections.ConfigDict,
  batch: Batch,
  host: dict,
  samples: dict[str, tuple[jax.Array, jax.Array]],
):
  """Rewards of both views' samples, scored on the host (every process, whole batch)."""
  # Every process scores the whole global batch (cheap), so rewards need no gather later.
  gathered = multihost_utils.process_allgather(
    {
      "answer": batch["answer_index"],
      **{f"{k}_{i}": v for k, pair in samples.items() for i, v in enumerate(pair)},
    },
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
  rollout: dict[str, jax.Array] = {}
  comps, host_metrics = score_rollouts(
    tok,
    gathered["ordered_0"],
    gathered["ordered_1"],
    gathered["answer"],
    rl.num_generations,
    options,
    **typed,
  )
  rollout["accuracy"] = sharding.global_from_full(mesh, comps["accuracy"])
  rollout["format"] = sharding.global_from_full(mesh, comps["format"])
  if typed.get("problem_types_b") is not None:  # Still images earn no saliency bonus.
    still_b = np.array([m == "image" for m in host["media"]])
    rollout["saliency_eligible"] = sharding.global_from_full(
      mesh, np.broadcast_to(~still_b[:, None], comps["accuracy"].shape).astype(np.float32)
    )
  if "disordered" in samples:
    dis, dis_metrics = score_rollouts(
      tok,
      gathered["disordered_0"],
      gathered["disordered_1"],
      gathered["answer"],
      rl.num_disordered,
      options,
      **typed,
    )
    host_metrics.update({f"disordered/{k}": v for k, v in dis_metrics.items()})
    rollout["disordered_accuracy"] = sharding.global_from_full(mesh, dis["accuracy"])
    if rl.train_on_disordered:
      rollout["disordered_format"] = sharding.global_from_full(mesh, dis["format"])
  else:
    rollout["disordered_accuracy"] = jnp.zeros_like(rollout["accuracy"])
  return rollout, gathered, host_metrics
