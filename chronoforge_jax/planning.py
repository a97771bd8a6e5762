"""Memory plan of a KF-GRPO run before anything is allocated.

From the config and the mesh alone (abstract shapes, `jax.eval_shape`), per device:
params, optimizer state, the frozen reference params (beta > 0), and the KV cache of one
rollout (B prompts x G samples, prompt + answer). Activations are left to XLA's own
`memory_analysis()`, which the trainer prints when it compiles the step.

  rows = planning.plan(config, mesh, model_cfg, frame_size=448)
  print(planning.format_plan(rows, mesh))
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from chronoforge_jax import sharding
from chronoforge_jax.data import pipeline
from chronoforge_jax.models import config as model_config_lib
from chronoforge_jax.models import text as text_lib
from chronoforge_jax.rl import views


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
  shards = jax.tree.leaves(shardings,
                           is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  if len(leaves) != len(shards):
    raise ValueError(f"{name}: {len(leaves)} arrays but {len(shards)} shardings")
  elements = sum(math.prod(x.shape) for x in leaves)
  global_bytes = sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves)
  device_bytes = sum(_device_bytes(x.shape, x.dtype, s) for x, s in zip(leaves, shards))
  return Row(name, elements, global_bytes, device_bytes)


def rollout_cache_shape(config: ml_collections.ConfigDict,
                        model_cfg: model_config_lib.ModelConfig,
                        frame_size: int) -> tuple[int, ...]:
  """[layers, B*G, prompt + answer, kv_heads, head_dim] of one view's rollout cache."""
  t = model_cfg.text
  i = config.input
  video = pipeline.num_video_tokens(views.view_patches(config.tad.k, i.patch_mode), frame_size, frame_size,
                                    i.patch_size, i.spatial_merge_size)
  length = max(i.prompt_buckets) + video + config.rl.max_new_tokens
  rows = i.batch_size * max(config.rl.num_generations, config.rl.num_disordered)
  head_dim = t.hidden_size // t.num_attention_heads
  return (t.num_hidden_layers, rows, length, t.num_key_value_heads, head_dim)


def plan(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
         model_cfg: model_config_lib.ModelConfig, *, frame_size: int = 448) -> list[Row]:
  """The memory rows of a run with `config` on `mesh` (nothing is allocated).

  Args:
    config: a training config (configs/kf_grpo.py).
    mesh: the device mesh (fake CPU devices are fine).
    model_cfg: the model config (`train_lib.model_config`).
    frame_size: frame side in pixels after preprocessing (sets the video token count).

  Returns:
    Rows: vision params, text params, optimizer state, reference params (beta > 0),
    rollout KV cache (K and V, one view), and the total.
  """
  from chronoforge_jax import train_lib  # Late: train_lib imports much more.

  # The trainer's own state structure and shardings, so the plan is what training holds.
  _, _, shardings, abstract, _, _ = train_lib.build_state(config, mesh, model_cfg)
  rows = [tree_row(f"{part} params", abstract["params"][part], shardings["params"][part])
          for part in ("visual", "text")]
  rows.append(tree_row("optimizer state", abstract["opt_state"], shardings["opt_state"]))
  if "ref" in abstract:
    rows.append(tree_row("reference params (beta > 0)", abstract["ref"], shardings["ref"]))
  dtype = jnp.dtype(config.model.dtype)
  shape = rollout_cache_shape(config, model_cfg, frame_size)
  spec = sharding.logical_to_spec(text_lib.CACHE_AXES, shape=shape, mesh=mesh)
  kv = tree_row("rollout KV cache (K+V)", [jax.ShapeDtypeStruct(shape, dtype)] * 2,
                [jax.sharding.NamedSharding(mesh, spec)] * 2)
  rows.append(kv)
  rows.append(Row("total", sum(r.elements for r in rows), sum(r.global_bytes for r in rows),
                  sum(r.device_bytes for r in rows)))
  return rows


def _gib(n: int) -> str:
  return f"{n / 2**30:9.3f} GiB"


def format_plan(rows: list[Row], mesh: jax.sharding.Mesh) -> str:
  """A fixed-width table of the rows."""
  lines = [f"mesh {dict(mesh.shape)} ({mesh.size} devices)",
           f"{'':34s} {'elements':>16s} {'all devices':>13s} {'per device':>13s}"]
  for r in rows:
    lines.append(f"{r.name:34s} {r.elements:16,d} {_gib(r.global_bytes)} "
                 f"{_gib(r.device_bytes)}")
  return "\n".join(lines)


def measured_device_bytes(tree: Any) -> int:
  """Bytes of concrete jax Arrays on their most loaded device (to check a plan)."""
  per_device: dict[Any, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  return max(per_device.values()) if per_device else 0
