"""Accumulating metrics: per-sample rows kept as plain arrays, mergeable across processes.

An :class:`Accumulator` stores, for every sample seen, one row per field (a
NumPy array per field, concatenated on demand). ``merge`` concatenates the
rows of another accumulator or of a ``state_dict()`` — the state is plain
arrays, so it travels through ``torch.distributed.all_gather_object`` (see
:func:`gather`). ``compute()`` calls the same functional summary the
stand-alone function uses, so the function and the class cannot drift
(after torchmetrics' ``Metric``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, Self, TypeVar

import numpy as np

from avloc.errors import DataError


class Accumulator:
    """Base class: subclasses name their per-sample ``fields`` and implement ``update``/``compute``."""

    fields: ClassVar[tuple[str, ...]] = ()
    #: the scores ``compute`` returns and whether a higher value is better (torchmetrics' ``higher_is_better``);
    #: ``NAME_suffix`` and ``NAME@t`` keys take NAME's direction; other keys (counts, curves) are not scores
    higher_is_better: ClassVar[Mapping[str, bool]] = {}

    def __init__(self) -> None:
        self._parts: dict[str, list[np.ndarray]] = {f: [] for f in self.fields}

    def _append(self, **rows: np.ndarray) -> None:
        if set(rows) != set(self.fields):
            raise ValueError(f"{type(self).__name__}: expected fields {self.fields}, got {sorted(rows)}")
        lengths = {len(v) for v in rows.values()}
        if len(lengths) != 1:
            raise ValueError(f"{type(self).__name__}: fields have different lengths {lengths}")
        for k, v in rows.items():
            self._parts[k].append(np.asarray(v))

    def state(self, field: str) -> np.ndarray:
        """All rows of ``field`` seen so far (concatenated)."""
        parts = self._parts[field]
        if not parts:
            return np.zeros((0,))
        if len(parts) > 1:
            self._parts[field] = [np.concatenate(parts)]
        return self._parts[field][0]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays (one row per sample) — picklable, mergeable."""
        return {f: self.state(f) for f in self.fields}

    def load_state_dict(self, state: Mapping[str, Any]) -> Self:
        self.reset()
        return self.merge(state)

    def merge(self, other: Accumulator | Mapping[str, Any]) -> Self:
        """Add the rows of another accumulator (or of its ``state_dict()``) to this one."""
        state = other.state_dict() if isinstance(other, Accumulator) else dict(other)
        missing = set(self.fields) - set(state)
        if missing:
            raise DataError(f"{type(self).__name__}.merge: state lacks fields {sorted(missing)}")
        rows = {f: np.asarray(state[f]) for f in self.fields}
        if rows and len(next(iter(rows.values()))) > 0:
            self._append(**rows)
        return self

    def reset(self) -> None:
        self._parts = {f: [] for f in self.fields}

    def empty_like(self) -> Self:
        """A new accumulator with the same settings and no rows."""
        new = copy.copy(self)
        new.reset()
        return new

    def __len__(self) -> int:
        return len(self.state(self.fields[0])) if self.fields else 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:
        raise NotImplementedError


def score_direction(directions: Mapping[str, bool], key: str) -> bool | None:
    """Whether ``key`` is better higher (True) or lower (False) by ``directions``; ``None`` when not a score."""
    if key in directions:
        return directions[key]
    for sep in ("@", "_"):
        head = key.split(sep, 1)[0]
        if sep in key and head in directions:
            return directions[head]
    return None


class Mergeable(Protocol):
    """Anything with plain-array state that merges: :class:`Accumulator`, ``ProtocolAccumulator``."""

    def state_dict(self) -> Any: ...

    def merge(self, other: Any) -> Any: ...

    def empty_like(self) -> Any: ...


M = TypeVar("M", bound=Mergeable)


def gather(acc: M) -> M:
    """Merge ``acc`` over all torch.distributed processes (no-op when not distributed)."""
    import torch.distributed as dist  # lazy: only training-time validation needs it

    if not (dist.is_available() and dist.is_initialized()):
        return acc
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, acc.state_dict())
    merged: M = acc.empty_like()
    for s in states:
        merged.merge(s)
    return merged
