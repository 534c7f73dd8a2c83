"""The ``realclips`` protocol, the real-footage annotation loader and the on-screen scores (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from avloc.data.realclips import load_realclips
from avloc.engine.evaluate import evaluate_predictions
from avloc.errors import DataError
from avloc.metrics.realworld import balanced_accuracy, expected_calibration_error, onscreen_summary
from avloc.metrics.targets import Target

S = 224


def _np_lvs_prep(m: np.ndarray) -> np.ndarray:
    """LVS test.py: cv2 bilinear resize to 224, then min-max (independent re-derivation)."""
    r = cv2.resize(m.astype(np.float32), (S, S), interpolation=cv2.INTER_LINEAR)
    return (r - r.min()) / (r.max() - r.min())


def _np_gt(boxes: list[list[float]]) -> np.ndarray:
    g = np.zeros((S, S))
    for b in boxes:
        x1, y1, x2, y2 = (np.array(b) * S).astype(int)
        g[y1:y2, x1:x2] = 1
    return g


def _np_ciou(pred: np.ndarray, gt: np.ndarray) -> float:
    return float((pred * gt).sum() / (gt.sum() + (pred * (gt == 0)).sum()))


def _np_scores(m: np.ndarray, boxes: list[list[float]]) -> tuple[float, float, bool]:
    p = _np_lvs_prep(m)
    gt = _np_gt(boxes)
    median = p > np.sort(p.ravel())[S * S // 2]
    k = int(gt.sum())
    adaptive = p > np.sort(p.ravel())[S * S - k]  # SSL-Alignment: strictly above the K-th largest
    peak = np.unravel_index(np.argmax(p), p.shape)
    return _np_ciou(median, gt), _np_ciou(adaptive, gt), bool(gt[peak] > 0)


def test_realclips_protocol_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    boxes = [[[0.1, 0.2, 0.5, 0.6]], [[0.5, 0.0, 1.0, 0.5], [0.0, 0.7, 0.3, 1.0]], [[0.25, 0.25, 0.75, 0.75]]]
    maps = [rng.random((36, 64)).astype(np.float32) for _ in boxes]
    maps[2] = np.zeros((36, 64), np.float32)
    maps[2][10:26, 16:48] = np.linspace(0.5, 1.0, 32, dtype=np.float32)  # a sparse map: exact zeros outside
    targets = [Target(id=f"c@{i}", boxes=np.array(b), image_id="c") for i, b in enumerate(boxes)]
    targets.append(Target(id="c@9", boxes=np.array([[0.1, 0.1, 0.2, 0.2]]), scored=False, image_id="c"))
    preds = {t.id: m for t, m in zip(targets, [*maps, maps[0]], strict=True)}
    out = evaluate_predictions(preds, targets, "realclips")
    ref = [_np_scores(m, b) for m, b in zip(maps, boxes, strict=True)]
    assert out["n"] == 3  # the unscored frame is skipped
    assert out["median_ciou"] == pytest.approx(np.mean([r[0] for r in ref]), abs=1e-6)
    assert out["adaptive_ciou"] == pytest.approx(np.mean([r[1] for r in ref]), abs=1e-6)
    assert out["median_success"] == pytest.approx(np.mean([r[0] >= 0.5 for r in ref]))
    assert out["pointing"] == pytest.approx(np.mean([r[2] for r in ref]))
    # the sparse map: median binarisation keeps exactly its support, cIoU = |support| / |box|
    assert ref[2][0] > 0.5 and out["per_clip"]["c"]["n"] == 3


def test_onscreen_scores_hand_worked() -> None:
    y = np.array([1, 1, 1, 0, 0], bool)
    p = np.array([0.9, 0.8, 0.3, 0.2, 0.6])
    # on-screen recall 2/3, off-screen recall 1/2
    assert balanced_accuracy(p >= 0.5, y) == pytest.approx((2 / 3 + 1 / 2) / 2)
    # bins: 0.2 -> |0-0.2|, 0.3 -> |1-0.3|, 0.6 -> |0-0.6|, 0.8 -> |1-0.8|, 0.9 -> |1-0.9|; each 1/5
    assert expected_calibration_error(p, y) == pytest.approx((0.2 + 0.7 + 0.6 + 0.2 + 0.1) / 5)
    s = onscreen_summary(p, y)
    assert s["onscreen_accuracy"] == pytest.approx(3 / 5) and s["n_offscreen"] == 2
    assert balanced_accuracy(np.ones(5, bool), y) == 0.5  # "always on"
    with pytest.raises(DataError):
        balanced_accuracy(np.ones(3, bool), np.ones(3, bool))


def test_evaluate_predictions_needs_onscreen_for_labelled() -> None:
    t = [Target(id="a", boxes=np.array([[0, 0, 0.5, 0.5]]), onscreen=True),
         Target(id="b", boxes=np.zeros((0, 4)), onscreen=False)]
    preds = {"a": np.ones((8, 8), np.float32), "b": np.ones((8, 8), np.float32)}
    with pytest.raises(DataError, match="no on-screen prediction"):
        evaluate_predictions(preds, t, "realclips", onscreen={"a": 0.9})
    out = evaluate_predictions(preds, t, "realclips", onscreen={"a": 0.9, "b": 0.1})
    assert out["onscreen_balanced_accuracy"] == 1.0


def _write_set(root: Path, frames: list[dict]) -> Path:
    (root / "clip.mp4").write_bytes(b"")
    (root / "annotations.json").write_text(json.dumps({"clips": [{"file": "clip.mp4", "frames": frames}]}))
    return root


def test_realclips_loader_validates(tmp_path: Path) -> None:
    ok = _write_set(tmp_path, [{"t": 1.0, "boxes": [[0.1, 0.1, 0.4, 0.5]], "onscreen": True, "scored": True}])
    clips = load_realclips(ok)
    assert clips[0].frame_id(clips[0].frames[0]) == "clip@1.000"
    assert clips[0].targets()[0].boxes.shape == (1, 4)
    for bad, msg in [
        ({"t": -1}, "'t' must be"),
        ({"t": 1, "boxes": [["0", 0, 1, 1]]}, "list of 4 numbers"),
        ({"t": 1, "boxes": [[0.5, 0.1, 0.4, 0.5]]}, "x1 < x2"),
        ({"t": 1, "boxes": [[0.1, 0.1, 0.4, float("nan")]]}, "normalised"),
        ({"t": 1, "onscreen": "yes"}, "'onscreen' must be"),
    ]:
        _write_set(tmp_path, [bad])
        with pytest.raises(DataError, match=msg):
            load_realclips(tmp_path)
    (tmp_path / "annotations.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_realclips(tmp_path)


def test_shipped_dev_set_loads(shared_data: Path) -> None:
    root = shared_data / "realclips_dev"
    if not root.is_dir():
        pytest.skip("realclips_dev not in the shared data")
    clips = load_realclips(root)
    assert len(clips) == 13
    targets = [t for c in clips for t in c.targets()]
    assert sum(t.scored and len(t.boxes) > 0 for t in targets) == 31
    assert sum(t.onscreen is not None for t in targets) == 39
