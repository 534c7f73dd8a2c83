"""Box supervision for semi-supervised localization training (Senocak et al., "Learning to
Localize Sound Source in Visual Scenes", CVPR 2018, Sec. 3.3; the semi-supervised set-up
"Less can be more" (WACV 2022, Table 4) trains with its automatic pseudo boxes).

Senocak et al.: ``L = L_unsup + lambda L_sup``, where ``L_sup`` is the cross-entropy
between the ground-truth attention (the box region as a distribution over the
map's cells) and the predicted attention, a softmax over the cells. Any method
with a localization map ``(B, h, w)`` can add it: :func:`box_attention_loss`
reads the batch keys written by :class:`avloc.applications.pseudo_boxes.BoxSupervised`
(``sup_boxes``: per sample ``(K, 4)`` normalised boxes; ``box_supervised``: ``(B,)``
bool) and averages over the supervised samples only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from avloc.errors import DataError


def box_cell_mask(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Normalised boxes ``(K, 4)`` -> ``(h, w)`` {0, 1}: cells whose centre lies in a box.

    A box smaller than a cell still marks the cell holding its centre, so every
    non-empty box gives a non-empty target.
    """
    dev = boxes.device
    ys = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / h  # (h,)
    xs = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / w  # (w,)
    mask = torch.zeros(h, w, device=dev)
    for x1, y1, x2, y2 in boxes.reshape(-1, 4).tolist():
        inside = ((ys >= y1) & (ys < y2))[:, None] & ((xs >= x1) & (xs < x2))[None, :]  # (h, w)
        if not inside.any():
            cy = min(h - 1, max(0, int((y1 + y2) / 2 * h)))
            cx = min(w - 1, max(0, int((x1 + x2) / 2 * w)))
            inside = torch.zeros(h, w, dtype=torch.bool, device=dev)
            inside[cy, cx] = True
        mask = torch.maximum(mask, inside.float())
    return mask


def box_attention_loss(maps: torch.Tensor, batch: dict[str, Any], temperature: float) -> tuple[torch.Tensor, int]:
    """``L_sup``: mean over supervised samples of ``-sum_uv q_uv log softmax(maps / temperature)_uv``.

    ``maps`` ``(B, h, w)`` (e.g. LVS's ``S_ii``); ``q`` = the box cell mask normalised to
    sum 1. Returns ``(loss, number of supervised samples)``; the loss is 0 (with a
    graph) when the batch has none.
    """
    if "box_supervised" not in batch or "sup_boxes" not in batch:
        raise DataError(
            "box supervision is on but the batch has no 'box_supervised' / 'sup_boxes': "
            "train on avloc.applications.pseudo_boxes.semi_supervised(...) data, or set box_weight=0"
        )
    sup = torch.as_tensor(batch["box_supervised"], device=maps.device).bool().reshape(-1)  # (B,)
    boxes: Sequence[torch.Tensor] = batch["sup_boxes"]  # list of (K_i, 4), or (B, K, 4) when stacked
    if sup.numel() != maps.shape[0] or len(boxes) != maps.shape[0]:
        raise DataError(f"box supervision for {sup.numel()} / {len(boxes)} samples in a batch of {maps.shape[0]}")
    idx = sup.nonzero().flatten().tolist()
    if not idx:
        return maps.sum() * 0.0, 0
    _, h, w = maps.shape
    logp = F.log_softmax(maps[idx].flatten(1) / temperature, dim=1)  # (n, h*w)
    q = torch.stack([box_cell_mask(torch.as_tensor(boxes[i], device=maps.device), h, w).flatten() for i in idx])  # (n, h*w)
    q = q / q.sum(dim=1, keepdim=True)
    return -(q * logp).sum(dim=1).mean(), len(idx)
