"""Layer stacks: L identical layers built once with stacked params and run with a scan.

With `scan=True` a stack is ONE module whose params carry a leading [L] axis (created with
`nnx.vmap`), and `run` folds the layers with `nnx.scan`: the layer is traced and compiled
once, whatever the depth. With `scan=False` it is an `nnx.List` of L modules, run by a
Python loop (every layer traced and compiled separately): the debugging path, whose params
are named per layer (`layers/0/...`). Both paths call the same layer body, so they compute
the same function.

  create(make_layer, n, rngs, scan=...) -> the stack
  run(stack, body, carry, scan=..., remat_policy=..., start=0, stop=None) -> (carry, ys)
      folds `body(layer, carry, i) -> (carry, y)` over layers [start, stop) and stacks
      the per-layer outputs y on a new leading axis.
  depth(stack) -> L

The stacked axis is named `LAYER_AXIS` ("layers") in each param's `logical_axes`
metadata; `chronoforge_jax.sharding` replicates it.

Checkpoints of unscanned models and HF weights name layers one by one
(`.../layers/<i>/...`); `relayout` moves params (and optimizer states) between the two
layouts, `split_path` / `layer_path` map the names (`chronoforge_jax.train.checkpoint`,
`chronoforge_jax.models.convert`).
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp

from chronoforge_jax.sharding import LOGICAL_AXES

LAYER_AXIS = "layers"
# Inserts LAYER_AXIS at the front of every param's `logical_axes` under nnx.vmap/nnx.scan
# (and removes it inside the scan body).
_METADATA = {nnx.PARTITION_NAME: LAYER_AXIS, LOGICAL_AXES: LAYER_AXIS}
# Where the model keeps its layer stacks: (module path, number of layers from the config).
STACK_PATHS = (("text", "layers"), ("visual", "blocks"))

Path = tuple[Any, ...]


def create(
  make_layer: Callable[[nnx.Rngs], nnx.Module], n: int, rngs: nnx.Rngs, *, scan: bool
) -> nnx.Module:
  """Builds n layers: one module with [n, ...] params (scan) or an nnx.List (no scan).

  Args:
    make_layer: rngs -> one layer.
    n: number of layers.
    rngs: parameter RNG streams; with scan, each layer gets its own split of them.
    scan: stack the params (True) or keep a list of modules (False).
  """
  if not scan:
    return nnx.List([make_layer(rngs) for _ in range(n)])
  create_stack = nnx.vmap(
    make_layer, in_axes=0, out_axes=0, axis_size=n, transform_metadata=_METADATA
  )
  return create_stack(rngs.split(n))


def depth(stack: nnx.Module) -> int:
  """Number of layers of a stack (either layout)."""
  if isinstance(stack, nnx.List):
    return len(stack)
  return jax.tree.leaves(nnx.state(stack, nnx.Param))[0].shape[0]


def _slice(stack: nnx.Module, start: int, stop: int) -> nnx.Module:
  """Layers [start, stop) of a stacked module, as a stacked module."""
  if (start, stop) == (0, depth(stack)):
    return stack
  graphdef, state = nnx.split(stack)
  return nnx.merge(graphdef, jax.tree.map(lambda a: a[start:stop], state))


def run(
  stack: nnx.Module,
  body: Callable,
  carry: Any,
  *,
  scan: bool,
  remat_policy: Callable | None = None,
  start: int = 0,
  stop: int | None = None,
) -> tuple[Any, Any]:
  """Folds `body` over layers [start, stop) of a stack.

  Args:
    stack: from `create` (same `scan`).
    body: (layer, carry, i) -> (carry, y). `i` is the layer's index in the stack: a
      Python int without scan, a traced int32 with scan. `y` may be None.
    carry: the initial carry (e.g. the hidden state).
    scan: the stack's layout.
    remat_policy: a jax.checkpoint policy (`vision.remat_policy_fn`); None for no remat.
      Each layer's body is rematerialised: the backward pass recomputes what the policy
      does not save.
    start, stop: the layer range (default: all).

  Returns:
    (final carry, the y of every layer stacked on a leading axis, or None).
  """
  stop = depth(stack) if stop is None else stop
  # Tree mode (graph=False): the layers are plain pytrees of params, read but never
  # updated, so the stack may also be closed over inside jax.lax loops (the sampler's
  # decode loop), where graph mode refuses Variables of an outer trace.
  if remat_policy is not None:
    # Outside a scan, prevent_cse keeps XLA from merging the recomputation into the
    # forward pass; inside one it is not needed and costs performance.
    body = nnx.remat(body, policy=remat_policy, prevent_cse=not scan, graph=False)
  if scan:
    scanned = nnx.scan(
      body,
      in_axes=(0, nnx.Carry, 0),
      out_axes=(nnx.Carry, 0),
      transform_metadata=_METADATA,
      graph=False,
    )
    return scanned(_slice(stack, start, stop), carry, jnp.arange(start, stop))
  ys = []
  for i in range(start, stop):
    carry, y = body(stack[i], carry, i)
    ys.append(y)
  if any(y is None for y in ys):
    return carry, None
  return carry, jax.tree.map(lambda *a: jnp.stack(a), *ys)


# ------------------------------------------------------------------------------------
# Per-layer <-> stacked layouts (checkpoints, HF conversion).
# ------------------------------------------------------------------------------------


def _is_index(key: Any) -> bool:
  return isinstance(key, int) or (isinstance(key, str) and key.isdigit())


def split_path(path: Path) -> tuple[Path, int | None, Path] | None:
  """Splits a param path that runs through a layer stack (`STACK_PATHS`, anywhere in it).

  Returns:
    (path up to and including the stack, layer index or None when the path is stacked,
    the rest), or None for a path outside every stack. Indices may be ints or digit
    strings (as checkpoint metadata spells them).
  """
  path = tuple(path)
  for prefix in STACK_PATHS:
    n = len(prefix)
    for j in range(len(path) - n):
      if path[j : j + n] == prefix:
        head, key = path[: j + n], path[j + n]
        if _is_index(key):
          return head, int(key), path[j + n + 1 :]
        return head, None, path[j + n :]
  return None


def layer_path(path: Path, i: int) -> Path:
  """Layer i's per-layer path of a stacked param path."""
  head, index, rest = split_path(path)
  assert index is None, path
  return head + (i,) + rest


def is_per_layer(paths) -> bool | None:
  """Whether param paths name layers one by one (True) or stacked (False); None when no
  path runs through a layer stack."""
  kinds = {parts[1] is not None for p in paths if (parts := split_path(p)) is not None}
  if len(kinds) > 1:
    raise ValueError("the param tree mixes per-layer and stacked layers")
  return kinds.pop() if kinds else None


def _unstack_array(x, n: int) -> list[Any]:
  return [x[i] for i in range(n)]


def _replace(var: nnx.Variable, value: Any, *, stacked: bool) -> nnx.Variable:
  """A copy of `var` holding `value`, its logical axes with or without LAYER_AXIS first."""
  new = var.replace(value)
  axes = tuple(new.get_metadata().get(LOGICAL_AXES) or ())
  if axes and stacked and axes[0] != LAYER_AXIS:
    new.set_metadata(LOGICAL_AXES, (LAYER_AXIS,) + axes)
  elif axes and not stacked and axes[0] == LAYER_AXIS:
    new.set_metadata(LOGICAL_AXES, axes[1:])
  return new


def relayout(
  tree: Any, *, scan: bool, stack_fn: Callable = jnp.stack, unstack_fn: Callable = _unstack_array
) -> Any:
  """Moves every nnx.State in `tree` (params, optimizer moments, ...) to one layout.

  Args:
    tree: a pytree holding nnx.States (anything else is left as it is).
    scan: True for the stacked layout (layer i of each param becomes row i of one
      [L, ...] param), False for the per-layer one (`.../layers/i/...`).
    stack_fn: [values of layers 0..L-1] -> stacked value (default jnp.stack).
    unstack_fn: (stacked value, L) -> [values of layers 0..L-1] (default: rows).
      Values without a shape (e.g. optax's MaskedNode) are copied, not stacked.

  Returns:
    The tree with each nnx.State in the requested layout (a no-op where it already is).
  """
  is_state = lambda x: isinstance(x, nnx.State)
  # Each stack's depth, from any stacked array in the tree (a masked optimizer state may
  # hold no array for a whole stack, e.g. a frozen vision tower).
  depths = {}
  for state in filter(is_state, jax.tree.leaves(tree, is_leaf=is_state)):
    for path, var in nnx.to_flat_state(state):
      parts = split_path(path)
      if parts is not None and parts[1] is None and hasattr(var.get_value(), "shape"):
        depths[parts[0]] = var.get_value().shape[0]

  def convert(state):
    flat = list(nnx.to_flat_state(state))
    out, groups = {}, {}
    for path, var in flat:
      parts = split_path(path)
      if parts is None or (parts[1] is None) == scan:
        out[tuple(path)] = var
      elif scan:  # per-layer -> stacked
        groups.setdefault(parts[0] + parts[2], {})[parts[1]] = var
      else:  # stacked -> per-layer
        value, n = var.get_value(), depths[parts[0]]
        values = unstack_fn(value, n) if hasattr(value, "shape") else [value] * n
        for i, v in enumerate(values):
          out[layer_path(path, i)] = _replace(var, v, stacked=False)
    for path, layers in groups.items():
      if sorted(layers) != list(range(len(layers))):
        raise ValueError(f"{path}: layers {sorted(layers)} are not 0..{len(layers) - 1}")
      values = [layers[i].get_value() for i in range(len(layers))]
      stacked = stack_fn(values) if hasattr(values[0], "shape") else values[0]
      out[path] = _replace(layers[0], stacked, stacked=True)
    return nnx.from_flat_state(out)

  return jax.tree.map(lambda x: convert(x) if is_state(x) else x, tree, is_leaf=is_state)
