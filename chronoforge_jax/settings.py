"""What every validated settings type shares: the error, the checks, the config mapping.

Each concern has one frozen, keyword-only dataclass whose `__post_init__` is the only
check of its fields and whose `from_config(section)` builds it from a config section:

  data pipeline  data/pipeline.PipelineSettings   `input` (+ `tad`, `model`)
  preprocessing  data/records.PreprocessSettings  `preprocess` (+ `features`)
  decoding       data/decode.DecodeSettings       `input` of configs/tad.py
  TAD            tad/selection.TADSettings         `tad`
  features       tad/features.FeatureSettings      `features`
  model          models.ModelSettings              `model`
  checkpoints    train/checkpoint.CheckpointSettings `ckpt`
  sampling       models/sampling.SamplingSettings  `sampling`

A bad value raises `SettingsError`, a ValueError that names the field and what it needs:
`PipelineSettings.batch_size=0: need an int >= 1` when the type is built directly, and
`config.input.batch_size=0: need an int >= 1` when `from_config` built it, so the message
names the `--config.<section>.<field>` flag to fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
from typing import Any, Iterator, Mapping, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
  """A settings field has a bad value; the message names the field and the fix.

  Attributes:
    name: the field as the message spells it (`PipelineSettings.batch_size` or
      `config.input.batch_size`).
    field: the dataclass field's own name (`batch_size`).
    value: the bad value.
    need: what the field accepts.
  """

  def __init__(self, name: str, value: Any, need: str, *, field: str | None = None):
    self.name, self.value, self.need = name, value, need
    self.field = field if field is not None else name.rpartition(".")[2]
    super().__init__(f"{name}={value!r}: {need}")

  def renamed(self, name: str) -> SettingsError:
    """The same error, naming the field `name`."""
    return SettingsError(name, self.value, self.need, field=self.field)


def require(ok: bool, owner: Any, field: str, value: Any, need: str) -> None:
  """Raises SettingsError `<owner>.<field>=<value>: <need>` unless `ok`.

  `owner` is a settings object (its type's name is used), a name, or None for the bare
  field name (a type whose fields are a function's keyword arguments).
  """
  if not ok:
    if owner is None:
      name = field
    else:
      name = f"{owner if isinstance(owner, str) else type(owner).__name__}.{field}"
    raise SettingsError(name, value, need, field=field)


def is_int(x: Any, minimum: int | None = None) -> bool:
  """An integer (not a bool), at least `minimum` when given."""
  ok = isinstance(x, numbers.Integral) and not isinstance(x, bool)
  return ok and (minimum is None or x >= minimum)


def is_number(x: Any, minimum: float | None = None) -> bool:
  """A finite real number (not a bool), at least `minimum` when given."""
  ok = isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
  return ok and (minimum is None or x >= minimum)


def choice(owner: Any, field: str, value: Any, choices) -> None:
  """Requires `value` to be one of `choices` (a sequence or a Registry)."""
  names = choices.names() if hasattr(choices, "names") else tuple(choices)
  require(value in names, owner, field, value, f"choose one of {list(names)}")


@contextlib.contextmanager
def renamed(names: Mapping[str, str] | str) -> Iterator[None]:
  """Reports a SettingsError raised inside under another name.

  Args:
    names: a section name (`"input"`: field f becomes `config.input.f`), or a mapping
      from dataclass field to the name to report (fields not in it keep theirs).
  """
  try:
    yield
  except SettingsError as e:
    if isinstance(names, str):
      raise e.renamed(f"{names}.{e.field}") from None
    raise e.renamed(names.get(e.field, e.name)) from None


def section_kwargs(cls: type[T], section: Any, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
  """The fields of `cls` that `section` (a ConfigDict or mapping) holds, by name.

  Fields the section lacks keep the dataclass default; fields in `skip` are left out.
  """
  return {
    f.name: section[f.name]
    for f in dataclasses.fields(cls)
    if f.init and f.name not in skip and f.name in section
  }


def from_section(cls: type[T], section: Any, name: str, **extra: Any) -> T:
  """`cls(**section fields, **extra)`; a bad field is reported as `config.<name>.<field>`."""
  with renamed(f"config.{name}"):
    return cls(**{**section_kwargs(cls, section), **extra})
