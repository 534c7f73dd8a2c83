"""The one DataLoader of avloc: an :class:`~avloc.errors.AvlocError` raised in a worker reaches the caller as itself.

PyTorch re-raises an exception from a worker process as a new exception of the same type whose message is
the worker's whole formatted traceback ("Caught DataError in DataLoader worker process 0. Original
Traceback ..."), so a bad file met by a worker printed a traceback where one line was promised.
:class:`Loader` carries the error object itself instead: in the worker, the dataset and the collate
function turn an ``AvlocError`` into a :class:`WorkerFailure` item (pickled back like any batch); the
main process raises that very error, with its original type and message. Any other exception (a bug)
keeps PyTorch's behaviour, worker traceback included. With ``num_workers=0`` nothing is wrapped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, Dataset, get_worker_info

from avloc.errors import AvlocError


@dataclass
class WorkerFailure:
    """What a worker returns instead of a sample or batch when it met an :class:`AvlocError`."""

    error: AvlocError


class _Guarded(Dataset):  # type: ignore[type-arg]
    """``dataset`` whose ``AvlocError`` becomes a :class:`WorkerFailure` item inside a worker process."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        try:
            return self.dataset[index]
        except AvlocError as e:
            if get_worker_info() is None:  # in the main process (num_workers=0 is never wrapped; kept exact)
                raise
            return WorkerFailure(e)


class _GuardedCollate:
    """``collate_fn`` passing a batch's first :class:`WorkerFailure` through (and catching its own errors)."""

    def __init__(self, collate_fn: Callable[[Any], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, items: Sequence[Any]) -> Any:
        failed = next((x for x in items if isinstance(x, WorkerFailure)), None)
        if failed is not None:
            return failed
        try:
            return self.collate_fn(items)
        except AvlocError as e:
            return WorkerFailure(e)


class Loader(DataLoader):  # type: ignore[type-arg]
    """``torch.utils.data.DataLoader`` (same keyword arguments) whose workers' ``AvlocError`` is raised as itself."""

    def __init__(self, dataset: Any, **kwargs: Any) -> None:
        self.wrapped = kwargs.get("num_workers", 0) > 0
        if self.wrapped:
            from torch.utils.data import default_collate

            dataset = _Guarded(dataset)
            kwargs["collate_fn"] = _GuardedCollate(kwargs.get("collate_fn") or default_collate)
        super().__init__(dataset, **kwargs)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        for batch in super().__iter__():
            if isinstance(batch, WorkerFailure):
                raise batch.error
            yield batch
