"""Plain-NumPy references for the vision-model tests: greedy NMS, TF's legacy bilinear resize,
NanoDet's decoding, and the human library's decoding (``src/object/nanodet.ts``, ``centernet.ts``),
each written from the source's description with loops, independently of avloc's vectorised code."""

from __future__ import annotations

import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``[x1, y1, x2, y2]`` boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, thr: float, agnostic: bool,
               max_out: int | None = None) -> list[int]:  # fmt: skip
    """Indices kept by greedy NMS, by decreasing score (ties: lower index first)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if max_out is not None and len(keep) >= max_out:
            break
        if all(not (agnostic or labels[i] == labels[j]) or iou(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
    return keep


def resize_legacy(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``tf.image.resize_bilinear(align_corners=False, half_pixel_centers=False)`` of (C, H, W), pixel by pixel."""
    c, h, w = img.shape
    out = np.zeros((c, out_h, out_w), dtype=np.float64)
    for i in range(out_h):
        sy = i * h / out_h
        y0, y1, fy = int(np.floor(sy)), min(int(np.ceil(sy)), h - 1), sy - np.floor(sy)
        for j in range(out_w):
            sx = j * w / out_w
            x0, x1, fx = int(np.floor(sx)), min(int(np.ceil(sx)), w - 1), sx - np.floor(sx)
            top = img[:, y0, x0] + (img[:, y0, x1] - img[:, y0, x0]) * fx
            bottom = img[:, y1, x0] + (img[:, y1, x1] - img[:, y1, x0]) * fx
            out[:, i, j] = top + (bottom - top) * fy
    return out


# ----------------------------------------------------------------------------- NanoDet


def nanodet_decode(cls: list[np.ndarray], reg: list[np.ndarray], size: int, thr: float, iou_thr: float,
                   max_det: int, agnostic: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """NanoDet (GFL) decoding of one image's per-level outputs ``(HW, 80)``, ``(HW, 44)`` (strides 8, 16, 32):
    every (cell, class) above ``thr``, box sides = softmax-expectation of 11 bins x stride around the cell
    centre ``(j + 0.5, i + 0.5) x stride``, clipped to the input; greedy NMS. Boxes in input pixels."""
    boxes, scores, labels = [], [], []
    for level, stride in enumerate((8, 16, 32)):
        n = size // stride
        for cell in range(n * n):
            i, j = divmod(cell, n)
            cx, cy = (j + 0.5) * stride, (i + 0.5) * stride
            logits = reg[level][cell].reshape(4, 11).astype(np.float64)
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            d = (p * np.arange(11)).sum(1) * stride  # l, t, r, b
            box = np.clip([cx - d[0], cy - d[1], cx + d[2], cy + d[3]], 0, size)
            for c in np.nonzero(cls[level][cell] > thr)[0]:
                boxes.append(box)
                scores.append(float(cls[level][cell][c]))
                labels.append(int(c))
    b, s, lab = np.array(boxes).reshape(-1, 4), np.array(scores), np.array(labels, dtype=np.int64)
    keep = greedy_nms(b, s, lab, iou_thr, agnostic, max_det)
    return b[keep], s[keep], lab[keep]


def human_nanodet(cls: list[np.ndarray], reg: list[np.ndarray], size: int, min_conf: float, iou_thr: float,
                  max_det: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The human library's ``nanodet.ts`` ``process``: arg-max bin per box side, offsets scaled by
    ``2.5 / strideSize`` with ``baseSize / strideSize / size`` per bin, class 61 skipped, the box as
    clamped (x, y, w, h), scores rounded to 0.01, class-agnostic ``tf.image.nonMaxSuppression``.
    Returns boxes normalised ``[x1, y1, x2, y2]``, scores, labels."""
    boxes, scores, labels = [], [], []
    for level, stride_size in enumerate((4, 2, 1)):  # the outputs of strides 8, 16, 32 (52, 26, 13 cells)
        base = stride_size * 13
        idx = reg[level].reshape(-1, 4, 11).argmax(2)  # (HW, 4)
        for i in range(base * base):
            for j in range(80):
                score = cls[level][i][j]
                if score > min_conf and j != 61:
                    cx, cy = (0.5 + i % base) / base, (0.5 + i // base) / base
                    off = idx[i] * (base / stride_size / size)
                    x, y = cx - 2.5 / stride_size * off[0], cy - 2.5 / stride_size * off[1]
                    w, h = cx + 2.5 / stride_size * off[2] - x, cy + 2.5 / stride_size * off[3] - y
                    x, y, w, h = (min(max(v, 0.0), 1.0) for v in (x, y, w, h))
                    boxes.append([x, y, x + w, y + h])
                    scores.append(round(100 * float(score)) / 100)
                    labels.append(j)
    b, s, lab = np.array(boxes).reshape(-1, 4), np.array(scores), np.array(labels, dtype=np.int64)
    cand = np.nonzero(s > min_conf)[0]  # tf.image.nonMaxSuppression's scoreThreshold, on the rounded scores
    keep = cand[greedy_nms(b[cand], s[cand], lab[cand], iou_thr, True, max_det)]
    return b[keep], s[keep], lab[keep]


# ----------------------------------------------------------------------------- CenterNet


def human_centernet(dets: np.ndarray, size: int, min_conf: float, iou_thr: float,
                    max_det: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """``centernet.ts`` ``process`` on the graph's ``(100, 6)`` detections ``[x1, y1, x2, y2, score, class]``
    (input pixels): class-agnostic NMS of the 100 (score threshold ``min_conf``), boxes / input size."""
    d = dets[dets[:, 4] > min_conf]
    keep = greedy_nms(d[:, :4], d[:, 4], d[:, 5], iou_thr, True, max_det)
    return d[keep, :4] / size, d[keep, 4], d[keep, 5].astype(np.int64)
