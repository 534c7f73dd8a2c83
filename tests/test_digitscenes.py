"""DigitScenes: raw-source loaders, composition validity, splits, determinism, variants, dataset contract.

Needs the shared raw data (``../shared/data`` or ``$AVLOC_DATA``); skipped with
a reason otherwise. Everything is written into pytest's ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from avloc.data.digitscenes import (
    DigitScenes,
    DigitScenesSampler,
    SceneConfig,
    digitscenes,
    variant_config,
)
from avloc.data.digitscenes.compose import ink_bbox
from avloc.data.digitscenes.config import SPLITS
from avloc.data.digitscenes.generate import generate
from avloc.data.digitscenes.sampler import SplitPools
from avloc.data.sources import RawSources, list_esc10, list_fsdd, load_cifar, load_mnist
from avloc.errors import ConfigError, DataError
from avloc.formats.manifest import read_manifest, resolve_media
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig
from avloc.registry import DATASETS
from conftest import data_dir

SIZE = 96
STILL = ("single", "multi", "offscreen", "openset")


@pytest.fixture(scope="module")
def raw() -> RawSources:
    d = data_dir()
    if d is None:
        pytest.skip("shared data not found: set AVLOC_DATA or place it at ../shared/data")
    r = RawSources(d)
    r.check()
    return r


def small(variant: str, **kw: object) -> object:
    return variant_config(variant, scene=SceneConfig(size=SIZE), **kw)


def frame_mask(cell: np.ndarray, x: int, y: int, h: int, w: int) -> np.ndarray:
    """A cell mask placed at (x, y) in an (h, w) frame, clipped."""
    out = np.zeros((h + 2 * cell.shape[0], w + 2 * cell.shape[1]), bool)
    out[y + cell.shape[0] : y + 2 * cell.shape[0], x + cell.shape[1] : x + 2 * cell.shape[1]] = cell
    return out[cell.shape[0] : cell.shape[0] + h, cell.shape[1] : cell.shape[1] + w]


def frame_alpha(cell: np.ndarray, x: int, y: int, h: int, w: int) -> np.ndarray:
    out = np.zeros((h + 2 * cell.shape[0], w + 2 * cell.shape[1]), cell.dtype)
    out[y + cell.shape[0] : y + 2 * cell.shape[0], x + cell.shape[1] : x + 2 * cell.shape[1]] = cell
    return out[cell.shape[0] : cell.shape[0] + h, cell.shape[1] : cell.shape[1] + w]


# ----------------------------------------------------------------------------- sources


def test_sources_load(raw: RawSources) -> None:
    utts = raw.fsdd
    assert len(utts) == 3000 and len({u.speaker for u in utts}) == 6
    assert all(u.path.name == f"{u.uid}.wav" for u in utts[:20])
    images, labels = raw.mnist
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).min() > 800
    esc = raw.esc10
    assert len(esc) == 400 and {c.fold for c in esc} == {1, 2, 3, 4, 5} and len({c.category for c in esc}) == 10
    assert all(c.path.name.startswith(f"{c.fold}-") for c in esc)
    cif = raw.cifar
    assert cif.train_images.shape == (10000, 32, 32, 3) and cif.test_images.shape == (2000, 32, 32, 3)
    wav = raw.audio(utts[0].path, 16000)
    assert wav.dtype == np.float32 and 0.1 * 16000 < wav.size < 2.5 * 16000


def test_sources_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="raw data directory not found"):
        RawSources(tmp_path / "nope")
    with pytest.raises(DataError, match=r"FSDD spoken digits not found: .*fsdd/recordings"):
        list_fsdd(tmp_path)
    with pytest.raises(DataError, match=r"MNIST images not found: .*t10k-images"):
        load_mnist(tmp_path)
    with pytest.raises(DataError, match="ESC-10 environmental sounds not found"):
        list_esc10(tmp_path)
    with pytest.raises(DataError, match="CIFAR-10 subset not found"):
        load_cifar(tmp_path)
    (tmp_path / "mnist").mkdir()
    with gzip.open(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 100)
    with pytest.raises(DataError, match="IDX body has 100 bytes"):
        load_mnist(tmp_path)
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar10_subset.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read npz"):
        load_cifar(tmp_path)


def test_dataset_fails_early_without_sources(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="raw data directory not found"):
        digitscenes(tmp_path / "missing")
    tmp_path.joinpath("fsdd").mkdir()
    with pytest.raises(DataError, match="not found"):
        digitscenes(tmp_path)


# ----------------------------------------------------------------------------- validity


@pytest.mark.parametrize("variant", STILL)
def test_still_samples_are_valid(raw: RawSources, variant: str) -> None:
    cfg = small(variant)
    s = DigitScenesSampler(raw, variant, "train", cfg, seed=3)
    for i in range(10):
        smp = s.sample(i)
        assert smp.scene is not None
        digits = smp.scene.digits
        h, w = smp.image.shape[:2]
        assert (h, w) == (SIZE, SIZE) and smp.image.dtype == np.uint8
        # visible digits have distinct classes
        assert len({d.label for d in digits}) == len(digits)
        # every box inside the frame and non-empty
        for b in smp.boxes + smp.silent_boxes:
            assert 0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h
        # boxes exactly cover each digit's pasted ink, and the ink is in the image in the digit's colour
        inst = smp.scene.instance_map()
        by_label = {d.label: (k, d) for k, d in enumerate(digits)}
        for b, lab in zip(smp.boxes + smp.silent_boxes, smp.box_labels + smp.silent_labels):
            k, d = by_label[lab]
            assert list(ink_bbox(inst == k) or ()) == b
            # pasted pixel = bg + a (colour - bg), so |pixel - colour| <= 1 - a (+ rounding)
            ink = frame_mask(d.alpha > cfg.scene.ink_threshold, d.x, d.y, h, w)
            a = frame_alpha(d.alpha, d.x, d.y, h, w)[ink]
            err = np.abs(smp.image[ink].astype(float) / 255 - d.colour).max(axis=1)
            assert ink.any() and (err <= 1 - a + 0.02).all()
        assert len(smp.boxes) + len(smp.silent_boxes) == len(digits)
        # labels match the spoken utterances (source ids are {digit}_{speaker}_{take})
        assert [int(u.split("_")[0]) for u in smp.meta["fsdd"]] == smp.labels
        assert [u.split("_")[1] for u in smp.meta["fsdd"]] == smp.speakers
        if smp.onscreen:
            assert smp.box_labels == smp.labels
        # audio length and rate as declared; speech is where the spans say
        assert smp.sample_rate == 16000 and smp.audio.shape == (48000,) and smp.audio.dtype == np.float32
        assert np.abs(smp.audio).max() <= cfg.audio.peak + 1e-6
        if smp.meta["speech_spans"] and smp.meta["esc10"] is None:
            a, b_ = smp.meta["speech_spans"][0]
            inside = smp.audio[round(a * 16000) : round(b_ * 16000)]
            assert np.sqrt(np.mean(inside**2)) > 0.02
            mask = np.ones(48000, bool)
            for a, b_ in smp.meta["speech_spans"]:
                mask[round(a * 16000) : round(b_ * 16000)] = False
            assert np.abs(smp.audio[mask]).max() == 0.0


def test_large_targets_exist(raw: RawSources) -> None:
    """Some sounding boxes exceed a quarter of the frame (else cIoU 0.5 is out of reach under median binarisation)."""
    s = DigitScenesSampler(raw, "single", "test", small("single", n_visible=(2, 2)), seed=0)
    areas = [((b[2] - b[0]) * (b[3] - b[1])) / SIZE**2 for i in range(40) for b in s.sample(i).boxes]
    assert max(areas) > 0.2 and min(areas) < 0.1


def test_ambient_snr_is_controlled(raw: RawSources) -> None:
    cfg = small("single", ambient_prob=1.0, snr_db=(10.0, 10.0))
    s = DigitScenesSampler(raw, "single", "train", cfg, seed=1)
    smp = s.sample(0)
    assert smp.meta["snr_db"] == 10.0 and smp.meta["esc10"] is not None
    mask = np.ones(48000, bool)
    a, b = smp.meta["speech_spans"][0]
    mask[round(a * 16000) : round(b * 16000)] = False
    assert np.sqrt(np.mean(smp.audio[mask] ** 2)) > 1e-4  # ambient outside the utterance


def test_multi_offscreen_openset_semantics(raw: RawSources) -> None:
    m = DigitScenesSampler(raw, "multi", "train", small("multi"), seed=0)
    for i in range(5):
        smp = m.sample(i)
        assert len(smp.boxes) == 2 and len(smp.silent_boxes) == 2 and sorted(smp.box_labels) == sorted(smp.labels)
    o = DigitScenesSampler(raw, "offscreen", "val", small("offscreen"), seed=0)
    modes = set()
    for i in range(40):
        smp = o.sample(i)
        mode = smp.meta["mode"]
        modes.add(mode)
        visible = {d.label for d in smp.scene.digits}  # type: ignore[union-attr]
        if mode == "onscreen":
            assert smp.onscreen and smp.labels[0] in visible
        else:
            assert not smp.onscreen and smp.boxes == [] and len(smp.silent_boxes) == len(visible)
        if mode == "absent":
            assert smp.labels and smp.labels[0] not in visible and smp.audible
        if mode == "ambient":
            assert smp.labels == [] and smp.audible and np.abs(smp.audio).max() > 0
        if mode == "silence":
            assert not smp.audible and np.abs(smp.audio).max() == 0
    assert modes == {"onscreen", "absent", "ambient", "silence"}
    tr = DigitScenesSampler(raw, "openset", "train", small("openset"), seed=0)
    for i in range(20):
        smp = tr.sample(i)
        assert not {7, 8, 9} & {d.label for d in smp.scene.digits} and smp.meta["heard"]  # type: ignore[union-attr]
    te = DigitScenesSampler(raw, "openset", "test", small("openset"), seed=0)
    heard = [te.sample(i).meta["heard"] for i in range(40)]
    assert any(heard) and not all(heard)


def test_video_clip_annotations(raw: RawSources) -> None:
    cfg = small("video", seconds=4.0)
    s = DigitScenesSampler(raw, "video", "test", cfg, seed=0)
    c = s.clip(0)
    assert c.audio.shape == (4 * 16000,) and c.n_frames == 4 * cfg.fps  # type: ignore[attr-defined]
    spans = [(u["start"], u["end"]) for u in c.utterances]
    assert all(a < b <= 4.0 for a, b in spans)
    assert all(spans[k][1] <= spans[k + 1][0] for k in range(len(spans) - 1))  # no overlap
    for j in range(c.n_frames):
        a = c.annotation(j)
        t = j / c.fps
        speaking = [u for u in c.utterances if u["start"] <= t < u["end"]]
        assert sorted(a["labels"]) == sorted(u["label"] for u in speaking)
        assert a["out_of_view"] == (len(a["boxes"]) < len(speaking))
        for b in a["boxes"] + a["silent_boxes"]:
            assert 0 <= b[0] < b[2] <= SIZE and 0 <= b[1] < b[3] <= SIZE


def test_video_clip_utterances_redrawn_until_they_fit(raw: RawSources) -> None:
    # 3 utterances in 3 s with 0.1 s gaps: some first draws are too long; they are re-drawn, never dropped
    cfg = small("video", seconds=3.0, n_utterances=(3, 3), min_gap_seconds=0.1)
    s = DigitScenesSampler(raw, "video", "train", cfg, seed=0)
    for c in range(40):
        for k in (0, 1):
            spans = [(u["start"], u["end"]) for u in s.clip(c, audio_draw=k).utterances]
            assert len(spans) == 3 and all(0 <= a < b <= 3.0 for a, b in spans)
            assert all(spans[i][1] + 0.1 - 1e-6 <= spans[i + 1][0] for i in range(2))
    impossible = DigitScenesSampler(raw, "video", "train", small("video", seconds=3.0, n_utterances=(12, 12)), seed=0)
    with pytest.raises(ConfigError, match="n_utterances"):
        impossible.clip(0)


# ----------------------------------------------------------------------------- splits


def test_splits_are_disjoint(raw: RawSources) -> None:
    cfg = small("single")
    pools = {sp: SplitPools(raw, sp, cfg) for sp in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a >= b:
                continue
            pa, pb = pools[a], pools[b]
            spk = lambda p: {u.speaker for us in p.utterances for u in us}  # noqa: E731
            assert not spk(pa) & spk(pb)
            assert not set(pa.mnist_indices.tolist()) & set(pb.mnist_indices.tolist())
            assert not {c.fold for c in pa.esc} & {c.fold for c in pb.esc}
            assert not {(pa.cifar_part, i) for i in pa.cifar_ids} & {(pb.cifar_part, i) for i in pb.cifar_ids}
    # drawn samples only use their split's sources
    for sp in SPLITS:
        s = DigitScenesSampler(raw, "single", sp, cfg, seed=0)
        p = pools[sp]
        for i in range(6):
            smp = s.sample(i)
            assert set(smp.speakers) <= set(cfg.splits.speakers[sp])
            assert set(smp.meta["mnist"]) <= set(p.mnist_indices.tolist())
            assert all(c.startswith(f"{p.cifar_part}:") and int(c.split(":")[1]) in set(p.cifar_ids.tolist()) for c in smp.meta["cifar"])
            if smp.meta["esc10"]:
                assert int(smp.meta["esc10"].split("-")[0]) in cfg.splits.esc_folds[sp]


# ----------------------------------------------------------------------------- determinism, pool


def test_determinism_and_pool(raw: RawSources) -> None:
    cfg = small("single")
    a = DigitScenes(raw, "single", "train", 8, seed=5, config=cfg)
    b = DigitScenes(raw, "single", "train", 8, seed=5, config=cfg)
    c = DigitScenes(raw, "single", "train", 8, seed=6, config=cfg)
    for i in (0, 7):
        x, y = a[i], b[i]
        for k in ("image", "audio", "boxes", "silent_boxes", "box_labels"):
            assert torch.equal(x[k], y[k]), k
        assert x["labels"] == y["labels"] and x["id"] == y["id"]
    assert not torch.equal(a[0]["image"], c[0]["image"])
    # pool: images depend only on the scene index; the sounding digit is re-drawn
    p = DigitScenes(raw, "single", "train", 60, seed=5, pool=3, config=cfg)
    assert [p[i]["scene_index"] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    assert torch.equal(p[0]["image"], a[0]["image"])  # scene j of a pool == draw j without pool
    same = [p[i] for i in range(0, 60, 3)]
    assert all(torch.equal(s["image"], same[0]["image"]) for s in same)
    sounding = {tuple(s["boxes"][0].tolist()) for s in same}
    assert len(sounding) >= 2  # different visible digits speak on the same image
    assert len({s["audio"].sum().item() for s in same}) == len(same)  # a fresh utterance every draw


def test_manifests_byte_identical_across_out_dirs(raw: RawSources, tmp_path: Path) -> None:
    cfg = small("single")
    m1 = generate(raw.root, tmp_path / "a", "single", "val", 6, 2, cfg)
    m2 = generate(raw.root, tmp_path / "elsewhere" / "b", "single", "val", 6, 2, cfg, workers=2)
    assert m1.read_bytes() == m2.read_bytes()
    e = read_manifest(m1)
    for x in e:
        assert resolve_media(m1, x["image"]).read_bytes() == resolve_media(m2, x["image"]).read_bytes()
        assert resolve_media(m1, x["audio"]).read_bytes() == resolve_media(m2, x["audio"]).read_bytes()


# ----------------------------------------------------------------------------- generation, every variant


@pytest.mark.parametrize("variant", [*STILL, "video"])
def test_every_variant_generates(raw: RawSources, tmp_path: Path, variant: str) -> None:
    import soundfile as sf

    from avloc.data.datasets import load_image

    over = {"seconds": 3.0, "fps": 4, "annot_fps": 2} if variant == "video" else {}
    cfg = small(variant, **over)
    n = 1 if variant == "video" else 4
    man = generate(raw.root, tmp_path, variant, "test", n, 0, cfg, preview=True)
    entries = read_manifest(man)  # validates boxes inside the frame, ids, sizes
    assert len(entries) == n
    assert man.with_name(f"{variant}_test_preview.png").stat().st_size > 0
    assert man.with_suffix(".config.json").is_file()
    for e in entries:
        assert e["split"] == "test" and e["size"] == [SIZE, SIZE] and set(e["speaker"]) <= {"yweweler"}
        for k in ("id", "audio", "boxes", "silent_boxes", "labels", "onscreen"):
            assert k in e
        wav, sr = sf.read(resolve_media(man, e["audio"]))
        assert sr == 16000
        if variant == "video":
            from avloc.io.media import probe

            info = probe(resolve_media(man, e["video"]))
            assert info.has_video and info.has_audio
            assert len(e["frames"]) == 3 * 2 and {"time", "boxes", "silent_boxes", "out_of_view"} <= set(e["frames"][0])
            assert wav.shape == (3 * 16000,)
        else:
            assert wav.shape == (3 * 16000,)
            assert load_image(resolve_media(man, e["image"])).shape == (SIZE, SIZE, 3)
            assert not Path(e["image"]).is_absolute()


# ----------------------------------------------------------------------------- torch dataset contract


def test_registered_dataset_contract(raw: RawSources) -> None:
    assert "digitscenes" in DATASETS.names()
    ds = DATASETS.create(
        "digitscenes", raw=str(raw.root), variant="multi", split="val", count=3, seed=1,
        image_cfg=ImageConfig(size=64), audio_cfg=AudioFrontendConfig(sample_rate=16000, window_seconds=2.5),
        scene=SceneConfig(size=SIZE),
    )
    assert len(ds) == 3
    x = ds[2]
    assert isinstance(x["id"], str) and x["image"].shape == (3, 64, 64) and x["image"].dtype == torch.float32
    assert 0 <= x["image"].min() and x["image"].max() <= 1
    assert x["audio"].shape == (40000,) and x["audio"].dtype == torch.float32
    assert x["boxes"].shape == (2, 4) and x["box_labels"].dtype == torch.long and x["box_labels"].shape == (2,)
    assert x["silent_boxes"].shape == (2, 4) and ((x["boxes"] >= 0) & (x["boxes"] <= 1)).all()
    assert sorted(x["box_labels"].tolist()) == sorted(x["labels"])
    assert x["onscreen"] is True and x["audible"] is True and x["scene_index"] == 2
    # visible_labels: the 4 digits in view (2 sounding + 2 silent), sorted
    s2 = ds.sampler.sample(2)
    assert x["visible_labels"] == sorted(s2.box_labels + s2.silent_labels) and len(x["visible_labels"]) == 4
    assert set(x["labels"]) < set(x["visible_labels"])
    with pytest.raises(IndexError):
        ds[3]
    # without an ImageConfig: native frame, boxes normalised by the frame size
    raw_ds = DigitScenes(raw, "single", "val", 2, seed=1, config=small("single"))
    s = raw_ds.sampler.sample(1)
    y = raw_ds[1]
    assert y["image"].shape == (3, SIZE, SIZE)
    assert torch.allclose(y["boxes"] * SIZE, torch.tensor(s.boxes, dtype=torch.float32))


def test_video_dataset_items(raw: RawSources) -> None:
    cfg = small("video", seconds=3.0, fps=4, annot_fps=2)
    ds = DigitScenes(raw, "video", "val", 2, seed=0, config=cfg)
    assert len(ds) == 2 * 6
    x = ds[7]
    assert x["scene_index"] == 1 and x["time"] == pytest.approx(3 / 4)
    assert x["audio"].shape == (48000,) and x["image"].shape == (3, SIZE, SIZE)
    assert isinstance(x["out_of_view"], bool)
    ann = ds.sampler.clip(1).annotation(3)  # frame 3 of clip 1 = item 7
    assert x["visible_labels"] == sorted(ann["box_labels"] + ann["silent_labels"])
    assert len(x["visible_labels"]) == len(x["boxes"]) + len(x["silent_boxes"])


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown DigitScenes variant 'nope'; valid: single, multi"):
        variant_config("nope")
    with pytest.raises(ConfigError, match=r"digitscenes single: unknown keys \['colour'\]"):
        variant_config("single", colour=1)
    with pytest.raises(ConfigError, match="annot_fps 3 must divide fps 8"):
        variant_config("video", annot_fps=3)
    with pytest.raises(ConfigError, match="n_visible"):
        variant_config("single", n_visible=(3, 2))
    cfg = variant_config("single")
    assert dataclasses.replace(cfg, n_visible=(2, 2)).n_visible == (2, 2)
