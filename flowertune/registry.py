"""One small registry type used for every pluggable kind (benchmarks, strategies, partitioners, ...).

An entry is the object itself, or a lazy ``"module:attr"`` reference resolved on first :meth:`Registry.get`:
names can be listed and checked without importing what implements them (``flowertune/catalog.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map whose lookups fail with the list of valid names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}

    def add(self, name: str, item: T) -> T:
        """Register ``item`` under ``name``; a second registration of a name is a bug."""
        if name in self._items or name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item
        return item

    def add_lazy(self, name: str, target: str) -> None:
        """Register ``"module:attr"`` under ``name``; the module is imported by the first :meth:`get`."""
        if name in self._items or name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if ":" not in target:
            raise ValueError(f"{self.kind} {name!r}: lazy target {target!r} is not 'module:attr'")
        self._lazy[name] = target

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda item: self.add(name, item)

    def get(self, name: str) -> T:
        """Return the item called ``name`` or raise a ``KeyError`` naming the valid choices."""
        if name in self._items:
            return self._items[name]
        if name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            item: Any = getattr(importlib.import_module(module), attr)
            self._items[name] = item
            return item
        raise KeyError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}")

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted({*self._items, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
