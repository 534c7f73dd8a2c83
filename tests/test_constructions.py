"""Constructions from annotated clips (avloc.data.constructions) and the record metrics of the realclips
protocol (avloc.metrics.realworld): issue 26.

The data-free tests build a tiny set in the dev set's format: each clip shows a white rectangle where its
annotated box is and plays a tone of its own frequency, so a constructed clip's pictures and sound can be
checked against its annotations.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from avloc.data.constructions import (
    KINDS,
    AudioSegments,
    ClipPlan,
    ConstructionConfig,
    Label,
    TilePlan,
    annotation,
    build_constructions,
    load_sources,
    map_box,
    plan_all,
    render,
)
from avloc.data.realclips import load_realclips
from avloc.engine.evaluate import evaluate_predictions
from avloc.errors import ConfigError, DataError, OutputExistsError
from avloc.io.media import decode_audio, iter_frames, write_video
from avloc.metrics.protocols import create_protocol
from avloc.metrics.realworld import (
    BoxMetrics,
    ClassAwareTiles,
    FramePrediction,
    SpeakerMetrics,
    TilePointing,
    box_matches,
    match_sources,
    onscreen_summary,
    speaker_hit,
    tile_pointing_hit,
)
from avloc.metrics.targets import Target, Tile

S = 224
RATE = 8000
CFG = ConstructionConfig(segment_seconds=1.0, fps=10.0, tile_size=(32, 24), sample_rate=RATE, speaker_offsets=(-0.4, 0.4))

#: name: (size, category, tone Hz, box, annotated times, yamnet_top, on-screen)
CLIPS: dict[str, tuple[tuple[int, int], str, float, list[float], list[float], list[str], bool]] = {
    "a_speech.mp4": ((64, 48), "speech", 440.0, [0.25, 0.25, 0.5, 0.75], [1.0, 3.0], ["Speech (0.90)"], True),
    "b_speech.mp4": ((64, 48), "speech", 660.0, [0.5, 0.25, 0.75, 0.75], [1.0, 3.0], ["Speech (0.95)", "Narration, monologue (0.20)"], True),
    "c_music.mp4": ((80, 48), "music", 1000.0, [0.5, 0.25, 1.0, 0.75], [1.0, 3.0], ["Music (0.80)", "Guitar (0.30)", "Speech (0.01)"], True),
    "d_dog.mp4": ((64, 48), "animal", 1500.0, [0.0, 0.5, 0.5, 1.0], [2.0], ["Dog (0.90)", "Bark (0.50)"], True),
    "e_voiceover.mp4": ((64, 48), "offscreen", 2000.0, [0.0, 0.0, 0.5, 0.5], [2.0], ["Speech (0.90)"], False),
}
VIDEO_TONE = 300.0


def _clip(path: Path, size: tuple[int, int], box: list[float], tone: float, seconds: float = 4.0, fps: int = 10) -> None:
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    img[round(box[1] * h) : round(box[3] * h), round(box[0] * w) : round(box[2] * w)] = 255
    t = np.arange(int(seconds * RATE)) / RATE
    write_video(path, (img for _ in range(int(seconds * fps))), fps, (0.3 * np.sin(2 * np.pi * tone * t)).astype(np.float32), RATE)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder in the dev set's format (5 clips) and a folder of one unannotated clip."""
    root = tmp_path_factory.mktemp("clips")
    clips = []
    for name, (size, cat, tone, box, times, top, on) in CLIPS.items():
        _clip(root / name, size, box, tone)
        frames = [{"t": t, "boxes": [box] if on else [], "onscreen": on, "scored": on, "what": name, "yamnet_top": top}
                  for t in times]
        clips.append({"file": name, "category": cat, "frames": frames})
    (root / "annotations.json").write_text(json.dumps({"clips": clips}))
    videos = tmp_path_factory.mktemp("videos")
    _clip(videos / "v_unannotated.mp4", (48, 48), [0.1, 0.1, 0.3, 0.3], VIDEO_TONE)
    return root, videos


@pytest.fixture(scope="module")
def built(tiny_set: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("built") / "set"
    build_constructions(tiny_set[0], out, tiny_set[1], seed=3, per_kind=2, cfg=CFG)
    return out


def _tone(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * RATE / len(x))


def _frames(path: Path) -> np.ndarray:
    return np.stack([f.image for f in iter_frames(path)])


# --------------------------------------------------------------------------- the builder
def test_build_is_deterministic(tiny_set: tuple[Path, Path], built: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build_constructions(tiny_set[0], again, tiny_set[1], seed=3, per_kind=2, cfg=CFG)
    assert (again / "annotations.json").read_bytes() == (built / "annotations.json").read_bytes()
    for m in sorted((built / "manifests").glob("*.jsonl")):
        assert (again / "manifests" / m.name).read_bytes() == m.read_bytes()
    for clip in sorted(built.glob("*.mp4")):
        assert np.array_equal(_frames(clip), _frames(again / clip.name)), clip.name
        assert np.array_equal(decode_audio(clip)[0], decode_audio(again / clip.name)[0]), clip.name
    with pytest.raises(OutputExistsError):
        build_constructions(tiny_set[0], again, tiny_set[1], seed=3, per_kind=2, cfg=CFG)


def test_plans_depend_on_seed_and_a_smaller_set_is_a_prefix(tiny_set: tuple[Path, Path]) -> None:
    sources = load_sources(tiny_set[0], tiny_set[1], CFG)
    big, small = plan_all(sources, 3, 5, CFG), plan_all(sources, 1, 5, CFG)
    by_name = {p.name: annotation(p) for p in big}
    assert all(annotation(p) == by_name[p.name] for p in small)
    other = plan_all(sources, 3, 6, CFG)
    assert [annotation(p) for p in other] != [annotation(p) for p in big]
    assert {p.kind for p in big} == set(KINDS)


def test_every_kind_is_built_and_loads(built: Path) -> None:
    clips = load_realclips(built)
    doc = json.loads((built / "annotations.json").read_text())
    assert doc["kinds"] == list(KINDS) and len(clips) == 2 * len(KINDS)
    for c in clips:
        assert c.construction in KINDS and c.path.is_file()
        for t in c.targets():
            for b in t.boxes:  # ground truth lies inside a sounding tile
                assert any(x.sounding and x.rect[0] <= b[0] <= b[2] <= x.rect[2] and x.rect[1] <= b[1] <= b[3] <= x.rect[3]
                           for x in t.tiles)
            assert all(not x.boxes for x in t.tiles if not x.sounding)  # distractors' objects are no ground truth


def test_hand_checked_mosaic(tiny_set: tuple[Path, Path], tmp_path: Path) -> None:
    """c_music (80x48) in tile 2 of a 2x2 mosaic of 32x24 tiles: scale 0.4 -> 32x19 at (0, 2), so its box
    [0.5, 0.25, 1.0, 0.75] maps to x (0 + 16) / 64, y (24 + 2 + 4.75) / 48 ... (24 + 2 + 14.25) / 48."""
    src = {s.name: s for s in load_sources(tiny_set[0], tiny_set[1], CFG)}
    music = src["c_music.mp4"]
    frame = music.frames[0]  # t = 1.0
    tau = 0.4
    tiles = (TilePlan(src["d_dog.mp4"], 1.5, False), TilePlan(src["v_unannotated.mp4"], 0.0, False),
             TilePlan(music, frame.t - tau, True, frame), TilePlan(src["a_speech.mp4"], 2.0, False))
    plan = ClipPlan("hand", "mosaic-2x2-one", (2, 2), (32, 24), tiles, ((music, frame.t - tau),), (Label(tau, True, True),), "hand")
    expect = (0.25, 30.75 / 48, 0.5, 40.25 / 48)
    assert map_box(plan, 2, frame.boxes[0]) == pytest.approx(expect, abs=1e-6)
    ann = annotation(plan)["frames"][0]
    assert ann["boxes"] == [list(map_box(plan, 2, frame.boxes[0]))] and ann["sounding_tiles"] == [2]
    assert ann["tiles"][2]["rect"] == [0.0, 0.5, 0.5, 1.0] and ann["tiles"][2]["labels"] == ["Guitar", "Music"]
    path = tmp_path / "hand.mp4"
    render(plan, path, CFG, AudioSegments(RATE))
    img = _frames(path)[round(tau * CFG.fps)].astype(float).mean(2)  # (48, 64)
    x1, y1, x2, y2 = np.array(expect) * [64, 48, 64, 48]
    inside = img[int(np.ceil(y1)) + 1 : int(y2) - 1, int(np.ceil(x1)) + 1 : int(x2) - 1]
    outside = img[27:int(y1) - 1, 1:int(x1) - 1]  # the tile's picture left of and above the box
    assert inside.mean() > 200 and outside.mean() < 40
    assert _tone(decode_audio(path)[0]) == pytest.approx(CLIPS["c_music.mp4"][2], abs=10)


def test_swapped_audio_is_labelled_offscreen(built: Path) -> None:
    doc = json.loads((built / "annotations.json").read_text())
    swapped = [c for c in doc["clips"] if c["construction"] == "swapped"]
    assert swapped
    for c in swapped:
        assert len(c["frames"]) == 5  # every frame on the 0.2 s grid of the 1 s clip
        for f in c["frames"]:
            assert f["onscreen"] is False and f["scored"] is False and f["boxes"] == [] and f["sounding_tiles"] == []
        picture, (heard,) = c["frames"][0]["tiles"][0]["file"], c["frames"][0]["offscreen_sound"]
        assert heard["category"] != CLIPS[picture][1] and heard["file"] != picture
        assert _tone(decode_audio(built / c["file"])[0]) == pytest.approx(CLIPS[heard["file"]][2], abs=10)


def test_mosaic_sound_is_the_sounding_tiles(built: Path) -> None:
    doc = json.loads((built / "annotations.json").read_text())
    for c in doc["clips"]:
        if not c["construction"].startswith("mosaic"):
            continue
        f = c["frames"][0]
        sounding = [f["tiles"][k]["file"] for k in f["sounding_tiles"]]
        wav = decode_audio(built / c["file"])[0]
        spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
        freqs = np.fft.rfftfreq(len(wav), 1 / RATE)
        level = {n: spec[np.abs(freqs - CLIPS[n][2]) < 20].max() for n in CLIPS}
        quiet = max(v for n, v in level.items() if n not in sounding)
        assert all(level[n] > 20 * quiet for n in sounding), (c["file"], sounding, level)
        assert f["onscreen"] is True and f["scored"] is True and len(sounding) == (2 if c["construction"].endswith("two") else 1)


def test_two_speakers(built: Path) -> None:
    clips = [c for c in load_realclips(built) if c.construction.startswith("two-speakers")]
    doc = {c["file"]: c for c in json.loads((built / "annotations.json").read_text())["clips"]}
    for c in clips:
        first = c.frames[0]
        assert first.scored and first.onscreen and first.speaker_tile is not None and first.boxes
        assert [f.t for f in c.frames] == pytest.approx([first.t, first.t - 0.4, first.t + 0.4])
        assert all(f.speaker_tile == first.speaker_tile and f.onscreen is None and not f.boxes for f in c.frames[1:])
        tiles = doc[c.path.name]["frames"][0]["tiles"]
        assert {t["category"] for t in tiles} == {"speech"}
        if c.construction == "two-speakers-same":
            assert tiles[0]["file"] == tiles[1]["file"] and abs(tiles[0]["start"] - tiles[1]["start"]) >= CFG.segment_seconds
        else:
            assert tiles[0]["file"] != tiles[1]["file"]


def test_registered_dataset(built: Path) -> None:
    from avloc.data.datasets import dataset_from_spec

    ds = dataset_from_spec("realclips-constructions:mosaic-2x2-one", raw=built)
    assert len(ds) == 2
    s = ds[0]
    assert s["boxes"].shape == (1, 4) and bool(s["onscreen"]) is True
    assert len(dataset_from_spec("realclips-constructions:swapped", raw=built)) == 10
    with pytest.raises(DataError, match="build the set"):
        dataset_from_spec("realclips-constructions:nope", raw=built)
    with pytest.raises(ConfigError, match="split must be 'test'"):
        dataset_from_spec("realclips-constructions:all:train", raw=built)


def test_cli_make(tiny_set: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avloc.cli.main import main

    out = tmp_path / "cli"
    assert main(["data", "make", "realclips-constructions", "--clips", str(tiny_set[0]), "--out", str(out),
                 "--per-kind", "1", "--kinds", "swapped", "mosaic-1x2-one", "--videos", str(tiny_set[1])]) == 0
    assert "2 clips" in capsys.readouterr().out
    assert main(["data", "make", "realclips-constructions", "--out", str(tmp_path / "x")]) == 2
    assert main(["data", "make", "realclips-constructions", "--clips", str(tiny_set[0]), "--out", str(tmp_path / "y"),
                 "--kinds", "mosaic-3x3"]) == 2


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        ConstructionConfig(tile_size=(31, 24))
    with pytest.raises(ConfigError):
        ConstructionConfig(label_grid=0.03)


# --------------------------------------------------------------------------- the metrics
def test_box_matches_hand_worked() -> None:
    gt = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]])
    # box 2 overlaps ground-truth box 1 at IoU 0.225 / 0.275 = 0.82, but box 1 took it; box 3: IoU 0.09 / 0.25
    pred = np.array([[0, 0, 0.5, 0.5], [0.05, 0, 0.55, 0.5], [0.6, 0.6, 0.9, 0.9]])
    assert box_matches(pred, gt) == (True, True, 1)
    assert box_matches(np.array([[0.6, 0.6, 0.9, 0.9], [0.5, 0.5, 1, 1]]), gt[1:]) == (False, True, 1)
    assert box_matches(np.zeros((0, 4)), gt) == (False, False, 0)
    m = BoxMetrics()
    m.update(["a", "b", "c"], [pred, np.array([[0.6, 0.6, 0.9, 0.9], [0.5, 0.5, 1, 1]]), np.zeros((0, 4))], [gt, gt[1:], gt])
    out = m.compute()
    assert out["top_box_iou50"] == pytest.approx(1 / 3) and out["any_box_iou50"] == pytest.approx(2 / 3)
    assert out["box_precision"] == pytest.approx(2 / 5) and out["n_pred_boxes"] == 5


def _np_box_rows(pred: np.ndarray, gt: np.ndarray) -> tuple[bool, bool, int]:
    """Independent re-derivation: broadcast IoU, then greedy one-to-one assignment in prediction order."""
    lt = np.maximum(pred[:, None, :2], gt[None, :, :2])
    rb = np.minimum(pred[:, None, 2:], gt[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    iou = inter / (area(pred)[:, None] + area(gt)[None, :] - inter)
    ok = iou >= 0.5
    taken: set[int] = set()
    for k in range(len(pred)):
        best = [j for j in np.argsort(-iou[k], kind="stable") if ok[k, j] and j not in taken]
        if best:
            taken.add(int(best[0]))
    return bool(ok[0].any()) if len(pred) else False, bool(ok.any()), len(taken)


def test_box_metrics_match_numpy() -> None:
    rng = np.random.default_rng(1)
    preds, gts = [], []
    for _ in range(40):
        gt = rng.uniform(0, 0.5, (rng.integers(1, 4), 2))
        gt = np.concatenate([gt, gt + rng.uniform(0.1, 0.5, gt.shape)], 1)
        pred = gt[rng.integers(0, len(gt), rng.integers(1, 5))] + rng.normal(0, 0.05, (1, 4))
        pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2] + 0.01)
        preds.append(pred)
        gts.append(gt)
    rows = [_np_box_rows(p, g) for p, g in zip(preds, gts, strict=True)]
    assert [box_matches(p, g) for p, g in zip(preds, gts, strict=True)] == rows
    halves = BoxMetrics(), BoxMetrics()
    halves[0].update([str(i) for i in range(20)], preds[:20], gts[:20])
    halves[1].update([str(i) for i in range(20, 40)], preds[20:], gts[20:])
    out = halves[0].merge(halves[1]).compute()
    assert out["top_box_iou50"] == pytest.approx(np.mean([r[0] for r in rows]))
    assert out["box_precision"] == pytest.approx(sum(r[2] for r in rows) / sum(len(p) for p in preds))


def test_onscreen_recalls_hand_worked() -> None:
    y = np.array([1, 1, 1, 0, 0], bool)
    s = onscreen_summary(np.array([0.9, 0.8, 0.3, 0.2, 0.6]), y)
    assert s["onscreen_recall"] == pytest.approx(2 / 3) and s["offscreen_recall"] == pytest.approx(1 / 2)
    only_off = onscreen_summary(np.array([0.1, 0.7]), np.array([False, False]))
    assert only_off["offscreen_recall"] == 0.5 and np.isnan(only_off["onscreen_recall"])


def _mask(box: list[float]) -> np.ndarray:
    x1, y1, x2, y2 = (int(v * S) for v in box)
    m = np.zeros((S, S), np.float32)
    m[y1:y2, x1:x2] = 1
    return m


RAMP = (0.5 * (np.arange(S)[None, :] * S + np.arange(S)[:, None]) / (S * S)).astype(np.float32)  # distinct, rising in x
LEFT, RIGHT = [0.25, 0.25, 0.5, 0.5], [0.75, 0.25, 1.0, 0.5]  # 56 x 56 = 3136 pixels each on the 224 grid
TILES = (Tile((0, 0, 0.5, 1), True, (tuple(LEFT),), ("Dog", "Bark", "Animal")),
         Tile((0.5, 0, 1, 1), True, (tuple(RIGHT),), ("Speech", "Animal")))


def _target(i: int, tiles: tuple[Tile, ...] = TILES, speaker: int | None = None) -> Target:
    boxes = np.array([b for t in tiles if t.sounding for b in t.boxes]).reshape(-1, 4)
    return Target(id=f"m@{i}", boxes=boxes, onscreen=True, image_id="m", tiles=tiles, speaker_tile=speaker)


def test_match_sources() -> None:
    pred = FramePrediction((0.5, 0.5), sources=(("Animal", 0.99), ("Dog", 0.5), ("Bark", 0.7), ("Speech", 0.6)),
                           source_maps={"Animal": RAMP, "Dog": RAMP, "Speech": RAMP})
    # "Animal" belongs to both tiles: matched to neither; "Bark" has no map of its own
    assert match_sources(TILES, pred) == ["Dog", "Speech"]
    assert match_sources(TILES, FramePrediction((0.5, 0.5), sources=pred.sources)) == [None, None]


def test_record_scores_hand_worked() -> None:
    """Class-aware cIoU: each matched map = its box + a rising ramp, so the adaptive top-K (K = 3136) keeps
    3135 box pixels: 3135 / 3136 per tile. Speech unheard: 0 for that tile. No per-source maps: the one map
    (both boxes, ramp rising to the right) keeps the right box's pixels for both tiles: 0 and 3135 / 3136."""
    left, right, both = _mask(LEFT) + RAMP, _mask(RIGHT) + RAMP, _mask(LEFT) + _mask(RIGHT) + RAMP
    heard = (("Dog", 0.9), ("Speech", 0.8), ("Music", 0.5))
    frames = {
        "m@0": FramePrediction((0.3, 0.4), np.array([[0.25, 0.25, 0.5, 0.5]]), (0.6, 0.2, 0.9, 0.6), heard,
                               {"Dog": left, "Speech": right, "Music": both}),
        "m@1": FramePrediction((0.7, 0.4), np.zeros((0, 4)), None, heard[:1], {"Dog": left}),
        "m@2": FramePrediction((0.5, 0.4), np.array([[0.0, 0.0, 0.1, 0.1]]), (0.1, 0.2, 0.3, 0.6), heard, None),
    }
    targets = [_target(0, speaker=1), _target(1, speaker=1), _target(2, speaker=1)]
    maps = {"m@0": both, "m@1": both, "m@2": both}
    out = evaluate_predictions(maps, targets, "realclips", onscreen={k: 0.9 for k in maps}, frames=frames)
    k = 3135 / 3136
    assert out["classaware_ciou"] == pytest.approx(np.mean([k, k / 2, k / 2]), abs=1e-9)
    assert out["classaware_success"] == pytest.approx(1 / 3) and out["classaware_coverage"] == pytest.approx(0.5)
    assert out["tile_pointing"] == 1.0  # both tiles sound
    assert out["speaker_accuracy"] == pytest.approx(1 / 3) and out["speaker_coverage"] == pytest.approx(2 / 3)
    assert out["top_box_iou50"] == pytest.approx(1 / 3) and out["box_precision"] == pytest.approx(1 / 2)
    assert out["onscreen_recall"] == 1.0 and np.isnan(out["offscreen_recall"])
    proto = create_protocol("realclips")
    assert all(proto.higher_is_better(k) for k in ("classaware_ciou", "speaker_accuracy", "tile_pointing", "box_precision",
                                                    "offscreen_recall", "top_box_iou50"))


def test_tile_pointing_and_speaker_hand_worked() -> None:
    tiles = (Tile((0, 0, 0.5, 1), True, ((0.1, 0.1, 0.4, 0.9),)), Tile((0.5, 0, 1, 1), False))
    assert tile_pointing_hit((0.49, 0.4), tiles) and not tile_pointing_hit((0.5, 0.4), tiles)  # x = 0.5: right tile
    assert speaker_hit((0.3, 0.2, 0.6, 0.5), tiles, 0) == (True, True)  # centre x 0.45
    assert speaker_hit((0.4, 0.2, 0.7, 0.5), tiles, 0) == (True, False)  # centre x 0.55
    assert speaker_hit(None, tiles, 0) == (False, False)


def _np_adaptive(m: np.ndarray, box: list[float]) -> float:
    """cv2 resize to 224, min-max, ``> sort[n - K]`` with K = the box's pixels, cIoU (independent)."""
    r = cv2.resize(m.astype(np.float32), (S, S), interpolation=cv2.INTER_LINEAR)
    p = (r - r.min()) / (r.max() - r.min())
    gt = _mask(box)
    pred = p > np.sort(p.ravel())[S * S - int(gt.sum())]
    return float((pred * gt).sum() / (gt.sum() + (pred * (gt == 0)).sum()))


def test_classaware_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    frames, targets, maps, ref = {}, [], {}, []
    for i in range(6):
        a, b = (rng.uniform(0, 0.4, 2), rng.uniform(0, 0.4, 2))
        la = [0.5 * a[0], a[1], 0.5 * a[0] + 0.2, a[1] + 0.3]
        lb = [0.5 + 0.5 * b[0], b[1], 0.5 + 0.5 * b[0] + 0.2, b[1] + 0.4]
        tiles = (Tile((0, 0, 0.5, 1), True, (tuple(la),), ("Dog",)), Tile((0.5, 0, 1, 1), True, (tuple(lb),), ("Speech",)))
        shape = (36, 64) if i < 3 else (48, 64)  # 1x2 and 2x2 mosaics in one call: maps of several sizes
        own = {"Dog": rng.random(shape).astype(np.float32), "Speech": rng.random(shape).astype(np.float32)}
        t = _target(i, tiles)
        targets.append(t)
        maps[t.id] = rng.random(shape).astype(np.float32)
        if i % 2:  # per-source maps
            frames[t.id] = FramePrediction((0.1, 0.1), sources=(("Dog", 0.9), ("Speech", 0.8)), source_maps=own)
            ref.append((_np_adaptive(own["Dog"], la) + _np_adaptive(own["Speech"], lb)) / 2)
        else:  # none: the one map for both tiles
            frames[t.id] = FramePrediction((0.1, 0.1), sources=(("Dog", 0.9),))
            ref.append((_np_adaptive(maps[t.id], la) + _np_adaptive(maps[t.id], lb)) / 2)
    out = evaluate_predictions(maps, targets, "realclips", frames=frames)
    assert out["classaware_ciou"] == pytest.approx(np.mean(ref), abs=1e-6)
    assert out["classaware_success"] == pytest.approx(np.mean(np.array(ref) >= 0.5))
    assert out["classaware_coverage"] == pytest.approx(0.5)


def test_record_accumulators_merge() -> None:
    for acc, rows in ((TilePointing(), (["a", "b"], [True, False])), (SpeakerMetrics(), (["a", "b"], [True, False], [True, False])),
                      (ClassAwareTiles(), (["a", "b"], [0.7, 0.2], [1.0, 0.5]))):
        whole, part = acc.empty_like(), acc.empty_like()
        whole.update(*rows)
        part.update(*[r[:1] for r in rows])
        other = acc.empty_like()
        other.update(*[r[1:] for r in rows])
        assert part.merge(other).compute() == whole.compute()


def test_frames_need_a_record_each() -> None:
    t = _target(0)
    with pytest.raises(DataError, match="no frame record"):
        evaluate_predictions({t.id: RAMP}, [t], "realclips", frames={})


# --------------------------------------------------------------------------- real data
def test_real_plans(shared_data: Path) -> None:
    """Plans from the dev set and videos/: every kind, off-screen labels in the hundreds at 24 per kind."""
    clips, videos = shared_data / "realclips_dev", shared_data / "videos"
    if not clips.is_dir():
        pytest.skip("realclips_dev not in the shared data")
    cfg = ConstructionConfig()
    plans = plan_all(load_sources(clips, videos if videos.is_dir() else None, cfg), 24, 0, cfg)
    assert {p.kind for p in plans} == set(KINDS)
    anns = [annotation(p) for p in plans]
    off = sum(f["onscreen"] is False for a in anns for f in a["frames"])
    assert off >= 300
    for p, a in zip(plans, anns, strict=True):
        assert all(t.source.category is not None for t in p.tiles if t.sounding)  # unannotated clips never sound
        for f in a["frames"]:
            for k in f["sounding_tiles"]:
                tile = f["tiles"][k]
                assert all(tile["rect"][0] <= b[0] < b[2] <= tile["rect"][2] + 1e-9 for b in tile["boxes"])


def test_frame_prediction_from_a_record() -> None:
    """A record in source pixels (200 x 100 picture) -> normalised boxes, peak, speaker, heard sources."""
    from avloc.applications.realworld import frame_prediction
    from avloc.formats.localize import Box, FrameRecord, Point, Source, Speaker

    rec = FrameRecord(index=3, time=0.6, source_time=0.6, audio_rms_db=-20.0, silent=False, peak=Point(50, 25),
                      onscreen=True, onscreen_confidence=0.8, boxes=(Box(20, 10, 60, 50, 0.9, "Dog"),),
                      sources=(Source("Dog", 0.9, "object", "coco:dog"), Source("Speech", 0.4, "human", "no face")),
                      speaker=Speaker(1, Box(100, 0, 140, 40, 0.7), 0.7))
    own = {"Dog": RAMP}
    p = frame_prediction(rec, (200, 100), own)
    assert p.peak == (0.25, 0.25) and p.speaker == (0.5, 0.0, 0.7, 0.4)
    assert np.allclose(p.boxes, [[0.1, 0.1, 0.3, 0.5]]) and p.sources == (("Dog", 0.9), ("Speech", 0.4))
    assert p.source_maps is own
    bare = frame_prediction(FrameRecord(0, 0.0, 0.0, None, False, Point(0, 0), None, None), (200, 100), None)
    assert bare.boxes.shape == (0, 4) and bare.speaker is None and bare.source_maps is None


@pytest.mark.slow
def test_constructions_score_end_to_end(built: Path, tmp_path: Path) -> None:
    """``--visual-only`` localize on every built clip, scored per kind through the one evaluate function."""
    from avloc.applications.realworld import localize_clips, score_run
    from avloc.inference.config import LocalizeConfig

    clips = load_realclips(built)
    run = localize_clips(clips, None, LocalizeConfig(visual_only=True), tmp_path / "out")
    for kind in KINDS:
        s = score_run(run, [c for c in clips if c.construction == kind])
        if kind == "swapped":
            assert s["n"] == 0 and s["offscreen_recall"] == 0.0  # visual-only calls everything on-screen
        else:
            assert s["n"] == 2 and 0 <= s["tile_pointing"] <= 1 and s["onscreen_recall"] == 1.0
        if kind.startswith("two-speakers"):
            assert s["speaker_coverage"] == 0.0 and s["speaker_accuracy"] == 0.0
        if kind.endswith("-two"):
            assert s["classaware_coverage"] == 0.0 and 0 <= s["classaware_ciou"] <= 1
