"""Memory plan of a KF-GRPO run: abstract, or compiled for a TPU slice ahead of time.

The quick plan, from the config and the mesh alone (abstract shapes, `jax.eval_shape`), per
device: params, optimizer state, the frozen reference params (beta > 0), and the KV cache
of one rollout (B prompts stored once, plus B x G answers: the sampler's shared-prefix
cache, `sampling.share_prefix`). It leaves activations out:

  rows = planning.plan(config, mesh, model_cfg, frame_size=448)
  print(planning.format_plan(rows, mesh))

The compiled plan (`launch.plan --topology=v5p-16 --compile`): with `libtpu` installed, a
CPU-only machine compiles for a real TPU slice (`jax.experimental.topologies`: devices
that can compile but not run). `compile_programs` lowers every program a KF-GRPO step
runs, the trainer's own jitted functions (`steps_lib.step_functions`, the sampler through
`sampling.lower_generate`), on abstract inputs of the config's real shapes, and reads
XLA's memory analysis (per-chip arguments, outputs, temporaries, code, peak) and cost
analysis (FLOPs, the compiler's time estimate) of each:

  topo = planning.parse_topology("v5p-16")
  mesh = planning.topology_mesh(topo, config.mesh)
  reports = planning.compile_programs(config, mesh, model_cfg, frame_size=448)
  print(planning.format_reports(reports, topo))
  line, fits = planning.fit_line(reports, topo)
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Any, Callable, Mapping, Sequence

from flax import nnx
import jax
from jax.experimental import topologies
import jax.numpy as jnp
import ml_collections

from chronoforge_jax import sharding
from chronoforge_jax.data import pipeline
from chronoforge_jax.models import config as model_config_lib
from chronoforge_jax.models import sampling
from chronoforge_jax.models import text as text_lib
from chronoforge_jax.rl import rollout as rollout_lib
from chronoforge_jax.rl import settings as settings_lib
from chronoforge_jax.train import state as state_lib
from chronoforge_jax.train import steps as steps_lib


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of the plan.

  Attributes:
    name: what is counted.
    elements: number of array elements (all devices together).
    global_bytes: bytes over all devices, counting each element once.
    device_bytes: bytes on the most loaded device.
  """

  name: str
  elements: int
  global_bytes: int
  device_bytes: int


def _device_bytes(shape, dtype, shard: jax.sharding.Sharding) -> int:
  return math.prod(shard.shard_shape(tuple(shape))) * jnp.dtype(dtype).itemsize


def tree_row(name: str, abstract_tree: Any, shardings: Any) -> Row:
  """Sizes of a tree of ShapeDtypeStructs placed with a matching tree of shardings."""
  leaves = jax.tree.leaves(abstract_tree)
  shards = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  if len(leaves) != len(shards):
    raise ValueError(f"{name}: {len(leaves)} arrays but {len(shards)} shardings")
  elements = sum(math.prod(x.shape) for x in leaves)
  global_bytes = sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves)
  device_bytes = sum(_device_bytes(x.shape, x.dtype, s) for x, s in zip(leaves, shards))
  return Row(name, elements, global_bytes, device_bytes)


def rollout_prompt_length(config: ml_collections.ConfigDict, frame_size: int) -> int:
  """Tokens of the longest rollout prompt: the largest text bucket plus one view's video."""
  st = pipeline.settings_from_config(config)
  video = pipeline.num_video_tokens(
    st.num_patches, frame_size, frame_size, st.patch_size, st.merge_size
  )
  return max(st.prompt_buckets) + video


def rollout_cache_shapes(
  config: ml_collections.ConfigDict, model_cfg: model_config_lib.ModelConfig, frame_size: int
) -> dict[str, tuple[int, ...]]:
  """K (and V) shapes of one view's rollout cache, as the sampler lays it out
  (`sampling.share_prefix`): each prompt once, each of its G answers on its own.

  Returns:
    {"prefix": [layers, B, prompt, kv_heads, head_dim],
     "suffix": [layers, B*G, answer slots (max_new_tokens - 1), kv_heads, head_dim]},
    G the larger of the two views' group sizes.
  """
  t = model_cfg.text
  b = config.input.batch_size
  g = max(config.rl.num_generations, config.rl.num_disordered)
  head_dim = t.hidden_size // t.num_attention_heads
  layers, kv = t.num_hidden_layers, t.num_key_value_heads
  return {
    "prefix": (layers, b, rollout_prompt_length(config, frame_size), kv, head_dim),
    "suffix": (layers, b * g, sampling.answer_slots(config.rl.max_new_tokens), kv, head_dim),
  }


def plan(
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  model_cfg: model_config_lib.ModelConfig,
  *,
  frame_size: int = 448,
) -> list[Row]:
  """The memory rows of a run with `config` on `mesh` (nothing is allocated).

  Args:
    config: a training config (configs/kf_grpo.py).
    mesh: the device mesh (fake CPU devices are fine).
    model_cfg: the model config (`state_lib.model_config`).
    frame_size: frame side in pixels after preprocessing (sets the video token count).

  Returns:
    Rows: vision params, text params, optimizer state, reference params (beta > 0),
    rollout KV cache (K and V of the prompts once and of the G answers per prompt, one
    view), and the total.
  """
  # The trainer's own state structure and shardings, so the plan is what training holds.
  _, _, shardings, abstract, _, _ = state_lib.build_state(config, mesh, model_cfg)
  rows = [
    tree_row(f"{part} params", abstract["params"][part], shardings["params"][part])
    for part in ("visual", "text")
  ]
  rows.append(tree_row("optimizer state", abstract["opt_state"], shardings["opt_state"]))
  if "ref" in abstract:
    rows.append(tree_row("reference params (beta > 0)", abstract["ref"], shardings["ref"]))
  dtype = jnp.dtype(config.model.dtype)
  shapes = list(rollout_cache_shapes(config, model_cfg, frame_size).values())
  specs = [sharding.logical_to_spec(text_lib.CACHE_AXES, shape=s, mesh=mesh) for s in shapes]
  kv = tree_row(
    "rollout KV cache (K+V)",
    [jax.ShapeDtypeStruct(s, dtype) for s in shapes] * 2,
    [jax.sharding.NamedSharding(mesh, spec) for spec in specs] * 2,
  )
  rows.append(kv)
  rows.append(
    Row(
      "total",
      sum(r.elements for r in rows),
      sum(r.global_bytes for r in rows),
      sum(r.device_bytes for r in rows),
    )
  )
  return rows


def _gib(n: int) -> str:
  return f"{n / 2**30:9.3f} GiB"


def format_plan(rows: list[Row], mesh: jax.sharding.Mesh) -> str:
  """A fixed-width table of the rows."""
  lines = [
    f"mesh {dict(mesh.shape)} ({mesh.size} devices)",
    f"{'':34s} {'elements':>16s} {'all devices':>13s} {'per device':>13s}",
  ]
  for r in rows:
    lines.append(f"{r.name:34s} {r.elements:16,d} {_gib(r.global_bytes)} {_gib(r.device_bytes)}")
  return "\n".join(lines)


def measured_device_bytes(tree: Any) -> int:
  """Bytes of concrete jax Arrays on their most loaded device (to check a plan)."""
  per_device: dict[Any, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  return max(per_device.values()) if per_device else 0


# ----------------------------------------------------------------------------------------
# TPU slices.
# ----------------------------------------------------------------------------------------

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation: what `get_topology_desc` calls it and what a chip holds.

  Attributes:
    topology_prefix: the generation in libtpu's topology names ("v5" in "v5:2x2x2").
    dims: 3 for the 3D-torus generations (v4, v5p), 2 for v5e and v6e.
    cores_per_chip: TensorCores per chip: Cloud TPU counts them in the slice names of
      v4 and v5p (v5p-16 is 8 chips), chips in those of v5e and v6e.
    chip_config: libtpu's chip config ("megacore": one device per chip).
    hbm_bytes: HBM per chip.
    peak_flops: dense bf16 FLOP/s per chip (for the utilisation bound).
  """

  topology_prefix: str
  dims: int
  cores_per_chip: int
  chip_config: str
  hbm_bytes: int
  peak_flops: float


CHIPS: dict[str, Chip] = {
  "v4": Chip("v4", 3, 2, "megacore", 32 * GIB, 275e12),
  "v5p": Chip("v5", 3, 2, "megacore", 95 * GIB, 459e12),
  "v5e": Chip("v5e", 2, 1, "default", 16 * GIB, 197e12),
  "v6e": Chip("v6e", 2, 1, "default", 32 * GIB, 918e12),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A Cloud TPU slice, e.g. v5p-16: 8 chips as libtpu's "v5:2x2x2".

  Attributes:
    name: the slice as Cloud TPU spells it ("v5p-16", "v5e-256").
    generation: a key of CHIPS.
    chips: chips in the slice (one JAX device each).
    shape: chips along each torus dimension.
    hbm_bytes: HBM per chip this plan checks against.
  """

  name: str
  generation: str
  chips: int
  shape: tuple[int, ...]
  hbm_bytes: int

  @property
  def chip(self) -> Chip:
    return CHIPS[self.generation]

  @property
  def topology_name(self) -> str:
    return f"{self.chip.topology_prefix}:{'x'.join(str(d) for d in self.shape)}"


def _torus_shape(chips: int, dims: int) -> tuple[int, ...]:
  """Cloud TPU's slice shapes: from 1x1(x1), double the smallest dimension (the last of
  equals), e.g. v5p 4 chips 2x2x1, 8 2x2x2, 16 2x2x4, 32 2x4x4, 64 4x4x4; v5e 16 4x4."""
  shape = [2, 2, 1] if dims == 3 and chips >= 4 else [1] * dims  # 3D: from a 2x2x1 board.
  while math.prod(shape) < chips:
    small = min(shape)
    shape[max(i for i, d in enumerate(shape) if d == small)] *= 2
  return tuple(shape)


def parse_topology(name: str, hbm_gib: float | None = None) -> Topology:
  """A slice name (v5p-8, v5p-64, v5e-256, v6e-64, v4-32) -> Topology.

  Args:
    name: GENERATION-N; N counts TensorCores for v4 and v5p (v5p-16 = 8 chips), chips for
      v5e and v6e; N / cores-per-chip must be a power of two.
    hbm_gib: check against this HBM per chip instead of the chip's own (e.g. to plan
      for a share of it).

  Returns:
    The Topology.
  """
  m = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name.strip().lower())
  if not m:
    raise ValueError(
      f"--topology={name!r}: use a Cloud TPU slice name GENERATION-N with "
      f"GENERATION one of {sorted(CHIPS)}, e.g. v5p-16, v5e-32, v6e-64"
    )
  generation, n = m.group(1), int(m.group(2))
  chip = CHIPS[generation]
  chips = n // chip.cores_per_chip
  if n % chip.cores_per_chip or chips < 1 or chips & (chips - 1):
    unit = "TensorCores (2 per chip)" if chip.cores_per_chip == 2 else "chips"
    raise ValueError(
      f"--topology={name!r}: {generation}-N counts {unit}; N/"
      f"{chip.cores_per_chip} must be a power of two, e.g. "
      f"{generation}-{8 * chip.cores_per_chip}"
    )
  hbm = chip.hbm_bytes if hbm_gib is None else int(hbm_gib * GIB)
  return Topology(
    name=f"{generation}-{n}",
    generation=generation,
    chips=chips,
    shape=_torus_shape(chips, chip.dims),
    hbm_bytes=hbm,
  )


def topology_devices(topo: Topology) -> list[jax.Device]:
  """Compile-only devices of the slice (needs `libtpu`; no TPU is used)."""
  # Compile-only devices touch no TPU: let other libtpu processes (another plan, a test,
  # a run) hold libtpu's lockfile at the same time.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  host = (2, 2, 1) if topo.chips >= 4 else (1, 1, 1)
  try:
    desc = topologies.get_topology_desc(
      topology_name=topo.topology_name,
      platform="tpu",
      chip_config_name=topo.chip.chip_config,
      chips_per_host_bounds=host,
    )
  except RuntimeError as e:
    if "TPU support not installed" in str(e):
      raise RuntimeError(
        "compiling for a TPU slice needs libtpu: pip install -e '.[tpu]' (or '.[test]')"
      ) from e
    raise
  if len(desc.devices) != topo.chips:
    raise ValueError(
      f"{topo.name}: libtpu's {topo.topology_name} has {len(desc.devices)} "
      f"devices, expected {topo.chips}"
    )
  return list(desc.devices)


def topology_mesh(topo: Topology, mesh_config: Mapping[str, int]) -> jax.sharding.Mesh:
  """The config's ('data', 'fsdp', 'tensor') mesh (one size may be -1) on the slice."""
  sizes = [int(mesh_config[a]) for a in sharding.MESH_AXES]
  return sharding.make_mesh(sizes, devices=topology_devices(topo))


# ----------------------------------------------------------------------------------------
# Abstract inputs of the config's real shapes.
# ----------------------------------------------------------------------------------------


def abstract_batch(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *, frame_size: int
) -> dict[str, jax.ShapeDtypeStruct]:
  """The largest training batch the pipeline makes (data/pipeline.py), sharded as
  `sharding.to_global` places it: the longest prompt and target buckets."""
  st = pipeline.settings_from_config(config)
  b, u, p, k = st.batch_size, st.num_frames, st.num_patches, st.num_keyframes
  video = pipeline.num_video_tokens(p, frame_size, frame_size, st.patch_size, st.merge_size)
  prompt, target = max(st.prompt_buckets) + video, max(st.target_buckets)
  shapes = dict(
    frames=((b, u, frame_size, frame_size, 3), jnp.uint8),
    timestamps=((b, u), jnp.float32),
    frame_valid=((b, u), jnp.bool_),
    ordered_patches=((b, p), jnp.int32),
    disordered_patches=((b, p), jnp.int32),
    keyframe_indices=((b, k), jnp.int32),
    prompt_ids=((b, prompt), jnp.int32),
    prompt_mask=((b, prompt), jnp.bool_),
    answer_index=((b,), jnp.int32),
    target_ids=((b, target), jnp.int32),
    target_mask=((b, target), jnp.bool_),
    target_answer_mask=((b, target), jnp.bool_),
    example_valid=((b,), jnp.bool_),
  )
  return {
    name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, shape))
    for name, (shape, dtype) in shapes.items()
  }


def _out_structs(lowered, compiled=None) -> Any:
  """A program's outputs as ShapeDtypeStructs, with the shardings XLA chose for them when
  it was compiled (else none: the next program lowers them replicated)."""
  if compiled is None:
    return jax.tree.map(lambda o: jax.ShapeDtypeStruct(o.shape, o.dtype), lowered.out_info)
  return jax.tree.map(
    lambda o, s: jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=s),
    lowered.out_info,
    compiled.output_shardings,
  )


# ----------------------------------------------------------------------------------------
# Compiling the programs of a step.
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProgramReport:
  """XLA's analysis of one compiled program, per chip.

  Attributes:
    name: the program ("grpo_step", "sample[ordered]", ...).
    runs_per_step: how often one training step runs it.
    argument_bytes, output_bytes, alias_bytes, temp_bytes, code_bytes: memory analysis
      (alias: outputs that reuse donated arguments).
    peak_bytes: XLA's peak HBM of the program plus its code; None when it did not fit.
    flops: cost analysis FLOPs of the per-chip program. XLA counts a while loop's body
      once: a scanned layer stack (model.scan_layers) counts as one layer, the sampler's
      decode loop as one step.
    seconds: the compiler's time estimate ("optimal_seconds"; loops counted as above);
      0 when it gives none or a non-positive one (libtpu 0.0.42's v6e cost model returns
      negative estimates).
    compile_seconds: wall time of lower + compile on this machine.
    error: the compiler's out-of-memory message, when it did not fit.
    required_bytes: HBM the compiler said it needed when it did not fit.
  """

  name: str
  runs_per_step: int
  argument_bytes: int = 0
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  code_bytes: int = 0
  peak_bytes: int | None = None
  flops: float = 0.0
  seconds: float = 0.0
  compile_seconds: float = 0.0
  error: str = ""
  required_bytes: int | None = None

  @property
  def fits(self) -> bool:
    return not self.error


_OOM = re.compile(r"(?:required[^(]*\(|Used )([\d.]+)([KMGT])")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _required_bytes(message: str) -> int | None:
  m = _OOM.search(message)
  return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else None


def analyse(name: str, lowered: Any, runs_per_step: int = 1) -> ProgramReport:
  """Compiles a lowered program and reads its memory and cost analyses.

  An out-of-memory compile (RESOURCE_EXHAUSTED) is a report with `error` set, not an
  exception: the plan goes on to the other programs.
  """
  return _compile(name, lowered, runs_per_step)[0]


def _compile(name: str, lowered: Any, runs_per_step: int) -> tuple[ProgramReport, Any]:
  """(report, the compiled program or None when it did not fit)."""
  t0 = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:
    message = str(e)
    if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
      raise
    return ProgramReport(
      name,
      runs_per_step,
      compile_seconds=time.perf_counter() - t0,
      error=message.strip().splitlines()[0][:300],
      required_bytes=_required_bytes(message),
    ), None
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per program.
    cost = cost[0] if cost else {}
  cost = cost or {}
  get = lambda f: int(getattr(mem, f, 0) or 0)
  peak = get("peak_memory_in_bytes")
  if not peak:  # Backends without a heap simulation: everything live at once.
    peak = (
      get("argument_size_in_bytes")
      + get("output_size_in_bytes")
      - get("alias_size_in_bytes")
      + get("temp_size_in_bytes")
    )
  return ProgramReport(
    name,
    runs_per_step,
    argument_bytes=get("argument_size_in_bytes"),
    output_bytes=get("output_size_in_bytes"),
    alias_bytes=get("alias_size_in_bytes"),
    temp_bytes=get("temp_size_in_bytes"),
    code_bytes=get("generated_code_size_in_bytes"),
    peak_bytes=peak + get("generated_code_size_in_bytes"),
    flops=float(cost.get("flops", 0.0)),
    seconds=max(0.0, float(cost.get("optimal_seconds", 0.0))),
    compile_seconds=seconds,
  ), compiled


def compile_programs(
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  model_cfg: model_config_lib.ModelConfig,
  *,
  frame_size: int,
  stop_tokens: Sequence[int] | None = None,
  progress: Callable[[str], None] | None = None,
  only: Sequence[str] | None = None,
  compiled_out: dict[str, Any] | None = None,
) -> list[ProgramReport]:
  """Compiles every program of a KF-GRPO step for `mesh` and reports each one.

  The programs are the trainer's own (`steps_lib.step_functions`, the sampler through
  `sampling.lower_generate` with `rollout_lib.sampler_calls`), lowered on abstract inputs
  of the config's largest shapes: the batch of `abstract_batch`; each program's inputs
  are the outputs of the one before it, with the shardings XLA chose for them:

    sft_step                  (config.sft_steps > 0, or asked for in `only`)
    views                     both views' video tokens (one encode of the union)
    sample[ordered]           prefill + decode of G answers per prompt
    sample[disordered]        G' answers (saliency bonus on)
    logprobs[ordered]         reference (beta > 0) and old-policy (mu > 1) log-probs
    logprobs[disordered]      (rl.train_on_disordered)
    grpo_step

  Args:
    config: a training config.
    mesh: a mesh of compile-only TPU devices (`topology_mesh`), or of real devices.
    model_cfg: the model config.
    frame_size: frame side in pixels after preprocessing.
    stop_tokens: the sampler's stop ids (default: the model's eos ids).
    progress: called with a line before each compile (e.g. print).
    only: compile just these programs, by name or family ("sample", "logprobs"); the
      programs whose outputs they take are then only lowered, for their output shapes.
    compiled_out: if given, receives {name: (abstract args or None, jax.stages.Compiled)}.

  Returns:
    One ProgramReport per program, in the order above.
  """
  say = progress or (lambda _: None)
  rl = settings_lib.RLSettings.from_config(config.rl)
  graphdef, tx, state_shardings, abstract_state, _, _ = state_lib.build_state(
    config, mesh, model_cfg
  )
  steps = steps_lib.step_functions(config, mesh, graphdef, tx, state_shardings)
  batch = abstract_batch(config, mesh, frame_size=frame_size)
  stop_tokens = tuple(stop_tokens if stop_tokens is not None else model_cfg.eos_token_ids)
  reports: list[ProgramReport] = []
  wanted = lambda name: only is None or name.split("[")[0] in only or name in only

  def run(name, lower, runs_per_step=1, need=False, args=None):
    """Compiles `name` if wanted (else only lowers it, when a later program `need`s its
    outputs); returns its outputs as ShapeDtypeStructs, None if it did not fit."""
    if not (wanted(name) or need):
      return None
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
      lowered = lower()
    if not wanted(name):
      return _out_structs(lowered)
    say(f"compiling {name} ... (lowered in {time.perf_counter() - t0:.1f} s)")
    report, compiled = _compile(name, lowered, runs_per_step)
    reports.append(report)
    if compiled_out is not None and compiled is not None:
      compiled_out[name] = (args, compiled)
    say(f"  {name}: {_report_brief(report)}")
    return None if compiled is None else _out_structs(lowered, compiled)

  if config.sft_steps > 0 or (only is not None and "sft_step" in only):
    run(
      "sft_step",
      lambda: steps["sft_step"].lower(abstract_state, batch),
      args=(abstract_state, batch),
    )
  if config.total_steps <= config.sft_steps:
    return reports

  trained = dict(rl.trained_views)
  logp_runs = int("ref" in abstract_state) + int(rl.num_iterations > 1)
  need_rollout = wanted("grpo_step") or (logp_runs and wanted("logprobs"))
  views = run(
    "views",
    lambda: steps["views"].lower(abstract_state["params"], batch),
    need=need_rollout or wanted("sample"),
  )
  if views is None and (need_rollout or wanted("sample")):
    return reports  # Nothing downstream can be lowered without the views' outputs.
  model = nnx.merge(graphdef, abstract_state["params"])
  # sample_views gives every process the whole prompt batch as host (NumPy) arrays.
  prompt = lambda k: jax.ShapeDtypeStruct(batch[k].shape, jnp.int32)
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  samples = {}
  for name, _, inputs, kwargs in rollout_lib.sampler_calls(
    model_cfg.vision,
    views or {},
    batch,
    prompt("prompt_ids"),
    prompt("prompt_mask"),
    rl,
    stop_tokens,
  ):
    samples[name] = run(
      f"sample[{name}]",
      lambda inputs=inputs, kwargs=kwargs: sampling.lower_generate(
        model, inputs, rng=rng, **kwargs
      ),
      need=need_rollout,
    )
  b = batch["answer_index"].shape[0]
  reward = lambda g: jax.ShapeDtypeStruct(
    (b, g), jnp.float32, sharding=sharding.batch_sharding(mesh, (b, g))
  )
  views = {}
  for view, out in samples.items():
    if out is None:
      return reports
    logps = {}
    if view in trained and logp_runs:
      logp = run(
        f"logprobs[{view}]",
        lambda view=view, out=out: steps["logprobs"].lower(
          abstract_state["params"],
          batch,
          out.tokens,
          out.completion_mask,
          view=view,
          num_samples=trained[view],
        ),
        runs_per_step=logp_runs,
        need=wanted("grpo_step"),
      )
      if wanted("grpo_step"):
        if logp is None:
          return reports
        if rl.num_iterations > 1:
          logps["old_logp"] = logp
        if "ref" in abstract_state:
          logps["ref_logp"] = logp
    g = out.tokens.shape[0] // b
    views[view] = rollout_lib.ViewRollout(
      completions=out.tokens,
      mask=out.completion_mask,
      accuracy=reward(g),
      format=reward(g),
      **logps,
    )
  rollout = rollout_lib.Rollout(ordered=views["ordered"], disordered=views.get("disordered"))
  run(
    "grpo_step",
    lambda: steps["grpo_step"].lower(abstract_state, batch, rollout),
    runs_per_step=rl.num_iterations,
    args=(abstract_state, batch, rollout),
  )
  return reports


# ----------------------------------------------------------------------------------------
# Reports.
# ----------------------------------------------------------------------------------------


def _g(n: int | None) -> str:
  return "      -" if n is None else f"{n / GIB:7.2f}"


def _report_brief(r: ProgramReport) -> str:
  if not r.fits:
    return f"does not fit ({r.error}) [{r.compile_seconds:.1f} s]"
  est = f"est. {r.seconds * 1e3:.1f} ms" if r.seconds > 0 else "no time estimate"
  return (
    f"peak {r.peak_bytes / GIB:.2f} GiB, {r.flops / 1e12:.2f} TFLOP, {est} "
    f"[compiled in {r.compile_seconds:.1f} s]"
  )


def _est(seconds: float, flops: float, peak_flops: float) -> str:
  """The est. ms and util<= cells ("-" without a time estimate)."""
  if seconds <= 0:
    return f"{'-':>9s} {'-':>6s}"
  return f"{seconds * 1e3:9.1f} {flops / (seconds * peak_flops):6.1%}"


def format_reports(reports: Sequence[ProgramReport], topo: Topology) -> str:
  """A per-program table (GiB per chip) and the step's totals against the chip."""
  peak_flops = topo.chip.peak_flops
  lines = [
    f"{topo.name}: {topo.chips} chips ({topo.topology_name}), "
    f"{topo.hbm_bytes / GIB:g} GiB HBM and {peak_flops / 1e12:g} bf16 TFLOP/s per chip",
    f"{'program':22s} {'runs':>4s} {'args':>7s} {'outputs':>7s} {'alias':>7s} "
    f"{'temps':>7s} {'code':>7s} {'peak':>7s} {'TFLOP':>9s} {'est. ms':>9s} "
    f"{'util<=':>6s} {'compile':>8s}",
  ]
  for r in reports:
    if r.fits:
      lines.append(
        f"{r.name:22s} {r.runs_per_step:4d} {_g(r.argument_bytes)} {_g(r.output_bytes)} "
        f"{_g(r.alias_bytes)} {_g(r.temp_bytes)} {_g(r.code_bytes)} {_g(r.peak_bytes)} "
        f"{r.flops / 1e12:9.2f} {_est(r.seconds, r.flops, peak_flops)} "
        f"{r.compile_seconds:7.1f}s"
      )
    else:
      lines.append(
        f"{r.name:22s} {r.runs_per_step:4d} does not fit: needs "
        f"{_g(r.required_bytes).strip()} GiB ({r.error}) "
        f"{r.compile_seconds:7.1f}s"
      )
  done = [r for r in reports if r.fits]
  if done:
    flops = sum(r.flops * r.runs_per_step for r in done)
    # Without every program's estimate the step has none.
    secs = (
      sum(r.seconds * r.runs_per_step for r in done) if all(r.seconds > 0 for r in done) else 0.0
    )
    lines.append(
      f"{'step (runs x program)':22s} {'':4s} {'':47s} "
      f"{flops / 1e12:9.2f} {_est(secs, flops, peak_flops)}"
    )
  lines.append(
    "peak = XLA's peak HBM of the program + its code; est. = XLA's time "
    "estimate; util<= = FLOPs / (est. x chip peak), an upper bound on FLOP "
    "utilisation. XLA's cost model counts a while loop's body once: the "
    "sampler's decode loop once, not once per generated token, and scanned "
    "layers (model.scan_layers, the default) as one layer per stack, so TFLOP "
    "and est. ms are those of one layer plus the rest (util<= stays a ratio "
    "of like counts); --config.model.scan_layers=False counts every layer "
    "but compiles far slower."
  )
  return "\n".join(lines)


def fit_line(reports: Sequence[ProgramReport], topo: Topology) -> tuple[str, bool]:
  """The verdict: ("fits: peak X GiB of Y GiB per chip on NAME", True) or
  ("does not fit: peak X GiB of Y GiB per chip on NAME (program P)", False).

  X is the largest program's peak (or, for a program the compiler rejected, the HBM it
  said it needed); a program does not fit when the compiler rejects it or its peak
  exceeds the chip's HBM (`Topology.hbm_bytes`, which --hbm_gib may lower).
  """
  if not reports:
    raise ValueError("no programs were compiled")
  need = lambda r: r.peak_bytes if r.fits else (r.required_bytes or topo.hbm_bytes + 1)
  worst = max(reports, key=need)
  failing = [r for r in reports if not r.fits or r.peak_bytes > topo.hbm_bytes]
  y = round(topo.hbm_bytes / GIB, 4)
  if not failing:
    return f"fits: peak {need(worst) / GIB:.2f} GiB of {y:g} GiB per chip on {topo.name}", True
  bad = max(failing, key=need)
  x = f"{need(bad) / GIB:.2f}" if (bad.fits or bad.required_bytes) else "?"
  return (
    f"does not fit: peak {x} GiB of {y:g} GiB per chip on {topo.name} (program {bad.name})",
    False,
  )


def layout_bytes(struct: jax.ShapeDtypeStruct, fmt: Any) -> int:
  """Bytes one device holds of an argument in its compiled layout (`Compiled.input_formats`):
  its shard, with the minor dimensions padded to whole tiles (TPU tiles are e.g. 8 x 128
  for 32-bit types; a 36-wide array occupies 128 columns). An argument the program does
  not use is pruned by jit and has no layout: 0 bytes."""
  layout = getattr(fmt, "layout", None)
  if layout is None:
    return 0
  shard = list((fmt.sharding or struct.sharding).shard_shape(tuple(struct.shape)))
  tiling = getattr(layout, "tiling", None) or ()
  if shard and tiling:
    order = list(layout.major_to_minor)
    physical = [shard[i] for i in order]
    tile = tiling[0]
    for j, t in enumerate(tile[::-1]):
      physical[-1 - j] = -(-physical[-1 - j] // t) * t if j < len(physical) else t
    shard = physical
  elif not shard and tiling:  # A scalar occupies a whole 1D tile.
    shard = [math.prod(tiling[0])]
  return math.prod(shard) * jnp.dtype(struct.dtype).itemsize


# ----------------------------------------------------------------------------------------
# Model FLOPs (for measured MFU: benchmarks/gpu_mfu.py).
# ----------------------------------------------------------------------------------------


def decoder_matmul_params(cfg: model_config_lib.TextConfig) -> int:
  """Weights of the decoder that multiply every token (N of the 6N rule).

  Per layer: the q, k, v and o projections and the three SwiGLU matrices; plus the LM
  head (a matmul even when tied to the embedding). The embedding lookup is a gather (no
  FLOPs), and norms and biases are not matmuls: none of them is counted.
  """
  d, hd = cfg.hidden_size, cfg.head_dim
  attn = d * cfg.num_attention_heads * hd * 2 + d * cfg.num_key_value_heads * hd * 2
  mlp = 3 * d * cfg.intermediate_size
  return cfg.num_hidden_layers * (attn + mlp) + d * cfg.vocab_size


def decoder_train_flops_per_token(
  cfg: model_config_lib.TextConfig, seq_len: int, *, causal: bool = False
) -> float:
  """Model FLOPs of one training token (forward + backward) of the text decoder.

  The standard count (PaLM, appendix B): 6 N + 12 L H hd S, N from
  `decoder_matmul_params`, L layers, H query heads of width hd, S tokens per row: a
  multiply-add is 2 FLOPs, the backward pass twice the forward; attention's Q K^T and
  A V are 2 S H hd each per token and layer. Rematerialisation is not counted (model
  FLOPs, not hardware FLOPs). causal=True halves the attention term (only the lower
  triangle of the logits is needed; PaLM's convention counts all of it).
  """
  attention = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq_len
  return 6 * decoder_matmul_params(cfg) + (attention / 2 if causal else attention)
