"""Map operations shared by every protocol: resizing, normalisation, binarisation, ground truth.

Each function is vectorised over a batch of maps ``(B, h, w)`` and reproduces
the arithmetic of the public evaluation code named in ``docs/protocols.md``
(see ``../shared/docs/PROTOCOLS.md``):

* resizing: ``cv2.resize(..., INTER_LINEAR)`` (LVS; half-pixel centres, no
  antialias) or ``F.interpolate(bilinear, align_corners=True)`` (EZ-VSL, FNAC,
  SLAVC), the latter also re-implemented in NumPy so that ``avloc eval --pred``
  does not import torch (torch itself is used when already imported);
* normalisation: min-max per map (``normalize_img``), LVS's ``1 - minmax(-h)``,
  fixed bounds (SLAVC, ``[-1/tau, 1/tau]``), ReLU, none;
* binarisation: median (``np.sort(flat)[N // 2]``), fixed, fraction of the max,
  adaptive top-K;
* ground truth: box masks on the evaluation grid with boxes truncated to
  integer pixels (``int(224 * x)``), as a union (VGG-SS) or the Flickr
  consensus (per-pixel box count / 2, clipped at 1);
* pointing (is the map's peak in a box): :func:`peak_in_box` on a painted
  ground-truth mask (the protocols' rule: the first arg-max *pixel* lies in the
  pixels :func:`box_pixels` painted), and :func:`in_boxes` / :func:`peak_places`
  on normalised boxes, where the peak is the centre of the first arg-max cell.
  Boundary rule of :func:`in_boxes`: ``edges="closed"`` (default; a point on an
  edge is inside, ``x1 <= x <= x2``) or ``edges="half-open"`` (``x1 <= x < x2``,
  the rule of pixel slices ``[x1:x2]``), passed explicitly by callers that need it.

Nothing here imports torch unless it is already imported or asked for (``backend='torch'``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from avloc.errors import ConfigError, DataError

ResizeMode = Literal["cv2", "align_corners", "bicubic_align_corners"]
ResizeBackend = Literal["auto", "numpy", "torch"]
NormalizeMode = Literal["minmax", "lvs", "fixed", "fixed_minmax", "relu", "none"]
BoxNegative = Literal["clip", "wrap"]
BoxEdges = Literal["closed", "half-open"]


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


def resize_maps(
    maps: np.ndarray, size: tuple[int, int], mode: ResizeMode, backend: ResizeBackend = "auto"
) -> np.ndarray:
    """Bilinear resize of ``(B, h, w)`` float32 maps to ``size`` = (H, W).

    ``cv2``: calls ``cv2.resize(..., INTER_LINEAR)`` itself, one map per call, i.e.
    exactly LVS's ``test.py``.
    ``align_corners``: ``F.interpolate(mode="bilinear", align_corners=True)`` on
    CPU in float32, computed by ``backend``: ``torch`` calls it (2-4x faster),
    ``numpy`` re-implements its arithmetic (bit for bit, tested) so that scoring
    saved predictions need not import torch, ``auto`` uses torch only when it is
    already imported (training, model evaluation, benchmarks), else NumPy. Both
    give identical maps, so the choice never changes a result.
    """
    if backend not in ("auto", "numpy", "torch"):
        raise ValueError(f"unknown resize backend {backend!r}; use 'auto', 'numpy' or 'torch'")
    maps = as_map_batch(maps)
    out_h, out_w = size
    if maps.shape[1:] == (out_h, out_w):
        return maps.copy()
    if mode == "cv2":
        return _resize_cv2(maps, out_h, out_w)
    if mode == "align_corners":
        if backend == "torch" or (backend == "auto" and "torch" in sys.modules):
            return _resize_torch(maps, out_h, out_w, "bilinear")
        return _resize_align_corners(maps, out_h, out_w)
    if mode == "bicubic_align_corners":
        return _resize_torch(maps, out_h, out_w, "bicubic")  # SLAVC test.py 161: torch only (no NumPy copy)
    raise ValueError(f"unknown resize mode {mode!r}; use 'cv2', 'align_corners' or 'bicubic_align_corners'")


def _resize_torch(maps: np.ndarray, out_h: int, out_w: int, mode: str) -> np.ndarray:
    """``F.interpolate(mode, align_corners=True)`` on CPU in float32 (imports torch)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(maps))[:, None]  # (B, 1, h, w)
        out = F.interpolate(x, size=(out_h, out_w), mode=mode, align_corners=True)[:, 0]  # (B, H, W)
    return out.numpy()


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


_ROW_BLOCK = 32  # output rows per block of the y pass: small reused float64 buffers, no large temporaries


def _resize_align_corners(maps: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    b, h = maps.shape[:2]
    y0, y1, wy0, wy1 = _linear_indices(h, out_h)
    horiz = _horizontal_pass(maps, out_w)  # (B, h, W)
    # y pass in blocks of output rows, into buffers allocated once: the same float64 / float32 operations
    # as ``float32(a64 * w0 + float32(b * w1))`` over the whole map, without ~20 MB of fresh temporaries
    # per call (which cost more in page faults than in arithmetic).
    out = np.empty((b, out_h, out_w), dtype=np.float32)
    rows = min(_ROW_BLOCK, out_h)
    acc = np.empty((b, rows, out_w), dtype=np.float64)
    tmp = np.empty((b, rows, out_w), dtype=np.float32)
    for r0 in range(0, out_h, rows):
        n = min(rows, out_h - r0)
        a64, t32 = (acc, tmp) if n == rows else (acc[:, :n], tmp[:, :n])
        np.take(horiz, y0[r0 : r0 + n], axis=1, out=t32, mode="clip")
        np.multiply(t32, wy0[r0 : r0 + n, None], out=a64, dtype=np.float64)
        np.take(horiz, y1[r0 : r0 + n], axis=1, out=t32, mode="clip")
        np.multiply(t32, wy1[r0 : r0 + n, None], out=t32)
        np.add(a64, t32, out=a64)
        out[:, r0 : r0 + n] = a64  # float64 -> float32, round to nearest (as astype)
    return out


def _horizontal_pass(maps: np.ndarray, out_w: int) -> np.ndarray:
    """The x pass of :func:`_resize_align_corners` on the source rows: ``(B, h, w)`` -> ``(B, h, W)`` float32.

    torch's compiled CPU kernel contracts ``a * w0 + b * w1`` into ``fma(a, w0, b * w1)``, first along x,
    then along y. A float32 product is exact in float64, so ``float32(a * w0 + c)`` computed in float64
    is that fma: the result equals F.interpolate(..., align_corners=True) bit for bit (tests check it).
    """
    x0, x1, wx0, wx1 = _linear_indices(maps.shape[2], out_w)
    rows = np.multiply(maps[:, :, x0], wx0, dtype=np.float64)  # (B, h, W)
    rows += np.multiply(maps[:, :, x1], wx1, dtype=np.float32)
    return rows.astype(np.float32)


def normalize_maps(maps: np.ndarray, mode: NormalizeMode, bounds: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Per-map normalisation; constant maps are left unchanged (as ``normalize_img`` does)."""
    vmin, vmax = map_range(maps) if mode in RANGE_MODES else (None, None)
    return apply_normalization(maps, mode, bounds, vmin, vmax)


#: normalisations that need each map's raw minimum and maximum
RANGE_MODES = ("minmax", "lvs", "fixed_minmax")


def map_range(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-map minimum and maximum ``(B,)`` of ``(B, ...)`` maps."""
    flat = maps.reshape(len(maps), -1)
    return flat.min(1), flat.max(1)


def apply_normalization(
    x: np.ndarray,
    mode: NormalizeMode,
    bounds: tuple[float, float] = (0.0, 1.0),
    vmin: np.ndarray | None = None,
    vmax: np.ndarray | None = None,
) -> np.ndarray:
    """The normalisation of :func:`normalize_maps` applied to values ``x`` ``(B, ...)`` of map i, given its range.

    ``vmin``/``vmax`` ``(B,)`` are the raw maps' minimum and maximum (needed for
    ``minmax``, ``lvs`` and ``fixed_minmax``). ``fixed_minmax`` is SLAVC's
    relative prediction: the fixed-bound scores, then ``normalize_img`` of them
    (their range is the fixed-bound image of the raw range: the map is monotone). The same float32 operations run whether ``x`` is a
    whole map or a single value per map, so ``apply_normalization(v, ...)``
    equals the normalised map at a pixel of value ``v`` bit for bit. Every mode
    is non-decreasing in ``x``, which :func:`threshold_preimage` relies on.
    """
    if mode == "none":
        return x
    if mode == "relu":
        return np.maximum(x, np.float32(0))
    if mode == "fixed":
        lo, hi = bounds
        if hi <= lo:
            raise ValueError(f"normalisation bounds must satisfy lo < hi, got {bounds}")
        return (x - np.float32(lo)) / np.float32(hi - lo)
    if mode not in RANGE_MODES:
        raise ValueError(f"unknown normalisation {mode!r}")
    if vmin is None or vmax is None:
        raise ValueError(f"normalisation {mode!r} needs the maps' minimum and maximum")
    shape = (len(x),) + (1,) * (x.ndim - 1)
    if mode == "fixed_minmax":
        fx = apply_normalization(x, "fixed", bounds)
        smin = apply_normalization(vmin, "fixed", bounds)
        smax = apply_normalization(vmax, "fixed", bounds)
        return _minmax(fx, smin.reshape(shape), smax.reshape(shape))
    if mode == "minmax":
        return _minmax(x, vmin.reshape(shape), vmax.reshape(shape))
    # LVS: 1 - minmax(-h); the range of -h is [-vmax, -vmin]
    return np.float32(1) - _minmax(-x, -vmax.reshape(shape), -vmin.reshape(shape))


def _minmax(x: np.ndarray, vmin: np.ndarray, vmax: np.ndarray) -> np.ndarray:
    """``(v - min) / (max - min)`` per map, as ``normalize_img``; constant maps unchanged."""
    rng = vmax - vmin
    const = rng == 0
    out = x - vmin
    out /= np.where(const, np.float32(1), rng)
    return np.where(const, x, out) if const.any() else out


_F32_MAX = float(np.finfo(np.float32).max)


def _f32_key(v: np.ndarray) -> np.ndarray:
    """float32 -> int64 key with the same order (-0.0 and +0.0 share key 0)."""
    bits = np.asarray(v, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def _key_f32(k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_f32_key`."""
    bits = np.where(k < 0, (-k) | 0x80000000, k)
    return bits.astype(np.uint32).view(np.float32)


def threshold_preimage(
    f: Callable[[np.ndarray], np.ndarray],
    target: np.ndarray,
    strict: bool,
    lo: np.ndarray | None = None,
    hi: np.ndarray | None = None,
) -> np.ndarray:
    """Per map, the smallest float32 ``x`` with ``f(x) >= target`` (``>`` if strict); +inf if none in ``[lo, hi]``.

    ``f`` is a non-decreasing float32 function applied per map (values ``(B,)``).
    Then ``f(v) >= target  <=>  v >= x`` for every float32 ``v`` in ``[lo, hi]``,
    so a map can be binarised in its *raw* form, with one comparison, exactly as
    the public code binarises the normalised map. ``lo``/``hi`` default to the
    whole finite float32 range. A bisection on the float32 bit order: at most 33
    vectorised steps on ``(B,)`` arrays.
    """
    t = np.asarray(target, dtype=np.float32)
    n = len(t)
    klo = _f32_key(np.full(n, -_F32_MAX, np.float32) if lo is None else lo)
    khi = _f32_key(np.full(n, _F32_MAX, np.float32) if hi is None else hi)

    def ok(k: np.ndarray) -> np.ndarray:
        v = f(_key_f32(k))
        return v > t if strict else v >= t

    exists = ok(khi)
    while True:
        open_ = klo < khi
        if not open_.any():
            break
        mid = (klo + khi) // 2
        good = ok(mid)
        khi = np.where(open_ & good, mid, khi)
        klo = np.where(open_ & ~good, mid + 1, klo)
    return np.where(exists, _key_f32(klo), np.float32(np.inf)).astype(np.float32)


def count_true(mask: np.ndarray) -> np.ndarray:
    """Number of true pixels per map of a bool ``(B, ...)`` array -> ``(B,)`` int64 (``np.count_nonzero(axis)``).

    Bool arrays hold bytes 0 / 1, so the popcount of each 8-byte word is the
    number of true bytes in it; ``np.bitwise_count`` makes that ~4x faster
    than ``np.count_nonzero`` along an axis.
    """
    flat = mask.reshape(len(mask), -1)
    if mask.dtype == np.bool_ and flat.shape[1] % 8 == 0 and flat.flags["C_CONTIGUOUS"] and hasattr(np, "bitwise_count"):
        return np.bitwise_count(flat.view(np.uint64)).sum(1, dtype=np.int64)  # type: ignore[no-any-return]
    return np.count_nonzero(flat, axis=1).astype(np.int64)


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
    """Top-``k[i]`` pixels of map i, ties at the K-th value included (avloc helper; SSL-Alignment: :func:`binarize_adaptive`)."""
    n = maps.shape[1] * maps.shape[2]
    k = np.asarray(k, dtype=np.int64)
    if k.shape != (len(maps),):
        raise ValueError(f"need one K per map, got {k.shape} for {len(maps)} maps")
    kk = np.clip(k, 1, n)
    out = compare(maps, kth_smallest(maps, n - kk), strict=False)
    out[k <= 0] = False
    return out


def adaptive_k(gt_pixels: np.ndarray, n: int) -> np.ndarray:
    """SSL-Alignment's K per map: the number of non-zero ground-truth pixels, ``n // 2`` when there is none."""
    k = np.asarray(gt_pixels, dtype=np.int64)
    return np.where(k == 0, n // 2, k)


def binarize_adaptive(maps: np.ndarray, gt_pixels: np.ndarray, strict: bool) -> np.ndarray:
    """SSL-Alignment adaptive binarisation: ``map > np.sort(flat)[n - K]`` (``>=`` if not strict), K = :func:`adaptive_k`."""
    n = maps.shape[1] * maps.shape[2]
    k = adaptive_k(gt_pixels, n)
    if k.shape != (len(maps),):
        raise ValueError(f"need one K per map, got {k.shape} for {len(maps)} maps")
    return compare(maps, kth_smallest(maps, n - np.clip(k, 1, n)), strict)


def box_iou(a: Any, b: Any) -> Any:
    """IoU of ``[x1, y1, x2, y2]`` boxes: the one box IoU, three paths by input type.

    * numbers (two boxes: sequences or 1-D arrays) -> ``float``: 0 when the union is empty
      (pseudo boxes, the demo check, the benchmarks);
    * NumPy arrays ``(N, 4)`` and ``(M, 4)`` -> the pairwise ``(N, M)`` float64 array, 0 where the union
      is empty (face tracks: :func:`xywh_to_xyxy` first);
    * torch tensors ``(N, 4)`` and ``(M, 4)`` -> the pairwise ``(N, M)`` tensor, differentiable, in
      the inputs' dtype and device; box areas clamped at 0 and the union at the dtype's ``tiny``
      (proposal NMS, :func:`nms`). torch is not imported for the other paths.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        _check_pairs(a, b)
        lt = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
        rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
        inter = (rb - lt).clamp_min(0).prod(dim=-1)  # (N, M)

        def area(x: Any) -> Any:  # (K, 4) -> (K,)
            return (x[..., 2] - x[..., 0]).clamp_min(0) * (x[..., 3] - x[..., 1]).clamp_min(0)

        union = area(a)[:, None] + area(b)[None, :] - inter
        return inter / union.clamp_min(torch.finfo(inter.dtype).tiny)
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.ndim == 2 and b.ndim == 2:
        _check_pairs(a, b)
        a, b = a.astype(np.float64), b.astype(np.float64)
        lt = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
        rb = np.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
        inter_np = np.clip(rb - lt, 0, None).prod(axis=-1)  # (N, M)
        area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)  # (N,)
        area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # (M,)
        union_np = area_a[:, None] + area_b[None, :] - inter_np
        return np.where(union_np > 0, inter_np / np.where(union_np > 0, union_np, 1.0), 0.0)
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _check_pairs(a: Any, b: Any) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[-1] != 4 or b.shape[-1] != 4:
        raise DataError(f"pairwise box_iou needs (N, 4) and (M, 4) boxes, got {tuple(a.shape)} and {tuple(b.shape)}")


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``[x, y, w, h, ...]`` rows ``(N, >=4)`` -> ``[x1, y1, x2, y2]`` ``(N, 4)`` float64."""
    b = np.asarray(boxes, np.float64).reshape(-1, np.asarray(boxes).shape[-1])[:, :4]
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:4]], axis=1)


def nms(boxes: Any, scores: Any, iou_threshold: float, max_keep: int | None = None) -> Any:
    """Greedy non-maximum suppression: indices (into ``boxes``) of the kept boxes, by decreasing score.

    ``boxes`` ``(N, 4)`` ``[x1, y1, x2, y2]`` and ``scores`` ``(N,)``, both NumPy arrays or both torch
    tensors (the indices come back in the same kind, on the boxes' device). A box is suppressed when its
    IoU (:func:`box_iou`) with an already kept, higher-scored box is ``> iou_threshold``;
    ``iou_threshold = 0`` keeps only boxes that overlap no kept box at all. Ties in score keep the lower
    index first. At most ``max_keep`` boxes when given.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4 or tuple(scores.shape) != tuple(boxes.shape[:1]):
        raise ConfigError(f"nms expects boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ConfigError(f"nms iou_threshold must be in [0, 1], got {iou_threshold}")
    torch: Any = sys.modules.get("torch")
    is_torch = torch is not None and isinstance(boxes, torch.Tensor)
    if is_torch:
        order = torch.sort(scores, descending=True, stable=True).indices  # (N,)
        ok = (box_iou(boxes[order], boxes[order]) <= iou_threshold).cpu().numpy()  # (N, N) in score order
    else:
        order = np.argsort(-np.asarray(scores), kind="stable")  # (N,)
        ok = box_iou(np.asarray(boxes)[order], np.asarray(boxes)[order]) <= iou_threshold
    alive = np.ones(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(i)
        if max_keep is not None and len(keep) >= max_keep:
            break
        alive &= ok[i]
        alive[i] = False
    if is_torch:
        return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]
    return order[np.asarray(keep, dtype=np.int64)]


def box_pixels(boxes: np.ndarray, size: int, negative: BoxNegative = "clip", wh: np.ndarray | None = None) -> np.ndarray:
    """Normalised boxes ``(K, 4)`` -> the pixel slice bounds ``[x1, y1, x2, y2]`` the public code paints on a ``size`` grid.

    ``negative="clip"``: ``int(size * clip(x, 0, 1))``, EZ-VSL's
    ``(np.clip(bbox, 0, 1) * 224).astype(int)`` and LVS's VGG-SS
    ``int(224 * max(x, 0))`` (an upper bound beyond the frame slices the same).
    ``negative="wrap"``: ``int(size * x)`` truncated toward zero and *not*
    clipped, then resolved as a NumPy slice resolves it: a negative bound counts
    from the far edge (``temp[-7:100]`` starts at 217, so that box paints
    nothing). This is what the Flickr XML code of LVS / EZ-VSL / SLAVC /
    SSL-Alignment and DSOL's / Qian's xywh code do.
    ``wh`` ``(K, 2)``: the boxes came as ``[x, y, w, h]``; the far edges are then
    ``int(size * x + size * w)`` in float64, as DSOL and Qian compute them (this
    can land one pixel below ``int(size * (x + w))``).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if negative == "clip":
        b = np.clip(b, 0.0, 1.0)
    elif negative != "wrap":
        raise ValueError(f"unknown negative-box handling {negative!r}; use 'clip' or 'wrap'")
    scaled = b * size
    if wh is not None:
        w = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
        if len(w) != len(b):
            raise DataError(f"{len(w)} box sizes for {len(b)} boxes")
        x0, y0 = b[:, 0] * size, b[:, 1] * size
        far = np.stack([x0 + w[:, 0] * size, y0 + w[:, 1] * size], 1)
        if negative == "clip":
            far = np.clip(far, 0.0, float(size))
        scaled = np.concatenate([scaled[:, :2], far], 1)
    # beyond +-2 * size every bound slices like the frame edge; keeps int64 safe for boxes like 2.9e16
    px = np.trunc(np.clip(scaled, -2.0 * size, 2.0 * size)).astype(np.int64)
    if negative == "wrap":
        px = np.where(px < 0, np.maximum(px + size, 0), np.minimum(px, size))
    return px


def box_count_maps(
    boxes: Sequence[np.ndarray],
    size: int,
    groups: Sequence[np.ndarray] | None = None,
    negative: BoxNegative = "clip",
    wh: Sequence[np.ndarray | None] | None = None,
) -> np.ndarray:
    """Per-pixel number of boxes covering each pixel: ``(B, size, size)`` (uint8, int32 from 255 boxes on).

    With ``groups`` (one group id per box, e.g. the annotator), boxes of the
    same group are first united, so the count is the number of groups.
    ``negative`` / ``wh``: see :func:`box_pixels` (``wh[i]`` for sample i, or None).
    """
    n = len(boxes)
    rows: list[np.ndarray] = []
    sample_idx: list[np.ndarray] = []
    group_idx: list[np.ndarray] = []
    for i, b in enumerate(boxes):
        px = box_pixels(b, size, negative, None if wh is None else wh[i])
        rows.append(px)
        sample_idx.append(np.full(len(px), i, dtype=np.int64))
        if groups is not None:
            g = np.asarray(groups[i], dtype=np.int64).reshape(-1)
            if len(g) != len(px):
                raise DataError(f"sample {i}: {len(px)} boxes but {len(g)} group ids")
            group_idx.append(g)
    if not rows or sum(len(r) for r in rows) == 0:
        return np.zeros((n, size, size), dtype=np.uint8)
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
    """Add 1 inside each box ``px[j]`` of map ``idx[j]`` (slice writes: cheaper than a difference array + cumsum).

    Counts are uint8 (a quarter of the memory traffic) unless a map has 255 or more boxes.
    """
    most = int(np.bincount(idx, minlength=1).max()) if len(idx) else 0
    out = np.zeros((n, size, size), dtype=np.uint8 if most < 255 else np.int32)
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


# ---------------------------------------------------------------------------------------------
# pointing: is the map's peak in a box


def peak_in_box(maps: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Whether each map's first arg-max pixel lies in the painted mask ``gt`` (same grid) -> ``(B,)`` bool.

    The published protocols' pointing (AVSOL PiBR, real-footage pointing): the boundary rule is the
    painting's (:func:`box_pixels`), so this stays bit-exact with their code.
    """
    flat = maps.reshape(len(maps), -1)
    idx = flat.argmax(1)
    return gt.reshape(len(gt), -1)[np.arange(len(gt)), idx] > 0  # type: ignore[no-any-return]


def peak_points(maps: np.ndarray) -> np.ndarray:
    """Centre of each map's first arg-max cell, normalised ``(x, y)`` in [0, 1] -> ``(B, 2)`` float64."""
    maps = np.asarray(maps)
    b, h, w = maps.shape
    py, px = np.divmod(maps.reshape(b, -1).argmax(1), w)
    return np.stack([(px + 0.5) / w, (py + 0.5) / h], axis=1)


def in_boxes(point: Sequence[float] | np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray, edges: BoxEdges = "closed") -> bool:
    """Whether the normalised point ``(x, y)`` lies in any of ``boxes`` (normalised ``x1, y1, x2, y2``; none -> False).

    ``edges="closed"``: ``x1 <= x <= x2`` and ``y1 <= y <= y2``; ``"half-open"``: ``x1 <= x < x2``, ``y1 <= y < y2``.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x, y = float(point[0]), float(point[1])
    if edges == "closed":
        hit = (b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])
    elif edges == "half-open":
        hit = (b[:, 0] <= x) & (x < b[:, 2]) & (b[:, 1] <= y) & (y < b[:, 3])
    else:
        raise DataError(f"unknown box edges {edges!r}; use 'closed' or 'half-open'")
    return bool(hit.any())


def peak_places(
    maps: np.ndarray, sounding: Sequence[np.ndarray], silent: Sequence[np.ndarray], edges: BoxEdges = "closed"
) -> dict[str, float]:
    """Where each map's peak (:func:`peak_points`) falls: the fraction of maps with it in a ``sounding`` box, else in
    a ``silent`` box, else on the background (per map: normalised boxes ``(K, 4)``; :func:`in_boxes` with ``edges``)."""
    pts = peak_points(maps)
    if not len(pts) == len(sounding) == len(silent):
        raise DataError(f"peak_places: {len(pts)} maps, {len(sounding)} sounding and {len(silent)} silent box sets")
    if len(pts) == 0:
        raise DataError("peak_places of no maps")
    counts = {"sounding": 0, "silent": 0, "background": 0}
    for p, snd, sil in zip(pts, sounding, silent, strict=True):
        counts["sounding" if in_boxes(p, snd, edges) else "silent" if in_boxes(p, sil, edges) else "background"] += 1
    return {k: v / len(pts) for k, v in counts.items()}
