"""Registries: one per extension point (methods, encoders, datasets, protocols, checkpoint importers).

Each registry maps a name to a factory (a class or a function). ``create``
calls the factory with keyword arguments; unknown or duplicate names raise
with the list of valid names (after timm's ``models/_registry.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from avloc.errors import AvlocError

T = TypeVar("T", bound=Callable[..., Any])


class RegistryError(AvlocError, KeyError):
    """Unknown or duplicate registry name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A name -> factory mapping for one extension point."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; duplicates raise."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise RegistryError(f"duplicate {self.kind} name {name!r}; already registered: {self._items[name]!r}")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items)) or "(none)"
            raise RegistryError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)


METHODS: Registry[Any] = Registry("method")
ENCODERS: Registry[Any] = Registry("encoder")
DATASETS: Registry[Any] = Registry("dataset")
PROTOCOLS: Registry[Any] = Registry("protocol")
IMPORTERS: Registry[Any] = Registry("checkpoint family")


def load_all() -> None:
    """Import every subpackage that registers something, so registries are full."""
    import avloc.data
    import avloc.encoders
    import avloc.importers.families
    import avloc.methods
    import avloc.metrics  # noqa: F401
