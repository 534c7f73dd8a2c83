"""Issue 18, item 9 and the 1x1 video: display-matrix rotation in probe, analysis, JSON and overlay;
pictures too small to analyse are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avloc.cli.main import main
from avloc.io.media import iter_frames, probe
from clips import write_clip


def _rotated(path: Path, degrees: int, w: int = 96, h: int = 64, n: int = 20, audio: bool = True) -> Path:
    """A coded w x h clip with a display matrix turning it ``degrees`` counter-clockwise; a bright block
    at the coded top-left corner, a tone."""
    img = np.full((h, w, 3), 40, np.uint8)
    img[: h // 4, : w // 4] = 250
    return write_clip(path, fps=10, picture=[img] * n, audio="tone" if audio else None, rotation=degrees)


def _bright(img: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(img[..., 0] > 200)
    return float(xs.mean()) / img.shape[1], float(ys.mean()) / img.shape[0]


@pytest.mark.parametrize(("degrees", "corner"), [(-90, (1, 0)), (90, (0, 1)), (180, (1, 1)), (0, (0, 0))])
def test_probe_and_frames_follow_the_display_matrix(tmp_path, degrees: int, corner: tuple[int, int]) -> None:
    v = _rotated(tmp_path / "r.mp4", degrees)
    info = probe(v)
    turned = degrees in (90, -90)
    assert info.rotation == degrees and (info.coded_width, info.coded_height) == (96, 64)
    assert (info.width, info.height) == ((64, 96) if turned else (96, 64))
    fr = next(iter(iter_frames(v, fps=5)))
    assert fr.image.shape[:2] == (info.height, info.width)
    x, y = _bright(fr.image)  # the coded top-left block, where the display puts it
    assert (round(x), round(y)) == corner, (x, y)
    small = next(iter(iter_frames(v, fps=5, size=(info.width // 2, info.height // 2))))
    assert small.image.shape[:2] == (info.height // 2, info.width // 2)


def test_probe_cli_reports_coded_size_rotation_and_display_size(tmp_path, capsys) -> None:
    v = _rotated(tmp_path / "phone.mp4", -90)
    assert main(["probe", str(v)]) == 0
    out = capsys.readouterr().out
    assert "video 64x96 (coded 96x64, rotation -90 deg)" in out
    assert main(["probe", str(v), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["width"], d["height"], d["coded_width"], d["coded_height"], d["rotation"]) == (64, 96, 96, 64, -90)


def test_localize_works_in_display_orientation(tmp_path) -> None:
    v = _rotated(tmp_path / "phone.mp4", -90)
    out = tmp_path / "o"
    assert main(["localize", str(v), "--out", str(out), "--quiet", "--save-heatmaps", "--model", "objectness"]) == 0
    doc = json.loads((out / "phone.avloc.json").read_text())
    assert (doc["input"]["width"], doc["input"]["height"], doc["input"]["rotation"]) == (64, 96, -90)
    for f in doc["frames"]:
        assert 0 <= f["peak"]["x"] <= 64 and 0 <= f["peak"]["y"] <= 96
        assert all(b["x2"] <= 64 and b["y2"] <= 96 for b in f["boxes"])
    with np.load(out / "phone.heatmaps.npz") as z:
        mh, mw = z["maps"].shape[1:]
    assert mh > mw  # portrait maps
    ov = probe(out / "phone.avloc.mp4")
    assert ov.rotation == 0 and ov.height > ov.width  # the overlay plays upright, with no matrix to obey
    fr = next(iter(iter_frames(out / "phone.avloc.mp4", fps=1)))
    x, y = _bright(fr.image)
    assert x > 0.5 and y < 0.5  # the block is at the top right of the displayed picture, in the overlay too


@pytest.mark.parametrize("side", [1, 4])
def test_too_small_to_analyse(tmp_path, capsys, side: int) -> None:
    import av

    v = tmp_path / f"tiny{side}.mkv"
    with av.open(str(v), "w", format="matroska") as c:
        vs = c.add_stream("mpeg4", rate=10)
        vs.width = vs.height = side
        vs.pix_fmt = "yuv420p"
        for i in range(10):
            fr = av.VideoFrame.from_ndarray(np.full((side, side, 3), 100, np.uint8), format="rgb24")
            fr.pts = i
            for p in vs.encode(fr):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
    rc = main(["localize", str(v), "--out", str(tmp_path / "o"), "--quiet", "--visual-only"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"{side}x{side} pixels is too small to analyse" in err[0]
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())
