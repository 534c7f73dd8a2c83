"""Metrics vs plain-NumPy references written here in the style of the public evaluation code."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from avloc.metrics import (
    AVSOLMetrics,
    CIoU,
    ExtendedAP,
    OnscreenAccuracy,
    adaptive_ciou,
    ciou,
    class_average,
    extended_ap,
    iiou,
    no_sound_area,
    onscreen_accuracy,
    ops,
    pixel_average_precision,
    success_summary,
)
from avloc.metrics.localization import ciou_from_counts
from npref import ref_gt

S = 224


# ----------------------------------------------------------------- references (public-code style)
def ref_cal_ciou(infer: np.ndarray, gtmap: np.ndarray, thres: float) -> float:
    infer_map = np.zeros((S, S))
    infer_map[infer >= thres] = 1
    return float(np.sum(infer_map * gtmap) / (np.sum(gtmap) + np.sum(infer_map * (gtmap == 0))))


def ref_auc(cious: list[float]) -> float:
    results = [np.sum(np.array(cious) >= 0.05 * i) / len(cious) for i in range(21)]
    return float(np.trapezoid(results, [0.05 * i for i in range(21)]))


def random_boxes(rng: np.random.Generator, k: int) -> np.ndarray:
    a = rng.uniform(0, 1, (k, 2, 2))
    lo, hi = a.min(1), a.max(1)
    return np.concatenate([lo, hi], 1)[:, [0, 1, 2, 3]]


# ----------------------------------------------------------------- resizing
@pytest.mark.parametrize("shape", [(7, 7), (14, 14), (5, 9), (224, 224), (300, 200)])
def test_resize_matches_cv2_and_torch_exactly(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    m = (rng.standard_normal((6, *shape)) * 3).astype(np.float32)
    ours_cv = ops.resize_maps(m, (S, S), "cv2")
    ref_cv = np.stack([cv2.resize(x, (S, S), interpolation=cv2.INTER_LINEAR) for x in m])
    assert np.array_equal(ours_cv, ref_cv)
    ref_ac = F.interpolate(torch.from_numpy(m)[:, None], size=(S, S), mode="bilinear", align_corners=True)[:, 0].numpy()
    # the NumPy re-implementation (used when torch is not imported) and the torch call give the same bits
    ours_ac = ops.resize_maps(m, (S, S), "align_corners", backend="numpy")
    assert np.array_equal(ours_ac, ref_ac) and ours_ac.flags["C_CONTIGUOUS"]
    assert np.array_equal(ops.resize_maps(m, (S, S), "align_corners", backend="torch"), ref_ac)
    assert np.array_equal(ops.resize_maps(m, (S, S), "align_corners"), ref_ac)  # auto (torch is imported here)
    one_by_one = np.stack([ops.resize_maps(x, (S, S), "align_corners", backend="numpy")[0] for x in m])
    assert np.array_equal(one_by_one, ref_ac)  # batching does not change a map
    # the two conventions really differ
    assert not np.allclose(ours_cv, ours_ac) or shape == (S, S)


def test_minmax_and_lvs_normalisation() -> None:
    m = np.array([[[1.0, 3.0], [2.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]], dtype=np.float32)
    out = ops.normalize_maps(m, "minmax")
    assert np.allclose(out[0], [[0, 0.5], [0.25, 1]])
    assert np.array_equal(out[1], m[1])  # constant map untouched, as normalize_img
    assert np.allclose(ops.normalize_maps(m, "lvs")[0], out[0])
    assert np.allclose(ops.normalize_maps(m, "fixed", (-1.0, 9.0))[0], (m[0] + 1) / 10)


# ----------------------------------------------------------------- cIoU, hand-worked
def test_ciou_known_box_pair() -> None:
    # GT: a 100x100 box; prediction: the left half of the frame, which contains the box
    gt = np.zeros((1, S, S))
    gt[0, 50:150, 10:110] = 1
    pred = np.zeros((1, S, S), dtype=bool)
    pred[0, :, :112] = True
    expected = 10000 / (10000 + (S * 112 - 10000))
    assert ciou(pred, gt)[0] == pytest.approx(expected)
    counts = gt.astype(np.int32)
    assert ciou_from_counts(pred, counts)[0] == ciou(pred, gt)[0]


def test_consensus_ground_truth_values() -> None:
    # two annotators agree on [0, 0.5]^2, a third box elsewhere -> 1 where two overlap, 0.5 alone
    boxes = np.array([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5], [0.75, 0.75, 1, 1]])
    gt = ops.consensus_gt([boxes], S, 2.0)[0]
    assert gt[10, 10] == 1.0 and gt[200, 200] == 0.5 and gt[150, 10] == 0.0
    assert np.array_equal(gt, ref_gt(boxes, consensus=True))
    # per-annotator union: one annotator's two overlapping boxes count once
    one_annotator = ops.consensus_gt([boxes[:2]], S, 2.0, annotators=[np.array([0, 0])])[0]
    assert one_annotator[10, 10] == 0.5


def test_success_summary_hand_worked() -> None:
    out = success_summary(np.array([0.22, 0.62]))
    assert out["success"] == 0.5 and out["mean_ciou"] == pytest.approx(0.42)
    # curve: 1 for t <= 0.2, 0.5 for t in [0.25, 0.6], 0 above; trapezoid on the 0.05 grid
    assert out["auc"] == pytest.approx(ref_auc([0.22, 0.62]))
    assert out["auc"] == pytest.approx(0.2 + 0.0375 + 0.175 + 0.0125)
    assert success_summary(np.array([0.5]))["success"] == 1.0
    assert success_summary(np.array([0.5]), op=">")["success"] == 0.0


@pytest.mark.parametrize("consensus", [False, True])
def test_ciou_vs_reference_loop(consensus: bool) -> None:
    rng = np.random.default_rng(1)
    n = 40
    maps = ops.normalize_maps(ops.resize_maps(rng.standard_normal((n, 7, 7)).astype(np.float32), (S, S), "cv2"), "minmax")
    boxes = [random_boxes(rng, int(rng.integers(1, 4))) for _ in range(n)]
    counts = ops.box_count_maps(boxes, S)
    pred = ops.binarize_median(maps, strict=False)
    ours = ciou_from_counts(pred, counts, 2.0 if consensus else None)
    ref = []
    for i in range(n):
        thr = np.sort(maps[i].flatten())[S * S // 2]
        ref.append(ref_cal_ciou(maps[i], ref_gt(boxes[i], consensus), thr))
    assert np.array_equal(ours, np.array(ref))  # bit for bit
    gt = ops.consensus_gt(boxes, S, 2.0) if consensus else ops.union_gt(boxes, S)
    assert np.array_equal(ciou(pred, gt), ours)
    s = success_summary(ours)
    assert s["auc"] == ref_auc(ref) and s["success"] == np.mean(np.array(ref) >= 0.5)


def test_adaptive_ciou_and_iiou() -> None:
    gt = np.zeros((2, S, S))
    gt[:, 20:60, 30:90] = 1
    maps = np.zeros((2, S, S), dtype=np.float32)
    maps[0, 20:60, 30:90] = 1.0 + np.arange(2400, dtype=np.float32).reshape(40, 60)  # distinct on the box
    maps[1, 100:140, 100:160] = 1.0  # elsewhere
    scores = adaptive_ciou(maps, gt)
    # SSL-Alignment keeps the pixels strictly above the K-th largest: K - 1 of them
    assert scores[0] == 2399 / 2400 and scores[1] == 0.0
    assert iiou(np.array([0.9, 0.1, 0.8]), np.array(["a", "a", "b"])) == 0.5


# ----------------------------------------------------------------- extended (SLAVC)
def ref_ap(conf: np.ndarray, correct: np.ndarray, n_pos: int) -> float:
    order = np.argsort(-conf)
    tp = fp = 0
    ap = prev_r = 0.0
    for j in order:
        tp += int(correct[j])
        fp += int(not correct[j])
        p, r = tp / (tp + fp), tp / n_pos
        ap += p * (r - prev_r)
        prev_r = r
    return ap


def test_extended_ap_hand_and_reference() -> None:
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    scores = np.array([0.7, 0.0, 0.2, 0.9])
    audible = np.array([True, False, True, True])
    out = extended_ap(conf, scores, audible)
    # ranking: TP, FP(silent), FP(wrong), TP -> AP = 1*(1/3) + 0.5*(1/3)
    assert out["ap"] == pytest.approx(1 / 3 + 0.5 / 3)
    assert out["max_f1"] == pytest.approx(max(2 * 1 * (1 / 3) / (1 + 1 / 3), 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)))
    rng = np.random.default_rng(2)
    c, s, a = rng.random(50), rng.random(50), rng.random(50) > 0.3
    assert extended_ap(c, s, a)["ap"] == pytest.approx(ref_ap(c, a & (s >= 0.5), int(a.sum())))


# ----------------------------------------------------------------- class-aware, AVSOL, on-screen
def test_class_average_eq9_and_nsa() -> None:
    scores = class_average(np.array([1.0, 0.0, 0.5]), np.array([0, 0, 1]), 3)
    assert scores[0] == 0.5 and scores[1] == 0.5 and np.isnan(scores[2])
    m = np.zeros((1, 4, 4), dtype=np.float32)
    m[0, 0, :] = 0.9
    assert no_sound_area(m, 0.2)[0] == 0.75


def ref_hmbox(h: np.ndarray, g: np.ndarray) -> float:
    taus = np.unique(h)[::-1]
    ap, prev = 0.0, 0.0
    for t in taus:
        sel = h >= t
        p = (sel & g).sum() / sel.sum()
        r = (sel & g).sum() / g.sum()
        ap += p * (r - prev)
        prev = r
    return float(ap)


def test_avsol_metrics_vs_reference() -> None:
    rng = np.random.default_rng(3)
    maps = rng.random((5, 16, 16)).astype(np.float32).round(2)  # rounding makes ties
    gt = np.zeros((5, 16, 16), dtype=bool)
    gt[:, 3:9, 4:12] = True
    ours = pixel_average_precision(maps, gt)
    assert np.allclose(ours, [ref_hmbox(maps[i], gt[i]) for i in range(5)])
    perfect = gt.astype(np.float32)
    assert np.allclose(pixel_average_precision(perfect, gt), 1.0)
    acc = AVSOLMetrics()
    acc.update(perfect[:2] * 0.8, gt[:2], [0, 0], ["a", "b"])
    acc.update(np.full((2, 16, 16), 0.2, dtype=np.float32), gt[:2], [1, 3], ["c", "d"])
    res = acc.compute()
    assert res["hmboxauc"] == pytest.approx(1.0) and res["pibr"] == 1.0
    assert res["pnsr"] == pytest.approx(0.2 / 0.8) and res["pnsr_visible"] == pytest.approx(0.25)
    assert np.isnan(res["pnsr_audible"]) and res["n_noise"] == 1


def test_onscreen_accuracy_hand_worked() -> None:
    y = np.array([True, True, False, False])
    d = np.array([0.1, 0.3, 0.5, 0.2])  # medians 0.2 / 0.35 -> m = 0.275
    s = np.array([0.1, 0.5, 0.1, 0.3])
    out = onscreen_accuracy(y, d, s)
    assert out["m_on"] == pytest.approx(0.275)
    assert out["acc_m_on"] == 0.5  # predictions T F F T
    assert out["acc_d_on"] == 0.5  # predictions F T F T
    assert out["acc_or"] == 0.75  # T T F T
    acc = OnscreenAccuracy()
    acc.update(y[:2], ["a", "b"], d[:2], s[:2])
    acc.update(y[2:], ["c", "d"], d[2:], s[2:])
    assert acc.compute() == out
    # a method's onscreen() confidences, thresholded at 0.5: predictions T F T F -> 2 of 4 right
    conf = np.array([0.9, 0.2, 0.5, 0.1])
    assert onscreen_accuracy(y, confidences=conf)["acc_confidence"] == 0.5
    acc_c = OnscreenAccuracy()
    acc_c.update(y[:3], ["a", "b", "c"], confidences=conf[:3])
    acc_c.update(y[3:], ["d"], confidences=conf[3:])
    res = acc_c.compute()
    assert res["acc_confidence"] == 0.5 and "acc_d_on" not in res
    assert OnscreenAccuracy().merge(acc_c.state_dict()).compute() == res


# ----------------------------------------------------------------- accumulators: merge, order
@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=40), st.integers(1, 39), st.randoms(use_true_random=False))
def test_merge_and_order_invariance(scores: list[float], cut: int, rnd: object) -> None:
    ids = [f"s{i}" for i in range(len(scores))]
    whole = CIoU()
    whole.update(np.array(scores), ids)
    a, b = CIoU(), CIoU()
    cut = min(cut, len(scores) - 1)
    a.update(np.array(scores[:cut]), ids[:cut])
    b.update(np.array(scores[cut:]), ids[cut:])
    merged = CIoU().merge(a.state_dict()).merge(b)
    assert merged.compute() == whole.compute()
    perm = list(range(len(scores)))
    rnd.shuffle(perm)  # type: ignore[attr-defined]
    shuffled = CIoU()
    shuffled.update(np.array(scores)[perm], [ids[i] for i in perm])
    got, want = shuffled.compute(), whole.compute()
    assert got.pop("curve") == want.pop("curve")
    assert got == pytest.approx(want)  # the mean may differ in the last bit
    e1, e2 = ExtendedAP(), ExtendedAP()
    conf = np.array(scores)
    e1.update(conf, conf, conf > 0.3, ids)
    e2.update(conf[perm], conf[perm], conf[perm] > 0.3, [ids[i] for i in perm])
    if (conf > 0.3).any():
        assert e1.compute() == pytest.approx(e2.compute())


def test_avc_accuracy_and_roc_auc() -> None:
    """AVC accuracy by hand; ROC AUC = Mann-Whitney U / (P N) from the ranks (ties averaged), written for the test."""
    from avloc.metrics.avc import avc_accuracy, roc_auc

    pos, neg = np.array([0.9, 0.6, 0.5, 0.2]), np.array([0.5, 0.1, 0.7])
    # positives > 0.5: 0.9, 0.6 (2 of 4); negatives <= 0.5: 0.5, 0.1 (2 of 3)
    assert avc_accuracy(pos, neg, 0.5) == 4 / 7
    # pairs won by the positive: 0.9 beats 3, 0.6 beats 2, 0.5 beats 1 and ties 1, 0.2 beats 1 -> (7 + 0.5) / 12
    assert roc_auc(pos, neg) == 7.5 / 12
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.integers(0, 6, int(rng.integers(1, 30))).astype(np.float32)  # many ties
        n = rng.integers(0, 6, int(rng.integers(1, 30))).astype(np.float32)
        allv = np.concatenate([p, n])
        order = np.argsort(allv, kind="stable")
        ranks = np.empty(len(allv))
        ranks[order] = np.arange(1, len(allv) + 1)
        for v in np.unique(allv):  # average ranks of ties
            ranks[allv == v] = ranks[allv == v].mean()
        u = ranks[: len(p)].sum() - len(p) * (len(p) + 1) / 2
        assert roc_auc(p, n) == pytest.approx(u / (len(p) * len(n)), abs=1e-12)
        assert roc_auc(p, n) == float((p[:, None] > n[None, :]).mean() + 0.5 * (p[:, None] == n[None, :]).mean())
    assert np.isnan(roc_auc(np.array([]), neg))


def test_box_iou_number_and_torch_paths_agree() -> None:
    """The one box_iou: two boxes of numbers -> float; (N, 4), (M, 4) tensors -> the pairwise (N, M) tensor."""
    from avloc.errors import DataError
    from avloc.metrics.ops import box_iou

    rng = np.random.default_rng(3)
    lo = rng.random((6, 2))
    boxes = np.concatenate([lo, lo + 0.05 + rng.random((6, 2)) * 0.5], 1)
    pair = box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes[:4]))
    assert isinstance(pair, torch.Tensor) and pair.shape == (6, 4) and pair.dtype == torch.float64
    ref = np.array([[box_iou(a, b) for b in boxes[:4]] for a in boxes])
    np.testing.assert_allclose(pair.numpy(), ref, rtol=1e-12, atol=0)
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    with pytest.raises(DataError):
        box_iou(torch.zeros(4), torch.zeros(1, 4))
    np.testing.assert_allclose(box_iou(boxes, boxes[:4]), ref, rtol=1e-12, atol=0)  # the NumPy pairwise path
    assert box_iou(np.zeros((1, 4)), np.zeros((2, 4))).tolist() == [[0.0, 0.0]]  # empty union: 0, not NaN


def test_box_iou_xywh_rows_and_nms_paths_agree() -> None:
    """xywh rows convert to the one IoU (the faces' rule); NMS on NumPy and torch keeps the same boxes,
    equal to a plain per-box loop written here."""
    from avloc.metrics.ops import box_iou, nms, xywh_to_xyxy

    a = np.array([[0.0, 0.0, 2.0, 2.0, 0.9], [5.0, 5.0, 1.0, 1.0, 0.8]])  # x, y, w, h, score
    b = np.array([[1.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    np.testing.assert_allclose(box_iou(xywh_to_xyxy(a), xywh_to_xyxy(b)), [[1 / 3, 1.0], [0.0, 0.0]])
    rng = np.random.default_rng(5)
    lo = rng.random((40, 2))
    boxes = np.concatenate([lo, lo + 0.05 + rng.random((40, 2)) * 0.4], 1)
    scores = np.round(rng.random(40), 1)  # ties: the lower index first
    for thr in (0.0, 0.3, 0.7):
        want: list[int] = []
        for i in sorted(range(40), key=lambda j: (-scores[j], j)):
            if all(box_iou(boxes[i], boxes[k]) <= thr for k in want):
                want.append(i)
        got = nms(boxes, scores, thr)
        assert isinstance(got, np.ndarray) and got.tolist() == want
        assert nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).tolist() == want
        assert nms(boxes, scores, thr, max_keep=2).tolist() == want[:2]


def test_pointing_edges_and_peak_places() -> None:
    """One pointing rule on normalised boxes: closed edges by default, half-open when asked; peak = top cell centre."""
    from avloc.errors import DataError
    from avloc.metrics.ops import in_boxes, peak_places, peak_points

    m = np.zeros((2, 4, 4), dtype=np.float32)
    m[0, 1, 2] = 1.0  # centre (0.625, 0.375)
    m[1, 3, 0] = 1.0  # centre (0.125, 0.875)
    np.testing.assert_array_equal(peak_points(m), [[0.625, 0.375], [0.125, 0.875]])
    edge = [[0.0, 0.0, 0.625, 0.5]]  # the first peak on the right edge
    assert in_boxes((0.625, 0.375), edge) and not in_boxes((0.625, 0.375), edge, edges="half-open")
    assert not in_boxes((0.5, 0.5), np.zeros((0, 4)))
    snd = [np.array(edge), np.zeros((0, 4))]
    sil = [np.zeros((0, 4)), np.array([[0.0, 0.75, 0.25, 1.0]])]
    assert peak_places(m, snd, sil) == {"sounding": 0.5, "silent": 0.5, "background": 0.0}
    assert peak_places(m, snd, sil, edges="half-open") == {"sounding": 0.0, "silent": 0.5, "background": 0.5}
    with pytest.raises(DataError):
        in_boxes((0, 0), edge, edges="open")  # type: ignore[arg-type]
