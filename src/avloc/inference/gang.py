"""One model batch for the frames of several videos analysed at once (``--batch-across-videos``).

A Ray worker of ``avloc localize`` may analyse several videos at once, one thread each
(:mod:`avloc.applications.ray_runner`). With a per-frame map source (no temporal context, no tagger, no
per-source analysis) they can share the model's batches: :class:`GangedSource` is the map source of every
such analysis. Each analysis joins it for its duration (:meth:`GangedSource.member`); a call of
:meth:`~GangedSource.maps` waits until every member has its next batch waiting, then one model call computes
them all (in joining order) and each gets its own rows back, keyed by its thread -- never by call order.
A GPU gets fuller batches; the maps equal a lone analysis's to float rounding (another batch, another order of
summation), not byte for byte. When the shared call fails, each batch runs alone, so only its own video fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from avloc.inference.sources import SourceOutput


def shareable(source: Any, tagger: Any) -> bool:
    """Whether a map source's frames can share batches across videos: per-frame, no context, no tagger."""
    return tagger is None and source.context_seconds == 0.0 and not source.is_clip and not source.analyses_sources


def _cut(out: SourceOutput, a: int, b: int) -> SourceOutput:
    return SourceOutput(out.maps[a:b], *(getattr(out, f.name)[a:b] for f in dataclasses.fields(SourceOutput)[1:]))


@dataclass
class _Request:
    images: torch.Tensor  # (T, 3, S, S)
    audio: torch.Tensor  # (T, N)
    times: torch.Tensor  # (T,)
    out: SourceOutput | None = None
    error: BaseException | None = None


class GangedSource:
    """A per-frame map source shared by the analyses running at once in one process (module doc)."""

    context_seconds = 0.0
    is_clip = False
    analyses_sources = False

    def __init__(self, inner: Any) -> None:
        self.inner, self.model = inner, inner.model
        self._cv = threading.Condition()
        self._members: list[int] = []  # thread idents, in joining order
        self._pending: dict[int, _Request] = {}

    @contextlib.contextmanager
    def member(self) -> Iterator[None]:
        """The calling thread's analysis shares batches while inside this block."""
        me = threading.get_ident()
        with self._cv:
            self._members.append(me)
        try:
            yield
        finally:
            with self._cv:
                self._members.remove(me)
                self._pending.pop(me, None)
                self._cv.notify_all()  # the others may now all be waiting: one of them runs their batch

    def maps(self, images: torch.Tensor, audio: torch.Tensor, times: torch.Tensor,
             keep: slice | None = None) -> SourceOutput:
        """This thread's maps, computed in one model call with the other members' waiting batches."""
        me = threading.get_ident()
        req = _Request(images, audio, times)
        with self._cv:
            if me not in self._members:
                raise RuntimeError("GangedSource.maps called outside member()")
            self._pending[me] = req
            while req.out is None and req.error is None:
                if len(self._pending) == len(self._members):
                    self._run_waiting()
                else:
                    self._cv.wait()
        if req.error is not None:
            raise req.error
        assert req.out is not None
        return req.out

    def _run_waiting(self) -> None:
        """One model call for every waiting batch (the lock is held: the members are all waiting anyway)."""
        reqs = [self._pending.pop(m) for m in self._members if m in self._pending]
        try:
            out = self.inner.maps(torch.cat([r.images for r in reqs]), torch.cat([r.audio for r in reqs]),
                                  torch.cat([r.times for r in reqs]))
        except Exception:  # each batch alone, so that only the video whose batch fails fails
            for r in reqs:
                try:
                    r.out = self.inner.maps(r.images, r.audio, r.times)
                except Exception as e:
                    r.error = e
        else:
            a = 0
            for r in reqs:
                r.out = _cut(out, a, a + r.images.shape[0])
                a += r.images.shape[0]
        self._cv.notify_all()
