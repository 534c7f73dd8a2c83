"""Vectorised scene composition: CIFAR-10 background, coloured MNIST digits, exact ink boxes.

A :class:`Scene` is a background (float32 (H, W, 3) in [0, 1]) plus placed
digits (alpha cell, colour, position). Rendering pastes each digit with one
array blend ``region += alpha * (colour - region)`` (no per-pixel Python),
resizing uses ``cv2.resize``, and placement draws ``placement_tries``
candidate positions at once and tests them against the placed ink boxes with
array comparisons. A digit's box is the tight bounding box of its ink
(``alpha > ink_threshold``) in the frame, clipped to the frame, as
``[x1, y1, x2, y2]`` with exclusive ends (pixel edges).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from avloc.data.digitscenes.config import SceneConfig
from avloc.errors import ConfigError

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
MIN_CELL = 10  # px: below this an MNIST digit is no longer legible


def ink_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box (x1, y1, x2, y2), exclusive ends, of the true pixels of a 2-D mask; None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@dataclass
class PlacedDigit:
    """One digit in a scene: class, MNIST source, resized alpha cell, colour and cell position."""

    label: int
    mnist_index: int  # index into the MNIST t10k set
    alpha: np.ndarray  # (s, s) float32 in [0, 1]
    ink: tuple[int, int, int, int]  # ink box inside the cell
    colour: np.ndarray  # (3,) float32 in [0, 1]
    x: int  # cell top-left in the frame
    y: int

    def box(self, size: tuple[int, int], thr: float, dx: int = 0, dy: int = 0) -> list[int] | None:
        """Frame box of the visible ink when shifted by (dx, dy); None if no ink is in view."""
        h, w = size
        x, y = self.x + dx, self.y + dy
        ix1, iy1, ix2, iy2 = self.ink
        if x + ix2 <= 0 or y + iy2 <= 0 or x + ix1 >= w or y + iy1 >= h:
            return None
        if x + ix1 >= 0 and y + iy1 >= 0 and x + ix2 <= w and y + iy2 <= h:  # fully inside
            return [x + ix1, y + iy1, x + ix2, y + iy2]
        s = self.alpha.shape[0]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + s, w), min(y + s, h)
        b = ink_bbox(self.alpha[y0 - y : y1 - y, x0 - x : x1 - x] > thr)
        return None if b is None else [b[0] + x0, b[1] + y0, b[2] + x0, b[3] + y0]


def paste(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray, x: int, y: int) -> None:
    """Blend ``colour`` into ``canvas`` (H, W, 3) with ``alpha`` (s, s) at cell (x, y), clipped, in place."""
    h, w = canvas.shape[:2]
    s = alpha.shape[0]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + s, w), min(y + s, h)
    if x1 <= x0 or y1 <= y0:
        return
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x, None]  # (h', w', 1)
    region = canvas[y0:y1, x0:x1]  # view, (h', w', 3)
    region += a * (colour - region)


@dataclass
class Scene:
    """A composed still: background and digits; ``render`` produces the frame."""

    background: np.ndarray  # (H, W, 3) float32 in [0, 1], distractors included
    digits: list[PlacedDigit]
    ink_threshold: float
    sources: dict[str, Any]

    @property
    def hw(self) -> tuple[int, int]:
        return self.background.shape[0], self.background.shape[1]

    def render(self, shifts: np.ndarray | None = None) -> np.ndarray:
        """The frame as (H, W, 3) uint8; ``shifts`` (n, 2) moves each digit by (dx, dy) px."""
        canvas = self.background.copy()
        for k, d in enumerate(self.digits):
            dx, dy = (int(shifts[k, 0]), int(shifts[k, 1])) if shifts is not None else (0, 0)
            paste(canvas, d.alpha, d.colour, d.x + dx, d.y + dy)
        return (canvas * 255.0 + 0.5).astype(np.uint8)

    def boxes(self, shifts: np.ndarray | None = None) -> list[list[int] | None]:
        """Ink box of every digit (None when out of view), in digit order."""
        out = []
        for k, d in enumerate(self.digits):
            dx, dy = (int(shifts[k, 0]), int(shifts[k, 1])) if shifts is not None else (0, 0)
            out.append(d.box(self.hw, self.ink_threshold, dx, dy))
        return out

    def instance_map(self) -> np.ndarray:
        """(H, W) int: index of the digit whose ink covers each pixel (-1: none); later digits win."""
        h, w = self.hw
        out = np.full((h, w), -1, dtype=np.int64)
        for k, d in enumerate(self.digits):
            s = d.alpha.shape[0]
            x0, y0, x1, y1 = max(d.x, 0), max(d.y, 0), min(d.x + s, w), min(d.y + s, h)
            if x1 > x0 and y1 > y0:
                m = d.alpha[y0 - d.y : y1 - d.y, x0 - d.x : x1 - d.x] > self.ink_threshold
                out[y0:y1, x0:x1][m] = k
        return out


def make_background(photo: np.ndarray, size: int, rng: np.random.Generator, cfg: SceneConfig) -> np.ndarray:
    """Upscale a CIFAR photo (32, 32, 3) uint8 to (size, size, 3) float32, colour-jittered and blurred.

    The jitter (saturation, contrast, brightness: affine per pixel) is applied
    at 32x32 before the (linear) upscaling, which gives the same image as
    jittering the large one up to clipping, at a fraction of the cost.
    """
    sigma, bright, contrast, sat = (
        rng.uniform(*cfg.bg_blur_sigma) * size / 224,
        rng.uniform(*cfg.bg_brightness),
        rng.uniform(*cfg.bg_contrast),
        rng.uniform(*cfg.bg_saturation),
    )
    rgb = photo.astype(np.float32)  # (32, 32, 3)
    gray = rgb @ _LUMA  # (32, 32)
    mean = float(gray.mean())
    jittered = ((gray[..., None] + sat * (rgb - gray[..., None]) - mean) * contrast + mean) * bright
    small8 = np.clip(jittered + 0.5, 0, 255).astype(np.uint8)
    img = cv2.resize(small8, (size, size), interpolation=cv2.INTER_CUBIC)  # uint8 saturates overshoot
    if sigma > 0.1:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    return img.astype(np.float32) * np.float32(1 / 255.0)


def pick_colour(local_bg: np.ndarray, rng: np.random.Generator, cfg: SceneConfig) -> np.ndarray:
    """A random colour whose luminance differs from ``local_bg``'s by >= ``min_contrast`` (else the best)."""
    cands = rng.random((cfg.colour_tries, 3), dtype=np.float32)  # (T, 3)
    contrast = np.abs(cands @ _LUMA - float(local_bg @ _LUMA))  # (T,)
    ok = np.flatnonzero(contrast >= cfg.min_contrast)
    return cands[ok[0] if ok.size else int(np.argmax(contrast))]


def _resize_cell(digit28: np.ndarray, s: int, thr: float) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    alpha = cv2.resize(digit28, (s, s), interpolation=cv2.INTER_LINEAR).astype(np.float32) * (1 / 255.0)
    return alpha, ink_bbox(alpha > thr)


def place_digits(
    canvas: np.ndarray,
    digits28: list[np.ndarray],
    labels: list[int],
    mnist_indices: list[int],
    scales: np.ndarray,
    rng: np.random.Generator,
    cfg: SceneConfig,
) -> list[PlacedDigit]:
    """Place digits (largest first) with disjoint ink boxes fully inside the frame; choose their colours.

    Each digit draws ``placement_tries`` candidate positions at once; the first
    whose ink box keeps ``min_gap`` px from every placed box wins, else the
    cell shrinks by ``shrink`` and it tries again.
    """
    h, w = canvas.shape[:2]
    side = min(h, w)
    placed: list[PlacedDigit] = []
    taken = np.zeros((0, 4), dtype=np.int64)  # (P, 4) ink boxes placed so far
    g = cfg.min_gap
    for k in np.argsort(-scales, kind="stable"):
        s = max(MIN_CELL, round(float(scales[k]) * side))
        while True:
            alpha, ink = _resize_cell(digits28[k], s, cfg.ink_threshold)
            if ink is not None and ink[2] - ink[0] <= w and ink[3] - ink[1] <= h:
                ix1, iy1, ix2, iy2 = ink
                xs = rng.integers(-ix1, w - ix2 + 1, cfg.placement_tries)  # (T,)
                ys = rng.integers(-iy1, h - iy2 + 1, cfg.placement_tries)
                cand = np.stack([xs + ix1, ys + iy1, xs + ix2, ys + iy2], axis=1)  # (T, 4)
                c, t = cand[:, None, :], taken[None, :, :]  # (T, 1, 4), (1, P, 4)
                apart = (
                    (c[..., 2] + g <= t[..., 0])
                    | (t[..., 2] + g <= c[..., 0])
                    | (c[..., 3] + g <= t[..., 1])
                    | (t[..., 3] + g <= c[..., 1])
                )  # (T, P)
                free = np.flatnonzero(apart.all(axis=1))
                if free.size:
                    j = int(free[0])
                    x, y = int(xs[j]), int(ys[j])
                    bx1, by1, bx2, by2 = cand[j].tolist()
                    colour = pick_colour(canvas[by1:by2, bx1:bx2].reshape(-1, 3).mean(axis=0), rng, cfg)
                    placed.append(PlacedDigit(labels[k], mnist_indices[k], alpha, ink, colour, x, y))
                    taken = np.concatenate([taken, cand[j : j + 1]])
                    break
            if s <= MIN_CELL:
                raise ConfigError(
                    f"could not place {len(digits28)} digits without overlap in a {w}x{h} frame; "
                    "use fewer visible digits, a larger scene size or smaller digit scales"
                )
            s = max(MIN_CELL, int(s * cfg.shrink))
    return placed


def paste_distractors(
    canvas: np.ndarray, photos: np.ndarray, rng: np.random.Generator, cfg: SceneConfig
) -> None:
    """Paste opaque CIFAR patches (k, 32, 32, 3) uint8 at random places (under the digits), in place."""
    h, w = canvas.shape[:2]
    for p in photos:
        s = max(8, round(rng.uniform(*cfg.distractor_scale) * min(h, w)))
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        patch = cv2.resize(p, (s, s), interpolation=cv2.INTER_LINEAR)
        canvas[y : y + s, x : x + s] = patch.astype(np.float32) * np.float32(1 / 255.0)
