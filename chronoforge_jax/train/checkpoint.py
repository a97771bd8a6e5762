"""Orbax checkpoints for training: one manager, one step holds all, one resume order.

A training checkpoint at step `s` holds the state after `s` completed steps, as three
items of ONE Orbax step directory (`<workdir>/checkpoints/<s>/`):

  state  the train-state pytree (params + optimizer state; sharded jax Arrays),
  data   the Grain iterator state (Grain's own Orbax handler, one JSON per process),
  meta   JSON: step, the RNG key (as key data + impl name) and caller extras,

so a step is either complete or absent: Orbax writes into a temporary directory and
renames it only after every item is written (atomic finalize), so a save killed midway
never touches the last good step. Saves are asynchronous: `save` returns once arrays are
copied to host memory (so the next step may donate its input buffers) and the disk writes
continue in a background thread.

Resume order (`restore_or_init`), first match wins:
  1. own:       the latest step in this run's checkpoint directory (a restart after
                preemption or a crash continues where it stopped);
  2. resume:    `config.ckpt.resume`, another run's checkpoint directory (its latest
                step) or one step directory; everything is restored, step included;
  3. init_from: `config.ckpt.init_from`, params only: a directory from `save_params`
                (e.g. a converted HF model) or the `params` entry of a training
                checkpoint; the optimizer starts fresh at step 0;
  4. scratch:   nothing restored; the trainer initialises from its seed.

Layer layout: a model built with `model.scan_layers=True` (the default) stacks each layer
stack's params [L, ...] (`text/layers/attn/...`); with False they are named per layer
(`text/layers/<i>/attn/...`), as in every checkpoint written before scanned layers
existed. Every restore here (own, resume, init_from, `load_params`) reads a checkpoint of
either layout into a model of either layout: when they differ it restores in the
checkpoint's layout and stacks (or unstacks) params and optimizer moments on the way in.

`PreemptionGuard` turns SIGTERM/SIGINT into a flag the loop polls, so the trainer can
save the current step and exit cleanly.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from typing import Any, Literal

from absl import logging
from etils import epath
from grain import checkpoint as grain_checkpoint
import jax
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np
import orbax.checkpoint as ocp

from chronoforge_jax import fileio
from chronoforge_jax import settings as settings_lib
from chronoforge_jax.models import stack

PyTree = Any
Source = Literal["own", "resume", "init_from", "scratch"]
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------
# Abstract state and RNG helpers.
# ---------------------------------------------------------------------------------------


def abstract_like(tree: PyTree) -> PyTree:
  """Returns ShapeDtypeStructs (with each leaf's sharding) for a tree of jax Arrays."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _check_abstract(abstract: PyTree, what: str) -> None:
  """Requires every leaf to carry a sharding, so restores never land on one device."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
    if getattr(leaf, "sharding", None) is None:
      raise ValueError(
        f"{what} leaf {jax.tree_util.keystr(path)} ({type(leaf).__name__}) has no "
        "sharding; build the abstract state as jax.ShapeDtypeStruct(shape, dtype, "
        "sharding=...) (e.g. jax.eval_shape(init) with the shardings attached)."
      )


def _rng_to_json(rng: jax.Array | None) -> dict[str, Any] | None:
  if rng is None:
    return None
  typed = jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
  data = jax.random.key_data(rng) if typed else rng
  if not data.is_fully_addressable:  # A replicated key: every host holds the value.
    data = data.addressable_data(0)
  return {
    "impl": str(jax.random.key_impl(rng)) if typed else None,
    "data": np.asarray(data).tolist(),
    "dtype": str(np.asarray(data).dtype),
  }


def _rng_from_json(blob: dict[str, Any] | None) -> jax.Array | None:
  if not blob:
    return None
  data = np.asarray(blob["data"], dtype=blob["dtype"])
  if blob["impl"] is None:
    return jax.numpy.asarray(data)
  return jax.random.wrap_key_data(data, impl=blob["impl"])


# ---------------------------------------------------------------------------------------
# Layer layout: per-layer checkpoints into scanned models and back.
# ---------------------------------------------------------------------------------------


def _key_names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _per_layer(tree: PyTree) -> bool | None:
  """Whether a (metadata or abstract) tree names layers one by one (None: no layers)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return stack.is_per_layer(_key_names(path) for path, _ in leaves)


def _saved_tree(item_dir: epath.Path) -> PyTree | None:
  """The saved pytree's metadata tree (None if it cannot be read)."""
  try:
    return ocp.PyTreeCheckpointHandler().metadata(item_dir).tree
  except (OSError, ValueError, KeyError):
    return None


def _layer_sharding(sharding, *, stacked: bool):
  if not isinstance(sharding, NamedSharding):
    return sharding
  spec = tuple(sharding.spec)
  spec = (None,) + spec if stacked else spec[1:]
  return NamedSharding(sharding.mesh, PartitionSpec(*spec))


def _stack_abstract(leaves: list[jax.ShapeDtypeStruct]) -> jax.ShapeDtypeStruct:
  a = leaves[0]
  return jax.ShapeDtypeStruct(
    (len(leaves),) + a.shape, a.dtype, sharding=_layer_sharding(a.sharding, stacked=True)
  )


def _unstack_abstract(a: jax.ShapeDtypeStruct, n: int) -> list[jax.ShapeDtypeStruct]:
  one = jax.ShapeDtypeStruct(
    a.shape[1:], a.dtype, sharding=_layer_sharding(a.sharding, stacked=False)
  )
  return [one] * n


def _in_saved_layout(saved_tree: PyTree | None, abstract: PyTree):
  """The restore target in the checkpoint's layer layout, and the conversion back.

  Returns:
    (target to restore into, function mapping the restored tree to `abstract`'s layout
    and shardings).
  """
  saved = None if saved_tree is None else _per_layer(saved_tree)
  wanted = _per_layer(abstract)
  if saved is None or wanted is None or saved == wanted:
    return abstract, lambda restored: restored
  logging.info(
    "checkpoint: its layers are %s, the model's %s; converting on restore",
    *(("per layer" if x else "stacked") for x in (saved, wanted)),
  )
  target = stack.relayout(
    abstract, scan=not saved, stack_fn=_stack_abstract, unstack_fn=_unstack_abstract
  )

  def back(restored):
    moved = stack.relayout(restored, scan=not wanted)
    return jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), moved, abstract)

  return target, back


_LAYOUT_HINT = (
  "A checkpoint of either layer layout (model.scan_layers True or False) "
  "loads into a model of either layout; other differences do not."
)


# ---------------------------------------------------------------------------------------
# What a restore gives back.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Restored:
  """The outcome of a restore.

  Attributes:
    source: which resume source was used: "own", "resume", "init_from" or "scratch".
    step: completed steps of the restored state (0 for init_from and scratch).
    state: the full train state (own/resume), else None.
    params: the params (init_from only), else None.
    rng: the saved RNG key (own/resume, when one was saved), else None.
    extra: the caller's extras saved with the step (own/resume), else {}.
    data_restored: whether the data iterator was set to the saved position.
    path: the checkpoint directory read from, None for scratch.
  """

  source: Source
  step: int = 0
  state: PyTree | None = None
  params: PyTree | None = None
  rng: jax.Array | None = None
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)
  data_restored: bool = False
  path: str | None = None


def _manager(directory: str, options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(fileio.absolute(directory), options=options)


def _read_only(directory: str) -> ocp.CheckpointManager:
  return _manager(directory, ocp.CheckpointManagerOptions(read_only=True))


def _restore_step(
  manager: ocp.CheckpointManager, step: int, abstract_state: PyTree, data_iter: Any, source: Source
) -> Restored:
  """Restores state, meta and (if present and wanted) the data iterator of one step."""
  _check_abstract(abstract_state, "abstract_state")
  step_dir = ocp.path.step.standard_name_format().find_step(manager.directory, step).path
  target, to_model_layout = _in_saved_layout(_saved_tree(step_dir / "state"), abstract_state)
  args = {"state": ocp.args.StandardRestore(target), "meta": ocp.args.JsonRestore()}
  has_data = (step_dir / "data").exists()
  if data_iter is not None and has_data:
    args["data"] = grain_checkpoint.CheckpointRestore(data_iter)
  elif data_iter is not None:
    logging.warning(
      "checkpoint %s has no data-iterator state; the input pipeline starts from its beginning",
      step_dir,
    )
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**args))
  except ValueError as e:
    raise ValueError(
      f"cannot restore checkpoint {step_dir}: {e}\nThe abstract state must match "
      "the saved tree (same model/optimizer config) and the data-iterator state is "
      "per process (same process count); for a params-only start use "
      f"config.ckpt.init_from instead of resume. {_LAYOUT_HINT}"
    ) from e
  meta = restored["meta"]
  return Restored(
    source=source,
    step=int(meta["step"]),
    state=to_model_layout(restored["state"]),
    rng=_rng_from_json(meta.get("rng")),
    extra=meta.get("extra", {}),
    data_restored="data" in args,
    path=str(step_dir),
  )


# ---------------------------------------------------------------------------------------
# The run's own checkpoint manager.
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointSettings:
  """When to save, how many to keep, where to resume from: the `ckpt` config section.

  Attributes:
    subdir: checkpoint directory, relative to the workdir (non-empty, not absolute).
    save_every: save every this many steps (>= 1; plus a final save and on SIGTERM).
    keep: keep the latest this many checkpoints (>= 1).
    keep_every: also keep every step that is a multiple of this, forever (0: off).
    async_save: write checkpoints in a background thread.
    resume: another run's checkpoint directory or step directory to continue ("": none).
    init_from: a params-only start (`save_params` output or a training checkpoint; "":
      none). Whether the paths exist is checked by `check_sources` when training starts.
  """

  subdir: str = "checkpoints"
  save_every: int = 1000
  keep: int = 3
  keep_every: int = 0
  async_save: bool = True
  resume: str = ""
  init_from: str = ""

  def __post_init__(self):
    req, is_int = settings_lib.require, settings_lib.is_int
    req(
      isinstance(self.subdir, str) and self.subdir.strip() != "",
      self,
      "subdir",
      self.subdir,
      "need a non-empty directory name, relative to the workdir",
    )
    req(
      not self.subdir.startswith("/") and "://" not in self.subdir,
      self,
      "subdir",
      self.subdir,
      "need a directory relative to the workdir (use resume/init_from to read others)",
    )
    for field in ("save_every", "keep"):
      value = getattr(self, field)
      req(is_int(value, 1), self, field, value, "need an int >= 1")
    req(
      is_int(self.keep_every, 0),
      self,
      "keep_every",
      self.keep_every,
      "need an int >= 0 (0 turns it off)",
    )
    req(isinstance(self.async_save, bool), self, "async_save", self.async_save, "need true/false")
    for field in ("resume", "init_from"):
      value = getattr(self, field)
      req(isinstance(value, str), self, field, value, "need a path string ('' for none)")

  @classmethod
  def from_config(cls, section: Any) -> CheckpointSettings:
    """From a `ckpt` config section; a bad field is reported as `config.ckpt.<field>`."""
    if isinstance(section, cls):
      return section
    return settings_lib.from_section(cls, section, "ckpt")


class Checkpointer:
  """This run's checkpoints: async saves every `save_every` steps, the last `keep` kept.

  Example:
    with Checkpointer(workdir + "/checkpoints", save_every=500, keep=3) as ckpt:
      for step in range(first, total + 1):
        state, metrics = train_step(state, batch)
        ckpt.maybe_save(step, state, rng=rng, data_iter=it)
  """

  def __init__(
    self,
    directory: str,
    *,
    save_every: int,
    keep: int,
    async_save: bool = True,
    keep_every: int = 0,
  ):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: where step directories go (local path or gs://...).
      save_every: `maybe_save` saves when `step % save_every == 0`.
      keep: how many of the latest steps to keep (older ones are deleted).
      async_save: write to disk in a background thread.
      keep_every: also keep every step that is a multiple of this forever (0: off).
    """
    if save_every < 1 or keep < 1 or keep_every < 0:
      raise ValueError(
        f"need save_every >= 1, keep >= 1, keep_every >= 0; got "
        f"{save_every=}, {keep=}, {keep_every=}"
      )
    keep_policy = ocp.checkpoint_managers.LatestN(keep)
    if keep_every:
      keep_policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [keep_policy, ocp.checkpoint_managers.EveryNSteps(keep_every)]
      )
    self.directory = fileio.absolute(directory)
    self._manager = _manager(
      self.directory,
      ocp.CheckpointManagerOptions(
        save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(save_every),
        preservation_policy=keep_policy,
        enable_async_checkpointing=async_save,
        # Removes the temporary directories of saves that were killed midway.
        cleanup_tmp_directories=True,
        create=True,
      ),
    )

  @classmethod
  def from_config(cls, workdir: str, config: Any) -> Checkpointer:
    """Builds one from the `ckpt` config section (configs/ckpt.py) or CheckpointSettings."""
    s = CheckpointSettings.from_config(config)
    return cls(
      os.path.join(workdir, s.subdir),
      save_every=s.save_every,
      keep=s.keep,
      async_save=s.async_save,
      keep_every=s.keep_every,
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def maybe_save(
    self,
    step: int,
    state: PyTree,
    *,
    rng: jax.Array | None = None,
    data_iter: Any = None,
    extra: dict[str, Any] | None = None,
    force: bool = False,
  ) -> bool:
    """Saves `state` (and RNG, data-iterator position, extras) as step `step`.

    Call on every process, every step: it saves only on multiples of `save_every`,
    unless `force` (preemption, end of training). A step already on disk is skipped.

    Args:
      step: completed training steps of `state`.
      state: the train-state pytree (jax Arrays, sharded or not).
      rng: the loop's RNG key (typed or raw uint32), saved in the step's JSON.
      data_iter: a Grain DatasetIterator/DataLoaderIterator positioned after the last
        batch consumed by `state`.
      extra: JSON-serialisable caller data (e.g. tokens seen), returned on restore.
      force: save even off the `save_every` grid.

    Returns:
      Whether a save was started.
    """
    if not force and not self._manager.should_save(step):
      return False
    if step in self._manager.all_steps():
      return False
    args = {
      "state": ocp.args.StandardSave(state),
      "meta": ocp.args.JsonSave(
        {
          "version": _FORMAT_VERSION,
          "step": int(step),
          "rng": _rng_to_json(rng),
          "extra": dict(extra or {}),
        }
      ),
    }
    if data_iter is not None:
      args["data"] = grain_checkpoint.CheckpointSave(data_iter)
    saved = self._manager.save(step, args=ocp.args.Composite(**args), force=True)
    if saved:
      logging.info("checkpoint: saving step %d to %s", step, self.directory)
    return saved

  def save(self, step: int, state: PyTree, **kwargs: Any) -> bool:
    """`maybe_save(..., force=True)`: saves now regardless of `save_every`."""
    return self.maybe_save(step, state, force=True, **kwargs)

  def restore(
    self, abstract_state: PyTree, *, step: int | None = None, data_iter: Any = None
  ) -> Restored:
    """Restores a step of this run (the latest by default) with the given shardings.

    Args:
      abstract_state: the state tree as jax.ShapeDtypeStruct leaves WITH shardings; the
        restored arrays get exactly these shardings (which may differ from the saved
        ones).
      step: which step; None for the latest.
      data_iter: an iterator of the same pipeline, set in place to the saved position.

    Returns:
      A `Restored` with source "own".
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return _restore_step(self._manager, step, abstract_state, data_iter, "own")

  def wait(self) -> None:
    """Blocks until pending async saves are on disk (and raises their errors)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


# ---------------------------------------------------------------------------------------
# Params-only checkpoints (init_from) and other runs' checkpoints (resume).
# ---------------------------------------------------------------------------------------


def save_params(path: str, params: PyTree, *, overwrite: bool = False) -> None:
  """Writes a params-only checkpoint that `config.ckpt.init_from` can start from.

  Used by the HF converter (`launch/convert_hf.py`) and to export trained params.
  Blocks until the files are complete. Call on every process.

  Args:
    path: a directory to create (must not exist unless `overwrite`).
    params: a pytree of arrays (jax or NumPy).
    overwrite: replace an existing checkpoint at `path`.
  """
  path = fileio.absolute(path)
  if epath.Path(path).exists() and not overwrite:
    raise FileExistsError(f"{path} exists; pass overwrite=True or pick a new path")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, params, force=overwrite)
    checkpointer.wait_until_finished()


def _training_step_dir(path: str) -> tuple[str, int] | None:
  """Returns (root, step) if `path` is a training run's checkpoint dir or step dir."""
  p = epath.Path(fileio.absolute(path))
  if (p / "state").is_dir() and (p / "meta").is_dir():
    try:
      return str(p.parent), ocp.path.step.step_from_checkpoint_name(p.name)
    except ValueError:
      raise ValueError(
        f"{path} looks like a checkpoint step but its name is not a step number; "
        "point at the run's checkpoint directory instead"
      ) from None
  if p.is_dir():
    steps = ocp.utils.checkpoint_steps(p)
    if steps and (p / str(max(steps)) / "state").is_dir():
      return str(p), max(steps)
  return None


def check_sources(resume: str = "", init_from: str = "") -> None:
  """Fails early (before any compile) when `resume`/`init_from` point at nothing usable.

  Raises:
    FileNotFoundError: naming the config field, the path and what was expected there.
  """
  if resume and _training_step_dir(resume) is None:
    raise FileNotFoundError(
      f"config.ckpt.resume={resume!r}: no training checkpoint there; expected a "
      "run's checkpoint directory (holding step directories) or one step directory"
    )
  if init_from and not epath.Path(init_from).is_dir():
    raise FileNotFoundError(
      f"config.ckpt.init_from={init_from!r}: no such directory; expected a "
      "checkpoint written by checkpoint.save_params (e.g. launch/convert_hf.py "
      "output) or a training checkpoint"
    )


def load_params(path: str, abstract_params: PyTree, *, params_key: str = "params") -> PyTree:
  """Loads params from a `save_params` checkpoint or from a training checkpoint.

  Args:
    path: a `save_params` directory, a training run's checkpoint directory (its latest
      step is used) or one of its step directories.
    abstract_params: jax.ShapeDtypeStruct leaves with shardings, the target layout.
    params_key: for training checkpoints, the state entry holding the params.

  Returns:
    The params tree, laid out as `abstract_params`. A checkpoint whose layers are named
    one by one (written by an unscanned model) loads into a scanned model's stacked
    params, and the reverse.
  """
  _check_abstract(abstract_params, "abstract_params")
  found = _training_step_dir(path)
  if found is None:
    item_dir = epath.Path(fileio.absolute(path))
  else:
    item_dir = epath.Path(found[0]) / str(found[1]) / "state"
  saved = _saved_tree(item_dir)
  if found is not None and saved is not None:
    saved = saved.get(params_key) if isinstance(saved, dict) else None
  target, to_model_layout = _in_saved_layout(saved, abstract_params)
  try:
    if found is None:
      with ocp.StandardCheckpointer() as checkpointer:
        return to_model_layout(checkpointer.restore(item_dir, target))
    item = {params_key: target}
    with ocp.PyTreeCheckpointer() as checkpointer:
      restored = checkpointer.restore(
        item_dir,
        args=ocp.args.PyTreeRestore(
          item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True
        ),
      )
    return to_model_layout(restored[params_key])
  except (ValueError, KeyError) as e:
    raise ValueError(
      f"cannot load params from {path}: {e}\nThe params tree must match the model "
      "config (same preset, same parameter names); convert HF weights with "
      f"launch/convert_hf.py for this model config. {_LAYOUT_HINT}"
    ) from e


def restore_or_init(
  ckpt: Checkpointer,
  abstract_state: PyTree,
  *,
  resume: str = "",
  init_from: str = "",
  abstract_params: PyTree | None = None,
  params_key: str = "params",
  data_iter: Any = None,
) -> Restored:
  """Restores by the resume order: own latest -> resume -> init_from -> scratch.

  Args:
    ckpt: this run's checkpointer.
    abstract_state: the train state as ShapeDtypeStructs with shardings.
    resume: `config.ckpt.resume` ("" for none).
    init_from: `config.ckpt.init_from` ("" for none).
    abstract_params: target layout for init_from; default `abstract_state[params_key]`.
    params_key: where params live in the state (and in training checkpoints).
    data_iter: the input iterator, set in place to the saved position (own/resume).

  Returns:
    A `Restored` whose `source` says which source was used. For init_from only
    `params` is set (initialise the optimizer from them); for scratch nothing is.
  """
  latest = ckpt.latest_step()
  if latest is not None:
    if resume or init_from:
      logging.info(
        "checkpoint: continuing own step %d; ignoring resume=%r and init_from=%r",
        latest,
        resume,
        init_from,
      )
    return ckpt.restore(abstract_state, step=latest, data_iter=data_iter)
  check_sources(resume, init_from)
  if resume:
    root, step = _training_step_dir(resume)
    manager = _read_only(root)
    try:
      restored = _restore_step(manager, step, abstract_state, data_iter, "resume")
    finally:
      manager.close()
    logging.info("checkpoint: resumed step %d from %s", restored.step, restored.path)
    return restored
  if init_from:
    if abstract_params is None:
      try:
        abstract_params = abstract_state[params_key]
      except (KeyError, TypeError):
        raise ValueError(
          f"abstract_state has no {params_key!r} entry; pass abstract_params to "
          "restore_or_init for config.ckpt.init_from"
        ) from None
    params = load_params(init_from, abstract_params, params_key=params_key)
    logging.info("checkpoint: params initialised from %s", init_from)
    return Restored(source="init_from", params=params, path=init_from)
  return Restored(source="scratch")


# ---------------------------------------------------------------------------------------
# Preemption: SIGTERM/SIGINT -> a flag the loop polls.
# ---------------------------------------------------------------------------------------


class PreemptionGuard:
  """Turns SIGTERM/SIGINT into `should_stop()`, so the loop saves and exits cleanly.

  A second signal of the same kind restores the previous handler and re-delivers it, so
  a run that hangs while stopping can still be interrupted. With several processes,
  `should_stop()` is a collective (every process must call it equally often): the flag of
  any process stops all, so they save the same step together.

  Example:
    with PreemptionGuard() as guard:
      for step in ...:
        ...
        if guard.should_stop():
          ckpt.save(step, state, rng=rng, data_iter=it)
          break
  """

  def __init__(
    self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT), *, sync_every: int = 1
  ):
    """Installs the handlers (main thread only; elsewhere only `request_stop` works).

    Args:
      signals: which signals request a stop.
      sync_every: with several processes, agree on the flag every this many polls.
    """
    self._stop = threading.Event()
    self._synced = False
    self._polls = 0
    self._sync_every = max(1, sync_every)
    self._old: dict[int, Any] = {}
    self.received: int | None = None
    if threading.current_thread() is not threading.main_thread():
      logging.warning("PreemptionGuard: not in the main thread, signals not caught")
      return
    for signum in signals:
      self._old[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum: int, frame: Any) -> None:
    if self._stop.is_set() and self.received == signum:
      old = self._old.get(signum, signal.SIG_DFL)
      self.close()
      if callable(old):
        old(signum, frame)
      elif old == signal.SIG_DFL:
        os.kill(os.getpid(), signum)
      return
    self.received = signum
    self._stop.set()
    logging.warning(
      "received %s: will save a checkpoint and stop after this step "
      "(send it again to stop at once)",
      signal.Signals(signum).name,
    )

  def request_stop(self) -> None:
    """Sets the flag by hand (e.g. a time limit)."""
    self._stop.set()

  def should_stop(self) -> bool:
    """Whether a stop was requested (on any process, when several run)."""
    if jax.process_count() == 1:
      return self._stop.is_set()
    if self._synced:
      return True
    self._polls += 1
    if self._polls % self._sync_every:
      return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(self._stop.is_set()))
    self._synced = bool(np.any(flags))
    return self._synced

  def close(self) -> None:
    """Restores the handlers that were installed before."""
    for signum, old in self._old.items():
      signal.signal(signum, old)
    self._old = {}

  def __enter__(self) -> PreemptionGuard:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
