"""Named evaluation protocols: each fixes resizing, normalisation, binarisation, ground truth and success test.

A protocol is a typed, frozen dataclass config (:class:`Protocol`, one subclass per task) registered in
:data:`avloc.registry.PROTOCOLS`; ``create_protocol(name, **overrides)`` returns it and
``protocol.accumulator()`` the task's scorer (a :class:`ProtocolAccumulator`) that every evaluation path
(training-time validation, ``avloc eval``, the benchmarks) feeds through :mod:`avloc.engine.evaluate`.

One module per task, each importing only :mod:`~avloc.metrics.protocols.base` (the shared map reading):

==========================  ======================================  =========================================
module                      protocols                               scores
==========================  ======================================  =========================================
``ciou``                    ``lvs-*``, ``ezvsl-*``, ``sslalign*``,   success / AUC / mean cIoU (IIoU);
                            ``dsol-music``; ``aclssl-sweep-*``      a tuned threshold sweep
``extended``                ``slavc-extended*``                      + AP / max-F1 with silent frames
``classaware``              ``dsol-classaware``, ``dsol-duet``,      per-class cIoU (+ NSA), class maps
                            ``qian-classaware``
``avsol``                   ``avsol``                                HmBoxAUC, PiBR, PNSR
``realworld``               ``realclips``                            median / adaptive cIoU, pointing
==========================  ======================================  =========================================

Importing this package imports no task module; the registry imports the one a name needs.
Sources and settings: ``docs/protocols.md``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from avloc.metrics.protocols.base import MapReader, Protocol, ProtocolAccumulator
from avloc.registry import PROTOCOLS


def create_protocol(name: str | Protocol, **overrides: Any) -> Protocol:
    """The registered protocol ``name`` with optional setting overrides (unknown names list the valid ones)."""
    if isinstance(name, Protocol):
        return dataclasses.replace(name, **overrides) if overrides else name
    return PROTOCOLS.create(name, **overrides)  # type: ignore[no-any-return]


def list_protocols() -> list[str]:
    """Sorted names of the registered protocols (no task module is imported)."""
    return PROTOCOLS.names()


__all__ = ["MapReader", "Protocol", "ProtocolAccumulator", "create_protocol", "list_protocols"]
