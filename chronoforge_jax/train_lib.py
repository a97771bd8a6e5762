"""SFT warm-up and KF-GRPO training, written top to bottom.

  mesh -> input -> model (abstract) -> shardings -> jit(init) -> optimizer -> steps
  (compiled ahead of time, memory analysis logged) -> resume -> loop -> final save

One loop serves both modes: steps below `config.sft_steps` minimise the cross-entropy of
the reference answers; later steps are KF-GRPO steps. A KF-GRPO step:

  1. rollout (jit): encode each video's union of frames ONCE, gather the ordered-keyframe
     and hybrid-disordered views, sample G completions on each (KV-cache sampler).
  2. host: decode completions, score text rewards (accuracy, format) for every rollout.
  3. train step (jit, donated state): saliency bonus + advantages over the GLOBAL batch,
     clipped surrogate + KL on the ordered rollouts, AdamW update; a non-finite loss or
     gradient leaves the state unchanged and the host guard names the metric.

SFT and KF-GRPO steps have their own learning rates (`optax.sft_learning_rate`,
`optax.learning_rate`), each with its own warmup + cosine phase.

State is a plain pytree {params, opt_state, step}; params are an nnx.State whose
shardings come from the model's logical axis names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from typing import Any

from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from chronoforge_jax import checkpoint as ckpt_lib
from chronoforge_jax import metrics as metrics_lib
from chronoforge_jax import models, sampling, scoring, sharding
from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax.data import pipeline
from chronoforge_jax.models import config as model_config_lib
from chronoforge_jax.models import vlm
from chronoforge_jax.rl import grpo, kf_grpo
from chronoforge_jax.rl import rewards as rewards_lib

Batch = dict[str, Any]


# ----------------------------------------------------------------------------------------
# Model and optimizer construction.
# ----------------------------------------------------------------------------------------


def model_config(
  config: ml_collections.ConfigDict, tok: tokenizer_lib.Tokenizer | None
) -> model_config_lib.ModelConfig:
  """The model config: a preset (or a checkpoint's config.json) matched to the tokenizer.

  With `config.model.match_tokenizer`, the vocabulary size and the special token ids come
  from the tokenizer (the tiny synthetic-set tokenizer differs from Qwen's).
  """
  cfg = models.config_from_section(config.model)
  if config.model.get("match_tokenizer") and tok is not None:
    cfg = models.match_tokenizer(cfg, tok)
  return cfg


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Warmup + cosine decay, restarted at the switch from SFT warm-up to KF-GRPO.

  SFT steps use `optax.sft_learning_rate`, KF-GRPO steps `optax.learning_rate` (RL wants
  much smaller steps than supervised warm-up: a large RL step collapses the policy).
  """
  o = config.optax

  def phase(peak, steps):
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=peak,
      warmup_steps=min(o.warmup_steps, max(steps - 1, 0)),
      decay_steps=max(steps, 1),
      end_value=peak * o.end_lr_fraction,
    )

  rl = phase(o.learning_rate, config.total_steps - config.sft_steps)
  if config.sft_steps == 0:
    return rl
  return optax.join_schedules(
    [phase(o.sft_learning_rate, config.sft_steps), rl], [config.sft_steps]
  )


def make_optimizer(
  config: ml_collections.ConfigDict, params: nnx.State
) -> optax.GradientTransformation:
  """AdamW with the phase schedule, global-norm clipping, optional frozen tower."""
  o = config.optax
  tx = optax.chain(
    optax.clip_by_global_norm(o.grad_clip) if o.grad_clip > 0 else optax.identity(),
    optax.adamw(learning_rate_schedule(config), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay),
  )
  if o.freeze_vision:
    labels = jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if "visual" in jax.tree_util.keystr(path) else "train", params
    )
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  if o.grad_accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=o.grad_accum)
  return tx


def _opt_shardings(abstract_opt, abstract_params, param_shardings, mesh):
  """Optimizer-state shardings: a leaf mirroring a param (Adam's mu/nu, accumulated
  gradients) takes that param's sharding; anything else (counts) is replicated.

  Matching is by key-path suffix and shape, so it works through any optax wrapper
  (chain, multi_transform with masked nodes, MultiSteps).
  """
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  by_path = {}
  for (path, leaf), shard in zip(
    jax.tree_util.tree_flatten_with_path(abstract_params)[0], jax.tree.leaves(param_shardings)
  ):
    by_path[jax.tree_util.keystr(path)] = (leaf.shape, shard)

  def pick(path, leaf):
    key = jax.tree_util.keystr(path)
    for suffix, (shape, shard) in by_path.items():
      if key.endswith(suffix) and getattr(leaf, "shape", None) == shape:
        return shard
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract_opt)


def batch_sharding(mesh, shape: tuple[int, ...]) -> jax.sharding.NamedSharding:
  """Leading (batch) dim over ('data', 'fsdp') where it divides; the rest replicated.

  Args:
    mesh: the device mesh.
    shape: the GLOBAL shape of the array.
  """
  axes = ("batch",) + (None,) * (len(shape) - 1)
  return jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(axes, shape=shape, mesh=mesh))


def to_global(mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Host NumPy batch (this process's rows) -> global jax Arrays sharded on batch."""
  out = {}
  for k, v in local.items():
    global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
    out[k] = jax.make_array_from_process_local_data(
      batch_sharding(mesh, global_shape), v, global_shape
    )
  return out


def global_from_full(mesh, full: np.ndarray) -> jax.Array:
  """The same full global array on every process -> a batch-sharded jax Array."""
  return jax.make_array_from_callback(
    full.shape, batch_sharding(mesh, full.shape), lambda idx: full[idx]
  )


# ----------------------------------------------------------------------------------------
# The pure step functions.
# ----------------------------------------------------------------------------------------


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
          bucket=False,
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


# ----------------------------------------------------------------------------------------
# Host-side reward scoring.
# ----------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------


def build_state(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, mcfg: model_config_lib.ModelConfig
):
  """The train state's structure, shardings and initialisers (nothing is allocated).

  State: {params, opt_state, step} plus, with beta > 0, `ref`: the frozen reference.

  Returns:
    (graphdef, tx, state_shardings, abstract_state (ShapeDtypeStructs with shardings),
    init_state: jitted (params=None) -> state, reset_reference: jitted, donating
    state -> state with ref = params).
  """
  dtype = jnp.dtype(config.model.dtype)
  param_dtype = jnp.dtype(config.model.param_dtype)

  def create_model(seed):
    return vlm.VideoLanguageModel(
      mcfg,
      rngs=nnx.Rngs(seed),
      dtype=dtype,
      param_dtype=param_dtype,
      remat_policy=config.model.remat_policy,
      attention_impl=config.model.attention_impl,
      attention_chunk=config.model.attention_chunk,
      scan_layers=config.model.get("scan_layers", True),
    )

  abstract_model = nnx.eval_shape(lambda: create_model(config.seed))
  graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)

  # --- Shardings: params by logical axis names; optimizer state mirrors the params ----
  param_shardings = sharding.state_shardings(abstract_params, mesh)
  tx = make_optimizer(config, abstract_params)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  # With beta > 0 the frozen reference lives in the state (held once, sharded like the
  # params, checkpointed): it is the policy at the start of the KF-GRPO phase.
  with_ref = config.rl.beta > 0
  state_shardings = dict(
    params=param_shardings,
    opt_state=_opt_shardings(abstract_opt, abstract_params, param_shardings, mesh),
    step=replicated,
  )
  if with_ref:
    state_shardings["ref"] = param_shardings

  @functools.partial(jax.jit, out_shardings=state_shardings)
  def init_state(params=None):
    if params is None:
      params = nnx.split(create_model(config.seed), nnx.Param)[1]
    state = dict(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))
    if with_ref:
      state["ref"] = jax.tree.map(jnp.copy, params)
    return state

  @functools.partial(jax.jit, donate_argnums=0, out_shardings=state_shardings)
  def reset_reference(state):
    return dict(state, ref=jax.tree.map(jnp.copy, state["params"]))

  with jax.set_mesh(mesh):
    abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      jax.eval_shape(init_state),
      state_shardings,
    )

  return graphdef, tx, state_shardings, abstract_state, init_state, reset_reference


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything the loop needs that depends only on the config and the mesh."""

  mesh: jax.sharding.Mesh
  tokenizer: tokenizer_lib.Tokenizer
  model_config: model_config_lib.ModelConfig
  graphdef: Any
  tx: optax.GradientTransformation
  state_shardings: Any
  abstract_state: Any
  init_state: Any  # jitted: (params=None) -> state, placed in state_shardings
  reset_reference: Any  # jitted, donating: state -> state with ref = params
  sft_step: Any  # jitted, donates the state
  grpo_step: Any  # jitted, donates the state
  views: Any  # jitted: (params, batch) -> both views' video arrays
  logprobs: Any  # jitted: (params, batch, completions, mask, *, view,
  #          num_samples) -> [B*G, T]
  stop_tokens: tuple[int, ...]


def setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Setup:
  """Builds the model's abstract state, its shardings and the jitted step functions."""
  # --- Model: abstract first, then initialised directly into its shardings ------------
  tok = tokenizer_lib.Tokenizer.from_dir(
    config.input.tokenizer_dir or os.path.join(config.input.data_dir, "tokenizer")
  )
  mcfg = model_config(config, tok)
  graphdef, tx, state_shardings, abstract_state, init_state, reset_reference = build_state(
    config, mesh, mcfg
  )
  stop_tokens = tuple(
    t for t in (mcfg.eos_token_id, tok.token_to_id("<|endoftext|>")) if t is not None
  )
  return Setup(
    mesh=mesh,
    tokenizer=tok,
    model_config=mcfg,
    graphdef=graphdef,
    tx=tx,
    state_shardings=state_shardings,
    abstract_state=abstract_state,
    init_state=init_state,
    reset_reference=reset_reference,
    **step_functions(config, mesh, graphdef, tx, state_shardings),
    stop_tokens=stop_tokens,
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


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains to `config.total_steps`, resuming from `workdir` if it holds a checkpoint.

  Args:
    config: a training config (configs/kf_grpo.py), validated by the caller
      (`configs.kf_grpo.validate`; launch/train.py does it before anything compiles).
    workdir: checkpoints, metrics and plots go here.

  Returns:
    The metrics of the last step run.
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:  # launch.eval evaluates with the prompt trained on.
    scoring.write_eval_defaults(
      workdir, prompt_template=config.input.prompt_template, scoring=config.input.eval_scoring
    )

  # --- Mesh, model, shardings, step functions -------------------------------------------
  mesh = sharding.mesh_from_config(config.mesh)
  s = setup(config, mesh)
  _say(
    f"mesh {dict(mesh.shape)}; model {config.model.hf_dir or config.model.preset}; "
    f"workdir {workdir}"
  )

  with jax.set_mesh(mesh):
    # --- Input ------------------------------------------------------------------------
    dataset = pipeline.make_dataset(
      config.input.data_dir,
      s.tokenizer,
      pipeline.settings_from_config(config),
      shard_index=jax.process_index(),
      shard_count=jax.process_count(),
    )
    data_iter = iter(dataset)

    # --- Resume: own latest -> config.ckpt.resume -> config.ckpt.init_from -> scratch ---
    ckpt = ckpt_lib.Checkpointer.from_config(workdir, config.ckpt)
    restored = ckpt_lib.restore_or_init(
      ckpt,
      s.abstract_state,
      resume=config.ckpt.resume,
      init_from=config.ckpt.init_from,
      abstract_params=s.abstract_state["params"],
      data_iter=data_iter,
    )
    if restored.state is not None:
      state = restored.state
    elif restored.params is not None:
      state = s.init_state(restored.params)
    else:
      state = s.init_state()
    start_step = int(restored.step)
    rng = restored.rng if restored.rng is not None else jax.random.key(config.seed)
    _say(f"starting at step {start_step} (from {restored.source})")

    compiled: dict[tuple, Any] = {}

    def run_step(kind, *args):
      """AOT-compiles each (kind, shapes) once, logging its memory analysis, then runs."""
      key = (kind,) + tuple((k, v.shape) for a in args[1:] for k, v in sorted(a.items()))
      if key not in compiled:
        t0 = time.perf_counter()
        compiled[key] = (s.sft_step if kind == "sft" else s.grpo_step).lower(*args).compile()
        _say(
          f"compiled the {kind} step in {time.perf_counter() - t0:.1f}s; memory: "
          f"{_memory_summary(compiled[key].memory_analysis())}"
        )
      return compiled[key](*args)

    # --- Metrics ----------------------------------------------------------------------
    writer = metrics_lib.MetricsWriter(workdir, resume_step=start_step)
    progress = metrics_lib.ProgressLogger(
      config.total_steps,
      every=config.log_every,
      keys=(
        "loss",
        "sft/answer_nll",
        "reward/accuracy",
        "reward/format",
        "saliency/ordered_acc",
        "saliency/disordered_acc",
        "kl",
        "clip_frac",
        "time/data_wait_frac",
      ),
    )
    guard = metrics_lib.BadStepGuard(config.max_bad_steps, watch=["loss", "grad_norm"])
    preempt = ckpt_lib.PreemptionGuard()

    # --- Loop -------------------------------------------------------------------------
    step_metrics: dict[str, float] = {}
    step = start_step
    waits = InputWaitMeter()
    timer = PhaseTimer()
    try:
      while step < config.total_steps:
        with waits.waiting():
          local, host = pipeline.split_host(next(data_iter))
        batch = to_global(mesh, local)
        tokens, host_metrics = 0, {}
        if step < config.sft_steps:
          state, metrics = timer("update", run_step, "sft", state, batch)
        else:
          if step == config.sft_steps > 0 and "ref" in state:
            state = s.reset_reference(state)  # KL anchors to the SFT'd policy.
          rollout, tokens, host_metrics = make_rollout(
            s, config, state, batch, host, jax.random.fold_in(rng, step), timer
          )
          for _ in range(config.rl.num_iterations):
            state, metrics = timer("update", run_step, "grpo", state, batch, rollout)
        metrics = jax.device_get(metrics)
        step += 1
        if not guard.check(step, metrics):
          continue  # The step left the state unchanged; the last checkpoint stays good.
        step_metrics = {
          **metrics_lib.to_scalars(metrics),
          **host_metrics,
          **timer.metrics(),
          **waits.step_done(compiled=len(compiled)),
        }
        writer.write_scalars(step, step_metrics)
        progress.update(step, step_metrics, tokens=tokens)
        stop = preempt.should_stop()
        ckpt.maybe_save(
          step, state, rng=rng, data_iter=data_iter, force=stop or step == config.total_steps
        )
        if stop:
          _say(f"preempted: saved step {step}; rerun the same command to resume")
          break
    finally:
      ckpt.wait()
      ckpt.close()
      writer.close()
      preempt.close()
  _say(f"done at step {step}; {waits.summary()}")
  return step_metrics


class InputWaitMeter:
  """How much of the loop's time goes to waiting for the input pipeline.

  A step is timed from the end of the previous one (so host work, rollouts and the
  device step are all in it); the wait is the time blocked in `next(data_iter)`. Steps
  that compiled a program are left out of the totals (compile time is not step time).
  """

  def __init__(self):
    self._last = time.perf_counter()
    self._wait = 0.0
    self._compiled = 0
    self.total_wait = self.total_time = 0.0
    self.steps = 0

  @contextlib.contextmanager
  def waiting(self):
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self._wait = time.perf_counter() - t0

  def step_done(self, *, compiled: int) -> dict[str, float]:
    """Closes a step; `compiled` counts the programs compiled so far.

    Returns:
      metrics: time/step_s, time/data_wait_s and the running time/data_wait_frac.
    """
    now = time.perf_counter()
    step_s, self._last = now - self._last, now
    if compiled == self._compiled:
      self.total_wait += self._wait
      self.total_time += step_s
      self.steps += 1
    self._compiled = compiled
    return {
      "time/step_s": step_s,
      "time/data_wait_s": self._wait,
      "time/data_wait_frac": self.total_wait / max(self.total_time, 1e-9),
    }

  def summary(self) -> str:
    return (
      f"input wait {self.total_wait:.1f} s of {self.total_time:.1f} s "
      f"({self.total_wait / max(self.total_time, 1e-9):.1%}) over {self.steps} "
      "steps that compiled nothing"
    )


class PhaseTimer:
  """Wall time per phase of a step: each timed call is waited for before the clock stops.

  Waiting costs little here: every phase's output feeds the next (rollout tokens are
  decoded on the host, rewards feed the update), so the device has nothing to overlap.
  """

  def __init__(self):
    self.seconds: dict[str, float] = {}

  def __call__(self, name: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
    return out

  def metrics(self) -> dict[str, float]:
    """{"time/<phase>_s": seconds} of the phases timed since the last call."""
    out = {f"time/{name}_s": t for name, t in self.seconds.items()}
    self.seconds = {}
    return out


def make_rollout(
  s: Setup,
  config: ml_collections.ConfigDict,
  state,
  batch: Batch,
  host: dict,
  rng,
  timer: PhaseTimer | None = None,
) -> tuple[dict[str, jax.Array], int, dict[str, float]]:
  """Samples both views and scores them on the host.

  Phases timed by `timer`: views (vision tower), rollout (sampler prefill + decode on
  both views), scoring (host: gather, decode, rewards), logprobs (old-policy and
  reference passes). With `rl.use_rollout_logps` the old-policy log-probs (needed when
  `rl.num_iterations` > 1) are the sampler's, not a second forward pass.

  Returns:
    (train-step inputs, completion tokens sampled on the ordered view, host-side reward
    metrics such as the unparseable fraction of each view).
  """
  rl = config.rl
  timer = timer or PhaseTimer()
  model = nnx.merge(s.graphdef, state["params"])
  views = timer("views", s.views, state["params"], batch)
  out = timer("rollout", sample_views, model, views, batch, rl, s.stop_tokens, rng)
  samples = {k: (v.tokens, v.completion_mask) for k, v in out.items()}
  rollout, gathered, host_metrics = timer("scoring", _score_views, s, rl, batch, host, samples)
  trained = [("ordered", "", rl.num_generations)]
  if rl.train_on_disordered:
    trained.append(("disordered", "disordered_", rl.num_disordered))
  for view, prefix, g in trained:
    completions, mask = samples[view]
    rollout[f"{prefix}completions"], rollout[f"{prefix}mask"] = completions, mask
    logp = functools.partial(timer, "logprobs", s.logprobs, view=view, num_samples=g)
    if rl.num_iterations > 1:
      # The sampler's own log-probs where `sampler_calls` asked for them, else a pass.
      own = out[view].model_logprobs
      rollout[f"{prefix}old_logp"] = (
        own if own is not None else logp(state["params"], batch, completions, mask)
      )
    if "ref" in state:
      rollout[f"{prefix}ref_logp"] = logp(state["ref"], batch, completions, mask)
  return rollout, int(np.asarray(gathered["ordered_1"]).sum()), host_metrics


def _score_views(
  s: Setup,
  rl: ml_collections.ConfigDict,
  batch: Batch,
  host: dict,
  samples: dict[str, tuple[jax.Array, jax.Array]],
):
  """Rewards of both views' samples, scored on the host (every process, whole batch)."""
  mesh, tok = s.mesh, s.tokenizer
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
  rollout["accuracy"] = global_from_full(mesh, comps["accuracy"])
  rollout["format"] = global_from_full(mesh, comps["format"])
  if typed.get("problem_types_b") is not None:  # Still images earn no saliency bonus.
    still_b = np.array([m == "image" for m in host["media"]])
    rollout["saliency_eligible"] = global_from_full(
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
    rollout["disordered_accuracy"] = global_from_full(mesh, dis["accuracy"])
    if rl.train_on_disordered:
      rollout["disordered_format"] = global_from_full(mesh, dis["format"])
  else:
    rollout["disordered_accuracy"] = jnp.zeros_like(rollout["accuracy"])
  return rollout, gathered, host_metrics


def _memory_summary(mem) -> str:
  if mem is None:
    return "n/a"
  fields = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "temp_size_in_bytes",
    "generated_code_size_in_bytes",
  )
  return ", ".join(
    f"{f.replace('_size_in_bytes', '')}={getattr(mem, f, 0) / 2**20:.1f}MiB" for f in fields
  )
