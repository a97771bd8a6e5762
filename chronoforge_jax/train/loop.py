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

State, optimizer and shardings: `train.state`; the jitted programs: `train.steps`; the
rollout: `rl.rollout`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

from flax import nnx
import jax
import ml_collections
import optax

from chronoforge_jax import sharding
from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax.data import pipeline
from chronoforge_jax.models import config as model_config_lib
from chronoforge_jax.rl import rollout as rollout_lib
from chronoforge_jax.rl import scoring
from chronoforge_jax.rl import settings as settings_lib
from chronoforge_jax.train import checkpoint as ckpt_lib
from chronoforge_jax.train import metrics as metrics_lib
from chronoforge_jax.train import state as state_lib
from chronoforge_jax.train import steps as steps_lib

Batch = dict[str, Any]


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
  #          num_samples) -> [N, A]
  stop_tokens: tuple[int, ...]
  rl: settings_lib.RLSettings


def setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Setup:
  """Builds the model's abstract state, its shardings and the jitted step functions."""
  # --- Model: abstract first, then initialised directly into its shardings ------------
  tok = tokenizer_lib.Tokenizer.from_dir(
    config.input.tokenizer_dir or os.path.join(config.input.data_dir, "tokenizer")
  )
  mcfg = state_lib.model_config(config, tok)
  graphdef, tx, state_shardings, abstract_state, init_state, reset_reference = (
    state_lib.build_state(config, mesh, mcfg)
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
    **steps_lib.step_functions(config, mesh, graphdef, tx, state_shardings),
    stop_tokens=stop_tokens,
    rl=settings_lib.RLSettings.from_config(config.rl),
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
      inputs = args[1:]  # The batch (and the rollout): their structure and shapes.
      key = (kind, jax.tree.structure(inputs), tuple(x.shape for x in jax.tree.leaves(inputs)))
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
    waits = metrics_lib.InputWaitMeter()
    timer = metrics_lib.PhaseTimer()
    try:
      while step < config.total_steps:
        with waits.waiting():
          local, host = pipeline.split_host(next(data_iter))
        batch = sharding.to_global(mesh, local)
        tokens, host_metrics = 0, {}
        if step < config.sft_steps:
          state, metrics = timer("update", run_step, "sft", state, batch)
        else:
          if step == config.sft_steps > 0 and "ref" in state:
            state = s.reset_reference(state)  # KL anchors to the SFT'd policy.
          rollout, tokens, host_metrics = make_rollout(
            s, state, batch, host, jax.random.fold_in(rng, step), timer
          )
          for _ in range(s.rl.num_iterations):
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


def make_rollout(
  s: Setup,
  state,
  batch: Batch,
  host: dict,
  rng,
  timer: metrics_lib.PhaseTimer | None = None,
) -> tuple[rollout_lib.Rollout, int, dict[str, float]]:
  """Samples both views and scores them on the host.

  Phases timed by `timer`: views (vision tower), rollout (sampler prefill + decode on
  both views), scoring (host: gather, decode, rewards), logprobs (old-policy and
  reference passes of the trained views). With `rl.use_rollout_logps` the old-policy
  log-probs (needed when `rl.num_iterations` > 1) are the sampler's, not a second pass.

  Returns:
    (the Rollout, completion tokens sampled on the ordered view, host-side reward
    metrics such as the unparseable fraction of each view).
  """
  rl = s.rl
  timer = timer or metrics_lib.PhaseTimer()
  model = nnx.merge(s.graphdef, state["params"])
  video = timer("views", s.views, state["params"], batch)
  out = timer("rollout", rollout_lib.sample_views, model, video, batch, rl, s.stop_tokens, rng)
  samples = {k: (v.tokens, v.completion_mask) for k, v in out.items()}
  scores, eligible, num_tokens, host_metrics = timer(
    "scoring", rollout_lib.score_views, s.mesh, s.tokenizer, rl, batch, host, samples
  )
  trained = dict(rl.trained_views)
  views = {}
  for view, (completions, mask) in samples.items():
    logps = {}
    if view in trained:
      logp = functools.partial(timer, "logprobs", s.logprobs, view=view, num_samples=trained[view])
      if rl.num_iterations > 1:
        # The sampler's own log-probs where `sampler_calls` asked for them, else a pass.
        own = out[view].model_logprobs
        logps["old_logp"] = (
          own if own is not None else logp(state["params"], batch, completions, mask)
        )
      if "ref" in state:
        logps["ref_logp"] = logp(state["ref"], batch, completions, mask)
    views[view] = rollout_lib.ViewRollout(
      completions=completions, mask=mask, **scores[view], **logps
    )
  rollout = rollout_lib.Rollout(
    ordered=views["ordered"], disordered=views.get("disordered"), saliency_eligible=eligible
  )
  return rollout, num_tokens, host_metrics


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
