"""Drawing: heatmap overlay (colormap x alpha), boxes with scores, on/off-screen banner, contact sheet."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from avloc.formats.localize import FrameRecord

#: banner colours (RGB)
ON_COLOUR = (40, 200, 70)
OFF_COLOUR = (220, 60, 50)
NEUTRAL_COLOUR = (120, 120, 120)
BOX_COLOUR = (255, 255, 255)


def display_heat(m: np.ndarray, strength: float) -> np.ndarray:
    """Map -> [0, 1] display weights: min-max normalised, scaled by ``strength`` (on-screen confidence)."""
    lo, hi = float(m.min()), float(m.max())
    n = (m - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(m)
    return (n * strength).astype(np.float32)


def banner_text(record: FrameRecord) -> tuple[str, tuple[int, int, int]]:
    """The overlay's banner: silent, visual only, or the on/off-screen decision with its confidence."""
    if record.silent:
        return "silent: no sound source", NEUTRAL_COLOUR
    conf = record.onscreen_confidence
    if conf is None:
        return "visual only (no audio): object prior", NEUTRAL_COLOUR
    if record.onscreen:
        return f"ON-SCREEN {conf:.2f}", ON_COLOUR
    return f"OFF-SCREEN {conf:.2f}", OFF_COLOUR


def heat_layer(heat: np.ndarray, size_wh: tuple[int, int], alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Display heat (h, w) in [0, 1] -> the colour layer at ``size_wh``: (RGB uint8 (H, W, 3), image weight, colour
    weight), both float32 (H, W); ``None`` when there is nothing to draw. Computed once per analysed frame and reused
    for every output frame it covers."""
    if not heat.size or float(heat.max()) <= 0:
        return None
    hm = cv2.resize(heat, size_wh, interpolation=cv2.INTER_LINEAR)  # (H, W)
    colour = np.ascontiguousarray(cv2.applyColorMap((hm * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1])  # RGB
    wgt = (alpha * hm).astype(np.float32)
    return colour, (1.0 - wgt).astype(np.float32), wgt


def draw_overlay(
    img: np.ndarray,
    heat: np.ndarray,
    record: FrameRecord,
    src_wh: tuple[int, int],
    alpha: float,
    layer: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    banner: tuple[str, tuple[int, int, int]] | None = None,
    boxes: bool = True,
) -> np.ndarray:
    """RGB uint8 frame (H, W, 3) + display heat (h, w) in [0, 1] + its frame record -> new frame.

    ``src_wh`` is the source resolution the record's boxes are in (the frame may be downscaled). ``layer``:
    :func:`heat_layer` of ``heat`` at this frame's size, when the caller already has it. ``banner``: (text,
    colour) instead of the record's on/off-screen banner (e.g. one class's map); ``boxes``: draw the record's
    boxes (each captioned with its label and score).
    """
    h, w = img.shape[:2]
    if layer is None:
        layer = heat_layer(heat, (w, h), alpha)
    if layer is not None:
        colour, w_img, w_col = layer
        out = cv2.blendLinear(np.ascontiguousarray(img), colour, w_img, w_col)  # per-pixel img (1 - a h) + colour a h
    else:
        out = img.copy()
    scale = max(h, w) / 640.0
    thick = max(1, round(2 * scale))
    font = 0.5 * max(scale, 0.3)
    sx, sy = w / src_wh[0], h / src_wh[1]
    for b in record.boxes if boxes else ():
        p1 = (round(b.x1 * sx), round(b.y1 * sy))
        p2 = (round(b.x2 * sx), round(b.y2 * sy))
        cv2.rectangle(out, p1, p2, BOX_COLOUR, thick)
        cv2.putText(out, b.caption(), (p1[0] + 2, max(p1[1] - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, font,
                    BOX_COLOUR, max(1, thick // 2), cv2.LINE_AA)
    text, banner_colour = banner if banner is not None else banner_text(record)
    bh = max(8, round(24 * scale))
    cv2.rectangle(out, (0, 0), (w, bh), banner_colour, -1)
    cv2.putText(out, f"{record.time:.1f}s  {text}", (4, bh - max(2, bh // 4)), cv2.FONT_HERSHEY_SIMPLEX, font,
                (255, 255, 255), max(1, thick // 2), cv2.LINE_AA)
    return out


def side_by_side(panels: list[np.ndarray], slots: int) -> np.ndarray:
    """Same-size RGB panels -> one image of ``slots`` panels in a row; missing panels are left dark."""
    if not panels or len(panels) > slots:
        raise ValueError(f"side_by_side: need 1 to {slots} panels, got {len(panels)}")
    h, w = panels[0].shape[:2]
    pad = 2
    row = np.full((h, slots * w + (slots - 1) * pad, 3), 24, np.uint8)
    for i, p in enumerate(panels):
        row[:, i * (w + pad) : i * (w + pad) + w] = p
    return row


def contact_sheet(thumbs: list[np.ndarray], columns: int) -> np.ndarray:
    """Thumbnails (same width) -> one RGB image in a grid (rows padded to the tallest thumbnail)."""
    if not thumbs:
        raise ValueError("contact_sheet: no thumbnails")
    tw = thumbs[0].shape[1]
    th = max(t.shape[0] for t in thumbs)
    cols = min(columns, len(thumbs))
    rows = (len(thumbs) + cols - 1) // cols
    pad = 4
    sheet = np.full((rows * (th + pad) + pad, cols * (tw + pad) + pad, 3), 24, np.uint8)
    for i, t in enumerate(thumbs):
        r, c = divmod(i, cols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        sheet[y : y + t.shape[0], x : x + t.shape[1]] = t
    return sheet


def png_data_url(picture: np.ndarray | str | Path) -> str:
    """An RGB picture (H, W, 3) uint8, or a PNG file, as a ``data:image/png;base64,...`` URL (notebooks)."""
    import base64

    if isinstance(picture, np.ndarray):
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(picture[..., ::-1]))
        if not ok:
            raise ValueError("cannot encode the picture as PNG")
        data = buf.tobytes()
    else:
        data = Path(picture).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
