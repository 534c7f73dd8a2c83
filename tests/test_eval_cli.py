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


def make_digitscenes(shared_data: Path, out: Path, variant: str, count: int) -> Path:
    """A tiny DigitScenes manifest written by `avloc data make` (real digits and sounds from the shared data)."""
    argv = ["data", "make", "digitscenes", "--raw", str(shared_data), "--out", str(out), "--variant", variant,
            "--split", "test", "--count", str(count), "--size", "64", "--seed", "3"]
    assert main(argv) == 0
    return out / f"{variant}_test.jsonl"


def test_eval_model_mode(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`avloc eval --model NAME --data SPEC --raw DIR` with training-free methods; equals scoring their maps."""
    import torch

    from avloc.data.collate import collate_samples
    from avloc.data.datasets import dataset_from_spec
    from avloc.methods.zoo import load_model

    man = make_digitscenes(shared_data, tmp_path / "ds", "single", 6)
    capsys.readouterr()
    md = tmp_path / "m.md"
    rc = main(["eval", "--model", "centre", "--data", str(man), "--raw", str(shared_data), "--protocol", "ezvsl-vggss",
               "--json", "--batch-size", "4", "--out-md", str(md)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["protocol"] == "ezvsl-vggss" and out["n"] == 6 and 0.0 <= out["auc"] <= 1.0
    assert "| success |" in md.read_text()
    # the same numbers from the model's maps scored as saved predictions
    model = load_model("centre")
    ds = dataset_from_spec(str(man), raw=shared_data, image_cfg=model.cfg.image, audio_cfg=model.cfg.audio)
    batch = collate_samples([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        maps = model.eval().localize(batch["image"], batch["audio"]).numpy()
    preds = {str(i): maps[j] for j, i in enumerate(batch["id"])}
    ref = evaluate_predictions(preds, [ds[i] for i in range(len(ds))], "ezvsl-vggss")
    for k in ("success", "auc", "mean_ciou"):
        assert out[k] == ref[k], k
    # `random` runs through the same path (its maps depend only on each sample's bytes)
    assert main(["eval", "--model", "random", "--data", str(man), "--protocol", "lvs-vggss", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 6


def test_eval_model_class_aware_needs_localize_classes(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    man = make_digitscenes(shared_data, tmp_path / "ds", "multi", 3)
    capsys.readouterr()
    rc = main(["eval", "--model", "centre", "--data", str(man), "--protocol", "dsol-classaware", "--json"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "localize_classes" in err and "dsol-classaware" in err


def test_eval_pred_does_not_import_torch(tmp_path: Path) -> None:
    """Scoring saved predictions stays light: the NumPy resize runs and torch is never imported."""
    import subprocess
    import sys

    gt, pred, _ = write_vggss(tmp_path, 5, np.random.default_rng(3))
    code = (
        "import sys; from avloc.cli.main import main; "
        f"rc = main(['eval', '--gt', {str(gt)!r}, '--pred', {str(pred)!r}, '--protocol', 'ezvsl-vggss', '--json']); "
        "assert rc == 0 and 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["n"] == 5


def test_eval_model_generated_spec_with_count(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--data digitscenes:single:test --count N` generates exactly the first N test samples."""
    rc = main(["eval", "--model", "centre", "--data", "digitscenes:single:test", "--raw", str(shared_data),
               "--count", "5", "--protocol", "sslalign-adaptive", "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["n"] == 5
    assert main(["eval", "--model", "centre", "--data", "digitscenes:single:test", "--raw", str(shared_data),
                 "--count", "0", "--protocol", "sslalign-adaptive"]) == 2
    assert "--count must be >= 1" in capsys.readouterr().err
