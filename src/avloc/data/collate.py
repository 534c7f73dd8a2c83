"""Batching of dataset samples (dicts) for evaluation and training loaders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from avloc.errors import DataError


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal shape along a new batch dim; anything else becomes a list.

    Every sample must have the same keys (e.g. ``boxes`` ``(K, 4)`` with
    varying K stay a list of tensors; ``image`` ``(3, H, W)`` becomes
    ``(B, 3, H, W)``).
    """
    if not samples:
        raise DataError("cannot collate an empty list of samples")
    keys = list(samples[0])
    for i, s in enumerate(samples[1:], 1):
        if set(s) != set(keys):
            raise DataError(
                f"sample {i} ({s.get('id')!r}) has keys {sorted(s)}, sample 0 has {sorted(keys)}; "
                "every sample of a batch needs the same keys"
            )
    out: dict[str, Any] = {}
    for k in keys:
        vals = [s[k] for s in samples]
        if all(isinstance(v, torch.Tensor) for v in vals) and len({tuple(v.shape) for v in vals}) == 1:
            out[k] = torch.stack(vals)
        else:
            out[k] = vals
    return out
