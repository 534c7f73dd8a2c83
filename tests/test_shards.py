"""Shard sets (``avloc data extract --format shards``): round trip, damage, configs, and the loader with workers."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from avloc.cli.main import main
from avloc.data.collate import collate_samples, expand_compact
from avloc.data.datasets import ManifestDataset, dataset_from_spec
from avloc.data.loader import Loader
from avloc.data.prepare.extract import extract
from avloc.data.prepare.shards import ShardConfig
from avloc.data.shards import ShardDataset
from avloc.errors import ConfigError, DataError
from avloc.formats.manifest import read_manifest, write_manifest
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig
from clips import clip_audio, write_clip

S, RATE, WINDOW = 32, 8000, 1.0  # picture side, audio rate, window (s) of the sets made here
IMAGE, AUDIO = ImageConfig(size=S, mode="squash"), AudioFrontendConfig(sample_rate=RATE, window_seconds=WINDOW)
N_CLIPS = 5


def _source(root: Path) -> Path:
    """A manifest of video entries: noise clips (so every picture differs), one with boxes and class labels."""
    entries = []
    for i in range(N_CLIPS):
        p = write_clip(root / f"clip{i}.mp4", seconds=2.0, fps=10, size=(48, 36), picture="noise",
                       audio=clip_audio(2 * RATE, "noise", seed=i), sample_rate=RATE, seed=i)
        e: dict[str, Any] = {"id": f"clip{i}", "video": p.name, "time": 0.3 + 0.3 * i, "duration": 2.0, "size": [48, 36],
                             "class": "dog" if i % 2 else "cat"}
        if i == 1:
            e.update(boxes=[[4, 6, 30, 28], [40, 2, 47, 10]], box_labels=[3, 5], labels=[3, 5], onscreen=True)
        entries.append(e)
    write_manifest(root / "source.jsonl", entries)
    return root / "source.jsonl"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source manifest, shard set folder): 5 samples in shards of 2."""
    root = tmp_path_factory.mktemp("shards")
    src = _source(root)
    extract(src, root / "set", size=S, sample_rate=RATE, format="shards",
            shards=ShardConfig(window_seconds=WINDOW, samples_per_shard=2))
    return src, root / "set"


def test_round_trip_gives_the_stored_samples(made: tuple[Path, Path]) -> None:
    src, out = made
    ref = ManifestDataset(src, IMAGE, AUDIO)
    ds = ShardDataset(out, IMAGE, AUDIO)
    assert len(ds) == N_CLIPS and [s.path for s in ds.index.shards] == [f"shards/00000{k}.tar" for k in range(3)]
    members = {}
    for shard in ds.index.shards:  # any tar reader opens the shards: WebDataset's <key>.jpg / .npy / .json, in order
        with tarfile.open(out / shard.path) as tar:
            names = tar.getnames()
            assert names == [f"{k}.{x}" for k in dict.fromkeys(n.split(".")[0] for n in names) for x in ("jpg", "npy", "json")]
            members.update({n: tar.extractfile(n).read() for n in names})  # type: ignore[union-attr]
    for i, entry in enumerate(read_manifest(out / "manifest.jsonl")):
        s, m, key = ds[i], ref[i], entry["shard"]["key"]
        assert s["id"] == m["id"] == entry["id"] == f"clip{i}"
        # audio: the source's window, rounded to int16 -- exactly
        assert torch.equal(s["audio"], torch.round(m["audio"] * 32768).clamp(-32768, 32767) / 32768)
        window = np.load(io.BytesIO(members[f"{key}.npy"]))
        assert window.dtype == np.int16 and torch.equal(s["audio"], torch.from_numpy(window).float() / 32768)
        # picture: what Pillow decodes from the stored JPEG (an independent reader), and the source's picture
        # within JPEG's loss (quality 95, chroma subsampled; noise is its worst case)
        pil = np.array(Image.open(io.BytesIO(members[f"{key}.jpg"])).convert("RGB"))
        assert torch.equal(s["image"], torch.from_numpy(pil).permute(2, 0, 1).float() / 255)
        assert (s["image"] - m["image"]).abs().mean() < 8 / 255
        # annotations: the source's, boxes in the model input to the stored pixels' 3 decimals
        torch.testing.assert_close(s["boxes"], m["boxes"], atol=1e-3 / S, rtol=0)
        for k in ("box_labels", "labels", "onscreen", "audible", "image_id"):
            assert (torch.equal(s[k], m[k]) if isinstance(s[k], torch.Tensor) else s[k] == m[k]), k
        meta = json.loads(members[f"{key}.json"])
        assert meta == {k: v for k, v in entry.items() if k != "shard"} and meta["size"] == [S, S]
    assert read_manifest(out / "manifest.jsonl")[1]["boxes"] == [[2.667, 5.333, 20.0, 24.889], [26.667, 1.778, 31.333, 8.889]]


def test_the_same_manifest_gives_the_same_bytes(made: tuple[Path, Path], tmp_path: Path) -> None:
    src, out = made
    extract(src, tmp_path, size=S, sample_rate=RATE, workers=2, format="shards",
            shards=ShardConfig(window_seconds=WINDOW, samples_per_shard=2))
    for name in ("shards.json", "manifest.jsonl", "shards/000000.tar", "shards/000001.tar", "shards/000002.tar"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def _batches(ds: Any, workers: int, batch_size: int = 2) -> list[dict[str, Any]]:
    return list(Loader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_samples))


@pytest.mark.parametrize("slot_bytes", [1, 1 << 20])
def test_two_workers_give_what_no_workers_give(made: tuple[Path, Path], slot_bytes: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Same samples, same order, same values; with every batch tensor in reused slots (slot_bytes=1) too, and
    every batch still intact after the slots have been reused (each is the caller's own copy)."""
    monkeypatch.setattr("avloc.data.loader.SLOT_MIN_BYTES", slot_bytes)  # the workers are forked: they see it
    out = made[1]
    plain = _batches(ShardDataset(out, IMAGE, AUDIO), 0)
    for compact in (False, True):
        two = _batches(ShardDataset(out, IMAGE, AUDIO, compact=compact), 2)
        assert [b["id"] for b in two] == [b["id"] for b in plain] == [["clip0", "clip1"], ["clip2", "clip3"], ["clip4"]]
        for a, b in zip(plain, two, strict=True):
            if compact:
                assert b["image"].dtype == torch.uint8 and b["audio"].dtype == torch.int16
                b = expand_compact(b)
                assert b["image"].is_contiguous()
            for k, v in a.items():
                assert (torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else
                        all(torch.equal(x, y) for x, y in zip(v, b[k], strict=True)) if isinstance(v[0], torch.Tensor)
                        else v == b[k]), k


def test_a_pass_broken_off_leaves_the_loader_usable(made: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("avloc.data.loader.SLOT_MIN_BYTES", 1)
    loader = Loader(ShardDataset(made[1], IMAGE, AUDIO), batch_size=1, num_workers=2, collate_fn=collate_samples)
    for _ in loader:
        break  # the workers hold slots; the pass must still shut down
    assert [b["id"] for b in loader] == [[f"clip{i}"] for i in range(N_CLIPS)]


def _copy(made: tuple[Path, Path], tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(made[1], tmp_path / "set"))


def test_a_truncated_shard_is_one_error_naming_it(made: tuple[Path, Path], tmp_path: Path) -> None:
    out = _copy(made, tmp_path)
    shard = out / "shards" / "000001.tar"
    shard.write_bytes(shard.read_bytes()[:-1000])
    ds = ShardDataset(out, IMAGE, AUDIO)
    assert ds[0]["id"] == "clip0"  # the other shards still read
    for workers in (0, 2):
        with pytest.raises(DataError) as info:
            _batches(ds, workers)
        msg = str(info.value)
        assert msg.startswith(f"{shard}: damaged shard:") and "re-run `avloc data extract" in msg and "\n" not in msg


def _damage(out: Path, i: int, member: str, at: int, data: bytes) -> None:
    """Overwrite bytes ``at`` (from the member's start) of sample ``i``'s ``member`` in its shard, size kept."""
    ref = read_manifest(out / "manifest.jsonl")[i]["shard"]
    p = out / ref["path"]
    raw = bytearray(p.read_bytes())
    start = ref[member][0] + at
    raw[start : start + len(data)] = data
    p.write_bytes(bytes(raw))


@pytest.mark.parametrize(("member", "at", "verify", "match"), [
    ("jpg", 0, False, r"clip?: damaged picture: it does not decode as JPEG"),  # the JPEG's start marker gone
    ("npy", 8, False, r"damaged audio window: its \.npy header is not that of 8000 int16 samples"),
    ("jpg", 400, True, r"damaged picture \(CRC-32 mismatch\)"),  # inside the picture's data: only the CRC sees it
    ("npy", 2000, True, r"damaged audio window \(CRC-32 mismatch\)"),
])
def test_a_damaged_member_is_one_error(made: tuple[Path, Path], tmp_path: Path, member: str, at: int, verify: bool,
                                       match: str) -> None:
    out = _copy(made, tmp_path)
    _damage(out, 3, member, at, b"\x00\x01\x02\x03")
    ds = ShardDataset(out, IMAGE, AUDIO, verify=verify)
    ds[2]  # its shard-mate is intact
    with pytest.raises(DataError, match=match.replace("clip?", "sample 000000003")) as info:
        ds[3]
    assert str(info.value).startswith(str(out / "shards" / "000001.tar")) and "\n" not in str(info.value)


def test_bad_indexes_and_references_are_refused(made: tuple[Path, Path], tmp_path: Path) -> None:
    out = _copy(made, tmp_path)
    index = json.loads((out / "shards.json").read_text())
    (out / "shards.json").write_text(json.dumps({**index, "audio": {**index["audio"], "dtype": "float64"}}))
    with pytest.raises(DataError, match=r"shards\.json: not a valid shard set index: \$\.audio\.dtype"):
        ShardDataset(out, IMAGE, AUDIO)
    (out / "shards.json").write_text(json.dumps({**index, "shards": [{**index["shards"][0], "path": "../x.tar"}]}))
    with pytest.raises(DataError, match=r"not a valid shard set index: \$\.shards\[0\]\.path"):
        ShardDataset(out, IMAGE, AUDIO)
    (out / "shards.json").write_text(json.dumps(index))
    entries = read_manifest(out / "manifest.jsonl")
    entries[4]["shard"]["jpg"][0] = 10**9  # beyond its shard
    write_manifest(out / "manifest.jsonl", entries)
    with pytest.raises(DataError, match=r"manifest\.jsonl:5 \(id 'clip4'\): shard\.jpg: bytes 1000000000\.\.\d+ lie outside"):
        ShardDataset(out, IMAGE, AUDIO)


def test_configs_the_set_was_not_made_for_are_refused(made: tuple[Path, Path]) -> None:
    out = made[1]
    bad = [(ImageConfig(size=S, mode="crop", resize=S), AUDIO, r"holds squash 32 px pictures; the model wants crop 32"),
           (ImageConfig(size=64), AUDIO, "the model wants squash 64 px"),
           (ImageConfig(size=S, frames=4), AUDIO, "one picture per sample"),
           (IMAGE, AudioFrontendConfig(sample_rate=16000, window_seconds=WINDOW), "at 8000 Hz; the model wants 16000"),
           (IMAGE, AudioFrontendConfig(sample_rate=RATE, window_seconds=2.0), "stores 1 s windows; the model wants 2 s")]
    for image, audio, match in bad:
        with pytest.raises(ConfigError, match=match):
            ShardDataset(out, image, audio)
    with pytest.raises(ConfigError, match="zero padding"):
        ShardDataset(out, IMAGE, AUDIO, audio_pad="wrap")
    # a shorter window is the middle of the stored one, as window_at cuts it from the track
    short = AudioFrontendConfig(sample_rate=RATE, window_seconds=0.25)
    got = ShardDataset(out, IMAGE, short)[3]["audio"]
    want = ManifestDataset(made[0], IMAGE, short)[3]["audio"]
    assert torch.equal(got, torch.round(want * 32768) / 32768)


def test_specs_resolve_shard_sets(made: tuple[Path, Path]) -> None:
    out = made[1]
    for spec in (f"shards:{out}", str(out / "manifest.jsonl"), f"manifest:{out / 'manifest.jsonl'}"):
        ds = dataset_from_spec(spec, image_cfg=IMAGE, audio_cfg=AUDIO, count=3, classes="sorted")
        assert isinstance(ds, ShardDataset) and len(ds) == 3 and ds[1]["labels"] == [3, 5] and ds[2]["labels"] == [0]
    with pytest.raises(ConfigError, match=r"unknown dataset arguments \['pool'\]; a shard set takes"):
        dataset_from_spec(f"shards:{out}", image_cfg=IMAGE, audio_cfg=AUDIO, pool=3)
    with pytest.raises(DataError, match="is the manifest of a shard set"):
        ManifestDataset(out / "manifest.jsonl", IMAGE, AUDIO)
    assert ShardDataset(out, IMAGE, AUDIO).feature_cache_keys() == [f"clip{i}" for i in range(N_CLIPS)]


def test_cli_extracts_shards_and_reports_bad_clips(made: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    src = made[0]
    entries = read_manifest(src)
    entries[2]["video"] = str(tmp_path / "gone.mp4")
    write_manifest(tmp_path / "m.jsonl", [{**e, "video": str(src.parent / e["video"])} if i != 2 else e
                                         for i, e in enumerate(entries)])
    args = ["data", "extract", "--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "x"), "--format",
            "shards", "--size", str(S), "--sample-rate", str(RATE), "--window-seconds", str(WINDOW), "--workers", "2"]
    assert main(args) == 0
    assert "extracted 4 entries" in capsys.readouterr().out
    assert "clip2: unreadable: " in (tmp_path / "x" / "manifest.jsonl.report.txt").read_text()
    assert [s["id"] for s in ShardDataset(tmp_path / "x", IMAGE, AUDIO)] == ["clip0", "clip1", "clip3", "clip4"]
    assert main(args) == 2 and "pass --force" in capsys.readouterr().err
    files = ["data", "extract", "--manifest", str(src), "--out", str(tmp_path / "f"), "--window-seconds", "1"]
    assert main(files) == 2 and "--window-seconds: options of --format shards" in capsys.readouterr().err


def test_a_malformed_or_missing_index_is_one_error(made: tuple[Path, Path], tmp_path: Path) -> None:
    out = _copy(made, tmp_path)
    index = json.loads((out / "shards.json").read_text())
    bad = {
        '{"schema_version": "1.0", "format": ': r"shards\.json: not valid JSON",  # cut short while written by hand
        "[1, 2]": r"not a valid shard set index: \$: \[1, 2\] is not of type 'object'",
        json.dumps({**index, "samples": 7}): r"\$\.samples: 7 is not the sum of the shards' samples",
        json.dumps({**index, "version": 2}): r"not a valid shard set index: .*'version' was unexpected",
        json.dumps({**index, "shards": index["shards"][:2], "samples": 4}): r"manifest\.jsonl: 5 entries, the shard index says 4",
    }
    for text, match in bad.items():
        (out / "shards.json").write_text(text)
        with pytest.raises(DataError, match=match) as info:
            ShardDataset(out, IMAGE, AUDIO)
        assert "\n" not in str(info.value)
    (out / "shards.json").unlink()
    with pytest.raises(DataError, match=r"no shard set index here \(written by `avloc data extract --format shards`\)"):
        ShardDataset(out, IMAGE, AUDIO)


def test_writing_is_atomic(tmp_path: Path) -> None:
    """A shard is renamed into place only when complete: an error mid-shard leaves the finished shards, no partial
    one and no temporary file; an extraction that fails writes no index (a set without ``shards.json`` is
    incomplete, and the reader says so)."""
    from avloc.io.shards import ShardWriter

    sample = {"jpg": b"\xff\xd8" + bytes(100), "npy": bytes(200), "json": b"{}"}
    with pytest.raises(RuntimeError, match="disk full"), ShardWriter(tmp_path, samples_per_shard=2) as w:
        for _ in range(3):
            w.add(sample)
        raise RuntimeError("disk full")
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["000000.tar"]
    with tarfile.open(tmp_path / "shards" / "000000.tar") as tar:
        assert tar.getnames() == [f"00000000{k}.{x}" for k in range(2) for x in ("jpg", "npy", "json")]
    write_manifest(tmp_path / "none.jsonl", [{"id": "a", "video": str(tmp_path / "gone.mp4"), "time": 0.5}])
    with pytest.raises(DataError, match=r"no entry of .* could be extracted"):
        extract(tmp_path / "none.jsonl", tmp_path / "set", size=S, sample_rate=RATE, format="shards",
                shards=ShardConfig(window_seconds=WINDOW))
    assert not (tmp_path / "set" / "shards.json").exists()


def test_training_on_compact_batches_is_training_on_float_ones(made: tuple[Path, Path], tmp_path: Path) -> None:
    """The training loop turns compact batches (uint8 pictures, int16 audio) into the float inputs: the same seed
    gives the same weights as the float samples (workers give the same batches: the test above)."""
    from safetensors.torch import load_file

    from avloc.engine.train import OptimConfig, TrainConfig, train
    from avloc.methods import create_method
    from avloc.methods.lvs import LVSConfig

    cfg = LVSConfig(audio=AUDIO, image=IMAGE, visual_encoder="small_cnn", audio_encoder="small_cnn_audio",
                    visual_encoder_kwargs={"channels": [8, 16], "out_stride": 4},
                    audio_encoder_kwargs={"channels": [8, 16], "time_stride": 2}, embed_dim=8, visual_proj_hidden=8,
                    freeze_visual=False)
    weights = []
    for compact in (False, True):
        torch.manual_seed(0)
        out = tmp_path / f"run{int(compact)}"
        run = TrainConfig(steps=2, batch_size=2, optim=OptimConfig(lr=1e-2, warmup_steps=1), val_every=0, ckpt_every=0,
                          log_every=1, progress=False, device="cpu")
        train(create_method("lvs", cfg), ShardDataset(made[1], IMAGE, AUDIO, compact=compact), out, run)
        weights.append(load_file(out / "last.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    for k, v in weights[0].items():
        torch.testing.assert_close(weights[1][k], v, rtol=0, atol=0, msg=k)
