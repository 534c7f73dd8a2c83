"""Class-agnostic region proposals and the torch ops of the proposal-based method.

Used by :mod:`avloc.methods.proposal_mil` (Xuan et al., "A Proposal-based
Paradigm for Self-supervised Sound Source Localization in Videos", CVPR 2022,
Sec. 3.1-3.4):

* :class:`SelectiveSearch` — Selective Search (Uijlings et al., IJCV 2013,
  the paper's proposal extractor ``V(I_n)``) through OpenCV contrib's
  ``cv2.ximgproc.segmentation``, computed once per image and cached on disk
  (:class:`ProposalCache`). EdgeBoxes (the paper's alternative) needs a
  structured-edge model file that we do not ship, so it is not offered.
* non-maximum suppression and pairwise IoU: :func:`avloc.metrics.ops.nms` and
  :func:`avloc.metrics.ops.box_iou` (their torch paths; NMS gives the "top
  non-overlapping proposals" output of the multi-source setting, Sec. 4.3).
* :func:`box_sums` — sum of a map inside each box through a summed-area table
  (the proposal confidence of Sec. 3.3, "accumulating the corresponding pixel
  value in the GRM").
* :func:`spp_pool` — spatial pyramid pooling (He et al., TPAMI 2015) of a set of
  boxes on a feature map: RoI max pooling at 1x1, 2x2 and 4x4 levels (21 bins),
  vectorised with separable range maxima.

Box convention everywhere: ``(x0, y0, x1, y1)`` normalised to [0, 1] of the
image (``x1 > x0``, ``y1 > y0``), the convention of the dataset's ``boxes``.

Proposal cache — layout, keys and invalidation::

    root/<namespace>/meta.json            the extractor parameters of the namespace
    root/<namespace>/<h[:2]>/<h>.npy      float32 (R, 4) normalised boxes of one image

``root`` defaults to ``$AVLOC_CACHE/proposals`` (``~/.cache/avloc/proposals``
when ``AVLOC_CACHE`` is unset). ``h`` is the sha256 of the exact uint8 RGB
array Selective Search sees (shape + bytes), so a changed image, resizing or
quantisation yields a new key. ``namespace`` is a hash of the cache format
version, the OpenCV version and every extractor parameter
(:class:`ProposalConfig`): changing any of them reads and writes a different
namespace, so stale proposals are never reused (delete ``root`` to reclaim the
space). Files are written atomically (temporary file + rename); an unreadable
file raises :class:`ProposalCacheError` naming it instead of being silently
recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from avloc.errors import AvlocError, ConfigError
from avloc.formats.atomic import atomic_path, write_text_atomic

#: Bump when the stored layout or the extraction post-processing changes.
PROPOSAL_CACHE_VERSION = 1
#: SPP levels of He et al. (TPAMI 2015) as used by Fast R-CNN-style WSOD: 1x1 + 2x2 + 4x4 = 21 bins.
SPP_LEVELS = (1, 2, 4)


class ProposalCacheError(AvlocError):
    """A proposal cache file is unreadable or inconsistent."""


# ----------------------------------------------------------------------------- box ops


def check_boxes(boxes: torch.Tensor, what: str = "boxes") -> None:
    """Fail early on boxes that are not ``(..., 4)`` with ``x1 > x0`` and ``y1 > y0``."""
    if boxes.shape[-1] != 4:
        raise ConfigError(f"{what} must be (..., 4) as (x0, y0, x1, y1), got shape {tuple(boxes.shape)}")
    if boxes.numel() and ((boxes[..., 2] <= boxes[..., 0]).any() or (boxes[..., 3] <= boxes[..., 1]).any()):
        raise ConfigError(f"{what} must satisfy x1 > x0 and y1 > y0 (normalised (x0, y0, x1, y1))")


def box_pixel_bounds(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Normalised boxes (..., 4) -> integer pixel bounds (..., 4) ``[x0, x1) x [y0, y1)``, at least one pixel.

    Returned as ``(x0, y0, x1, y1)`` with exclusive ends: ``round(x * W)``,
    clamped to the image, ``x1 >= x0 + 1``.
    """
    scale = boxes.new_tensor([width, height, width, height])
    px = torch.round(boxes * scale).long()
    x0 = px[..., 0].clamp(0, width - 1)
    y0 = px[..., 1].clamp(0, height - 1)
    x1 = torch.maximum(px[..., 2].clamp(max=width), x0 + 1)
    y1 = torch.maximum(px[..., 3].clamp(max=height), y0 + 1)
    return torch.stack([x0, y0, x1, y1], dim=-1)


def box_sums(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Sum of each map inside each of its boxes: (B, H, W), (B, R, 4) normalised -> (B, R).

    Summed-area table, so the cost is O(H W + R) per map; the pixel set of a
    box is :func:`box_pixel_bounds`.
    """
    b, h, w = maps.shape
    if boxes.dim() != 3 or boxes.shape[0] != b or boxes.shape[2] != 4:
        raise ConfigError(f"box_sums expects boxes (B={b}, R, 4), got {tuple(boxes.shape)}")
    sat = torch.zeros(b, h + 1, w + 1, dtype=maps.dtype, device=maps.device)
    sat[:, 1:, 1:] = maps.cumsum(1).cumsum(2)  # (B, H+1, W+1)
    px = box_pixel_bounds(boxes, h, w)  # (B, R, 4)
    flat = sat.flatten(1)  # (B, (H+1)(W+1))

    def at(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return flat.gather(1, y * (w + 1) + x)  # (B, R)

    x0, y0, x1, y1 = px.unbind(-1)
    return at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)


def spp_bins(boxes: torch.Tensor, height: int, width: int, levels: Sequence[int] = SPP_LEVELS) -> torch.Tensor:
    """Feature-cell ranges of every SPP bin: (..., 4) normalised boxes -> (..., n_bins, 4) ``(x0, y0, x1, y1)`` inclusive.

    RoI max pooling quantisation (Fast R-CNN / SPP-net): the box in cell
    coordinates is ``[x0 * w, x1 * w)``; bin ``j`` of ``n`` spans cells
    ``floor(a + j L / n)`` .. ``ceil(a + (j+1) L / n) - 1``, clamped to the map
    and at least one cell wide. Bins are ordered level by level, row-major.
    """
    scale = boxes.new_tensor([width, height, width, height])
    c = boxes * scale  # (..., 4) in cell units
    out = []
    for n in levels:
        j = torch.arange(n, device=boxes.device, dtype=boxes.dtype)
        lw = (c[..., 2] - c[..., 0])[..., None] / n  # (..., 1)
        lh = (c[..., 3] - c[..., 1])[..., None] / n
        xs = torch.floor(c[..., 0, None] + j * lw)  # (..., n)
        xe = torch.ceil(c[..., 0, None] + (j + 1) * lw) - 1
        ys = torch.floor(c[..., 1, None] + j * lh)
        ye = torch.ceil(c[..., 1, None] + (j + 1) * lh) - 1
        xs = xs.clamp(0, width - 1)
        ys = ys.clamp(0, height - 1)
        xe = torch.maximum(xe.clamp(max=width - 1), xs)
        ye = torch.maximum(ye.clamp(max=height - 1), ys)
        # (..., n_y, n_x, 4): row-major over (y, x)
        shape = (*xs.shape[:-1], n, n)
        lvl = torch.stack(
            [
                xs[..., None, :].expand(shape),
                ys[..., :, None].expand(shape),
                xe[..., None, :].expand(shape),
                ye[..., :, None].expand(shape),
            ],
            dim=-1,
        )
        out.append(lvl.flatten(-3, -2))  # (..., n*n, 4)
    return torch.cat(out, dim=-2).long()


def spp_pool(feat: torch.Tensor, boxes: torch.Tensor, levels: Sequence[int] = SPP_LEVELS) -> torch.Tensor:
    """Spatial pyramid (RoI max) pooling of boxes: (B, C, h, w), (B, R, 4) -> (B, R, C * n_bins).

    The output of one box is the concatenation over bins (level by level,
    row-major) of the ``C``-vector max over the bin's cells (:func:`spp_bins`),
    laid out as ``[bin0 c0..cC-1, bin1 c0.., ...]``. The arg-max cell of every
    (bin, channel) is found without autograd by a 2-D sparse table (range-max
    query: the max, and its cell, over every ``2^k x 2^l`` block; a bin is
    covered by four such blocks); the output is ``feat`` gathered at those
    cells, so the gradient flows to the arg-max cells exactly as in RoI max
    pooling. Cost ``O(B C h w log h log w + B C R n_bins)``.
    """
    b, c, h, w = feat.shape
    if boxes.dim() != 3 or boxes.shape[0] != b or boxes.shape[2] != 4:
        raise ConfigError(f"spp_pool expects boxes (B={b}, R, 4), got {tuple(boxes.shape)}")
    nb = sum(n * n for n in levels)
    r = boxes.shape[1]
    if r == 0:
        return feat.new_zeros(b, 0, c * nb)
    with torch.no_grad():
        cells = _range_argmax(feat.detach(), spp_bins(boxes, h, w, levels).view(b, r * nb, 4))  # (B, C, R*nb)
    pooled = feat.flatten(2).gather(2, cells)  # (B, C, R*nb), differentiable
    return pooled.view(b, c, r, nb).permute(0, 2, 3, 1).reshape(b, r, nb * c)


def _range_argmax(feat: torch.Tensor, ranges: torch.Tensor) -> torch.Tensor:
    """Flat arg-max cell ``y * w + x`` of ``feat`` (B, C, h, w) over inclusive cell ranges (B, Q, 4) -> (B, C, Q)."""
    b, c, h, w = feat.shape
    ly, lx = h.bit_length(), w.bit_length()  # block sizes 2^0 .. 2^floor(log2(n))
    # tables[..., k * lx + l, y, x]: max (and its cell) over the 2^k x 2^l block whose top-left cell is (y, x);
    # cells whose block would cross the edge keep partial maxima and are never queried
    tv = feat.new_empty(ly * lx, b, c, h, w)  # table-major: every table is contiguous
    ti = torch.empty(ly * lx, b, c, h, w, dtype=torch.int32, device=feat.device)
    for k in range(ly):
        t = k * lx
        if k == 0:
            tv[0] = feat
            ti[0] = torch.arange(h * w, device=feat.device).view(h, w)
        else:  # combine vertically with the block 2^(k-1) rows below
            p = (k - 1) * lx
            _combine(tv[t], ti[t], tv[p], ti[p], 1 << (k - 1), dim=2)
        for m in range(1, lx):  # combine horizontally with the block 2^(m-1) columns to the right
            _combine(tv[t + m], ti[t + m], tv[t + m - 1], ti[t + m - 1], 1 << (m - 1), dim=3)
    tv, ti = tv.view(ly * lx, b, c, h * w), ti.view(ly * lx, b, c, h * w)
    x0, y0, x1, y1 = ranges.unbind(-1)  # (B, Q)
    ky = (y1 - y0 + 1).float().log2().floor().long()  # block size 2^ky <= range height
    kx = (x1 - x0 + 1).float().log2().floor().long()
    table = (ky * lx + kx)[:, None, :]  # (B, 1, Q)
    bi = torch.arange(b, device=feat.device).view(b, 1, 1)
    ci = torch.arange(c, device=feat.device).view(1, c, 1)
    best_v: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for yy in (y0, y1 - (1 << ky) + 1):  # four blocks cover the range
        for xx in (x0, x1 - (1 << kx) + 1):
            q = (yy * w + xx)[:, None, :]  # (B, 1, Q)
            v, i = tv[table, bi, ci, q], ti[table, bi, ci, q]  # (B, C, Q)
            if best_v is None or best_i is None:
                best_v, best_i = v, i
            else:
                better = v > best_v
                best_v, best_i = torch.where(better, v, best_v), torch.where(better, i, best_i)
    assert best_i is not None
    return best_i.long()


def _combine(out_v: torch.Tensor, out_i: torch.Tensor, v: torch.Tensor, i: torch.Tensor, s: int, dim: int) -> None:
    """``out = max(block, block shifted by s along dim)`` with its cell; the last ``s`` positions copy ``v``."""
    n = v.shape[dim]
    if s >= n:
        out_v.copy_(v)
        out_i.copy_(i)
        return
    a_v, b_v = v.narrow(dim, 0, n - s), v.narrow(dim, s, n - s)
    a_i, b_i = i.narrow(dim, 0, n - s), i.narrow(dim, s, n - s)
    better = b_v > a_v
    torch.where(better, b_v, a_v, out=out_v.narrow(dim, 0, n - s))
    torch.where(better, b_i, a_i, out=out_i.narrow(dim, 0, n - s))
    out_v.narrow(dim, n - s, s).copy_(v.narrow(dim, n - s, s))
    out_i.narrow(dim, n - s, s).copy_(i.narrow(dim, n - s, s))


# ----------------------------------------------------------------------------- selective search


@dataclass
class ProposalConfig:
    """Selective Search parameters (OpenCV ``ximgproc`` defaults unless noted).

    ``strategy``: ``fast`` (Uijlings et al. 2013 "Selective Search Fast": HSV +
    Lab, k in {50, 100}, the setting of R-CNN and the WSOD methods the paper
    builds on), ``quality`` (more colour spaces and k values, slower) or
    ``single`` (one graph segmentation with ``k``/``sigma``: fastest).
    ``base_k``/``inc_k``/``sigma``: OpenCV's defaults for fast/quality (150,
    150, 0.8). ``max_side``: the image is resized so its longer side is at most
    this before extraction (0 = never). ``min_size``: minimum box side as a
    fraction of the image side (drops slivers). ``max_proposals``: keep this
    many after de-duplication, in Selective Search's own ranking (R-CNN: ~2000).
    """

    strategy: Literal["fast", "quality", "single"] = "fast"
    base_k: int = 150
    inc_k: int = 150
    sigma: float = 0.8
    k: int = 200  # single strategy only
    max_side: int = 224
    min_size: float = 0.05
    max_proposals: int = 2000

    def __post_init__(self) -> None:
        if self.strategy not in ("fast", "quality", "single"):
            raise ConfigError(f"proposal strategy must be fast, quality or single, got {self.strategy!r}")
        if not 0.0 <= self.min_size < 1.0:
            raise ConfigError(f"proposal min_size must be in [0, 1), got {self.min_size}")
        if self.max_proposals < 1 or self.max_side < 0:
            raise ConfigError(
                f"max_proposals must be >= 1 and max_side >= 0, got {self.max_proposals}, {self.max_side}"
            )


def _cv2() -> object:
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - opencv is a dependency
        raise ConfigError("proposals need OpenCV contrib: pip install opencv-contrib-python-headless") from e
    if not hasattr(cv2, "ximgproc"):
        raise ConfigError("cv2.ximgproc is missing: install opencv-contrib-python-headless (not opencv-python)")
    return cv2


def to_uint8_rgb(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, H, W) float in [0, 1] tensor, or (H, W, 3) uint8 array -> contiguous (H, W, 3) uint8 RGB."""
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ConfigError(f"proposal extraction expects one image (3, H, W) in [0, 1], got {tuple(image.shape)}")
        arr = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return np.ascontiguousarray(arr)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ConfigError(f"proposal extraction expects (H, W, 3) uint8, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)


def image_key(rgb: np.ndarray) -> str:
    """sha256 of a uint8 RGB array (shape + bytes): the proposal cache key."""
    h = hashlib.sha256(f"{rgb.dtype}|{rgb.shape}|".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


def postprocess_rects(rects: np.ndarray, height: int, width: int, cfg: ProposalConfig) -> np.ndarray:
    """OpenCV ``(x, y, w, h)`` pixel rects -> (R, 4) float32 normalised boxes: size filter, dedupe, cap."""
    if len(rects) == 0:
        return np.zeros((0, 4), np.float32)
    r = rects.astype(np.float64)
    boxes = np.stack(
        [r[:, 0] / width, r[:, 1] / height, (r[:, 0] + r[:, 2]) / width, (r[:, 1] + r[:, 3]) / height], axis=1
    )
    boxes = np.clip(boxes, 0.0, 1.0)
    ok = ((boxes[:, 2] - boxes[:, 0]) >= max(cfg.min_size, 1.0 / width)) & (
        (boxes[:, 3] - boxes[:, 1]) >= max(cfg.min_size, 1.0 / height)
    )
    boxes = boxes[ok]
    _, first = np.unique(np.round(boxes * 1e4).astype(np.int64), axis=0, return_index=True)
    boxes = boxes[np.sort(first)]  # de-duplicated, Selective Search's order kept
    return boxes[: cfg.max_proposals].astype(np.float32)


def selective_search(rgb: np.ndarray, cfg: ProposalConfig) -> np.ndarray:
    """Selective Search on one (H, W, 3) uint8 RGB image -> (R, 4) float32 normalised boxes (uncached)."""
    cv2 = _cv2()
    h, w = rgb.shape[:2]
    img = rgb[:, :, ::-1]  # OpenCV expects BGR
    if cfg.max_side and max(h, w) > cfg.max_side:
        s = cfg.max_side / max(h, w)
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)  # type: ignore[attr-defined]
    img = np.ascontiguousarray(img)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()  # type: ignore[attr-defined]
    ss.setBaseImage(img)
    if cfg.strategy == "fast":
        ss.switchToSelectiveSearchFast(cfg.base_k, cfg.inc_k, cfg.sigma)
    elif cfg.strategy == "quality":
        ss.switchToSelectiveSearchQuality(cfg.base_k, cfg.inc_k, cfg.sigma)
    else:
        ss.switchToSingleStrategy(cfg.k, cfg.sigma)
    rects = np.asarray(ss.process())  # (R, 4) x, y, w, h in the (possibly resized) image
    return postprocess_rects(rects, img.shape[0], img.shape[1], cfg)


def default_cache_root() -> Path:
    """``$AVLOC_CACHE/proposals``, or ``~/.cache/avloc/proposals``."""
    base = os.environ.get("AVLOC_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "avloc") / "proposals"


class ProposalCache:
    """Disk (+ optional in-memory LRU) cache of per-image proposals; layout in the module docstring."""

    def __init__(self, cfg: ProposalConfig, root: str | Path | None = None, memory_items: int = 100_000) -> None:
        cv2 = _cv2()
        self.cfg = cfg
        self.meta = {"format_version": PROPOSAL_CACHE_VERSION, "opencv": str(cv2.__version__), "config": asdict(cfg)}  # type: ignore[attr-defined]
        blob = json.dumps(self.meta, sort_keys=True, separators=(",", ":"))
        self.namespace = hashlib.sha256(blob.encode()).hexdigest()[:20]
        self.root = Path(root) if root is not None else default_cache_root()
        self.dir = self.root / self.namespace
        self.memory_items = memory_items
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0
        meta_path = self.dir / "meta.json"
        if not meta_path.exists():
            write_text_atomic(meta_path, json.dumps(self.meta, indent=2, sort_keys=True) + "\n")

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npy"

    def _remember(self, key: str, boxes: np.ndarray) -> None:
        if self.memory_items > 0:
            self._lru[key] = boxes
            self._lru.move_to_end(key)
            while len(self._lru) > self.memory_items:
                self._lru.popitem(last=False)

    def _read(self, p: Path) -> np.ndarray:
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ProposalCacheError(
                f"proposal cache file {p} is unreadable ({type(e).__name__}: {e}); delete {self.dir} and run again"
            ) from e
        if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[1] != 4:
            raise ProposalCacheError(
                f"proposal cache file {p} holds {arr.dtype} {arr.shape}, expected float32 (R, 4); delete {self.dir}"
            )
        return arr

    def get(self, image: torch.Tensor | np.ndarray) -> np.ndarray:
        """Proposals (R, 4) float32 normalised of one image, extracted on a miss and stored."""
        rgb = to_uint8_rgb(image)
        key = image_key(rgb)
        hit = self._lru.get(key)
        if hit is not None:
            self._lru.move_to_end(key)
            self.hits += 1
            return hit
        p = self.path(key)
        if p.is_file():
            boxes = self._read(p)
            self.hits += 1
        else:
            boxes = selective_search(rgb, self.cfg)
            with atomic_path(p) as tmp:
                np.save(tmp, boxes, allow_pickle=False)
            self.misses += 1
        self._remember(key, boxes)
        return boxes

    def batch(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> B tensors (R_b, 4) of normalised proposals."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"proposals need images (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        return [torch.from_numpy(self.get(im)) for im in images]
