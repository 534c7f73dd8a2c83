"""The AudioSet class hierarchy among YAMNet's classes (``audioset_hierarchy.json``; Gemmeke et al., ICASSP 2017).

A generic heard class ("Music", "Vehicle", "Animal", "Tools") names no visible thing of its own; it grounds
on the visible instances of its *descendants* ("Music" -> guitar, piano, drum kit ...; "Vehicle" -> boat,
car ...). :class:`AudioSetHierarchy` gives each class's descendants (the transitive closure of the
parent -> child facts derived from the public ontology by ``tools/derive_audioset_hierarchy.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from avloc.errors import ConfigError

HIERARCHY_FILE = Path(__file__).with_name("audioset_hierarchy.json")


@dataclass(frozen=True)
class AudioSetHierarchy:
    """Parent -> nearest children among a fixed list of class names (module doc)."""

    names: tuple[str, ...]
    children: dict[str, tuple[str, ...]]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _below: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.names)})
        for parent, kids in self.children.items():
            unknown = [k for k in (parent, *kids) if k not in self._index]
            if unknown:
                raise ConfigError(f"AudioSet hierarchy: {unknown[0]!r} is not one of the {len(self.names)} classes")
        object.__setattr__(self, "_below", {n: self._closure(n) for n in self.children})

    @classmethod
    def load(cls, names: Sequence[str], path: str | Path = HIERARCHY_FILE) -> AudioSetHierarchy:
        """Read ``path`` for the classes ``names`` (YAMNet's display names, in its order)."""
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            children = {str(k): tuple(str(c) for c in v) for k, v in doc["children"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path}: not an AudioSet hierarchy file ({e})") from None
        return cls(tuple(names), children)

    def descendants(self, name: str) -> tuple[str, ...]:
        """Every class below ``name`` (not itself), in the order of :attr:`names`."""
        if name not in self._index:
            raise ConfigError(f"{name!r} is not an AudioSet class of this hierarchy")
        return self._below.get(name, ())

    def _closure(self, name: str) -> tuple[str, ...]:
        seen: set[str] = set()
        stack = list(self.children.get(name, ()))
        while stack:
            c = stack.pop()
            if c not in seen and c != name:
                seen.add(c)
                stack.extend(self.children.get(c, ()))
        return tuple(sorted(seen, key=self._index.__getitem__))

    def descendant_indices(self, name: str) -> list[int]:
        """:meth:`descendants` as indices into :attr:`names`."""
        return [self._index[d] for d in self.descendants(name)]
