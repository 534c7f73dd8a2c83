"""Prepare steps on tiny fixtures written in the published layouts; bad entries are reported."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from avloc.cli.main import main
from avloc.data.prepare import prepare
from avloc.errors import DataError
from avloc.formats.manifest import read_manifest
from clips import write_clip


def write_frame(path: Path, w: int = 320, h: int = 240) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 127, dtype=np.uint8))


def write_audio(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(1600, dtype=np.float32), 16000)


def write_video(path: Path, seconds: float = 1.0, audio: bool = True) -> None:
    """A small clip in a layout's folder: 64 x 48 at 10 fps, silence (or no audio stream)."""
    write_clip(path, seconds=seconds, fps=10, size=(64, 48), picture="ramp", audio="silence" if audio else None)


def flickr_xml(boxes: list[list[int]]) -> str:
    objs = "".join(
        f"<object><bbox><annotator>{a}</annotator><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bbox></object>"
        for a, b in enumerate(boxes)
    )
    return f"<annotation>{objs}</annotation>"


def test_flickr_prepare_reports_bad_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "flickr"
    (root / "Annotations").mkdir(parents=True)
    for sid, boxes in {"1001": [[10, 10, 100, 100]] * 3, "1002": [[0, 0, 300, 50]], "1003": [[5, 5, 50, 50]], "1004": []}.items():
        (root / "Annotations" / f"{sid}.xml").write_text(flickr_xml(boxes))
        write_frame(root / "frames" / f"{sid}.jpg", 512, 512)
        if sid != "1003":
            write_audio(root / "audio" / f"{sid}.wav")
    out = tmp_path / "m" / "flickr.jsonl"
    rc = main(["data", "prepare", "flickr", "--root", str(root), "--out", str(out)])
    assert rc == 0
    assert "wrote 1 entries" in capsys.readouterr().out
    (e,) = read_manifest(out)
    assert e["id"] == "1001" and e["size"] == [512, 512] and e["boxes"][0] == [20.0, 20.0, 200.0, 200.0]
    assert e["box_annotator"] == [0, 1, 2] and (out.parent / e["image"]).is_file()
    report = (out.parent / "flickr.jsonl.report.txt").read_text()
    assert "1002" in report and "outside" in report  # box beyond the 256 frame
    assert "1003" in report and "no audio" in report
    assert "1004" in report and "empty box list" in report
    assert main(["data", "prepare", "flickr", "--root", str(root), "--out", str(out)]) == 2  # no --force


def test_vggss_frames_prepare(tmp_path: Path) -> None:
    root = tmp_path / "vggss"
    ann = [
        {"file": "a_000010", "class": "dog", "bbox": [[0.1, 0.2, 0.5, 0.6]]},
        {"file": "b_000020", "class": "cat", "bbox": [[0.5, 0.5, -2.8e16, 0.9]]},
        {"file": "c_000030", "class": "cow", "bbox": [[0.0, 0.0, 1.0, 1.0]]},
    ]
    root.mkdir()
    (root / "vggss.json").write_text(json.dumps(ann))
    for a in ann[:2]:
        write_frame(root / "frames" / f"{a['file']}.jpg")
        write_audio(root / "audio" / f"{a['file']}.wav")
    res = prepare("vggss", root, tmp_path / "v.jsonl")
    assert res.n_written == 1 and set(res.problems) == {"b_000020", "c_000030"}
    (e,) = read_manifest(tmp_path / "v.jsonl")
    assert e["boxes"] == [[32.0, 48.0, 160.0, 144.0]] and e["class"] == "dog"


def test_music_prepare(tmp_path: Path) -> None:
    root = tmp_path / "music"
    root.mkdir()
    (root / "music.json").write_text(
        json.dumps([{"id": "duet1", "bbox": [[0, 0, 0.5, 1], [0.5, 0, 1, 1]], "labels": [2, 7], "sounding": [True, False]}])
    )
    write_frame(root / "frames" / "duet1.jpg", 200, 100)
    write_audio(root / "audio" / "duet1.wav")
    prepare("music", root, tmp_path / "mu.jsonl")
    (e,) = read_manifest(tmp_path / "mu.jsonl")
    assert e["boxes"] == [[0.0, 0.0, 100.0, 100.0]] and e["box_labels"] == [2] and e["silent_labels"] == [7]
    assert e["silent_boxes"] == [[100.0, 0.0, 200.0, 100.0]]


def test_folder_and_avsol_prepare(tmp_path: Path) -> None:
    root = tmp_path / "vids"
    write_video(root / "sub" / "clip.mp4")
    write_video(root / "mute.mp4", audio=False)
    (root / "broken.mp4").write_bytes(b"not a video")
    res = prepare("folder", root, tmp_path / "f.jsonl")
    (e,) = read_manifest(tmp_path / "f.jsonl")
    assert e["id"] == "sub__clip" and e["size"] == [64, 48] and 0.5 < e["duration"] < 1.6
    assert set(res.problems) == {"mute", "broken"}
    ave = tmp_path / "ave"
    write_video(ave / "videos" / "v1.mp4")
    frames = [{"index": 0, "objects": [{"box": [0, 0, 32, 24], "tag": "sounding"}]}, {"index": 5, "objects": [{"box": [0, 0, 1, 1], "tag": "out-of-view"}]}]
    vids = [{"id": "v1", "fps": 10, "size": [64, 48], "frames": frames}, {"id": "missing", "fps": 10, "frames": frames}]
    (ave / "avsol.json").write_text(json.dumps({"videos": vids}))
    res = prepare("avsol", ave, tmp_path / "a.jsonl")
    (e,) = read_manifest(tmp_path / "a.jsonl")
    assert list(res.problems) == ["missing"]
    assert e["frames"][0]["boxes"] == [[0.0, 0.0, 32.0, 24.0]] and e["frames"][1]["out_of_view"] is True
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no videos"):
        prepare("folder", empty, tmp_path / "x.jsonl")
