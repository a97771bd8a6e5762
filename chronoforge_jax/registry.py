"""Small name -> function registries, so configs can pick implementations by string.

Used for things users swap: keyframe selectors, reward functions, advantage estimators,
policy-loss variants (after tunix's `function_registry.py`).
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
  """A named collection of callables.

  Example:
    SELECTORS = Registry("keyframe selector")

    @SELECTORS.register("uniform")
    def uniform(...): ...

    fn = SELECTORS.get(config.tad.selector)
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, F] = {}

  def register(self, name: str) -> Callable[[F], F]:
    """Returns a decorator that registers a function under `name`."""

    def deco(fn: F) -> F:
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._items[name] = fn
      return fn

    return deco

  def get(self, name: str) -> F:
    """Looks up `name`; an unknown name raises a KeyError listing the known ones."""
    try:
      return self._items[name]
    except KeyError:
      raise KeyError(f"unknown {self.kind} {name!r}; choose one of {sorted(self._items)}") from None

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items
