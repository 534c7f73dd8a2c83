"""Per-frame post-processing: map back to the whole frame, boxes, on-screen statistic, smoothing."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from avloc.frontends.image import ImageConfig, crop_geometry
from avloc.inference.config import LocalizeConfig
from avloc.methods.base import FrameDetails, HeardSource

#: box-search grid (cells on the long side) the full-frame map is upsampled to before labelling
BOX_GRID_LONG_SIDE = 256
#: rms_db below this is written as this value in JSON (JSON has no -inf)
DB_FLOOR = -120.0


def map_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) of a heatmap covering a ``width`` x ``height`` frame with its aspect, long side ``long_side``."""
    s = long_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def unwarp_map(m: np.ndarray, frame_wh: tuple[int, int], out_wh: tuple[int, int], cfg: ImageConfig) -> np.ndarray:
    """Model-input map (h, w) -> map (out_h, out_w) covering the whole source frame.

    Undoes the model's geometry (:func:`avloc.frontends.image.crop_geometry`):
    ``squash`` stretches back; ``crop`` places the map over the centre crop and
    fills the parts of the frame the model never saw with the map's minimum.
    """
    w0, h0 = frame_wh
    ow, oh = out_wh
    sx, sy, offx, offy = crop_geometry(h0, w0, cfg)
    mh, mw = m.shape
    u = (np.arange(ow, dtype=np.float32) + 0.5) * (w0 / ow)  # source pixel x of each output cell centre
    v = (np.arange(oh, dtype=np.float32) + 0.5) * (h0 / oh)
    mx = (u * sx - offx) / cfg.size * mw - 0.5  # model-map coordinates
    my = (v * sy - offy) / cfg.size * mh - 0.5
    map_x, map_y = np.meshgrid(mx, my)
    src = np.ascontiguousarray(m, dtype=np.float32)
    out = cv2.remap(src, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    outside = (map_x < -0.5) | (map_x > mw - 0.5) | (map_y < -0.5) | (map_y > mh - 0.5)  # not seen by the model
    out[outside] = src.min()
    return out


def boxes_to_source(boxes: np.ndarray, frame_wh: tuple[int, int], cfg: ImageConfig) -> np.ndarray:
    """Boxes (K, 4) in model-input pixels -> source pixels (inverse of the crop/squash geometry)."""
    w0, h0 = frame_wh
    sx, sy, offx, offy = crop_geometry(h0, w0, cfg)
    b = boxes.astype(np.float64).copy()
    b[:, [0, 2]] = (b[:, [0, 2]] + offx) / sx
    b[:, [1, 3]] = (b[:, [1, 3]] + offy) / sy
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w0)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h0)
    return b


def map_boxes(m: np.ndarray, frame_wh: tuple[int, int], cfg: LocalizeConfig, confidence: float) -> list[dict[str, float]]:
    """Threshold + connected components of a full-frame map -> boxes in source pixels, best first.

    The map is shifted to a zero minimum; cells above ``box_threshold`` x peak
    form components (8-connectivity). Score = ``confidence`` x component peak /
    map peak, so the top box carries the frame's on-screen confidence.
    """
    w0, h0 = frame_wh
    gw, gh = map_size(w0, h0, BOX_GRID_LONG_SIDE)
    g = cv2.resize(m.astype(np.float32), (gw, gh), interpolation=cv2.INTER_LINEAR)
    g = g - g.min()
    peak = float(g.max())
    if not peak > 0 or not math.isfinite(peak):
        return []
    mask = (g >= cfg.box_threshold * peak).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out: list[dict[str, float]] = []
    fx, fy = w0 / gw, h0 / gh
    for k in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < cfg.min_box_area * gw * gh:
            continue
        comp_peak = float(g[labels == k].max())
        out.append({
            "x1": round(x * fx, 2), "y1": round(y * fy, 2),
            "x2": round(min((x + w) * fx, w0), 2), "y2": round(min((y + h) * fy, h0), 2),
            "score": round(confidence * comp_peak / peak, 4),
        })
    out.sort(key=lambda b: -b["score"])
    return out[: cfg.max_boxes]


def peak_contrast(m: np.ndarray) -> float:
    """z-score of the map's peak, ``(max - mean) / std`` (0 for a constant map): scale-free."""
    sd = float(m.std())
    return float((m.max() - m.mean()) / sd) if sd > 1e-12 else 0.0


def onscreen_statistic(m: np.ndarray, rms_db: float, cfg: LocalizeConfig) -> float:
    """Calibrated P(on-screen) from the map's peak contrast and the audio level (LocalizeConfig doc)."""
    z = cfg.onscreen_w_contrast * peak_contrast(m) + cfg.onscreen_w_db * (max(rms_db, DB_FLOOR) + 30.0) / 10.0
    return float(1.0 / (1.0 + math.exp(-(z + cfg.onscreen_bias))))


@dataclass
class FrameClasses:
    """Class-aware methods: one frame's class probabilities, detections and per-class full-frame maps."""

    probabilities: np.ndarray  # (C,)
    detected: np.ndarray  # (C,) bool
    maps: np.ndarray  # (C, h, w) full frame; zero for classes not detected


@dataclass
class FrameSource:
    """A heard source of one frame in source geometry: the method's :class:`HeardSource`, its own map over the
    whole frame, and its instances' boxes in source pixels (K, 4)."""

    heard: HeardSource
    map: np.ndarray | None  # (h, w) full frame
    boxes: np.ndarray  # (K, 4) source pixels, one per heard.instances


@dataclass
class FrameResult:
    """One analysed frame flowing through the post-processing stages."""

    index: int
    time: float
    source_time: float
    map: np.ndarray  # (h, w) full-frame map
    raw_map: np.ndarray  # (h', w') the model's own map (model-input geometry)
    rms_db: float | None  # None in visual-only mode
    model_onscreen: float | None = None
    model_boxes: np.ndarray | None = None  # (K, 5) source pixels + score, from a method's boxes()
    semantic: dict[str, Any] | None = None
    classes: FrameClasses | None = None  # class-aware methods
    sources: list[FrameSource] | None = None  # methods grounding heard sources
    details: FrameDetails | None = None  # methods grounding heard sources
    speaker_box: np.ndarray | None = None  # (4,) source pixels of details.speaker's head box


def smooth(results: Iterator[FrameResult], cfg: LocalizeConfig) -> Iterator[FrameResult]:
    """Temporal smoothing of ``map`` (streaming): EMA (causal) or centred median (delay k // 2)."""
    if cfg.smoothing == "none":
        yield from results
        return
    if cfg.smoothing == "ema":
        state: np.ndarray | None = None
        for r in results:
            state = r.map.copy() if state is None else cfg.ema_alpha * r.map + (1 - cfg.ema_alpha) * state
            r.map = state.astype(np.float32)
            yield r
        return
    k = cfg.median_frames
    half = k // 2
    buf: deque[FrameResult] = deque()
    raw: deque[np.ndarray] = deque()
    emitted = 0  # index (within the stream) of the next frame to emit
    seen = 0
    for r in results:
        buf.append(r)
        raw.append(r.map)
        seen += 1
        while emitted + half < seen:  # the frame `emitted` has its full right context
            yield _median_emit(buf, raw, emitted, seen, half)
            emitted += 1
            while len(buf) > half + (seen - emitted):  # keep `half` frames of left context
                buf.popleft()
                raw.popleft()
    while emitted < seen:
        yield _median_emit(buf, raw, emitted, seen, half)
        emitted += 1


def _median_emit(buf: deque[FrameResult], raw: deque[np.ndarray], emitted: int, seen: int, half: int) -> FrameResult:
    first = seen - len(buf)  # stream index of buf[0]
    pos = emitted - first
    lo, hi = max(0, pos - half), min(len(buf), pos + half + 1)
    r = buf[pos]
    r.map = np.median(np.stack([raw[i] for i in range(lo, hi)]), axis=0).astype(np.float32)
    return r
