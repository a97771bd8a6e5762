"""Atomic file writes, and the one rule for making a user's path absolute.

Atomic writes: a reader (or a rerun after a kill) sees the old file or the new one. Every
result file the project writes (indexes, summaries, reports, run configs) goes through
here, so an interrupted run never leaves half a file where a finished one was.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable


def absolute(path: str | None) -> str | None:
  """`path` made absolute against the working folder; "", None and URLs unchanged."""
  if not path or "://" in path:
    return path
  return os.path.abspath(os.path.expanduser(path))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes `text` to `path` via a temporary file in the same folder and os.replace."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json_atomic(
  path: str | os.PathLike,
  obj: Any,
  *,
  sort_keys: bool = True,
  default: Callable[[Any], Any] | None = None,
) -> None:
  """Writes `obj` as indented JSON, atomically (see write_text_atomic)."""
  write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=sort_keys, default=default))
