"""The one DataLoader of avloc: a worker's :class:`~avloc.errors.AvlocError` reaches the caller as itself, and
large batch tensors reach the main process through reused shared memory.

**Errors.** PyTorch re-raises an exception from a worker process as a new exception of the same type whose
message is the worker's whole formatted traceback ("Caught DataError in DataLoader worker process 0.
Original Traceback ..."), so a bad file met by a worker printed a traceback where one line was promised.
:class:`Loader` carries the error object itself instead: in the worker, the dataset and the collate
function turn an ``AvlocError`` into a :class:`WorkerFailure` item (pickled back like any batch); the
main process raises that very error, with its original type and message. Any other exception (a bug)
keeps PyTorch's behaviour, worker traceback included. With ``num_workers=0`` nothing is wrapped.

**Batch slots.** A worker's batch crosses to the main process in shared memory. PyTorch allocates new
shared memory for every batch, and the kernel must fault in and zero each of its pages: for a shard set's
samples (a 224 px picture and 3 s of int16 audio, ~250 kB) that is ~60 page faults a sample, as much CPU
as decoding the picture on the shared machine of docs/BENCHMARKS.md ("Data loader"). So each worker keeps
``prefetch_factor + 1`` slots of shared memory and reuses them from batch to batch:
:func:`avloc.data.collate.collate_samples` stacks every tensor of at least :data:`SLOT_MIN_BYTES` straight
into a free slot (:func:`batch_buffer`); the main process copies the batch out (into pinned memory when
``pin_memory=True``, which copies anyway) and hands the slot back to its worker. A batch is therefore the
caller's own memory, valid for as long as the caller keeps it, and the main process maps each slot once.
A worker has at most ``prefetch_factor`` batches in flight and the main process frees a slot as soon as
it receives that slot's batch, so ``prefetch_factor + 1`` slots never leave a worker waiting on the main
process in a cycle. With ``persistent_workers=True`` batches use PyTorch's fresh shared memory (workers
outlive a pass, and with it the bookkeeping of which slot is free).
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from avloc.errors import AvlocError

#: batch tensors at least this large travel in slots; below it the page faults of fresh memory are negligible
SLOT_MIN_BYTES = 1 << 20
#: DataLoader's own default ``prefetch_factor`` (batches in flight per worker)
DEFAULT_PREFETCH = 2


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


@dataclass
class _SlotBatch:
    """A worker's batch whose ``keys`` lie in its slot ``slot`` (module doc); ``own``: already copied out."""

    worker: int
    slot: int
    batch: dict[str, Any]
    keys: list[str]
    own: bool = False

    def pin_memory(self) -> _SlotBatch:
        """Called by DataLoader's pinning thread: the copy out of the slot is the pinned copy."""
        pinned = {k: (v.pin_memory() if k in self.keys else v) for k, v in self.batch.items()}
        from torch.utils.data._utils.pin_memory import pin_memory

        rest = pin_memory({k: v for k, v in self.batch.items() if k not in self.keys})
        return _SlotBatch(self.worker, self.slot, {**pinned, **rest}, self.keys, own=True)


def _shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in new shared memory (nothing copied there first)."""
    numel = 1
    for d in shape:
        numel *= d
    storage = torch.UntypedStorage._new_shared(numel * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


@dataclass
class _Slots:
    """One worker's side of its slots: the free slot numbers (a queue the main process refills), the buffers."""

    free: Any  # multiprocessing SimpleQueue of slot numbers
    buffers: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    slot: int | None = None  # the slot of the batch being collated
    keys: list[str] = field(default_factory=list)

    def buffer(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A tensor of ``shape`` in the current batch's slot (taking a free slot first)."""
        if self.slot is None:
            self.slot = self.free.get()  # waits while the main process still holds every slot (module doc)
        buf = self.buffers.get((self.slot, key))
        if buf is None or buf.dtype != dtype or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
            buf = self.buffers[(self.slot, key)] = _shared_empty(shape, dtype)  # once per slot and key
        self.keys.append(key)
        return buf[: shape[0]]


_ACTIVE: _Slots | None = None  # the slots of the batch this worker is collating (set by _GuardedCollate)


def batch_buffer(key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
    """Where a collate function should stack batch tensor ``key``: a slot when a :class:`Loader` worker is
    collating and the tensor is large (module doc), new shared memory in any other worker (one copy, as
    ``default_collate``), ``None`` (ordinary memory) in the main process."""
    if get_worker_info() is None:
        return None
    numel = 1
    for d in shape:
        numel *= d
    if _ACTIVE is not None and numel > 0 and numel * dtype.itemsize >= SLOT_MIN_BYTES:
        return _ACTIVE.buffer(key, shape, dtype)
    return _shared_empty(shape, dtype)


class _GuardedCollate:
    """``collate_fn`` passing a batch's first :class:`WorkerFailure` through (and catching its own errors),
    collating into the worker's slots when the :class:`Loader` gave it free-slot queues (one per worker)."""

    def __init__(self, collate_fn: Callable[[Any], Any]) -> None:
        self.collate_fn = collate_fn
        self.free: list[Any] | None = None  # set by Loader.__iter__ before the workers start
        self._mine: _Slots | None = None  # in a worker: its slots

    def __call__(self, items: Sequence[Any]) -> Any:
        global _ACTIVE
        failed = next((x for x in items if isinstance(x, WorkerFailure)), None)
        if failed is not None:
            return failed
        info = get_worker_info()
        if self.free is not None and info is not None and self._mine is None:
            self._mine = _Slots(self.free[info.id])
        _ACTIVE = self._mine
        try:
            out = self.collate_fn(items)
        except AvlocError as e:
            out = WorkerFailure(e)
        finally:
            _ACTIVE = None
        mine = self._mine
        if info is None or mine is None or mine.slot is None:
            return out
        slot, keys = mine.slot, mine.keys
        mine.slot, mine.keys = None, []
        if not isinstance(out, dict):  # a failure, or a collate of another shape: the slot is not used
            mine.free.put(slot)
            return out
        return _SlotBatch(info.id, slot, out, keys)


class Loader(DataLoader):  # type: ignore[type-arg]
    """``torch.utils.data.DataLoader`` (same keyword arguments) whose workers' ``AvlocError`` is raised as itself
    and whose workers send large batch tensors through reused shared-memory slots (module doc)."""

    def __init__(self, dataset: Any, **kwargs: Any) -> None:
        self.wrapped = kwargs.get("num_workers", 0) > 0
        if self.wrapped and kwargs.get("multiprocessing_context") is None and "av" in sys.modules:
            # a worker forked from a process that has decoded with PyAV can hang in its first decode (FFmpeg's
            # threads do not survive fork): start workers from a clean forkserver instead
            kwargs["multiprocessing_context"] = "forkserver"
        self._guard: _GuardedCollate | None = None
        if self.wrapped:
            from torch.utils.data import default_collate

            dataset = _Guarded(dataset)
            self._guard = _GuardedCollate(kwargs.get("collate_fn") or default_collate)
            kwargs["collate_fn"] = self._guard
        super().__init__(dataset, **kwargs)
        self._slots = (self.prefetch_factor or DEFAULT_PREFETCH) + 1
        self._use_slots = self.wrapped and not self.persistent_workers

    def _new_slots(self) -> list[Any]:
        """Fresh free-slot queues, every slot free, for the workers of a new pass."""
        ctx = self.multiprocessing_context or multiprocessing.get_context()
        queues = [ctx.SimpleQueue() for _ in range(self.num_workers)]
        for q in queues:
            for s in range(self._slots):
                q.put(s)
        return queues

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        guard = self._guard
        if guard is not None:
            guard.free = self._new_slots() if self._use_slots else None  # before the workers start
        held: dict[tuple[int, int, str], torch.Tensor] = {}  # the slots as mapped here: each mapped once
        it = super().__iter__()
        try:
            for batch in it:
                if isinstance(batch, WorkerFailure):
                    raise batch.error
                if isinstance(batch, _SlotBatch):
                    batch = self._take(batch, held)
                yield batch
        finally:
            if guard is not None and guard.free is not None:
                for q in guard.free:  # a worker still waiting for a slot goes on, so the pass shuts down at once
                    for s in range(self._slots):
                        q.put(s)
            del it

    def _take(self, sb: _SlotBatch, held: dict[tuple[int, int, str], torch.Tensor]) -> dict[str, Any]:
        """The batch in the caller's own memory; the slot back to its worker."""
        out = dict(sb.batch)
        if not sb.own:
            for k in sb.keys:
                held[(sb.worker, sb.slot, k)] = out[k]
                out[k] = out[k].clone()  # (keeps the memory format: a channels_last picture batch stays so)
        assert self._guard is not None and self._guard.free is not None
        self._guard.free[sb.worker].put(sb.slot)
        return out
