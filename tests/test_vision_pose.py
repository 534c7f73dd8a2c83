"""MediaPipe ports (``avloc.vision.segmentation``, ``avloc.vision.pose``) against the original TFLite runtime,
MediaPipe's post-processing against sequential re-derivations of its calculators, and hand-worked geometry.

The comparisons with the original need ``ai_edge_litert`` and the ``mediapipe==0.10.21`` wheel: the path in
``$AVLOC_MEDIAPIPE_WHEEL``, a ``mediapipe/`` folder of the shared data, or ``pip download`` (PyPI); they skip
with the reason otherwise. Real frames come from the shared data (``realclips_dev``); each comparison also
runs on a generated image, so a machine without the data still checks the ports.

Tolerance of the raw outputs: both sides compute in float32 with the same (float16-exact) weights; only
the summation order differs (XNNPACK's kernels vs ATen's), ~1e-7 relative per op. Over ~100 layers, and
through the mask branch of the landmark model (weights up to 85), the largest deviation measured is
~4e-4 of an output's range (mask logits), the mean ~1e-6. Asserted: max |torch - tflite| <= 2e-3 and
mean <= 2e-5 of max(|tflite|, 1).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import math
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from avloc.errors import CheckpointError, ConfigError, DataError
from avloc.vision import _tflite as T
from avloc.vision import pose as P
from avloc.vision import segmentation as S
from conftest import REPO, data_dir

WHEEL_ENV = "AVLOC_MEDIAPIPE_WHEEL"
MAX_REL, MEAN_REL = 2e-3, 2e-5
#: (clip, time in s) of the real frames compared with the original runtime
FRAMES = (("speech_tedx_talk.mp4", 3.92), ("singer_guitar_home.mp4", 5.0), ("baby_crying.mp4", 5.005))


# ----------------------------------------------------------------------------- fixtures
@functools.cache
def _converter() -> ModuleType:
    """``tools/convert_mediapipe.py`` as a module."""
    spec = importlib.util.spec_from_file_location("convert_mediapipe", REPO / "tools" / "convert_mediapipe.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses resolve their module
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mediapipe wheel (module doc)."""
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert not installed (pip install 'avloc[tagger]')")
    conv = _converter()
    if os.environ.get(WHEEL_ENV):
        return Path(os.environ[WHEEL_ENV])
    d = data_dir()
    found = sorted((d / "mediapipe").glob(f"mediapipe-{conv.VERSION}-*.whl")) if d is not None else []
    if found:
        return found[0]
    try:
        return Path(conv.fetch_wheel(tmp_path_factory.mktemp("wheel")))
    except (subprocess.CalledProcessError, CheckpointError, OSError) as e:
        pytest.skip(f"no mediapipe {conv.VERSION} wheel ({e}): set {WHEEL_ENV} or allow pip to reach PyPI")


@pytest.fixture(scope="module")
def tflite(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """zoo file name -> the original .tflite (the selfie models with the logits exposed as a second output)."""
    conv = _converter()
    out = tmp_path_factory.mktemp("tflite")
    paths = {}
    with zipfile.ZipFile(wheel) as z:
        for src in conv.SOURCES:
            p = out / Path(src.wheel_path).name
            p.write_bytes(z.read(src.wheel_path))
            paths[src.out_name] = _expose_custom_outputs(p, conv.TRANSPOSE_OP)
    return paths


def _expose_custom_outputs(path: Path, custom: str) -> Path:
    """The model with the outputs of its ``custom`` ops appended to the graph outputs (or unchanged)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))
    sg = model.subgraphs[0]
    codes = model.operatorCodes
    extra = [int(op.outputs[0]) for op in sg.operators
             if codes[op.opcodeIndex].customCode is not None and codes[op.opcodeIndex].customCode.decode() == custom]
    if not extra:
        return path
    sg.outputs = [*list(sg.outputs), *extra]
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    dst = path.with_name(path.stem + "_logits.tflite")
    dst.write_bytes(b.Output())
    return dst


def _run_tflite(path: Path, x: torch.Tensor) -> list[np.ndarray]:
    """The interpreter (default CPU path, XNNPACK) on each image of x (B, 3, h, w) -> outputs, batch stacked."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    outs: list[list[np.ndarray]] = []
    for im in x.permute(0, 2, 3, 1).numpy():
        it.set_tensor(it.get_input_details()[0]["index"], im[None].astype(np.float32))
        it.invoke()
        outs.append([it.get_tensor(o["index"])[0] for o in it.get_output_details()])
    return [np.stack(o) for o in zip(*outs)]


def _assert_close(ours: torch.Tensor, ref: np.ndarray, what: str) -> None:
    o = ours.detach().cpu().numpy()
    if o.ndim == 4:  # NCHW -> NHWC
        o = o.transpose(0, 2, 3, 1)
    o = o.reshape(ref.shape)
    scale = max(float(np.abs(ref).max()), 1.0)
    err = np.abs(o - ref)
    assert err.max() <= MAX_REL * scale and err.mean() <= MEAN_REL * scale, (
        f"{what}: max |diff| {err.max():.3g}, mean {err.mean():.3g}, output range {scale:.3g}"
    )


def _frame(name: str, t: float) -> torch.Tensor:
    from avloc.io.media import iter_frames

    d = data_dir()
    if d is None or not (d / "realclips_dev" / name).is_file():
        pytest.skip(f"realclips_dev/{name} not found: set AVLOC_DATA or place the shared data at ../shared/data")
    fr = next(iter(iter_frames(d / "realclips_dev" / name, fps=5.0, start=max(0.0, t - 0.1), end=t + 0.1)))
    return torch.from_numpy(fr.image).permute(2, 0, 1).float() / 255.0  # (3, H, W)


def _synthetic(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth colour gradients, a bright ellipse and noise: a data-free image that drives every layer."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    blob = (((xx - 0.5) / 0.2) ** 2 + ((yy - 0.4) / 0.3) ** 2 < 1).float()
    img = torch.stack((xx, yy, 0.5 * (xx + yy))) * 0.6 + 0.3 * blob + 0.1 * torch.rand(3, h, w, generator=g)
    return img.clamp(0, 1)


@pytest.fixture(scope="module")
def pose() -> P.PoseEstimator:
    return P.load_pose()


@pytest.fixture(scope="module")
def segmenter() -> S.PersonSegmenter:
    return S.load_segmenter()


# ----------------------------------------------------------------------------- ports vs the original runtime
def _segmenter_check(tflite: dict[str, Path], images: list[torch.Tensor], variant: str) -> None:
    seg = S.load_segmenter(config=S.SegmenterConfig(variant=variant))
    x = seg.preprocess(images)
    ref = _run_tflite(tflite[S.VARIANTS[variant][0]], x)  # probability, logits
    logits_net = copy.deepcopy(seg.net)
    logits_net.segment.act = T.Act.NONE
    with torch.no_grad():
        _assert_close(seg.net(x), ref[0], f"selfie {variant} probability")
        _assert_close(logits_net(x), ref[1], f"selfie {variant} logits")


def _pose_check(tflite: dict[str, Path], pose: P.PoseEstimator, images: list[torch.Tensor]) -> None:
    x, _ = pose.detector_input(images)
    ref = _run_tflite(tflite[P.DETECTOR_FILE], x)
    with torch.no_grad():
        for ours, r, what in zip(pose.detector(x), ref, ("boxes", "scores")):
            _assert_close(ours, r, f"detector {what}")
        rois = pose.rois(images, pose.detect(images))
    # people where detected, else a centred square: a real-image crop either way
    rois = [r if len(r) else torch.tensor([[im.shape[2] / 2, im.shape[1] / 2, min(im.shape[1:]), min(im.shape[1:]),
                                            0.0]]) for r, im in zip(rois, images)]  # fmt: skip
    crops = pose.landmark_input(images, rois)
    ref = _run_tflite(tflite[P.LANDMARK_FILE], crops)
    with torch.no_grad():
        for ours, r, what in zip(pose.landmarker(crops), ref, ("landmarks", "flag", "mask", "heatmap", "world")):
            _assert_close(ours, r, f"landmark {what}")


@pytest.mark.parametrize("variant", sorted(S.VARIANTS))
def test_segmenter_matches_tflite_synthetic(tflite: dict[str, Path], variant: str) -> None:
    _segmenter_check(tflite, [_synthetic(200, 300), _synthetic(256, 256, seed=1)], variant)


def test_pose_matches_tflite_synthetic(tflite: dict[str, Path], pose: P.PoseEstimator) -> None:
    _pose_check(tflite, pose, [_synthetic(240, 320), _synthetic(300, 200, seed=1)])


@pytest.mark.parametrize("clip,t", FRAMES)
def test_ports_match_tflite_real_frames(tflite: dict[str, Path], pose: P.PoseEstimator, clip: str, t: float) -> None:
    img = _frame(clip, t)
    for variant in S.VARIANTS:
        _segmenter_check(tflite, [img], variant)
    _pose_check(tflite, pose, [img])


@pytest.mark.slow
def test_converter_reproduces_the_zoo(wheel: Path, tmp_path: Path) -> None:
    """Converting the wheel again gives the shipped tensors bit for bit, their metadata and the licence file
    (the safetensors header's key order is not fixed, so files are compared by content)."""
    from safetensors import safe_open

    _converter().main(["--wheel", str(wheel), "--out-dir", str(tmp_path)])
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert len(names) == 5 and "vision/LICENSE-mediapipe.txt" in names
    for name in names:
        if not name.endswith(".safetensors"):
            assert (tmp_path / name).read_bytes() == T.zoo_file(name).read_bytes(), name
            continue
        with safe_open(str(tmp_path / name), "pt") as new, safe_open(str(T.zoo_file(name)), "pt") as old:
            assert new.metadata() == old.metadata() and sorted(new.keys()) == sorted(old.keys()), name
            for k in new.keys():
                assert torch.equal(new.get_tensor(k), old.get_tensor(k)), (name, k)


# ----------------------------------------------------------------------------- MediaPipe's calculators
def test_ssd_anchors_hand_worked() -> None:
    a = P.ssd_anchors(P.DetectorConfig())
    assert a.shape == (28 * 28 * 2 + 14 * 14 * 2 + 7 * 7 * 6, 2) == (2254, 2)
    # stride 8: cell (row 0, col 0) twice, then col 1; centres (x + 0.5) / 28
    assert torch.allclose(a[:3], torch.tensor([[0.5 / 28, 0.5 / 28]] * 2 + [[1.5 / 28, 0.5 / 28]]))
    assert torch.allclose(a[2 * 28], torch.tensor([0.5 / 28, 1.5 / 28]))  # second row
    s32 = a[28 * 28 * 2 + 14 * 14 * 2 :]  # the three stride-32 layers share a 7 x 7 grid: 6 per cell
    assert torch.allclose(s32[:6], torch.tensor([[0.5 / 7, 0.5 / 7]]).expand(6, 2))
    assert torch.allclose(s32[-1], torch.tensor([6.5 / 7, 6.5 / 7]))


def test_decode_detections_hand_worked() -> None:
    cfg = P.DetectorConfig()
    anchors = torch.tensor([[0.5, 0.25], [0.1, 0.1]])
    raw = torch.zeros(1, 2, 12)
    raw[0, 0, :4] = torch.tensor([22.4, -11.2, 44.8, 22.4])  # centre +0.1, -0.05; size 0.2 x 0.1
    raw[0, 0, 4:6] = torch.tensor([-22.4, 44.8])  # keypoint 0 at anchor + (-0.1, 0.2)
    raw[0, 1, 2] = -1.0  # negative width: dropped
    scores = torch.tensor([[[0.0], [500.0]]])  # sigmoid(0) = 0.5 (kept: >=); 500 is clipped to 100
    boxes, kps, sc, keep = P.decode_detections(raw, scores, anchors, cfg)
    assert torch.allclose(boxes[0, 0], torch.tensor([0.5, 0.15, 0.7, 0.25]), atol=1e-6)
    assert torch.allclose(kps[0, 0, 0], torch.tensor([0.4, 0.45]), atol=1e-6)
    assert torch.allclose(kps[0, 0, 1], anchors[0])
    assert sc[0, 0] == 0.5 and sc[0, 1] == torch.sigmoid(torch.tensor(100.0))
    assert keep.tolist() == [[True, False]]


def _mediapipe_weighted_nms(boxes: np.ndarray, kps: np.ndarray, scores: np.ndarray, thr: float) -> list[Any]:
    """NonMaxSuppressionCalculator::WeightedNonMaxSuppression, as written in C++ (sequential)."""

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        iw = min(a[2], b[2]) - max(a[0], b[0])
        ih = min(a[3], b[3]) - max(a[1], b[1])
        if iw < 0 or ih < 0:
            return 0.0
        inter = iw * ih
        norm = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / norm if norm > 0 else 0.0

    remained = sorted(range(len(scores)), key=lambda i: -scores[i])
    out = []
    while remained:
        top = remained[0]
        cand = [i for i in remained if iou(boxes[i], boxes[top]) > thr]
        rest = [i for i in remained if iou(boxes[i], boxes[top]) <= thr]
        box, kp = boxes[top], kps[top]
        if cand:
            w = np.array([scores[i] for i in cand])
            box = (w[:, None] * boxes[cand]).sum(0) / w.sum()
            kp = (w[:, None, None] * kps[cand]).sum(0) / w.sum()
        out.append((box, kp, scores[top]))
        if len(rest) == len(remained):
            break
        remained = rest
    return out


def test_weighted_nms_hand_worked() -> None:
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [2.0, 2.0, 3.0, 3.0]]])
    kps = torch.tensor([[[[0.0, 0.0]], [[1.0, 1.0]], [[5.0, 5.0]]]])
    scores = torch.tensor([[0.6, 0.9, 0.7]])
    [(b, k, s)] = P.weighted_nms(boxes, kps, scores, torch.ones(1, 3, dtype=torch.bool), 0.3)
    # best (0.9) gathers the first box (IoU 0.9 / 1.1 > 0.3): weights 0.9, 0.6 -> x1 = (0.9 * 0.1) / 1.5
    assert torch.allclose(b, torch.tensor([[0.06, 0.0, 1.06, 1.0], [2.0, 2.0, 3.0, 3.0]]), atol=1e-6)
    assert torch.allclose(k[:, 0], torch.tensor([[0.6, 0.6], [5.0, 5.0]]), atol=1e-6)
    assert torch.allclose(s, torch.tensor([0.9, 0.7]))


def test_weighted_nms_matches_the_sequential_calculator() -> None:
    g = torch.Generator().manual_seed(3)
    B, N = 3, 40
    xy = torch.rand(B, N, 2, generator=g) * 0.8
    boxes = torch.cat((xy, xy + 0.05 + 0.2 * torch.rand(B, N, 2, generator=g)), dim=-1)
    kps = torch.rand(B, N, 4, 2, generator=g)
    scores = torch.rand(B, N, generator=g)
    keep = scores > 0.3
    ours = P.weighted_nms(boxes, kps, scores, keep, 0.3)
    for b in range(B):
        idx = keep[b].nonzero()[:, 0]
        ref = _mediapipe_weighted_nms(boxes[b, idx].double().numpy(), kps[b, idx].double().numpy(),
                                      scores[b, idx].double().numpy(), 0.3)  # fmt: skip
        assert len(ref) == len(ours[b][0]) > 1
        for (rb, rk, rs), ob, ok, os_ in zip(ref, *ours[b]):
            assert np.allclose(ob.numpy(), rb, atol=1e-5) and np.allclose(ok.numpy(), rk, atol=1e-5)
            assert math.isclose(float(os_), rs, rel_tol=1e-6)
    capped = P.weighted_nms(boxes, kps, scores, keep, 0.3, max_out=2)
    assert [len(c[2]) for c in capped] == [2, 2, 2] and torch.equal(capped[0][0], ours[0][0][:2])


def test_detection_rois_hand_worked() -> None:
    cfg = P.LandmarkConfig()
    # 200 x 100 image; hips at (0.5, 0.8), the body-circle point 40 px straight above -> upright, side 2*40*1.25
    kp = torch.tensor([[[0.5, 0.8], [0.5, 0.4], [0.0, 0.0], [0.0, 0.0]]])
    roi = P.detection_rois(kp, (100, 200), cfg)[0]
    assert torch.allclose(roi, torch.tensor([100.0, 80.0, 100.0, 100.0, 0.0]), atol=1e-5)
    # the point to the right of the hips: the person lies with the head right; the crop turns by +90 degrees
    kp = torch.tensor([[[0.5, 0.5], [0.7, 0.5], [0.0, 0.0], [0.0, 0.0]]])
    roi = P.detection_rois(kp, (100, 200), cfg)[0]
    assert torch.allclose(roi, torch.tensor([100.0, 50.0, 100.0, 100.0, math.pi / 2]), atol=1e-5)
    kp = torch.tensor([[[0.5, 0.5], [0.5, 0.9], [0.0, 0.0], [0.0, 0.0]]])  # upside down: angle -pi
    assert math.isclose(float(P.detection_rois(kp, (100, 200), cfg)[0, 4]), -math.pi, abs_tol=1e-6)


def _mediapipe_refine(xy: np.ndarray, heat: np.ndarray, kernel: int, min_conf: float) -> np.ndarray:
    """RefineLandmarksFromHeatmapCalculator, as written in C++ (its unchecked row bound included)."""
    L, h, w = heat.shape
    out = xy.copy()
    off = (kernel - 1) // 2
    for i in range(L):
        col, row = int(xy[i, 0] * w), int(xy[i, 1] * h)  # C++ float -> int truncates
        if col < 0 or col >= w or row < 0 or col >= h:
            continue
        s = wc = wr = mx = 0.0
        for r in range(max(0, row - off), min(h, row + off + 1)):
            for c in range(max(0, col - off), min(w, col + off + 1)):
                conf = 1 / (1 + math.exp(-heat[i, r, c]))
                s, mx, wc, wr = s + conf, max(mx, conf), wc + c * conf, wr + r * conf
        if mx >= min_conf and s > 0:
            out[i] = (wc / w / s, wr / h / s)
    return out


def test_heatmap_refinement_matches_the_calculator() -> None:
    cfg = P.LandmarkConfig()
    g = torch.Generator().manual_seed(0)
    heat = torch.randn(2, 10, 16, 16, generator=g) * 3
    xy = torch.rand(2, 10, 2, generator=g) * 1.3 - 0.15  # some outside the crop, some rows just below it
    xy[0, 0] = torch.tensor([-0.01, 0.5])  # truncates to column 0: refined, as in C++
    xy[0, 1] = torch.tensor([0.5, 1.05])  # row 16: not checked, window rows 13-15 used
    heat[0, 1, 13:, 5:12] = 8.0
    ours = P.refine_with_heatmap(xy, heat, cfg)
    for n in range(2):
        ref = _mediapipe_refine(xy[n].double().numpy(), heat[n].double().numpy(), 7, 0.5)
        assert np.allclose(ours[n].numpy(), ref, atol=1e-6)
    assert not torch.equal(ours[0, 1], xy[0, 1])


# ----------------------------------------------------------------------------- geometry and TFLite ops
def test_warp_rois_hand_worked() -> None:
    img = torch.rand(3, 6, 8)
    full = torch.tensor([[4.0, 3.0, 8.0, 6.0, 0.0]])  # the whole image: tensor pixel u samples x = u * 8 / w
    assert torch.allclose(T.warp_rois(img, full, (6, 8), "zero")[0], img, atol=1e-6)
    half = T.warp_rois(img, full, (3, 4), "zero")[0]  # corners on corners: u -> 2u (OpenCV, not half-pixel)
    assert torch.allclose(half, img[:, ::2, ::2], atol=1e-6)
    sq = torch.rand(3, 5, 5)
    turned = T.warp_rois(sq, torch.tensor([[2.5, 2.5, 5.0, 5.0, math.pi / 2]]), (5, 5), "zero")[0]
    # tensor (v, u) samples image (x, y) = c + R(90 deg) (u - 2.5, v - 2.5) = (5 - v, u): a counter-clockwise
    # quarter turn, one row off (corners on corners); row 0 samples x = 5, beyond the image (zero border)
    assert torch.allclose(turned[:, 1:], torch.rot90(sq, 1, (1, 2))[:, :-1], atol=1e-5)
    assert turned[:, 0].abs().max() == 0
    out = T.warp_rois(img, torch.tensor([[-10.0, 3.0, 4.0, 4.0, 0.0]]), (2, 2), "replicate")[0]
    assert torch.allclose(out, img[:, 1:5:2, :1].expand(3, 2, 2), atol=1e-6)  # left border replicated
    assert T.warp_rois(img, torch.tensor([[-10.0, 3.0, 4.0, 4.0, 0.0]]), (2, 2), "zero").abs().max() == 0


def test_unwarp_inverts_warp_and_projection_agrees() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 40, 60, generator=g)
    # a quarter turn at the crop's own scale samples pixels exactly, both ways
    roi = torch.tensor([[30.0, 20.0, 24.0, 24.0, math.pi / 2]])
    back = T.unwarp_rois(T.warp_rois(img, roi, (24, 24), "zero")[:, 0], roi, (40, 60))[0]
    assert torch.allclose(back[9:31, 19:41], img[0, 9:31, 19:41], atol=1e-4)
    assert back[:, :17].abs().max() < 1e-5 and back[:, 43:].abs().max() < 1e-5  # zero outside the roi
    # any angle and scale on a smooth image: two bilinear resamplings
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(60.0), indexing="ij")
    smooth = (torch.sin(xx / 6) * torch.cos(yy / 5))[None]
    roi = torch.tensor([[30.0, 20.0, 24.0, 24.0, 0.4]])
    back = T.unwarp_rois(T.warp_rois(smooth, roi, (64, 64), "zero")[:, 0], roi, (40, 60))[0]
    assert torch.allclose(back[14:26, 24:36], smooth[0, 14:26, 24:36], atol=0.02)
    # sampling only each roi's bounding box equals sampling every image pixel (the bilinear reach included)
    crops = torch.rand(3, 16, 16, generator=g)
    rois = torch.tensor([[30.0, 20.0, 24.0, 18.0, 0.4], [2.0, 35.0, 30.0, 30.0, -2.0], [50.0, 5.0, 7.0, 7.0, 1.0]])
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(60.0), indexing="ij")
    full = []
    for crop, (cx, cy, rw, rh, a) in zip(crops, rois.tolist()):
        u = ((math.cos(a) * (xx - cx) + math.sin(a) * (yy - cy)) / rw + 0.5) * 16
        v = ((-math.sin(a) * (xx - cx) + math.cos(a) * (yy - cy)) / rh + 0.5) * 16
        grid = torch.stack(((2 * u + 1) / 16 - 1, (2 * v + 1) / 16 - 1), dim=-1)[None]
        full.append(torch.nn.functional.grid_sample(crop[None, None], grid, align_corners=False)[0, 0])
    assert torch.allclose(T.unwarp_rois(crops, rois, (40, 60)), torch.stack(full), atol=1e-6)
    # a crop pixel (u, v) projects to the image point the warp sampled for it
    uv = torch.tensor([[[10.0, 50.0]]]) / 64
    p = P.project_to_image(uv, roi)[0, 0]
    cos, sin = math.cos(0.4), math.sin(0.4)
    lx, ly = (10 / 64 - 0.5) * 24, (50 / 64 - 0.5) * 24
    assert torch.allclose(p, torch.tensor([30 + cos * lx - sin * ly, 20 + sin * lx + cos * ly]), atol=1e-5)


def test_letterbox_roi_hand_worked() -> None:
    roi, pads = T.letterbox_roi(100, 200, 224, 224)  # landscape: square of 200, bars above and below
    assert roi.tolist() == [100.0, 50.0, 200.0, 200.0, 0.0] and pads == (0.0, 0.25)
    roi, pads = T.letterbox_roi(300, 150, 256, 256)  # portrait: bars left and right
    assert roi.tolist() == [75.0, 150.0, 300.0, 300.0, 0.0] and pads == (0.25, 0.0)


def test_transpose_conv_bias_matches_a_scatter_reference() -> None:
    g = torch.Generator().manual_seed(0)
    for k, s in ((2, 2), (3, 2)):
        layer = T.TransposeConvBias(4, 3, k, s)
        torch.nn.init.normal_(layer.weight, generator=g)
        torch.nn.init.normal_(layer.bias, generator=g)
        x = torch.randn(1, 4, 5, 6, generator=g)
        w = layer.weight.detach().numpy().transpose(1, 2, 3, 0)  # TFLite (out, kh, kw, in)
        pad = max((5 - 1) * s + k - 5 * s, 0) // 2
        ref = np.zeros((3, 5 * s, 6 * s))
        xn = x[0].numpy()
        for iy, ix, ky, kx in np.ndindex(5, 6, k, k):
            oy, ox = iy * s - pad + ky, ix * s - pad + kx
            if 0 <= oy < 5 * s and 0 <= ox < 6 * s:
                ref[:, oy, ox] += w[:, ky, kx, :] @ xn[:, iy, ix]
        ref += layer.bias.detach().numpy()[:, None, None]
        with torch.no_grad():
            assert np.allclose(layer(x)[0].numpy(), ref, atol=1e-4), (k, s)


def test_depth_to_space_is_tflite_order() -> None:
    x = torch.arange(2 * 8 * 2 * 3, dtype=torch.float32).reshape(2, 8, 2, 3)  # (B, bs*bs*C, H, W), C = 2
    nhwc = x.permute(0, 2, 3, 1).numpy()
    ref = np.zeros((2, 4, 6, 2), dtype=np.float32)
    for b, h, w, i, j, c in np.ndindex(2, 2, 3, 2, 2, 2):  # TF: out[h*bs+i, w*bs+j, c] = in[h, w, (i*bs+j)*C+c]
        ref[b, h * 2 + i, w * 2 + j, c] = nhwc[b, h, w, (i * 2 + j) * 2 + c]
    assert np.array_equal(T.depth_to_space(x, 2).permute(0, 2, 3, 1).numpy(), ref)


def test_tf_same_padding() -> None:
    assert T.same_pads(256, 3, 2) == (0, 1) and T.same_pads(9, 3, 2) == (1, 1) and T.same_pads(8, 5, 1) == (2, 2)
    conv = T.TFConv2d(1, 1, 3, 2, padding="same")
    torch.nn.init.ones_(conv.weight)
    x = torch.ones(1, 1, 4, 4)
    with torch.no_grad():  # pads only after: the first output sees a full 3x3, the last a 2x2
        assert conv(x)[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]


def _person(kp: dict[int, tuple[float, float]], hw: tuple[int, int] = (200, 200), presence: float = 1.0) -> P.Person:
    pts = torch.zeros(33, 2)
    for i, xy in kp.items():
        pts[i] = torch.tensor(xy)
    z4 = torch.zeros(4)
    return P.Person(pts, torch.ones(33), torch.full((33,), presence), 1.0, z4, z4, 1.0, torch.zeros(5), hw)


FACE = {0: (50.0, 60.0), 2: (40.0, 50.0), 5: (60.0, 50.0), 7: (30.0, 55.0), 8: (70.0, 55.0), 9: (45.0, 70.0),
        10: (55.0, 70.0)}  # fmt: skip


def test_head_box_hand_worked() -> None:
    # eye mid (50, 50), mouth mid (50, 70): u = max(20, 0.5 * 40, 1.1 * 20) = 22; up = (0, -1); centre (50, 50)
    box = P.head_box(_person(FACE))
    assert box is not None and torch.allclose(box, torch.tensor([50 - 30.8, 50 - 41.8, 50 + 30.8, 50 + 41.8]))
    # the same face lying on its side (turned 90 degrees clockwise about (50, 50)): width and height swap
    lying = {i: (50 - (y - 50), 50 + (x - 50)) for i, (x, y) in FACE.items()}
    box = P.head_box(_person(lying))
    assert box is not None and torch.allclose(box, torch.tensor([50 - 41.8, 50 - 30.8, 50 + 41.8, 50 + 30.8]))
    # clipped to a 60 x 80 image; the face out of the image gives no head
    assert torch.allclose(P.head_box(_person(FACE, hw=(60, 80))), torch.tensor([19.2, 8.2, 80.0, 60.0]))
    assert P.head_box(_person(FACE, presence=0.2)) is None
    with pytest.raises(ConfigError):
        P.HeadConfig(half_width=0)


def test_person_extent_hand_worked() -> None:
    mask = torch.zeros(10, 12)
    mask[2:6, 3:8] = 0.9
    mask[8, 10] = 0.7  # outside the box below
    assert S.person_extent(mask, [0, 0, 9, 7]).tolist() == [3, 2, 8, 6]
    assert S.person_extent(mask, [4.6, 0, 12, 7]).tolist() == [5, 2, 8, 6]  # pixel 4's centre 4.5 < 4.6
    assert S.person_extent(mask, [0, 0, 12, 10]).tolist() == [3, 2, 11, 9]
    assert S.person_extent(mask, [0, 0, 12, 10], threshold=0.95) is None
    assert S.person_extent(mask, [9, 0, 12, 3]) is None
    with pytest.raises(DataError):
        S.person_extent(mask, [5, 0, 2, 3])


# ----------------------------------------------------------------------------- the pipelines
def test_segmenter_batch_of_two_sizes_equals_singles(segmenter: S.PersonSegmenter) -> None:
    a, b = _synthetic(120, 200), _synthetic(90, 70, seed=1)
    both = segmenter.segment([a, b])
    assert [tuple(m.shape) for m in both] == [(120, 200), (90, 70)]
    for m, im in zip(both, (a, b)):
        single = segmenter.segment(im[None])
        assert single.shape == (1, *im.shape[1:]) and torch.allclose(m, single[0], atol=1e-5)


def test_pose_batch_of_two_sizes_equals_singles(pose: P.PoseEstimator) -> None:
    a, b = _frame(*FRAMES[0]), _frame(*FRAMES[1])
    both = pose([a, b])
    for people, im in zip(both, (a, b)):
        single = pose(im[None])[0]
        assert len(people) == len(single) >= 1
        for p, q in zip(people, single):
            assert torch.allclose(p.keypoints, q.keypoints, atol=1e-3) and abs(p.score - q.score) < 1e-4
            assert p.mask is not None and q.mask is not None and p.mask.shape == im.shape[1:]
            assert torch.allclose(p.mask, q.mask, atol=1e-4)


def _iou(a: list[float], b: list[float]) -> float:
    iw, ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0])), max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_tedx_speaker_head_box(pose: P.PoseEstimator, record_property: Any) -> None:
    d = data_dir()
    if d is None or not (d / "realclips_dev" / "annotations.json").is_file():
        pytest.skip("realclips_dev/annotations.json not found: set AVLOC_DATA or place the shared data at ../shared/data")
    clip = next(c for c in json.loads((d / "realclips_dev" / "annotations.json").read_text())["clips"]
                if c["file"] == "speech_tedx_talk.mp4")  # fmt: skip
    ious = []
    for fa in clip["frames"]:
        img = _frame(clip["file"], fa["t"])
        H, W = img.shape[1:]
        (person,) = pose(img[None])[0]  # one man on stage
        box = P.head_box(person)
        assert box is not None
        gt = [v * s for v, s in zip(fa["boxes"][0], (W, H, W, H))]
        ious.append(_iou(box.tolist(), gt))
    record_property("tedx_head_iou", [round(v, 3) for v in ious])
    assert min(ious) >= 0.5, f"TEDx head box IoU per annotated frame: {ious}"


def test_segmenter_covers_the_singer(segmenter: S.PersonSegmenter, pose: P.PoseEstimator) -> None:
    img = _frame(*FRAMES[1])
    mask = segmenter.segment(img[None])[0]
    (person,) = pose(img[None])[0]
    head = P.head_box(person)
    assert head is not None
    x1, y1, x2, y2 = (int(v) for v in head.tolist())
    assert float(mask[y1:y2, x1:x2].mean()) > 0.5 and float(mask[:, :40].mean()) < 0.2  # her head vs the wall
    ext = S.person_extent(mask, person.box)
    assert ext is not None and _iou(ext.tolist(), person.box.tolist()) > 0.3


@pytest.mark.cuda
def test_pose_and_segmenter_on_cuda_equal_cpu(pose: P.PoseEstimator, segmenter: S.PersonSegmenter,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    img = _synthetic(240, 320)
    gpu_seg, gpu = S.load_segmenter("cuda"), P.load_pose("cuda")
    assert len(gpu([img.cuda()])[0]) == len(pose([img])[0])  # default CUDA settings (TF32 convolutions)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 for the value comparison
    assert torch.allclose(gpu_seg.segment(img[None].cuda()).cpu(), segmenter.segment(img[None]), atol=1e-3)
    x, _ = pose.detector_input([img])
    with torch.no_grad():
        for a, b in zip(gpu.detector(x.cuda()), pose.detector(x)):
            assert torch.allclose(a.cpu(), b, atol=MAX_REL * max(float(b.abs().max()), 1.0))


# ----------------------------------------------------------------------------- errors, configs, licence
def test_zoo_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found") as e:
        S.load_segmenter(path=tmp_path / "missing.safetensors")
    assert "\n" not in str(e.value)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(T.zoo_file(P.DETECTOR_FILE).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable") as e:
        P.load_pose(detector_path=bad)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="does not fit"):  # the detector's file for the landmark model
        P.load_pose(landmark_path=T.zoo_file(P.DETECTOR_FILE))


def test_bad_configs_and_images(segmenter: S.PersonSegmenter) -> None:
    for make in (lambda: S.SegmenterConfig(variant="portrait"), lambda: P.DetectorConfig(min_score=1.5),
                 lambda: P.DetectorConfig(strides=(16, 8)), lambda: P.LandmarkConfig(heatmap_kernel=4),
                 lambda: P.PoseConfig(max_people=0)):  # fmt: skip
        with pytest.raises(ConfigError):
            make()
    with pytest.raises(ConfigError, match="anchors"):
        P.PoseEstimator(P.PoseConfig(detector=P.DetectorConfig(strides=(8, 16, 32))))
    for bad in (torch.rand(3, 10, 10), torch.rand(1, 4, 10, 10), torch.rand(1, 3, 10, 10) * 255, []):
        with pytest.raises(DataError):
            segmenter.segment(bad)


def test_licence_and_weights_ship_as_package_data() -> None:
    """Shipped in the wheel, and kept out of the method checkpoints that ``avloc.methods.zoo`` lists."""
    from avloc.methods.zoo import list_zoo

    assert not any("mediapipe" in name or "pose" in name or "selfie" in name for name in list_zoo())
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["avloc"]
    shipped = {p.relative_to(REPO / "src" / "avloc").as_posix() for g in globs for p in (REPO / "src" / "avloc").glob(g)}
    files = [S.VARIANTS[v][0] for v in S.VARIANTS] + [P.DETECTOR_FILE, P.LANDMARK_FILE]
    text = T.zoo_file("vision/LICENSE-mediapipe.txt").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "mediapipe==0.10.21" in text
    from safetensors import safe_open

    for name in [*files, "vision/LICENSE-mediapipe.txt"]:
        assert T.zoo_file(name).is_file() and f"zoo/{name}" in shipped, name  # setuptools globs as pathlib does
    for name in files:
        with safe_open(str(T.zoo_file(name)), "pt") as f:
            source = f.metadata()["source"]
        assert f"- {name}: from {source}" in text and "sha256:" in source
