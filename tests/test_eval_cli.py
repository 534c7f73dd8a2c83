"""``avloc eval`` in-process: saved predictions on VGG-SS / Flickr layouts, outputs, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avloc.cli.main import main
from avloc.engine.evaluate import evaluate_predictions


def write_vggss(tmp: Path, n: int, rng: np.random.Generator) -> tuple[Path, Path, list[dict[str, object]]]:
    entries = []
    for i in range(n):
        a = rng.uniform(0, 1, (2, 2))
        entries.append({"file": f"clip{i:03d}_000010", "class": "dog barking", "bbox": [[*a.min(0), *a.max(0)]]})
    gt = tmp / "vggss.json"
    gt.write_text(json.dumps(entries))
    pred = tmp / "preds.npz"
    np.savez(pred, **{str(e["file"]): rng.standard_normal((14, 14)).astype(np.float32) for e in entries})
    return gt, pred, entries


def test_eval_pred_json_markdown_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    gt, pred, entries = write_vggss(tmp_path, 20, rng)
    md, png = tmp_path / "t.md", tmp_path / "c.png"
    rc = main(["eval", "--gt", str(gt), "--pred", str(pred), "--protocol", "ezvsl-vggss", "--json", "--out-md", str(md), "--plot", str(png)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    with np.load(pred) as z:
        preds = {k: z[k] for k in z.files}
    ref = evaluate_predictions(preds, [{"id": e["file"], "boxes": e["bbox"]} for e in entries], "ezvsl-vggss")
    for k in ("success", "auc", "mean_ciou"):
        assert out[k] == ref[k]
    assert out["n"] == 20 and out["protocol"] == "ezvsl-vggss"
    assert "| success |" in md.read_text()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # outputs are not overwritten without --force
    rc = main(["eval", "--gt", str(gt), "--pred", str(pred), "--protocol", "ezvsl-vggss", "--out-md", str(md)])
    assert rc == 2 and "--force" in capsys.readouterr().err


def test_eval_flickr_xml_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann = tmp_path / "Annotations"
    ann.mkdir()
    preds = {}
    for i, sid in enumerate(["10000130166", "10007936344"]):
        objs = "".join(
            f"<object><bbox><annotator>{a}</annotator><xmin>{20 + a}</xmin><ymin>30</ymin><xmax>{150 + 10 * i}</xmax><ymax>200</ymax></bbox></object>"
            for a in range(3)
        )
        (ann / f"{sid}.xml").write_text(f"<annotation><file>{sid}.jpg</file>{objs}</annotation>")
        preds[sid] = np.random.default_rng(i).standard_normal((7, 7)).astype(np.float32)
    pred = tmp_path / "p.npz"
    np.savez(pred, **preds)
    rc = main(["eval", "--gt", str(ann), "--pred", str(pred), "--protocol", "lvs-flickr", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 2 and out["expected_n"] == 249 and 0 <= out["auc"] <= 1


def test_eval_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    gt, pred, _ = write_vggss(tmp_path, 3, rng)
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "--protocol", "nope"]) == 2
    assert "valid names" in capsys.readouterr().err
    assert main(["eval", "--gt", str(gt), "--protocol", "ezvsl-vggss"]) == 2
    assert "need both --gt and --pred" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    assert main(["eval", "--gt", str(gt), "--pred", str(bad), "--protocol", "ezvsl-vggss"]) == 2
    assert "not a readable .npz" in capsys.readouterr().err
    np.savez(tmp_path / "few.npz", only=np.zeros((7, 7)))
    assert main(["eval", "--gt", str(gt), "--pred", str(tmp_path / "few.npz"), "--protocol", "ezvsl-vggss"]) == 2
    assert "have no prediction" in capsys.readouterr().err
