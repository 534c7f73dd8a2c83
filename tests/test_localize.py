"""``avloc localize``: end to end on generated clips, the JSON schema, outputs, error paths, odd inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avloc.cli.main import main
from avloc.data.synthetic import DemoClip, DemoClipConfig, make_demo_clip
from avloc.formats.jsonschema import validate
from avloc.formats.localize import read_document
from avloc.inference.check import score_records
from avloc.io.media import probe
from clips import write_clip

SCHEMA = Path(__file__).resolve().parents[1] / "src" / "avloc" / "formats" / "localize_schema.json"

def check_schema(doc: dict[str, Any]) -> None:
    errs = validate(doc, json.loads(SCHEMA.read_text()))
    assert not errs, errs[:10]


def _clip(path: Path, seconds: float = 6.0, width: int = 160, height: int = 120, seed: int = 0) -> DemoClip:
    """The demo clip written at ``path``, and its ground truth (the pulsing disc makes the sound)."""
    write_clip(path, seconds=seconds, fps=10, size=(width, height), seed=seed)
    return make_demo_clip(DemoClipConfig(seconds=seconds, fps=10, width=width, height=height, seed=seed))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DemoClip, int]:
    d = tmp_path_factory.mktemp("loc")
    clip = _clip(d / "demo.mp4", seconds=8.0, width=192, height=144)
    rc = main(["localize", "--model", "avsync-objectness", str(d / "demo.mp4"), "--out", str(d / "out"), "--save-heatmaps", "--quiet"])
    return d, clip, rc


def test_end_to_end_finds_the_sounding_object(demo_run) -> None:
    d, clip, rc = demo_run
    assert rc == 0
    doc = json.loads((d / "out" / "demo.avloc.json").read_text())
    s = score_records(read_document(d / "out" / "demo.avloc.json").frames, clip.cfg.fps, clip.sounding_boxes,
                      clip.silent_boxes)
    assert s.frames == 40
    assert s.peak_in_sounding >= 0.6 and s.peak_in_silent <= 0.1, s
    assert s.mean_iou > 0.2, s
    # boxes: in source pixels, the top box overlaps the sounding object most of the time
    assert all(0 <= b["x1"] < b["x2"] <= 192 and 0 <= b["y1"] < b["y2"] <= 144 for f in doc["frames"] for b in f["boxes"])


def test_json_schema_and_heatmaps(demo_run) -> None:
    d, _, _ = demo_run
    doc = json.loads((d / "out" / "demo.avloc.json").read_text())
    check_schema(doc)
    assert doc["model"]["name"] == "avsync-objectness" and doc["config"]["window_seconds"] == 1.0
    assert [f["time"] for f in doc["frames"]] == pytest.approx(np.arange(40) / 5.0)
    with np.load(d / "out" / "demo.heatmaps.npz") as z:
        times, maps = z["times"], z["maps"]
    assert maps.shape == (40, doc["heatmap_size"]["height"], doc["heatmap_size"]["width"]) == (40, 48, 64)  # 4:3 frame
    assert times == pytest.approx([f["time"] for f in doc["frames"]])
    assert np.isfinite(maps).all() and maps.std() > 0
    # the validator is not vacuous
    bad = json.loads(json.dumps(doc))
    bad["frames"][0]["boxes"] = [{"x1": 1}]
    del bad["summary"]
    bad["frames"][1]["onscreen_confidence"] = 1.5
    errs = validate(bad, json.loads(SCHEMA.read_text()))
    assert any("summary" in e for e in errs) and any("'y1'" in e for e in errs)
    assert any("1.5 is greater than the maximum of 1" in e for e in errs)


def test_overlay_decodes_with_audio_and_sheet(demo_run) -> None:
    d, _, _ = demo_run
    info = probe(d / "out" / "demo.avloc.mp4")
    assert info.has_audio and info.audio_sample_rate == 16000
    assert (info.width, info.height) == (192, 144) and info.fps == 10.0 and info.frames == 80
    assert abs(info.duration - 8.0) < 0.2
    from PIL import Image

    with Image.open(d / "out" / "demo.sheet.png") as im:
        assert im.width > 320 and im.height > 100


def test_existing_outputs_need_force(demo_run, capsys) -> None:
    d, _, _ = demo_run
    out = d / "out"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    rc = main(["localize", "--model", "avsync-objectness", str(d / "demo.mp4"), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--force" in err[0]
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


def test_no_audio_needs_visual_only(tmp_path, capsys) -> None:
    frames = [np.full((48, 64, 3), 40 + 10 * i, np.uint8) for i in range(10)]
    for f in frames:
        f[10:30, 20:40] = 230  # a bright object
    v = write_clip(tmp_path / "mute.mp4", fps=10, picture=frames, audio=None)
    rc = main(["localize", "--model", "avsync-objectness", str(v), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no audio track" in err[0] and "--visual-only" in err[0]
    assert not (tmp_path / "o" / "mute.avloc.json").exists()
    rc = main(["localize", str(v), "--out", str(tmp_path / "o"), "--visual-only", "--quiet"])
    assert rc == 0
    doc = json.loads((tmp_path / "o" / "mute.avloc.json").read_text())
    check_schema(doc)
    assert all(f["onscreen"] is None and f["onscreen_confidence"] is None and f["audio_rms_db"] is None for f in doc["frames"])
    assert all(f["boxes"] for f in doc["frames"])
    info = probe(tmp_path / "o" / "mute.avloc.mp4")
    assert info.has_video and not info.has_audio


def test_silent_audio_is_offscreen(tmp_path) -> None:
    clip_frames = [np.full((72, 96, 3), 90, np.uint8) for _ in range(20)]
    for i, f in enumerate(clip_frames):
        f[20 + i : 40 + i, 30:50] = 220  # a moving object, no sound
    v = write_clip(tmp_path / "silent.mp4", fps=10, picture=clip_frames, audio=np.zeros(32000, np.float32))
    rc = main(["localize", "--model", "avsync-objectness", str(v), "--out", str(tmp_path / "o"), "--no-overlay", "--quiet"])
    assert rc == 0
    doc = json.loads((tmp_path / "o" / "silent.avloc.json").read_text())
    check_schema(doc)
    assert len(doc["frames"]) == 10
    assert all(f["silent"] and f["onscreen"] is False and f["onscreen_confidence"] == 0.0 and f["boxes"] == [] for f in doc["frames"])
    assert doc["summary"]["onscreen_fraction"] == 0.0 and "video" not in doc["outputs"]
    assert not (tmp_path / "o" / "silent.avloc.mp4").exists()


def test_folder_with_a_corrupt_file(tmp_path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _clip(src / "a.mp4", seconds=2.0, width=96, height=64)
    (src / "b.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    (src / "notes.txt").write_text("ignored: not a video extension")
    rc = main(["localize", "--model", "avsync-objectness", str(src), "--out", str(tmp_path / "o"), "--no-overlay", "--quiet"])
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    # a collection run (issue 20): one error line for b, then the summary naming it again
    assert rc == 2 and sum("b.mp4" in e and "error:" in e for e in err) == 1, err
    assert "2 input(s): 1 done, 0 skipped, 1 failed" in cap.err and any(e.startswith("  failed: ") and "b.mp4" in e for e in err)
    assert (tmp_path / "o" / "a.avloc.json").exists() and (tmp_path / "o" / "a.sheet.png").exists()
    assert not list((tmp_path / "o").glob("b.*")) and not list((tmp_path / "o").glob(".*"))  # no temp files left
    assert json.loads((tmp_path / "o" / "run.json").read_text())["inputs"][1]["status"] == "failed"


def _vfr(path: Path, width: int = 96, height: int = 64) -> Path:
    """H.264 with irregular frame durations (30 ms / 70 ms / 120 ms ...) plus AAC audio."""
    rng = np.random.default_rng(0)
    sr = 16000
    frames, pts, t_ms = [], [], 0
    for i in range(20):
        img = np.full((height, width, 3), 60, np.uint8)
        img[10:30, (i * 3) % (width - 20) : (i * 3) % (width - 20) + 20] = 220
        frames.append(img)
        pts.append(t_ms)
        t_ms += int(rng.choice([30, 70, 120]))
    wav = (0.3 * np.sin(np.arange(round(sr * t_ms / 1000)) * 0.2)).astype(np.float32)
    return write_clip(path, fps=30, picture=frames, audio=wav, sample_rate=sr, pts_ms=pts)


@pytest.mark.parametrize("kind", ["portrait", "tiny", "huge", "vfr"])
def test_odd_inputs(tmp_path, kind: str) -> None:
    sr = 16000
    if kind == "vfr":
        v = _vfr(tmp_path / "vfr.mp4")
    else:
        w, h, n = {"portrait": (120, 200, 10), "tiny": (32, 24, 10), "huge": (3840, 2160, 2)}[kind]
        frames = [np.full((h, w, 3), 50, np.uint8) for _ in range(n)]
        for i, f in enumerate(frames):
            f[h // 4 : h // 2, w // 4 + i : w // 2 + i] = 200
        audio = (0.3 * np.sin(np.arange(sr * n // 10) * 0.1)).astype(np.float32)
        v = write_clip(tmp_path / f"{kind}.mp4", fps=10, picture=frames, audio=audio)
    info = probe(v)
    rc = main(["localize", "--model", "avsync-objectness", str(v), "--out", str(tmp_path / "o"), "--save-heatmaps", "--quiet"])
    assert rc == 0
    doc = json.loads((tmp_path / "o" / f"{v.stem}.avloc.json").read_text())
    check_schema(doc)
    assert len(doc["frames"]) >= 1
    for f in doc["frames"]:
        assert 0 <= f["peak"]["x"] <= info.width and 0 <= f["peak"]["y"] <= info.height
        assert all(b["x2"] <= info.width and b["y2"] <= info.height for b in f["boxes"])
    with np.load(tmp_path / "o" / f"{v.stem}.heatmaps.npz") as z:
        mh, mw = z["maps"].shape[1:]
    assert (mw > mh) == (info.width > info.height)  # each map has the frame's orientation
    ov = probe(tmp_path / "o" / f"{v.stem}.avloc.mp4")
    assert ov.has_audio and max(ov.width, ov.height) <= 1280 and abs(ov.duration - info.duration) < 0.25
    assert abs(ov.width / ov.height - info.width / info.height) < 0.05


def test_median_smoothing_streams_in_order() -> None:
    from avloc.inference.config import LocalizeConfig
    from avloc.inference.postprocess import FrameResult, smooth

    vals = [0.0, 10.0, 0.0, 0.0, 5.0, 5.0, 5.0]
    rs = (FrameResult(i, i / 5, i / 5, np.full((2, 2), v, np.float32), np.zeros((1, 1)), -20.0) for i, v in enumerate(vals))
    out = list(smooth(rs, LocalizeConfig(smoothing="median", median_frames=3)))
    assert [r.index for r in out] == list(range(7))
    assert [float(r.map[0, 0]) for r in out] == [5.0, 0.0, 0.0, 0.0, 5.0, 5.0, 5.0]  # edges use the frames they have


def test_unwarp_crop_covers_the_whole_frame() -> None:
    from avloc.frontends.image import ImageConfig
    from avloc.inference.postprocess import unwarp_map

    m = np.zeros((7, 7), np.float32)
    m[:, 6] = 1.0  # right edge of the model input
    full = unwarp_map(m, (400, 200), (64, 32), ImageConfig(size=224, resize=224, mode="crop"))
    assert full.shape == (32, 64)
    # centre crop of a 2:1 frame spans x in [1/4, 3/4]: outside it is the map minimum
    assert full[:, :15].max() == 0.0 and full[:, 49:].max() == 0.0
    assert full[:, 44:48].min() > 0.5
    sq = unwarp_map(m, (400, 200), (64, 32), ImageConfig(size=224, mode="squash"))
    assert sq[:, -4:].min() > 0.5 and sq[:, :40].max() == 0.0


def test_yamnet_semantic_mode_on_a_dog_clip(shared_data, tmp_path) -> None:
    yam = shared_data / "yamnet" / "yamnet.tflite"
    clips = sorted((shared_data / "videos").glob("demo__single__dog_barking_*.mp4"))
    if not yam.is_file() or not clips:
        pytest.skip("yamnet.tflite or the dog-barking clip is missing from the shared data")
    rc = main(["localize", "--model", "avsync-objectness", str(clips[0]), "--out", str(tmp_path), "--audio-tagger", str(yam), "--no-overlay", "--fps", "2", "--quiet"])
    assert rc == 0
    doc = json.loads((tmp_path / f"{clips[0].stem}.avloc.json").read_text())
    check_schema(doc)
    sem = [f["semantic"] for f in doc["frames"]]
    dog_frames = [s for s in sem if any(a["label"] in ("Dog", "Bark", "Bow-wow", "Yip", "Growling", "Howl") for a in s["audioset"])]
    assert len(dog_frames) >= len(sem) // 2
    used = [s for s in sem if s["used"]]
    # frames whose semantic map comes from dog breeds only (ImageNet 151-268); YAMNet hears a "roar" in one frame
    dogs = [s for s in used if all(151 <= i <= 268 for c in s["imagenet"] for i in c["indices"])]
    assert used and len(dogs) >= 0.7 * len(used)


@pytest.mark.slow
def test_every_shared_clip(shared_data, tmp_path) -> None:
    clips = sorted((shared_data / "videos").glob("*.mp4"))
    assert clips
    rc = main(["localize", "--model", "avsync-objectness", *map(str, clips), "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    for c in clips:
        doc = json.loads((tmp_path / f"{c.stem}.avloc.json").read_text())
        check_schema(doc)
        assert doc["frames"] and probe(tmp_path / f"{c.stem}.avloc.mp4").has_audio



def test_class_aware_model_reports_one_map_per_detected_class(tmp_path) -> None:
    """twostage (``localize_detected``): JSON lists the detected classes with their map's peak; the
    heatmaps file holds one map per class (zero unless detected)."""
    import torch

    from avloc.methods import create_method
    from avloc.methods.zoo import save_model

    torch.manual_seed(0)
    model = create_method("twostage", {
        "visual_encoder": "small_cnn", "visual_encoder_kwargs": {"channels": [8, 16, 16, 16], "out_stride": 16},
        "image": {"size": 64, "resize": 64}, "audio_encoder": "small_cnn_audio",
        "audio": {"sample_rate": 8000, "window_seconds": 0.5, "kind": "logmel", "n_fft": 320, "hop_length": 160, "n_mels": 32},
        "audio_encoder_kwargs": {"channels": [8, 16, 16, 16], "time_stride": 2}, "valid_threshold": 0.5, "map_norm": "minmax",
        "feat_dim": 16, "embed_dim": 16, "proj_hidden": 8, "proj_dim": 8, "avc_dim": 16, "avc_hidden": 8,
    })
    ckpt = save_model(model.eval(), tmp_path / "ts.safetensors")
    _clip(tmp_path / "c.mp4", seconds=2.0)
    rc = main(["localize", str(tmp_path / "c.mp4"), "--out", str(tmp_path / "o"), "--model", str(ckpt),
               "--save-heatmaps", "--no-overlay", "--quiet"])
    assert rc == 0
    doc = json.loads((tmp_path / "o" / "c.avloc.json").read_text())
    check_schema(doc)
    with np.load(tmp_path / "o" / "c.heatmaps.npz") as z:
        cmaps, probs, det, maps = z["class_maps"], z["class_probabilities"], z["class_detected"], z["maps"]
    n, (h, w) = len(doc["frames"]), maps.shape[1:]
    assert n == 10 and cmaps.shape == (n, 10, h, w) and probs.shape == det.shape == (n, 10)
    for k, f in enumerate(doc["frames"]):
        listed = [c["class"] for c in f["classes"]]
        assert listed == sorted(np.flatnonzero(det[k]).tolist(), key=lambda c: -probs[k, c])  # most probable first
        assert listed[0] == int(np.argmax(probs[k]))  # the top class is always detected
        assert all(probs[k, c] >= 0.5 for c in listed[1:])
        assert [c["probability"] for c in f["classes"]] == pytest.approx([float(probs[k, c]) for c in listed], abs=1e-4)
        assert not cmaps[k][~det[k]].any() and all(cmaps[k, c].max() > 0 for c in listed)
        for c in f["classes"]:  # each peak is its own class map's maximum, in source pixels
            py, px = np.unravel_index(int(np.argmax(cmaps[k, c["class"]].astype(np.float32))), (h, w))
            assert c["peak"] == pytest.approx({"x": (px + 0.5) * 160 / w, "y": (py + 0.5) * 120 / h}, abs=0.01)
    # the contact sheet shows each frame next to its detected classes' maps: one row item = 1 + 3 panels
    from PIL import Image

    from avloc.inference.pipeline import SHEET_CLASS_PANELS

    sheet = np.asarray(Image.open(tmp_path / "o" / "c.sheet.png"))
    tw, pad = 320, 4  # default thumbnail width, sheet padding
    item_w = (1 + SHEET_CLASS_PANELS) * tw + SHEET_CLASS_PANELS * 2
    assert sheet.shape[1] == item_w + 2 * pad  # one item per sheet row (4 columns // 4 panels)
    assert (sheet.shape[0] - pad) % n == 0  # n rows
    th = (sheet.shape[0] - pad) // n - pad
    first = sheet[pad : pad + th, pad : pad + item_w]
    n_det = len(doc["frames"][0]["classes"])
    for i in range(1 + SHEET_CLASS_PANELS):  # the frame and one panel per detected class drawn; the rest left dark
        panel = first[:, i * (tw + 2) : i * (tw + 2) + tw]
        assert (panel.max() > 24) == (i <= n_det)


def test_analyse_in_memory_then_write_equals_localize_video(tmp_path, monkeypatch) -> None:
    """``analyse_video`` (nothing written) + ``write_outputs`` gives the files ``localize_video`` writes: the same
    frames, heatmaps and sheet (only the creation time and the processing time differ). ``localize_video`` probes
    the input once (its check's probe is passed on to the analysis)."""
    from avloc.inference import decode
    from avloc.inference.config import LocalizeConfig
    from avloc.inference.pipeline import analyse_video, localize_video, write_outputs
    from avloc.methods.zoo import load_model

    _clip(tmp_path / "c.mp4", seconds=2.0)
    model = load_model("avsync-objectness")
    cfg = LocalizeConfig(save_heatmaps=True, overlay=False)
    probes: list[object] = []
    real_probe = decode.probe
    monkeypatch.setattr(decode, "probe", lambda p: probes.append(p) or real_probe(p))
    direct = localize_video(tmp_path / "c.mp4", model, cfg, tmp_path / "a", model_name="avsync-objectness", progress=False)
    assert len(probes) == 1
    analysis = analyse_video(tmp_path / "c.mp4", model, cfg, model_name="avsync-objectness", progress=False)
    assert not (tmp_path / "b").exists() and len(analysis.records) == direct.frames == analysis.maps.shape[0]
    written = write_outputs(analysis, tmp_path / "b")
    assert set(written.outputs) == set(direct.outputs) == {"json", "sheet", "heatmaps"}
    a, b = (json.loads((tmp_path / d / "c.avloc.json").read_text()) for d in ("a", "b"))
    for doc in (a, b):
        doc.pop("created")
        doc["summary"].pop("processing_seconds")
        doc["summary"].pop("realtime_factor")
    assert a == b
    assert (tmp_path / "a" / "c.sheet.png").read_bytes() == (tmp_path / "b" / "c.sheet.png").read_bytes()
    with np.load(tmp_path / "a" / "c.heatmaps.npz") as za, np.load(tmp_path / "b" / "c.heatmaps.npz") as zb:
        assert set(za) == set(zb) and all(np.array_equal(za[k], zb[k]) for k in za)
