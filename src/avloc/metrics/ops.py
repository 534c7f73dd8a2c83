"""Map operations shared by every protocol: resizing, normalisation, binarisation, ground truth.

Each function is vectorised over a batch of maps ``(B, h, w)`` and reproduces
the arithmetic of the public evaluation code named in ``docs/protocols.md``
(see ``../shared/docs/PROTOCOLS.md``):

* resizing: ``cv2.resize(..., INTER_LINEAR)`` (LVS; half-pixel centres, no
  antialias) or ``F.interpolate(bilinear, align_corners=True)`` (EZ-VSL, FNAC,
  SLAVC), the latter re-implemented in NumPy so that ``avloc eval`` does not
  import torch;
* normalisation: min-max per map (``normalize_img``), LVS's ``1 - minmax(-h)``,
  fixed bounds (SLAVC, ``[-1/tau, 1/tau]``), ReLU, none;
* binarisation: median (``np.sort(flat)[N // 2]``), fixed, fraction of the max,
  adaptive top-K;
* ground truth: box masks on the evaluation grid with boxes truncated to
  integer pixels (``int(224 * x)``), as a union (VGG-SS) or the Flickr
  consensus (per-pixel box count / 2, clipped at 1).

Everything is NumPy: no torch import, so the saved-predictions path is fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from avloc.errors import DataError

ResizeMode = Literal["cv2", "align_corners"]
NormalizeMode = Literal["minmax", "lvs", "fixed", "relu", "none"]


def as_map_batch(maps: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Stack maps into a float32 ``(B, h, w)`` array, checking shapes and finiteness."""
    arr = (
        np.asarray(maps, dtype=np.float32) if not isinstance(maps, np.ndarray) else maps.astype(np.float32, copy=False)
    )
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(f"expected heatmaps of shape (B, h, w), got {arr.shape}")
    if arr.shape[1] < 1 or arr.shape[2] < 1:
        raise DataError(f"empty heatmaps of shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).reshape(len(arr), -1).any(1).sum())
        raise DataError(f"{bad} heatmap(s) contain NaN or inf values; fix the model or the saved predictions")
    return arr


def resize_maps(maps: np.ndarray, size: tuple[int, int], mode: ResizeMode) -> np.ndarray:
    """Bilinear resize of ``(B, h, w)`` float32 maps to ``size`` = (H, W).

    ``cv2``: calls ``cv2.resize(..., INTER_LINEAR)`` itself, one map per call, i.e.
    exactly LVS's ``test.py``.
    ``align_corners``: the arithmetic of torch's CPU
    ``F.interpolate(mode="bilinear", align_corners=True)`` in float32.
    """
    maps = as_map_batch(maps)
    out_h, out_w = size
    if maps.shape[1:] == (out_h, out_w):
        return maps.copy()
    if mode == "cv2":
        return _resize_cv2(maps, out_h, out_w)
    if mode == "align_corners":
        return _resize_align_corners(maps, out_h, out_w)
    raise ValueError(f"unknown resize mode {mode!r}; use 'cv2' or 'align_corners'")


def _resize_cv2(maps: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    import cv2  # lazy: only the cv2-style protocols need it

    # one call per map, as LVS does: packing maps as channels takes another SIMD path with different rounding
    out = np.empty((len(maps), out_h, out_w), dtype=np.float32)
    for i, m in enumerate(maps):
        out[i] = cv2.resize(m, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return out


def _linear_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torch ``compute_indices_weights_linear`` with align_corners=True, in float32."""
    scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0)
    src = scale * np.arange(out_size, dtype=np.float32)  # float32, like opmath_t
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    lam0 = (np.float32(1) - lam1).astype(np.float32)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, lam0, lam1


def _resize_align_corners(maps: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    _, h, w = maps.shape
    y0, y1, wy0, wy1 = _linear_indices(h, out_h)
    x0, x1, wx0, wx1 = _linear_indices(w, out_w)
    # torch's compiled CPU kernel contracts ``a * w0 + b * w1`` into ``fma(a, w0, b * w1)``, first along x,
    # then along y. A float32 product is exact in float64, so ``float32(a * w0 + c)`` computed in float64
    # is that fma: the result equals F.interpolate(..., align_corners=True) bit for bit (tests check it).
    # x pass on the h source rows only (each output row reuses one of them).
    rows = np.multiply(maps[:, :, x0], wx0, dtype=np.float64)  # (B, h, W)
    rows += np.multiply(maps[:, :, x1], wx1, dtype=np.float32)
    horiz = rows.astype(np.float32)
    out = np.multiply(horiz[:, y0, :], wy0[:, None], dtype=np.float64)  # (B, H, W)
    out += np.multiply(horiz[:, y1, :], wy1[:, None], dtype=np.float32)
    return out.astype(np.float32)


def normalize_maps(maps: np.ndarray, mode: NormalizeMode, bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Per-map normalisation; constant maps are left unchanged (as ``normalize_img`` does)."""
    if mode == "none":
        return maps
    if mode == "relu":
        return np.maximum(maps, np.float32(0))
    if mode == "fixed":
        lo, hi = bounds
        if hi <= lo:
            raise ValueError(f"normalisation bounds must satisfy lo < hi, got {bounds}")
        return (maps - np.float32(lo)) / np.float32(hi - lo)
    if mode == "minmax":
        return _minmax(maps)
    if mode == "lvs":
        return np.float32(1) - _minmax(-maps)
    raise ValueError(f"unknown normalisation {mode!r}")


def _minmax(maps: np.ndarray) -> np.ndarray:
    """``(v - min) / (max - min)`` per map, as ``normalize_img``; constant maps unchanged."""
    flat = maps.reshape(len(maps), -1)
    vmin = flat.min(1)
    rng = flat.max(1) - vmin
    const = rng == 0
    out = maps - vmin[:, None, None]
    out /= np.where(const, np.float32(1), rng)[:, None, None]
    if const.any():
        out[const] = maps[const]
    return out


def kth_smallest(maps: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Per-map ``np.sort(flat)[k]`` (k scalar or per map) -> ``(B,)``."""
    flat = maps.reshape(len(maps), -1)
    if np.isscalar(k):
        kk = int(k)  # type: ignore[arg-type]
        return np.partition(flat, kk, axis=1)[:, kk]
    ks = np.asarray(k, dtype=np.int64)
    out = np.empty(len(maps), dtype=maps.dtype)
    for v in np.unique(ks):
        rows = np.nonzero(ks == v)[0]
        out[rows] = np.partition(flat[rows], int(v), axis=1)[:, int(v)]
    return out


def compare(maps: np.ndarray, thr: np.ndarray | np.floating | float, strict: bool) -> np.ndarray:
    """``maps > thr`` if strict else ``maps >= thr``; thr scalar or per map ``(B,)``."""
    t = np.asarray(thr, dtype=maps.dtype)
    if t.ndim == 1:
        t = t[:, None, None]
    return maps > t if strict else maps >= t


def binarize_median(maps: np.ndarray, strict: bool) -> np.ndarray:
    """Top half of the pixels: threshold ``np.sort(flat)[N // 2]`` (LVS: ``>``, EZ-VSL: ``>=``)."""
    n = maps.shape[1] * maps.shape[2]
    return compare(maps, kth_smallest(maps, n // 2), strict)


def binarize_max_fraction(maps: np.ndarray, fraction: float, strict: bool) -> np.ndarray:
    """Pixels above ``fraction`` x the map's max (MUSIC: 0.1; DSOL class-aware: 0.5)."""
    vmax = maps.reshape(len(maps), -1).max(1)
    return compare(maps, np.float32(fraction) * vmax, strict)


def binarize_topk(maps: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Adaptive binarisation: the top-``k[i]`` pixels of map i (ties above the K-th value included)."""
    n = maps.shape[1] * maps.shape[2]
    k = np.asarray(k, dtype=np.int64)
    if k.shape != (len(maps),):
        raise ValueError(f"need one K per map, got {k.shape} for {len(maps)} maps")
    kk = np.clip(k, 1, n)
    out = compare(maps, kth_smallest(maps, n - kk), strict=False)
    out[k <= 0] = False
    return out


def box_pixels(boxes: np.ndarray, size: int) -> np.ndarray:
    """Normalised boxes ``(K, 4)`` -> integer pixel bounds on a ``size`` grid: ``int(size * clip(x, 0, 1))``.

    Same slices as EZ-VSL's ``(np.clip(bbox, 0, 1) * 224).astype(int)`` and LVS's
    ``int(224 * max(x, 0))`` (an upper bound beyond the frame slices the same).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (np.clip(b, 0.0, 1.0) * size).astype(np.int64)


def box_count_maps(boxes: Sequence[np.ndarray], size: int, groups: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Per-pixel number of boxes covering each pixel: ``(B, size, size)`` int32.

    With ``groups`` (one group id per box, e.g. the annotator), boxes of the
    same group are first united, so the count is the number of groups.
    """
    n = len(boxes)
    rows: list[np.ndarray] = []
    sample_idx: list[np.ndarray] = []
    group_idx: list[np.ndarray] = []
    for i, b in enumerate(boxes):
        px = box_pixels(b, size)
        rows.append(px)
        sample_idx.append(np.full(len(px), i, dtype=np.int64))
        if groups is not None:
            g = np.asarray(groups[i], dtype=np.int64).reshape(-1)
            if len(g) != len(px):
                raise DataError(f"sample {i}: {len(px)} boxes but {len(g)} group ids")
            group_idx.append(g)
    if not rows or sum(len(r) for r in rows) == 0:
        return np.zeros((n, size, size), dtype=np.int32)
    px = np.concatenate(rows)
    si = np.concatenate(sample_idx)
    keep = (px[:, 2] > px[:, 0]) & (px[:, 3] > px[:, 1])
    if groups is None:
        return _paint(px[keep], si[keep], n, size)
    gi = np.concatenate(group_idx)[keep]
    px, si = px[keep], si[keep]
    uniq, inv = np.unique(np.stack([si, gi], 1), axis=0, return_inverse=True)
    per_group = _paint(px, inv.reshape(-1), len(uniq), size) > 0  # (G, S, S) union per group
    out = np.zeros((n, size, size), dtype=np.int32)
    np.add.at(out, uniq[:, 0], per_group.astype(np.int32))
    return out


def _paint(px: np.ndarray, idx: np.ndarray, n: int, size: int) -> np.ndarray:
    """Add 1 inside each box ``px[j]`` of map ``idx[j]`` (slice writes: cheaper than a difference array + cumsum)."""
    out = np.zeros((n, size, size), dtype=np.int32)
    for (x1, y1, x2, y2), i in zip(px.tolist(), idx.tolist(), strict=True):
        out[i, y1:y2, x1:x2] += 1
    return out


def union_gt(boxes: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Binary union of the boxes (VGG-SS, MUSIC): ``(B, size, size)`` float64 in {0, 1}."""
    return (box_count_maps(boxes, size) > 0).astype(np.float64)


def consensus_gt(
    boxes: Sequence[np.ndarray], size: int, divisor: float, annotators: Sequence[np.ndarray] | None = None
) -> np.ndarray:
    """Flickr consensus map: box count / ``divisor`` clipped at 1 (values 0, 0.5, 1 for 2).

    The public code sums every box mask (an annotator's overlapping boxes
    count twice); pass ``annotators`` to count each annotator once instead.
    """
    counts = box_count_maps(boxes, size, annotators)
    return np.minimum(counts / divisor, 1.0)
