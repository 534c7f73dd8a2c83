"""Annotation parsers on the real VGG-SS json and on fixtures written in the published layouts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from avloc.errors import DataError
from avloc.formats.annotations import (
    load_avsol_json,
    load_flickr_dir,
    load_music_json,
    load_vggss_json,
    parse_flickr_xml,
    vggss_problems,
)
from avloc.metrics import ops
from avloc.metrics.groundtruth import flickr_targets, load_gt

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("AVLOC_DATA", REPO.parent / "shared" / "data"))
VGGSS = DATA / "vggss" / "vggss.json"


@pytest.mark.skipif(not VGGSS.is_file(), reason=f"real VGG-SS annotations not found at {VGGSS} (set AVLOC_DATA)")
def test_real_vggss_json_parses_every_entry_and_box() -> None:
    recs = load_vggss_json(VGGSS)
    assert len(recs) == 5158
    assert sum(len(r["boxes"]) for r in recs) == 5941
    assert len({r["id"] for r in recs}) == 5158
    problems = vggss_problems(recs)
    assert len(problems) == 18 and any("MKC9LvRivTM_000030" in p for p in problems)
    assert load_gt(VGGSS)[0]["id"] == recs[0]["id"]


def write_flickr_xml(path: Path, boxes_per_annotator: list[list[list[int]]]) -> None:
    objs = ""
    for a, boxes in enumerate(boxes_per_annotator):
        inner = "".join(
            f"<bbox><annotator>{a}</annotator><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bbox>"
            for b in boxes
        )
        objs += f"<object>{inner}</object>"
    path.write_text(f"<annotation><file>{path.stem}.jpg</file>{objs}</annotation>")


def test_flickr_xml_three_annotators_and_consensus(tmp_path: Path) -> None:
    write_flickr_xml(tmp_path / "123.xml", [[[0, 0, 128, 128]], [[0, 0, 128, 128], [200, 200, 256, 256]], [[64, 64, 256, 256]]])
    rec = parse_flickr_xml(tmp_path / "123.xml")
    assert rec["id"] == "123" and rec["box_annotator"] == [0, 1, 1, 2] and rec["boxes"][1] == [0, 0, 128, 128]
    (t,) = flickr_targets(load_flickr_dir(tmp_path))
    gt = ops.consensus_gt([np.array(t["boxes"])], 224, 2.0)[0]
    # public: int(224 * v / 256) pixels; two annotators on [0, 112) -> 1
    assert gt[0, 0] == 1.0 and gt[111, 111] == 1.0 and gt[100, 150] == 0.5 and gt[150, 10] == 0.0
    assert int(224 * 200 / 256) == ops.box_pixels(np.array(t["boxes"][2]), 224)[0][0]
    (tmp_path / "bad.xml").write_text("<annotation><object><bbox><a>0</a><xmin>1</xmin></bbox></object></annotation>")
    with pytest.raises(DataError, match=r"bad\.xml"):
        load_flickr_dir(tmp_path)


def test_music_json_pixels_labels_and_sounding(tmp_path: Path) -> None:
    p = tmp_path / "music.json"
    p.write_text(
        json.dumps(
            [{"file": "solo_1", "size": [200, 100], "bbox": [[0, 0, 100, 50], [100, 50, 200, 100]], "labels": [3, 5], "sounding": [True, False]}]
        )
    )
    (r,) = load_music_json(p)
    assert r["boxes"] == [[0.0, 0.0, 0.5, 0.5]] and r["box_labels"] == [3] and r["labels"] == [3]
    assert r["silent_labels"] == [5] and r["silent_boxes"] == [[0.5, 0.5, 1.0, 1.0]]


def test_avsol_per_frame_annotations(tmp_path: Path) -> None:
    p = tmp_path / "avsol.json"
    frames = [
        {"index": 0, "objects": [{"box": [0, 0, 160, 120], "tag": "sounding"}, {"box": [160, 120, 320, 240], "tag": "silent"}]},
        {"index": 1, "objects": [{"box": [0, 0, 320, 240], "tag": "out-of-view"}]},
        {"time": 0.2, "objects": [{"box": [0, 0, 10, 10], "tag": "silent"}]},
        {"index": 3, "objects": []},
    ]
    p.write_text(json.dumps({"videos": [{"id": "vid", "fps": 10, "size": [320, 240], "frames": frames}]}))
    recs = load_avsol_json(p)
    assert [r["id"] for r in recs] == ["vid@0000", "vid@0001", "vid@0002", "vid@0003"]
    assert recs[0]["boxes"] == [[0.0, 0.0, 0.5, 0.5]] and recs[0]["silent_boxes"] == [[0.5, 0.5, 1.0, 1.0]]
    assert recs[1]["out_of_view"] and recs[1]["audible"] and not recs[1]["onscreen"]
    assert recs[2]["time"] == pytest.approx(0.2) and not recs[3]["audible"]
    assert load_gt(p)[1]["id"] == "vid@0001"
    p.write_text(json.dumps({"videos": [{"id": "v", "frames": [{"index": 0, "objects": [{"box": [0, 0, 1, 1], "tag": "loud"}]}]}]}))
    with pytest.raises(DataError, match="unknown tag"):
        load_avsol_json(p)


def test_importing_the_parsers_loads_neither_torch_nor_numpy() -> None:
    """``avloc.formats.annotations`` (and the manifest reader) are torch-free: ``avloc eval --gt`` stays light."""
    import subprocess
    import sys

    code = ("import sys, avloc.formats.annotations, avloc.formats.manifest, avloc.metrics.groundtruth\n"
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['numpy']"  # numpy: the metrics package's; the parsers themselves need neither
    code = "import sys, avloc.formats.annotations, avloc.formats.manifest\nprint(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
