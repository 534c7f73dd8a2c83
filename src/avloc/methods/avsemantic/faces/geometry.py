"""What a face detection row means, and the person, head and mouth regions derived from it (pure NumPy).

A detection row (YuNet's layout, :mod:`.detect`) is ``[x, y, w, h, right eye x, y, left eye x, y, nose tip
x, y, right mouth corner x, y, left mouth corner x, y, score]`` in its image's pixels: 15 values. The regions
are proportions of the face box (``w`` its width, ``h`` its height; the box spans about eyebrows to chin and
cheek to cheek). Anthropometry: the head with hair is about 1.3 face widths wide and reaches ~0.5 face
heights above the box; the shoulders are ~3 face widths wide, the chest ~1.5-2.5 face heights below the top.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from avloc.errors import ConfigError

#: Row layout of a detection.
BOX = slice(0, 4)
RIGHT_EYE, LEFT_EYE, NOSE, RIGHT_MOUTH, LEFT_MOUTH = (slice(4 + 2 * i, 6 + 2 * i) for i in range(5))
SCORE = 14
ROW_LEN = 15

PERSON_WIDTH = 2.0  # person box width / face width: head, neck and the inner shoulders
HEAD_WIDTH = 1.3  # head box width / face width (hair and ears)
PERSON_ABOVE = 0.5  # person box top = face top - 0.5 h (hair, forehead)
PERSON_BELOW = 2.5  # person box bottom = face top + 2.5 h (chin at 1.0, chest below)
HEAD_CENTRE_Y = 0.4  # head Gaussian centre = face top + 0.4 h (between eyes and hairline)
HEAD_SIGMA = (0.5, 0.6)  # head Gaussian sigma (x in w, y in h): ~0.6 of the peak at the box sides
BODY_CENTRE_Y = 1.9  # chest Gaussian centre = face top + 1.9 h
BODY_SIGMA = (0.8, 0.6)  # chest Gaussian sigma (x in w, y in h)
BODY_WEIGHT = 0.5  # chest peak relative to the head peak: the sound comes from the head
# Mouth box, in units of s = max(mouth-corner distance, MOUTH_MIN_WIDTH * w) (the corners
# collapse on a profile face): corners +- 0.3 s each side, from the nose base
# (0.5 s above the corner line) to the chin (0.9 s below), so lips and jaw are inside.
MOUTH_MIN_WIDTH = 0.35
MOUTH_HALF_WIDTH = 0.8
MOUTH_ABOVE = 0.5
MOUTH_BELOW = 0.9

Box = tuple[float, float, float, float]


def as_rows(face_rows: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Detections -> (K, 15) float64 (an empty input -> (0, 15))."""
    a = np.asarray(face_rows, np.float64)
    return a.reshape(-1, a.shape[-1] if a.size else ROW_LEN)


def _check_row(face_row: np.ndarray) -> np.ndarray:
    r = np.asarray(face_row, np.float64).reshape(-1)
    if r.size < 4:
        raise ConfigError(f"a face row needs at least [x, y, w, h], got {r.size} values")
    return r


def face_xyxy(face_row: np.ndarray) -> Box:
    """The face box of a row as ``(x1, y1, x2, y2)``."""
    x, y, w, h = _check_row(face_row)[:4]
    return float(x), float(y), float(x + w), float(y + h)


def person_box(face_row: np.ndarray, frame_wh: tuple[int, int]) -> Box:
    """Head + upper body ``(x1, y1, x2, y2)`` from a face box, clipped to the (W, H) frame.

    ``PERSON_WIDTH`` (2.0) face widths wide centred on the face, from ``PERSON_ABOVE``
    (0.5) face heights above the face top to ``PERSON_BELOW`` (2.5) face heights below it.
    """
    x, y, w, h = _check_row(face_row)[:4]
    W, H = frame_wh
    cx = x + w / 2
    x1, x2 = cx - PERSON_WIDTH * w / 2, cx + PERSON_WIDTH * w / 2
    y1, y2 = y - PERSON_ABOVE * h, y + PERSON_BELOW * h
    return (float(np.clip(x1, 0, W)), float(np.clip(y1, 0, H)), float(np.clip(x2, 0, W)), float(np.clip(y2, 0, H)))


def head_box(face_row: np.ndarray, frame_wh: tuple[int, int]) -> Box:
    """The head with hair: the face box widened to ``HEAD_WIDTH`` (1.3) w and raised by 0.5 h above its top, clipped."""
    x, y, w, h = _check_row(face_row)[:4]
    W, H = frame_wh
    cx = x + w / 2
    return (
        float(np.clip(cx - HEAD_WIDTH * w / 2, 0, W)),
        float(np.clip(y - PERSON_ABOVE * h, 0, H)),
        float(np.clip(cx + HEAD_WIDTH * w / 2, 0, W)),
        float(np.clip(y + h, 0, H)),
    )


def person_map(
    face_rows: np.ndarray,
    weights: np.ndarray | Sequence[float] | None,
    map_wh: tuple[int, int],
    frame_wh: tuple[int, int],
    body_weight: float = BODY_WEIGHT,
) -> np.ndarray:
    """A soft person heatmap (h, w) float32 on a ``map_wh`` grid over a ``frame_wh`` frame.

    Per face ``i``: ``g_i = max(G_head, body_weight * G_body)`` with ``G`` axis-aligned
    Gaussians of peak 1: the head at (face centre x, top + 0.4 h) with sigma (0.5 w, 0.6 h),
    the chest at (centre x, top + 1.9 h) with sigma (0.8 w, 0.6 h). The map is
    ``max_i weights_i * g_i`` (peak = the largest weight; all zeros without faces).
    Values are sampled at cell centres; each sigma is at least half a cell so a face
    smaller than a cell still lights its cell. ``weights=None`` = 1 per face.
    """
    rows = as_rows(face_rows)
    mw, mh = map_wh
    W, H = frame_wh
    if mw < 1 or mh < 1 or W <= 0 or H <= 0:
        raise ConfigError(f"person_map: map_wh {map_wh} and frame_wh {frame_wh} must be positive")
    wts = np.ones(len(rows)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if wts.shape[0] != rows.shape[0]:
        raise ConfigError(f"person_map: {rows.shape[0]} faces but {wts.shape[0]} weights")
    out = np.zeros((mh, mw), np.float64)
    if rows.shape[0] == 0:
        return out.astype(np.float32)
    cw, ch = W / mw, H / mh
    xs = (np.arange(mw) + 0.5) * cw  # (w,) cell centres in frame pixels
    ys = (np.arange(mh) + 0.5) * ch  # (h,)

    def gauss(cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
        sx, sy = max(sx, cw / 2), max(sy, ch / 2)
        gx = np.exp(-0.5 * ((xs - cx) / sx) ** 2)
        gy = np.exp(-0.5 * ((ys - cy) / sy) ** 2)
        return gy[:, None] * gx[None, :]  # (h, w)

    for r, wt in zip(rows, wts):
        x, y, w, h = r[:4]
        cx = x + w / 2
        head = gauss(cx, y + HEAD_CENTRE_Y * h, HEAD_SIGMA[0] * w, HEAD_SIGMA[1] * h)
        body = gauss(cx, y + BODY_CENTRE_Y * h, BODY_SIGMA[0] * w, BODY_SIGMA[1] * h)
        out = np.maximum(out, wt * np.maximum(head, body_weight * body))
    return out.astype(np.float32)


def mouth_box(face_row: np.ndarray, frame_wh: tuple[int, int] | None = None) -> Box:
    """Lips and jaw ``(x1, y1, x2, y2)`` from the mouth-corner landmarks (columns 10-13).

    With ``c`` the corners' midpoint and ``s = max(|L - R|, 0.35 w)``: x in ``c.x +- 0.8 s``,
    y from ``c.y - 0.5 s`` (nose base) to ``c.y + 0.9 s`` (chin). Clipped when ``frame_wh`` is given.
    """
    r = _check_row(face_row)
    if r.size < 14:
        raise ConfigError(f"mouth_box needs a detection row with landmarks (>= 14 values), got {r.size}")
    rm, lm = r[RIGHT_MOUTH], r[LEFT_MOUTH]
    c = (rm + lm) / 2
    s = max(float(np.hypot(*(lm - rm))), MOUTH_MIN_WIDTH * float(r[2]))
    x1, x2 = c[0] - MOUTH_HALF_WIDTH * s, c[0] + MOUTH_HALF_WIDTH * s
    y1, y2 = c[1] - MOUTH_ABOVE * s, c[1] + MOUTH_BELOW * s
    if frame_wh is not None:
        W, H = frame_wh
        x1, x2 = float(np.clip(x1, 0, W)), float(np.clip(x2, 0, W))
        y1, y2 = float(np.clip(y1, 0, H)), float(np.clip(y2, 0, H))
    return float(x1), float(y1), float(x2), float(y2)
