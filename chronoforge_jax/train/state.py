"""The train state: model config, optimizer, shardings and initialisers.

State is a plain pytree {params, opt_state, step} (plus `ref`, the frozen reference
policy, when rl.beta > 0); params are an nnx.State whose shardings come from the model's
logical axis names, and the optimizer state mirrors them. Nothing here allocates: `build_state`
returns abstract shapes and jitted initialisers that write straight into the shardings.

SFT and KF-GRPO steps have their own learning rates (`optax.sft_learning_rate`,
`optax.learning_rate`), each with its own warmup + cosine phase.
"""

from __future__ import annotations

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax

from chronoforge_jax import models, sharding
from chronoforge_jax import settings as settings_lib
from chronoforge_jax import tokenizer as tokenizer_lib
from chronoforge_jax.models import config as model_config_lib
from chronoforge_jax.models import vlm
from chronoforge_jax.settings import is_int, is_number, require


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerSettings:
  """The `optax` config section plus the step counts its schedule spans.

  Attributes:
    total_steps: optimizer steps, the SFT warm-up included.
    sft_steps: steps < sft_steps are cross-entropy steps on the reference answers.
    learning_rate, sft_learning_rate: the peak rates of the KF-GRPO and SFT phases.
    warmup_steps: linear warmup at the start of each phase.
    end_lr_fraction: the cosine decays to this fraction of each phase's peak.
    b1, b2, weight_decay: AdamW's.
    grad_clip: global-norm clipping, 0 disables it.
    freeze_vision: the vision tower gets no updates.
    grad_accum: micro-batches per optimizer update.
  """

  total_steps: int
  sft_steps: int = 0
  learning_rate: float = 1e-6
  sft_learning_rate: float = 1e-6
  warmup_steps: int = 10
  end_lr_fraction: float = 0.1
  b1: float = 0.9
  b2: float = 0.999
  weight_decay: float = 0.01
  grad_clip: float = 1.0
  freeze_vision: bool = False
  grad_accum: int = 1

  def __post_init__(self):
    require(is_int(self.total_steps, 1), self, "total_steps", self.total_steps, "need an int >= 1")
    require(
      is_int(self.sft_steps, 0) and self.sft_steps <= self.total_steps,
      self,
      "sft_steps",
      self.sft_steps,
      f"need an int with 0 <= sft_steps <= total_steps ({self.total_steps})",
    )
    for field in ("learning_rate", "sft_learning_rate"):
      value = getattr(self, field)
      require(is_number(value) and value > 0, self, field, value, "need a number > 0")
    require(
      is_int(self.warmup_steps, 0), self, "warmup_steps", self.warmup_steps, "need an int >= 0"
    )
    for field in ("end_lr_fraction", "b1", "b2"):
      value = getattr(self, field)
      require(is_number(value, 0) and value <= 1, self, field, value, "need 0 <= value <= 1")
    for field in ("weight_decay", "grad_clip"):
      value = getattr(self, field)
      require(is_number(value, 0), self, field, value, "need a number >= 0 (0 turns it off)")
    require(
      isinstance(self.freeze_vision, bool),
      self,
      "freeze_vision",
      self.freeze_vision,
      "need true/false",
    )
    require(is_int(self.grad_accum, 1), self, "grad_accum", self.grad_accum, "need an int >= 1")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> OptimizerSettings:
    """From a training config's `optax` section and its step counts (`config.optax.*`,
    `config.total_steps` and `config.sft_steps` in errors)."""
    with settings_lib.renamed(
      {"total_steps": "config.total_steps", "sft_steps": "config.sft_steps"}
    ):
      steps = cls(total_steps=config.total_steps, sft_steps=config.sft_steps)
    return settings_lib.from_section(
      cls, config.optax, "optax", total_steps=steps.total_steps, sft_steps=steps.sft_steps
    )


def learning_rate_schedule(o: OptimizerSettings) -> optax.Schedule:
  """Warmup + cosine decay, restarted at the switch from SFT warm-up to KF-GRPO.

  SFT steps use `sft_learning_rate`, KF-GRPO steps `learning_rate` (RL wants much smaller
  steps than supervised warm-up: a large RL step collapses the policy).
  """

  def phase(peak, steps):
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=peak,
      warmup_steps=min(o.warmup_steps, max(steps - 1, 0)),
      decay_steps=max(steps, 1),
      end_value=peak * o.end_lr_fraction,
    )

  rl = phase(o.learning_rate, o.total_steps - o.sft_steps)
  if o.sft_steps == 0:
    return rl
  return optax.join_schedules([phase(o.sft_learning_rate, o.sft_steps), rl], [o.sft_steps])


def make_optimizer(
  config: ml_collections.ConfigDict, params: nnx.State
) -> optax.GradientTransformation:
  """AdamW with the phase schedule, global-norm clipping, optional frozen tower."""
  o = OptimizerSettings.from_config(config)
  tx = optax.chain(
    optax.clip_by_global_norm(o.grad_clip) if o.grad_clip > 0 else optax.identity(),
    optax.adamw(learning_rate_schedule(o), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay),
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
