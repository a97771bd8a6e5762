"""Device mesh, logical axis rules, and the one `shard()` helper for activations.

The mesh has axes ('data', 'fsdp', 'tensor'). Params carry *logical* axis names in their
`nnx.Param` metadata (`logical_axes`, e.g. ('embed', 'mlp'); scanned layers' stacked params
start with 'layers', which stays replicated); a short rules table maps each logical name to
mesh axes. The same table constrains activations through `shard()`.

Public API:

  MESH_AXES, DEFAULT_RULES
  make_mesh(shape=(-1, 1, 1), *, devices=None) -> Mesh      -1 = all remaining devices
  mesh_from_config(cfg) -> Mesh        cfg has data/fsdp/tensor (ints, one may be -1)
  axis_rules(rules)                    context manager overriding DEFAULT_RULES
  logical_to_spec(axes, *, shape=None, mesh=None, rules=None) -> PartitionSpec
  shard(x, logical_axes) -> x          with_sharding_constraint; a no-op without a mesh
  state_shardings(state, mesh, rules=None)      nnx.State of Variables -> same tree with
                                                NamedSharding values (params, optimizer
                                                state: anything with `logical_axes`)
  tree_shardings(tree, mesh, rules=None)        plain pytree version (leaves -> sharding)

Meshes are built with `AxisType.Auto` (GSPMD propagation; `shard()` adds constraints) and
entered with `jax.set_mesh(mesh)`. A logical axis whose mesh size does not divide the
dimension falls back to the longest dividing prefix of its mesh axes (often none, i.e.
replicated), so tiny test models with prime sizes still run on 8 devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Iterator, Mapping, Sequence

from flax import nnx
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
import numpy as np

from chronoforge_jax import settings as settings_lib

MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_AXES = "logical_axes"  # the nnx.Variable metadata key holding logical axis names

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# Logical axis -> mesh axes. Params are FSDP-sharded on their model dim and tensor-parallel
# on heads / MLP / vocab; activations are sharded on batch only (plus heads/MLP on tensor).
DEFAULT_RULES: LogicalRules = (
  # activations
  ("batch", ("data", "fsdp")),
  ("vision_batch", ("data", "fsdp")),
  ("act_seq", None),
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_kv_heads", "tensor"),
  ("act_mlp", "tensor"),
  ("act_vocab", "tensor"),
  # the stacked layer axis of scanned layer stacks ([L, ...] params): every device
  # holds all layers of its shard
  ("layers", None),
  # decoder params
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("mlp", "tensor"),
  ("norm", None),
  # vision params
  ("vision_patch", None),
  ("vision_embed", "fsdp"),
  ("vision_qkv", "tensor"),
  ("vision_heads", "tensor"),
  ("vision_mlp", "tensor"),
  ("vision_merged", "fsdp"),
  # KV cache [layers, batch, seq, kv_heads, head_dim]
  ("cache_layers", None),
  ("cache_batch", ("data", "fsdp")),
  ("cache_seq", None),
  ("cache_kv_heads", "tensor"),
  ("cache_head_dim", None),
)


class _Rules(threading.local):
  stack: list[LogicalRules]

  def __init__(self):
    self.stack = []


_RULES = _Rules()


@contextlib.contextmanager
def axis_rules(rules: LogicalRules) -> Iterator[None]:
  """Uses `rules` instead of DEFAULT_RULES inside the `with` block (this thread)."""
  _RULES.stack.append(tuple(rules))
  try:
    yield
  finally:
    _RULES.stack.pop()


def current_rules() -> LogicalRules:
  return _RULES.stack[-1] if _RULES.stack else DEFAULT_RULES


def make_mesh(
  shape: Sequence[int] = (-1, 1, 1), *, devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """Builds a ('data', 'fsdp', 'tensor') mesh with Auto axis types.

  Args:
    shape: three sizes; at most one may be -1 (all remaining devices).
    devices: devices to use (default: all).

  Returns:
    The Mesh.
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = [int(s) for s in shape]
  if len(shape) != 3:
    raise ValueError(f"mesh shape {shape} needs 3 sizes for axes {MESH_AXES}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh shape {shape}: sizes must be positive, with at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh shape {shape}: {len(devices)} devices are not divisible by {known}")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise ValueError(
      f"mesh shape {shape} needs {int(np.prod(shape))} devices, have "
      f"{len(devices)}; use -1 for one axis to take the rest"
    )
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshSettings:
  """The `mesh` config section: devices per axis, -1 for one axis taking the rest."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def __post_init__(self):
    sizes = [getattr(self, axis) for axis in MESH_AXES]
    for axis, size in zip(MESH_AXES, sizes):
      settings_lib.require(
        settings_lib.is_int(size) and (size >= 1 or size == -1),
        self,
        axis,
        size,
        "need a positive int or -1 (all remaining devices)",
      )
    settings_lib.require(
      sizes.count(-1) <= 1, self, "data", self.data, "at most one axis may be -1"
    )

  @classmethod
  def from_config(cls, section: Any) -> MeshSettings:
    """From a `mesh` config section; a bad size is reported as `config.mesh.<axis>`."""
    return settings_lib.from_section(cls, section, "mesh")

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.data, self.fsdp, self.tensor)


def mesh_from_config(cfg: Mapping[str, Any] | Any) -> Mesh:
  """Builds the mesh from a `mesh` config section (data, fsdp, tensor sizes)."""
  return make_mesh(MeshSettings.from_config(cfg).shape)


def _mesh_sizes(mesh) -> dict[str, int]:
  return dict(zip(mesh.axis_names, mesh.axis_sizes))


def logical_to_spec(
  logical_axes: Sequence[str | None],
  *,
  shape: Sequence[int] | None = None,
  mesh=None,
  rules: LogicalRules | None = None,
) -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec.

  Args:
    logical_axes: one logical name (or None) per dimension.
    shape: the array shape; when given with `mesh`, mesh axes that do not divide a
      dimension are dropped (longest dividing prefix kept).
    mesh: a Mesh or AbstractMesh (for sizes and axis names).
    rules: defaults to the current rules.

  Returns:
    The PartitionSpec.
  """
  table = dict(rules if rules is not None else current_rules())
  sizes = _mesh_sizes(mesh) if mesh is not None else None
  used: set[str] = set()
  spec = []
  for i, name in enumerate(logical_axes):
    target = table.get(name) if name is not None else None
    axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    if sizes is not None:
      axes = tuple(a for a in axes if a in sizes)
    keep: list[str] = []
    for axis in axes:
      if axis in used:
        break
      if shape is not None and sizes is not None:
        if shape[i] % (int(np.prod([sizes[a] for a in keep])) * sizes[axis]):
          break
      keep.append(axis)
    used.update(keep)
    spec.append(None if not keep else (keep[0] if len(keep) == 1 else tuple(keep)))
  return PartitionSpec(*spec)


def shard(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Constrains an activation's sharding by logical axis names.

  A no-op when no mesh is set (`jax.set_mesh`), so model code runs unchanged on one
  device.

  Args:
    x: the array.
    logical_axes: one logical name (or None) per dimension.

  Returns:
    x, with a sharding constraint under a mesh.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  if len(logical_axes) != x.ndim:
    raise ValueError(
      f"shard(): {len(logical_axes)} axis names {tuple(logical_axes)} for an array of rank {x.ndim}"
    )
  spec = logical_to_spec(logical_axes, shape=x.shape, mesh=mesh)
  return jax.lax.with_sharding_constraint(x, spec)


def _variable_sharding(v: nnx.Variable, mesh: Mesh, rules) -> NamedSharding:
  axes = v.get_metadata().get(LOGICAL_AXES)
  value = v.get_value()
  shape = getattr(value, "shape", ())
  if not axes or len(axes) != len(shape):
    return NamedSharding(mesh, PartitionSpec())
  return NamedSharding(mesh, logical_to_spec(axes, shape=shape, mesh=mesh, rules=rules))


def state_shardings(state: Any, mesh: Mesh, rules: LogicalRules | None = None) -> Any:
  """Maps every Variable of an nnx State (or module) to its NamedSharding.

  Args:
    state: an nnx.State (abstract or concrete) or a Module; Variables without logical
      axis metadata (or whose rank differs, e.g. optimizer step counts) are replicated.
    mesh: the mesh.
    rules: defaults to the current rules.

  Returns:
    The same tree with each Variable's value replaced by a NamedSharding, usable as
    jit in/out shardings for `nnx.split` states.
  """
  if isinstance(state, nnx.Module):
    state = nnx.state(state)
  return jax.tree.map(
    lambda v: (
      v.replace(_variable_sharding(v, mesh, rules))
      if isinstance(v, nnx.Variable)
      else NamedSharding(mesh, PartitionSpec())
    ),
    state,
    is_leaf=lambda x: isinstance(x, nnx.Variable),
  )


def tree_shardings(tree: Any, mesh: Mesh, rules: LogicalRules | None = None) -> Any:
  """Like `state_shardings`, but returns plain NamedSharding leaves (Variables unwrapped)."""
  return jax.tree.map(
    lambda v: (
      _variable_sharding(v, mesh, rules)
      if isinstance(v, nnx.Variable)
      else NamedSharding(mesh, PartitionSpec())
    ),
    tree,
    is_leaf=lambda x: isinstance(x, nnx.Variable),
  )


# --------------------------------------------------------------------------------------
# Placing host batches on the mesh.
# --------------------------------------------------------------------------------------


def batch_sharding(mesh, shape: tuple[int, ...]) -> jax.sharding.NamedSharding:
  """Leading (batch) dim over ('data', 'fsdp') where it divides; the rest replicated.

  Args:
    mesh: the device mesh.
    shape: the GLOBAL shape of the array.
  """
  axes = ("batch",) + (None,) * (len(shape) - 1)
  return jax.sharding.NamedSharding(mesh, logical_to_spec(axes, shape=shape, mesh=mesh))


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
