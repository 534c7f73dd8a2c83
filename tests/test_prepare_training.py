"""Training-set prepare steps on tiny fixtures in the layouts people download, and the pre-extraction step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from avloc.cli.main import main
from avloc.data.datasets import ManifestDataset
from avloc.data.prepare import prepare
from avloc.errors import DataError
from avloc.formats.manifest import read_manifest
from test_prepare import write_audio, write_frame, write_video

YT = ["abcdefghijk", "ABCDEFGHIJK", "a-b_c-d_e-f", "zzzzzzzzzzz"]


def test_vggsound_clips_with_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "vggsound"
    write_video(root / "video" / f"{YT[0]}_30.mp4")  # unpadded start: the same clip as the index's 30
    write_video(root / "video" / f"{YT[1]}_000010.mp4", audio=False)  # unreadable: no audio stream
    write_video(root / "video" / "not-a-youtube-name.mp4")  # mismatched name
    write_video(root / "video" / f"{YT[3]}_000005.mp4")  # not in the index
    (root / "video" / f"{YT[2]}_000000.mp4").write_bytes(b"garbage")  # unreadable
    (root / "vggsound.csv").write_text(
        f"{YT[0]},000030,dog barking,train\n{YT[1]},10,cat,test\n{YT[2]},0,cow,train\nmissingidxx,40,owl,train\n"
    )
    out = tmp_path / "vs.jsonl"
    assert main(["data", "prepare", "vggsound", "--root", str(root), "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "wrote 1 entries" in summary and "missing 1" in summary and "mismatched 2" in summary and "unreadable 2" in summary
    (e,) = read_manifest(out)
    assert e["id"] == f"{YT[0]}_000030" and e["class"] == "dog barking" and e["split"] == "train"
    assert e["size"] == [64, 48] and 0.4 < e["time"] < 0.6 and (out.parent / e["video"]).is_file()
    rep = (tmp_path / "vs.jsonl.report.txt").read_text()
    assert "5 bad entries (mismatched 2, missing 1, unreadable 2)" in rep
    assert "missingidxx_000040: missing" in rep and "not-a-youtube-name: mismatched" in rep
    assert f"{YT[3]}_000005: mismatched" in rep and f"{YT[1]}_000010: unreadable" in rep
    # the manifest loads as a training set
    ds = ManifestDataset(out)
    assert ds[0]["image"].shape == (3, 224, 224) and ds[0]["audio"].ndim == 1


def test_vggsound_and_flickr_extracted_frames_layout(tmp_path: Path) -> None:
    root = tmp_path / "vs"
    for name in (f"{YT[0]}_000010", f"{YT[1]}_000020"):
        write_frame(root / "frames" / f"{name}.jpg")
    write_audio(root / "audio" / f"{YT[0]}_000010.wav")
    write_audio(root / "audio" / f"{YT[2]}_000030.wav")  # audio without its frame
    res = prepare("vggsound", root, tmp_path / "v.jsonl")
    assert res.n_written == 1 and res.kinds() == {"missing": 2}
    (e,) = read_manifest(tmp_path / "v.jsonl")
    assert e["image"].endswith(".jpg") and e["audio"].endswith(".wav") and e["size"] == [320, 240]
    fl = tmp_path / "flickr"
    write_video(fl / "videos" / "1234567.mp4")
    write_video(fl / "videos" / "7654321.mp4")
    write_video(fl / "videos" / "abc.mp4")
    (fl / "flickr_train.txt").write_text("1234567\n99999\n")
    res = prepare("flickr-train", fl, tmp_path / "f.jsonl")
    assert res.n_written == 1 and res.kinds() == {"missing": 1, "mismatched": 2}


def test_music_solo_and_ave(tmp_path: Path) -> None:
    mu = tmp_path / "music"
    write_video(mu / "violin" / f"{YT[0]}.mp4")
    write_video(mu / "flute" / f"{YT[1]}.mp4")
    (mu / "MUSIC_solo_videos.json").write_text(f'{{"videos": {{"violin": ["{YT[0]}"], "flute": ["{YT[1]}", "{YT[2]}"]}}}}')
    res = prepare("music-solo", mu, tmp_path / "m.jsonl")
    assert res.n_written == 2 and res.kinds() == {"missing": 1}
    assert {e["class"] for e in read_manifest(tmp_path / "m.jsonl")} == {"violin", "flute"}
    ave = tmp_path / "AVE_Dataset"
    write_video(ave / "AVE" / f"{YT[0]}.mp4")
    write_video(ave / "AVE" / f"{YT[1]}.mp4")
    (ave / "Annotations.txt").write_text(
        f"Category&VideoID&Quality&StartTime&EndTime\nChurch bell&{YT[0]}&good&0&0.6\nDog&{YT[1]}&good&0&9\nBus&{YT[3]}&good&1&2\n"
    )
    (ave / "testSet.txt").write_text(f"Church bell&{YT[0]}&good&0&0.6\n")
    res = prepare("ave", ave, tmp_path / "a.jsonl")
    assert res.n_written == 1 and res.kinds() == {"missing": 1, "mismatched": 1}
    (e,) = read_manifest(tmp_path / "a.jsonl")
    assert e["class"] == "Church bell" and e["split"] == "test" and e["event"] == [0.0, 0.6] and e["time"] == 0.3
    assert "ends after the clip" in res.problems[YT[1]][0]
    with pytest.raises(DataError, match=r"Annotations\.txt"):
        prepare("ave", mu, tmp_path / "x.jsonl")


def test_extract_frames_and_audio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "vggsound"
    write_video(root / f"{YT[0]}_000001.mp4", seconds=2.0)
    write_video(root / f"{YT[1]}_000002.mp4")
    man = tmp_path / "clips.jsonl"
    prepare("vggsound", root, man)
    # one clip vanishes after prepare: reported by extract, not skipped silently
    (root / f"{YT[1]}_000002.mp4").unlink()
    out = tmp_path / "x"
    assert main(["data", "extract", "--manifest", str(man), "--out", str(out), "--size", "32", "--sample-rate", "8000"]) == 0
    assert "extracted 1 entries" in capsys.readouterr().out
    (e,) = read_manifest(out / "manifest.jsonl")
    assert "video" not in e and e["size"] == [43, 32] and e["audio_time"] == pytest.approx(1.0, abs=0.05)
    wav, sr = sf.read(out / e["audio"])
    assert sr == 8000 and abs(len(wav) - 16000) < 1200
    clips = ManifestDataset(man)
    ref = clips[[c["id"] for c in clips.entries].index(e["id"])]
    got = ManifestDataset(out / "manifest.jsonl")[0]
    assert got["image"].shape == ref["image"].shape and np.allclose(got["image"].numpy(), ref["image"].numpy(), atol=0.1)
    assert "unreadable" in (out / "manifest.jsonl.report.txt").read_text()


def test_cli_formats_are_the_registered_steps() -> None:
    from avloc.cli.data_prepare import FORMATS
    from avloc.data.prepare import STEPS

    assert sorted(FORMATS) == sorted(STEPS)
