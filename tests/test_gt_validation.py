"""Issue 18, items 14-17: malformed ground truth and manifests are refused in ``eval`` and ``data prepare``
with one line naming the file, the entry and the field; null / NaN boxes are never scored."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from avloc.cli.main import main
from avloc.errors import DataError
from avloc.formats.manifest import read_manifest
from avloc.metrics.groundtruth import load_gt

# name: (file name, content (str or bytes), words the message must hold)
CASES: dict[str, tuple[str, str | bytes, list[str]]] = {
    "vggss-object-not-list": ("g.json", json.dumps({"file": "a", "class": "dog", "bbox": [[0, 0, 1, 1]]}),
                              ["neither AVSOL", "list of entries"]),
    "vggss-string-coords": ("g.json", json.dumps([{"file": "a", "class": "dog", "bbox": [["0", "0", "1", "1"]]}]),
                            ["entry 0 (file 'a')", "'bbox[0]'", "x1", "not a finite number"]),
    "vggss-null-coord": ("g.json", json.dumps([{"file": "a", "class": "dog", "bbox": [[0.1, None, 0.5, 0.5]]}]),
                         ["entry 0 (file 'a')", "'bbox[0]'", "y1 = null"]),
    "vggss-nan-coord": ("g.json", '[{"file": "a", "class": "dog", "bbox": [[0.1, NaN, 0.5, 0.5]]}]',
                        ["NaN is not valid JSON"]),
    "vggss-null-box": ("g.json", json.dumps([{"file": "a", "class": "dog", "bbox": [None]}]), ["'bbox[0]'"]),
    "binary": ("g.json", bytes(range(256)) * 4, ["not a text", "binary"]),
    "avsol-frame-no-index-or-time": (
        "g.json", json.dumps({"videos": [{"id": "v", "fps": 10, "frames": [{"objects": []}]}]}),
        ["entry 0 (id 'v')", "frames[0]", "'index'", "'time'"]),
    "avsol-string-fps": ("g.json", json.dumps({"videos": [{"id": "v", "fps": "ten", "frames": []}]}), ["'fps'"]),
    "avsol-null-box": ("g.json", json.dumps({"videos": [{"id": "v", "frames": [{"index": 0, "objects": [
        {"box": [0, 0, None, 4], "tag": "sounding"}]}]}]}), ["frames[0].objects[0]", "x2 = null"]),
    "music-size-zero": ("g.json", json.dumps([{"id": "a", "boxes": [[0, 0, 4, 4]], "size": [0, 0]}]),
                        ["entry 0 (id 'a')", "'size'", "W, H > 0"]),
    "music-list-of-integers": ("g.json", json.dumps([1, 2, 3]), ["entry 0", "must be a JSON object"]),
    "music-string-labels": ("g.json", json.dumps([{"id": "a", "boxes": [[0, 0, 0.5, 0.5]], "labels": ["x"]}]),
                            ["'labels'", "integers"]),
    "music-sounding-count": ("g.json", json.dumps([{"id": "a", "boxes": [[0, 0, 0.5, 0.5]], "sounding": [True, False]}]),
                             ["'sounding'", "2 values for 1 boxes"]),
    "music-mapping-of-strings": ("g.json", json.dumps({"a": "b"}), ["neither AVSOL"]),
    "empty-list": ("g.json", "[]", ["no entries"]),
    "manifest-null-box": ("m.jsonl", json.dumps({"id": "a", "image": "a.jpg", "size": [8, 8], "boxes": [[0, None, 4, 4]]}),
                          ["m.jsonl:1 (id 'a')", "boxes"]),
    "manifest-nan-box": ("m.jsonl", '{"id": "a", "image": "a.jpg", "size": [8, 8], "boxes": [[0, NaN, 4, 4]]}',
                         ["m.jsonl:1", "NaN"]),
    "manifest-bool-box": ("m.jsonl", json.dumps({"id": "a", "image": "a.jpg", "size": [8, 8], "boxes": [[0, True, 4, 4]]}),
                          ["boxes"]),
    "manifest-binary": ("m.jsonl", b"\xff\xfe\x00\x01" * 50, ["not a text", "binary"]),
    "manifest-frames-not-objects": ("m.jsonl", json.dumps({"id": "a", "video": "a.mp4", "size": [8, 8], "frames": [3]}),
                                    ["frames[0] must be an object"]),
    "manifest-unhashable-id": ("m.jsonl", json.dumps({"id": {"x": 1}, "image": "a.jpg"}), ["missing string 'id'"]),
    # issue 30: number ranges, depth, times, CSV
    "dsol-1e308": ("g.json", json.dumps({"f/1.jpg": {"bbox": [{"normbox": [0.1, 0.1, 1e308, 0.2], "category_id": 1}]}}),
                   ["f/1.jpg", "'bbox.w'", "at most 1"]),
    "dsol-negative-width": ("g.json", json.dumps({"f/1.jpg": {"bbox": [{"normbox": [0.5, 0.1, -0.2, 0.2], "category_id": 1}]}}),
                            ["'bbox.w'", "must not be negative"]),
    "dsol-zero-height": ("g.json", json.dumps({"f/1.jpg": {"bbox": [{"normbox": [0.5, 0.1, 0.2, 0], "category_id": 1}]}}),
                         ["has no area"]),
    "dsol-huge-category": ("g.json", json.dumps({"f/1.jpg": {"bbox": [{"normbox": [0.5, 0.1, 0.2, 0.2],
                                                                        "category_id": 10**40}]}}), ["'category_id'", "class index"]),
    "qian-negative-width": ("g.json", json.dumps({"annotations": [{"image_id": 3, "category_id": 0, "bbox": [0.5, 0.5, -1, 0.1]}]}),
                            ["3: box 0", "must not be negative"]),
    "qian-object-image-id": ("g.json", json.dumps({"annotations": [{"image_id": {"a": 1}, "category_id": 0,
                                                                     "bbox": [0.5, 0.5, 0.1, 0.1]}]}), ["'image_id'"]),
    "vggss-1e308": ("g.json", json.dumps([{"file": "a", "class": "dog", "bbox": [[0.1, 0.1, 1e308, 0.5]]}]),
                    ["x2 = 1e+308 is not a coordinate"]),
    "vggss-400-digit-int": ("g.json", '[{"file": "a", "class": "dog", "bbox": [[0, 0, 1' + "0" * 400 + ', 1]]}]',
                            ["x2 = 1000000000...00000000000 is not a finite number"]),
    "deep-nesting": ("g.json", "[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
    "avsol-time-overflow": ("g.json", json.dumps({"videos": [{"id": "v", "fps": 10, "frames": [{"time": 1e308}]}]}),
                            ["'time'", "at most 86400"]),
    "avsol-fps-overflow": ("g.json", json.dumps({"videos": [{"id": "v", "fps": 1e308, "frames": []}]}), ["'fps'", "at most 1000"]),
    "avsol-huge-index": ("g.json", json.dumps({"videos": [{"id": "v", "frames": [{"index": 10**30}]}]}), ["'index'", "frame number"]),
    "avsol-empty-box": ("g.json", json.dumps({"videos": [{"id": "v", "frames": [{"index": 0, "objects": [
        {"box": [4, 0, 2, 4], "tag": "sounding"}]}]}]}), ["empty box"]),
    "music-huge-size": ("g.json", json.dumps([{"id": "a", "boxes": [[0, 0, 4, 4]], "size": [1e300, 8]}]), ["'size'", "at most"]),
    "music-huge-label": ("g.json", json.dumps([{"id": "a", "boxes": [[0, 0, 0.5, 0.5]], "labels": [2**63]}]), ["'labels'"]),
    "slavc-not-utf8": ("s.csv", b"video,audio,label\n\xff\xfe,\x00\x81,non-sounding\n", ["not a text (UTF-8)"]),
    "slavc-huge-field": ("s.csv", "video,audio,label\n" + "x" * 200_000 + ",b,non-sounding\n", ["line 2", "field larger"]),
    "slavc-empty-id": ("s.csv", "video,audio,label\n,b,non-sounding\n", ["line 2", "'video'"]),
}


def _write(tmp: Path, name: str, content: str | bytes) -> Path:
    p = tmp / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    return p


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_gt_refuses(tmp_path, case: str) -> None:
    name, content, says = CASES[case]
    p = _write(tmp_path, name, content)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy warning leaks either
        with pytest.raises(DataError) as ei:
            load_gt(p)
    msg = str(ei.value)
    assert str(p) in msg and "\n" not in msg
    for s in says:
        assert s in msg, msg


@pytest.mark.parametrize("case", ["vggss-string-coords", "binary", "avsol-frame-no-index-or-time", "music-size-zero",
                                  "music-list-of-integers", "vggss-nan-coord", "manifest-null-box"])
def test_eval_refuses_in_one_line(tmp_path, capsys, case: str) -> None:
    name, content, says = CASES[case]
    gt = _write(tmp_path, name, content)
    np.savez(tmp_path / "p.npz", a=np.zeros((4, 4), np.float32))
    rc = main(["eval", "--gt", str(gt), "--pred", str(tmp_path / "p.npz"), "--protocol", "ezvsl-vggss"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(gt) in err[0] and says[0] in err[0], err


@pytest.mark.parametrize(("fmt", "case"), [("vggss", "vggss-string-coords"), ("vggss", "binary"),
                                           ("music", "music-size-zero"), ("music", "music-list-of-integers"),
                                           ("avsol", "avsol-frame-no-index-or-time"), ("vggss", "vggss-null-coord")])
def test_prepare_refuses_in_one_line(tmp_path, capsys, fmt: str, case: str) -> None:
    _, content, says = CASES[case]
    root = tmp_path / "root"
    root.mkdir()
    gt = _write(root, f"{fmt}.json", content)
    rc = main(["data", "prepare", fmt, "--root", str(root), "--out", str(tmp_path / "m.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(gt) in err[0] and says[0] in err[0], err
    assert not (tmp_path / "m.jsonl").exists()


@pytest.mark.parametrize(("coord", "says"), [("9" * 400, "400 digits"), ("1e5", "not an integer"), (" ", "not an integer"),
                                             ("\u0663", "not an integer")])
def test_flickr_xml_coordinates(tmp_path, coord: str, says: str) -> None:
    """Pixel coordinates: decimal integers of at most six digits, refused before any int conversion."""
    d = tmp_path / "ann"
    d.mkdir()
    (d / "1.xml").write_text(f"<annotation><object><bbox><name>x</name><xmin>{coord}</xmin><ymin>1</ymin>"
                             "<xmax>20</xmax><ymax>30</ymax></bbox></object></annotation>", encoding="utf-8")
    with pytest.raises(DataError, match=says):
        load_gt(d)


def test_valid_files_still_load(tmp_path) -> None:
    p = _write(tmp_path, "g.json", json.dumps([{"file": "a", "class": "dog", "bbox": [[0.1, 0.1, 0.5, -2.9e16]]}]))
    (r,) = load_gt(p)  # VGG-SS's degenerate public boxes are kept verbatim (finite)
    assert r["boxes"] == [[0.1, 0.1, 0.5, -2.9e16]]
    p = _write(tmp_path, "m.json", json.dumps({"a": {"boxes": [[0, 0, 4, 4]], "size": [8, 8], "labels": [1]}}))
    (r,) = load_gt(p)
    assert r["boxes"] == [[0, 0, 0.5, 0.5]] and r["labels"] == [1]
    p = _write(tmp_path, "a.json", json.dumps({"videos": [{"id": "v", "fps": 10, "frames": [{"time": 0.5, "objects": []}]}]}))
    (r,) = load_gt(p)
    assert r["id"] == "v@0005"
    m = _write(tmp_path, "ok.jsonl", json.dumps({"id": "a", "image": "a.jpg", "size": [8, 8], "boxes": [[0, 0, 4, 4]]}))
    assert read_manifest(m)[0]["boxes"] == [[0, 0, 4, 4]]
