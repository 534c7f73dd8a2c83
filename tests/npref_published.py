"""Plain-NumPy re-derivations of the published evaluation codes, written from the facts of issue 17.

One function per published path, a per-sample loop that follows the order of
operations the facts describe (resize, normalise, threshold, ground truth,
cIoU, summaries). None of it calls ``avloc``; the tests compare every reported
metric of the registered protocols with these.

Facts (docs/protocols.md gives repository, file, line and commit):

* LVS ``test.py``: ``cv2.resize``; ``pred = 1 - minmax(-h)`` (a constant map is
  left as it is by ``normalize_img``); ``thr = sort(pred)[n // 2]``;
  ``pred[pred > thr] = 1; pred[pred < 1] = 0``; then ``>= 0.5``.
* SSL-Alignment ``validate`` / ``validate_lvs``: binarisation ``> thr``;
  adaptive ``K = count_nonzero(gt)`` (``n // 2`` if 0), ``thr = sort[n - K]``;
  success / AUC / IIoU with ``>=``; IIoU groups = name without its last ``_``
  field; a group's min of NaN is NaN.
* SLAVC: bicubic align_corners; scores = (h + 1/tau) / (2/tau); relative
  prediction normalize_img(scores) >= its median; confidence = float32 mean of
  the top quarter; AP / F1 rules of ``EvaluatorFull``.
* DSOL: cv2, ``> f x max``; xywh far edges ``int(224 x + 224 w)``; NSA
  ``<= 0.2`` per silent class, mean per frame, then over frames.
* Qian: 256 grid, cv2, ReLU, ``> 0.1 x max``, frames with exactly 2 classes.
* Flickr XML: ``int(224 * v / 256)``, no clipping, NumPy slices (negative
  bounds count from the far edge); VGG-SS: clipped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

S = 224


# ---------------------------------------------------------------- shared pieces
def minmax(v: np.ndarray) -> np.ndarray:
    lo, hi = v.min(), v.max()
    if hi - lo != 0:
        v = (v - lo) / (hi - lo)
    return v


def cv2_resize(m: np.ndarray, size: int = S) -> np.ndarray:
    return cv2.resize(m, dsize=(size, size), interpolation=cv2.INTER_LINEAR)


def interp(m: np.ndarray, mode: str) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(m))[None, None]
    return F.interpolate(t, size=(S, S), mode=mode, align_corners=True)[0, 0].numpy()


def ciou(binary: np.ndarray, gt: np.ndarray) -> float:
    b = binary.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.sum(b * gt) / (np.sum(gt) + np.sum(b * (gt == 0))))


def auc_curve(scores: Sequence[float]) -> tuple[list[float], float]:
    c = np.array(scores, dtype=np.float64)
    curve = [float(np.sum(c >= 0.05 * i) / len(c)) for i in range(21)]
    return curve, float(np.trapezoid(curve, [0.05 * i for i in range(21)]))


def summary(scores: Sequence[float]) -> dict[str, float]:
    c = np.array(scores, dtype=np.float64)
    _curve, auc = auc_curve(scores)
    return {"success": float(np.sum(c >= 0.5) / len(c)), "auc": auc, "mean_ciou": float(np.mean(c))}


def flickr_gt(pixel_boxes: Sequence[Sequence[int]]) -> np.ndarray:
    """Flickr XML boxes (256-frame ints): int(224 * v / 256), no clipping, summed, / 2, capped at 1."""
    g = np.zeros((S, S))
    for b in pixel_boxes:
        x1, y1, x2, y2 = (int(S * int(v) / 256) for v in b)
        t = np.zeros((S, S))
        t[y1:y2, x1:x2] = 1
        g += t
    g = g / 2
    g[g > 1] = 1
    return g


def vggss_gt(boxes: np.ndarray) -> np.ndarray:
    g = np.zeros((S, S))
    for b in boxes:
        x1, y1, x2, y2 = (np.clip(np.asarray(b, dtype=np.float64), 0, 1) * S).astype(int)
        t = np.zeros((S, S))
        t[y1:y2, x1:x2] = 1
        g += t
    g[g > 0] = 1
    return g


def xywh_gt(norm_boxes: Sequence[Sequence[float]], size: int = S) -> np.ndarray:
    """DSOL / Qian: box = array(normbox) * size; rows int(y): int(y + h), columns int(x): int(x + w)."""
    g = np.zeros((size, size))
    for nb in norm_boxes:
        b = np.array(nb, dtype=np.float64) * size
        g[int(b[1]) : int(b[1] + b[3]), int(b[0]) : int(b[0] + b[2])] = 1
    return g


# ---------------------------------------------------------------- LVS test.py
def lvs_test_py(maps: Sequence[np.ndarray], gts: Sequence[np.ndarray]) -> dict[str, float]:
    out = []
    for m, g in zip(maps, gts, strict=True):
        pred = 1 - minmax(-cv2_resize(m))
        thr = np.sort(pred.flatten())[S * S // 2]
        pred[pred > thr] = 1
        pred[pred < 1] = 0
        out.append(ciou(pred >= 0.5, g))
    return summary(out)


# ---------------------------------------------------------------- SSL-Alignment
def vgg_filename(name: str) -> str:
    """SSL-Alignment names a VGG-SS file ``{11-char id}_{start s}`` as ``{id}_{start * 1000}_{(start + 10) * 1000}``."""
    return "_".join([name[:11], str(int(name[12:]) * 1000), str((int(name[12:]) + 10) * 1000)])


def group_key(name: str) -> str:
    return "_".join(name.split("/")[-1].replace(".jpg", "").split("_")[:-1])


def _iiou(per: dict[str, list[float]], t: float) -> float:
    mins = []
    for v in per.values():
        a = np.array(v, dtype=np.float64)
        a[a >= t] = 1
        a[a < t] = 0
        mins.append(np.min(a))
    return float(np.mean(mins))


def sslalign(
    maps: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    groups: Sequence[str],
    adaptive: bool,
    path: str,
    resize: str,
) -> dict[str, float]:
    """``path``: 'validate' (plain min-max) or 'lvs' (1 - minmax(-h)); ``resize``: 'cv2' or 'bilinear'."""
    scores: list[float] = []
    per: dict[str, list[float]] = {}
    for m, g, key in zip(maps, gts, groups, strict=True):
        h = cv2_resize(m) if resize == "cv2" else interp(m, "bilinear")
        pred = minmax(h) if path == "validate" else 1 - minmax(-h)
        n = pred.size
        if adaptive:
            k = int((g != 0).sum())
            if k == 0:
                k = n // 2
            thr = np.sort(pred.flatten())[n - k]
        else:
            thr = np.sort(pred.flatten())[n // 2]
        c = ciou(pred > thr, g)
        scores.append(c)
        per.setdefault(key, []).append(c)
    out = summary(scores)
    out["iiou"] = _iiou(per, 0.5)
    out["iauc"] = float(np.trapezoid([_iiou(per, 0.05 * i) for i in range(21)], [0.05 * i for i in range(21)]))
    return out


# ---------------------------------------------------------------- SLAVC
def slavc_pr(visible: Sequence[bool], cious: Sequence[float], conf: Sequence[Any], t: Any) -> tuple[float, float]:
    tp = fp = fn = 0
    for v, c, s in zip(visible, cious, conf, strict=True):
        if not v:
            if s >= t:
                fp += 1
        elif s >= t:
            if c >= 0.5:
                tp += 1
            else:
                fp += 1
        else:
            fn += 1
    p = 1.0 if tp + fp == 0 else tp / (tp + fp)
    r = 1.0 if tp + fn == 0 else tp / (tp + fn)
    return p, r


def slavc_ap_f1(visible: Sequence[bool], cious: Sequence[float], conf: Sequence[Any]) -> dict[str, float]:
    n = len(conf)
    skip = max(1, n // 200)
    ps, rs = [], []
    for t in np.sort(np.array(conf))[:-1][::-skip]:
        p, r = slavc_pr(visible, cious, conf, t)
        ps.append(p)
        rs.append(r)
    pmax = [max(ps[i:]) for i in range(len(ps))]
    ap = 0.0
    for i in range(len(pmax) - 1):
        ap += pmax[i] * (rs[i + 1] - rs[i])
    f1 = []
    for t in sorted(conf)[:: max(1, n // 10)]:
        p, r = slavc_pr(visible, cious, conf, t)
        f1.append(2 * r * p / (r + p) if r + p > 0 else 0.0)
    return {"ap": ap, "max_f1": max(f1)}


def slavc_sounding(audible: bool, flickr_pixel_boxes: Sequence[Sequence[int]] | None = None) -> bool:
    """SLAVC's audible / silent split: the pair decides (a frame of the annotation is audible, a non-sounding
    pair of the csv is not), whatever boxes the frame has, even none. Flickr XML boxes whose left bound
    ``int(224 * x / 256)`` is negative are dropped (``bb[bb[:, 0] >= 0]``): a frame with boxes, all dropped,
    is not sounding. (VGG-SS boxes are clipped to [0, 1] first, so none is dropped.)"""
    if not audible:
        return False
    if flickr_pixel_boxes is None or not len(flickr_pixel_boxes):
        return True
    return any(int(S * int(b[0]) / 256) >= 0 for b in flickr_pixel_boxes)


def slavc(
    maps: Sequence[np.ndarray], gts: Sequence[np.ndarray], visible: Sequence[bool], tau: float = 0.03
) -> dict[str, float]:
    cious, conf = [], []
    for m, g in zip(maps, gts, strict=True):
        h = interp(m, "bicubic")
        scores = (h - (-1.0 / tau)) / (1.0 / tau - (-1.0 / tau))
        n = scores.size
        conf.append(np.sort(scores.flatten())[-n // 4 :].mean())
        pred = minmax(scores)
        thr = np.sort(pred.flatten())[int(n * 0.5)]
        cious.append(ciou(pred >= thr, g))
    out = slavc_ap_f1(visible, cious, conf)
    vis = [c for c, v in zip(cious, visible, strict=True) if v]
    out.update(summary(vis))  # success, auc, mean_ciou over the sounding frames (SLAVC cal_auc)
    out["precision"], _ = slavc_pr(visible, cious, conf, -1000.0)
    out["conf"] = conf  # type: ignore[assignment]
    return out


# ---------------------------------------------------------------- DSOL / Qian
def dsol_frames(
    class_maps: Sequence[np.ndarray],
    frames: Sequence[dict[int, list[list[float]]]],
    fraction: float,
    skip_empty: bool,
) -> dict[str, float]:
    """``frames[i]``: class -> normalised xywh boxes. eval.py (0.5, no skip) / eval_duet.py (0.2, skip)."""
    cious, nsas = [], []
    for cm, boxes in zip(class_maps, frames, strict=True):
        if skip_empty and not boxes:
            continue
        nosound = [float(np.sum(cv2_resize(cm[c]) <= 0.2) / (S * S)) for c in range(len(cm)) if c not in boxes]
        nsas.append(np.mean(nosound))
        per = []
        for c, bx in boxes.items():
            h = cv2_resize(cm[c])
            per.append(ciou(h > fraction * np.max(h), xywh_gt(bx)))
        cious.append(np.mean(per) if per else float("nan"))
    c = np.array(cious)
    curve, auc = auc_curve(cious)
    return {"auc": auc, "success@0.3": curve[6], "success": curve[10], "nsa": float(np.mean(nsas)),
            "mean_ciou": float(np.mean(c)), "mean_ciou_defined": float(np.mean(c[~np.isnan(c)]))}


def dsol_tools(maps: Sequence[np.ndarray], frames: Sequence[list[list[float]]]) -> dict[str, float]:
    """tools.py cal_ciou: single map, frames without boxes skipped, > 0.1 x max, xywh far edges."""
    cious = []
    for m, bx in zip(maps, frames, strict=True):
        if not bx:
            continue
        h = cv2_resize(m)
        cious.append(ciou(h > 0.1 * np.max(h), xywh_gt(bx)))
    return summary(cious)


def qian_class_eval(class_maps: Sequence[np.ndarray], frames: Sequence[dict[int, list[list[float]]]]) -> dict[str, float]:
    cious = []
    for cm, label in zip(class_maps, frames, strict=True):
        if len(label) != 2:
            continue
        total = 0.0
        for c, bx in label.items():
            g = xywh_gt(bx, 256)
            h = cv2_resize(cm[c], 256)
            h[h < 0] = 0
            total += ciou(h > 0.1 * np.max(h), g)
        cious.append(total / len(label))
    return summary(cious)
