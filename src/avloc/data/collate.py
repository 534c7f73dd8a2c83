"""Batching of dataset samples (dicts) for evaluation and training loaders, and compact batches' expansion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from avloc.errors import DataError
from avloc.io.shards import AUDIO_SCALE

#: the largest uint8 value: a compact picture's full scale
UINT8_SCALE = 255.0


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
            out[k] = _stack(k, vals)
        else:
            out[k] = vals
    return out


def _stack(key: str, vals: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``, into :func:`avloc.data.loader.batch_buffer` (in a DataLoader worker: shared memory, a
    reused slot for large tensors). Compact pictures, uint8 (3, H, W) views of (H, W, 3) memory, are stacked
    as they lie (a plain copy, not a transpose): the batch is the (B, 3, H, W) view of (B, H, W, 3) memory,
    i.e. channels_last."""
    from avloc.data.loader import batch_buffer

    first = vals[0]
    hwc = first.dtype == torch.uint8 and first.dim() == 3 and first.permute(1, 2, 0).is_contiguous()
    parts = [v.permute(1, 2, 0) for v in vals] if hwc else vals  # (H, W, 3) each (any layout stacks correctly)
    out = batch_buffer(key, (len(parts), *parts[0].shape), first.dtype)
    stacked = torch.stack(parts, out=out)
    return stacked.permute(0, 3, 1, 2) if hwc else stacked


def expand_compact(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch of compact samples (``ShardDataset(compact=True)``) -> the float contract, in place, on the
    batch's own device: ``image`` uint8 -> float ``/ 255`` (contiguous (B, 3, H, W)), ``audio`` int16 ->
    float ``/ 32768``; the very values the float samples hold. Float batches are returned unchanged."""
    img = batch.get("image")
    if isinstance(img, torch.Tensor) and img.dtype == torch.uint8:
        batch["image"] = img.to(torch.float32, memory_format=torch.contiguous_format).div_(UINT8_SCALE)  # (B, 3, H, W)
    audio = batch.get("audio")
    if isinstance(audio, torch.Tensor) and audio.dtype == torch.int16:
        batch["audio"] = audio.float().mul_(1.0 / AUDIO_SCALE)  # (B, N)
    return batch
