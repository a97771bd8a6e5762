"""Helpers shared by every config file: the `get_config(arg)` argument parser and checks.

Configs are selected as `--config=configs/x.py:ARG` where ARG is either a bare variant
name (`smoke`) or comma-separated `key=value` pairs (`variant=smoke,k=32`), as in
big_vision. Field overrides use `--config.section.field=value`.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import ml_collections

T = TypeVar("T")


class ConfigError(ValueError):
  """A config field has a bad value; the message names the field and the fix."""


def build(from_config: Callable[..., T], *args: Any, **kwargs: Any) -> T:
  """Builds a library settings type from config sections (`X.from_config(section)`).

  The one place where the library's ValueError (a `settings.SettingsError` naming
  `config.<section>.<field>=<value>` and what it needs) becomes a ConfigError, as does
  a FileNotFoundError for a path field (e.g. a `model.hf_dir` without config.json).
  """
  try:
    return from_config(*args, **kwargs)
  except ConfigError:
    raise
  except (ValueError, FileNotFoundError) as e:
    raise ConfigError(str(e)) from None


def _coerce(key: str, value: str, default: Any) -> Any:
  if isinstance(default, bool):
    if value.lower() in ("1", "true", "yes", "y", "on"):
      return True
    if value.lower() in ("0", "false", "no", "n", "off"):
      return False
    raise ConfigError(f"config arg {key}={value!r}: expected a boolean (true/false)")
  for typ in (int, float):
    if isinstance(default, typ):
      try:
        return typ(value)
      except ValueError:
        raise ConfigError(f"config arg {key}={value!r}: expected {typ.__name__}") from None
  return value


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """Parses a config argument string into a ConfigDict with typed fields.

  Args:
    arg: `None`/`""`, a bare word (taken as `variant=<word>`), or `k1=v1,k2=v2`.
    **spec: known keys and their defaults; the default's type decides how values parse.

  Returns:
    A locked ConfigDict holding every key of `spec`, overridden by `arg`.

  Raises:
    ConfigError: for a key not in `spec` or a value of the wrong type.
  """
  result = dict(spec)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      key, value = "variant", item
    else:
      key, value = item.split("=", 1)
    key = key.strip()
    if key not in spec:
      raise ConfigError(f"unknown config arg {key!r} in {arg!r}; known args: {sorted(spec)}")
    result[key] = _coerce(key, value.strip(), spec[key])
  config = ml_collections.ConfigDict(result)
  config.lock()
  return config


def check(condition: bool, field: str, message: str) -> None:
  """Raises ConfigError naming `field` unless `condition` holds."""
  if not condition:
    raise ConfigError(f"config.{field}: {message}")


def check_choice(value: Any, field: str, choices) -> None:
  check(value in choices, field, f"got {value!r}; choose one of {sorted(choices)}")
