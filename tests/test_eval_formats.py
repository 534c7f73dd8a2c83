"""``avloc eval --gt`` reads each format the published codes read; anything else is a one-line error (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avloc.cli.main import main
from avloc.engine.evaluate import evaluate_predictions
from avloc.formats.manifest import write_manifest
from avloc.metrics.groundtruth import load_gt


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["eval", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def dsol_json(tmp: Path, n_cls: int = 3) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    js, preds = {}, {}
    for i in range(8):
        sid = f"clip{i}_0_1000/frame_00{i}/0000{i}.jpg"
        objs = [] if i == 3 else [
            {"box": [10, 20, 30, 40], "normbox": [0.1 * (i % 5), 0.2, 0.3, 0.4], "category_id": i % n_cls},
            {"box": [1, 2, 3, 4], "normbox": [0.5, 0.5, 0.2, 0.2], "category_id": (i + 1) % n_cls},
        ]
        js[sid] = {"bbox": objs, "wdith": 640, "height": 360}
        preds[sid] = rng.random((n_cls, 7, 7)).astype(np.float32)
    gt = tmp / "solotest.json"
    gt.write_text(json.dumps(js))
    pred = tmp / "p.npz"
    np.savez(pred, **preds)
    return gt, pred


@pytest.mark.parametrize("protocol", ["dsol-classaware", "dsol-duet"])
def test_dsol_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], protocol: str) -> None:
    gt, pred = dsol_json(tmp_path)
    rc, out, err = run(capsys, "--gt", str(gt), "--pred", str(pred), "--protocol", protocol, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["n"] == (7 if protocol == "dsol-duet" else 8) and 0 <= res["nsa"] <= 1


def test_dsol_music_reads_solotest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt, _ = dsol_json(tmp_path, n_cls=1)
    pred = tmp_path / "single.npz"
    np.savez(pred, **{str(r["id"]): np.random.default_rng(1).random((7, 7)).astype(np.float32) for r in load_gt(gt)})
    rc, out, err = run(capsys, "--gt", str(gt), "--pred", str(pred), "--protocol", "dsol-music", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["n"] == 7 and res["n_skipped"] == 1  # tools.py skips frames without boxes


def test_qian_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    anns = [{"image_id": i // 2, "category_id": i % 3, "bbox": [0.1, 0.1, 0.5, 0.5], "id": i} for i in range(12)]
    gt = tmp_path / "normav.json"
    gt.write_text(json.dumps({"categories": [], "images": [], "annotations": anns}))
    pred = tmp_path / "p.npz"
    np.savez(pred, **{str(i): np.random.default_rng(i).random((3, 7, 7)).astype(np.float32) for i in range(6)})
    rc, out, err = run(capsys, "--gt", str(gt), "--pred", str(pred), "--protocol", "qian-classaware", "--json")
    assert rc == 0, err
    assert json.loads(out)["n"] == 6


def test_vggss_json_plus_slavc_nonsounding_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(2)
    ids = [f"vid{i:02d}xxxxxx_{i:06d}" for i in range(10)]
    gt = tmp_path / "vggss.json"
    gt.write_text(json.dumps([{"file": s, "class": "c", "bbox": [[0.1, 0.1, 0.6, 0.6]]} for s in ids]))
    csv = tmp_path / "vggss_test_plus_silent.csv"
    csv.write_text("video,audio,label\n" + "".join(f"{ids[i]},{ids[(i + 1) % 10]},non-sounding\n" for i in range(10)))
    preds = {s: rng.standard_normal((7, 7)).astype(np.float32) * 10 for s in ids}
    preds |= {f"nonsounding/{ids[i]}/{ids[(i + 1) % 10]}": rng.standard_normal((7, 7)).astype(np.float32) for i in range(10)}
    pred = tmp_path / "p.npz"
    np.savez(pred, **preds)
    rc, out, err = run(capsys, "--gt", str(gt), "--gt", str(csv), "--pred", str(pred), "--protocol", "slavc-extended", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["n_audible"] == 10 and res["n_silent"] == 10
    # the same file twice: duplicated ids are an error
    rc, _, err = run(capsys, "--gt", str(gt), "--gt", str(gt), "--pred", str(pred), "--protocol", "slavc-extended")
    assert rc == 2 and "appear twice" in err


def test_manifest_image_id_reaches_iiou(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    entries = [
        {"id": f"s{i}", "image": f"img{i // 2}.jpg", "audio": f"a{i}.wav", "size": [224, 224],
         "boxes": [[20, 20, 120, 120]], "image_id": f"img{i // 2}", "split": "test"}
        for i in range(8)
    ]
    man = tmp_path / "m.jsonl"
    write_manifest(man, entries)
    targets = load_gt(man)
    assert [t["image_id"] for t in targets] == [e["image_id"] for e in entries]
    preds = {e["id"]: rng.standard_normal((7, 7)).astype(np.float32) for e in entries}
    for i in (0, 2, 3, 4):
        preds[f"s{i}"][1:4, 1:4] += 5
    pred = tmp_path / "p.npz"
    np.savez(pred, **preds)
    rc, out, err = run(capsys, "--gt", str(man), "--pred", str(pred), "--protocol", "sslalign-vggss", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["n_images"] == 4
    assert res["iiou"] == evaluate_predictions(preds, targets, "sslalign-vggss")["iiou"]
    # the published grouping (name without its last '_' field) is a protocol override too
    rc, out, _ = run(capsys, "--gt", str(man), "--pred", str(pred), "--protocol", "sslalign-vggss",
                     "--set", 'iiou_group="name_prefix"', "--json")
    assert rc == 0 and json.loads(out)["n_images"] == 1  # ids without '_' share the group ''


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("a.json", json.dumps({"foo": 1})),
        ("b.json", json.dumps([1, 2, 3])),
        ("c.json", json.dumps({"x.jpg": {"bbox": [[0, 0, 1, 1]]}})),  # DSOL-like, but boxes are not objects
        ("d.json", json.dumps({"annotations": [{"image_id": 0}]})),
        ("e.json", json.dumps({"x.jpg": {"bbox": [{"normbox": [0, 0, 1], "category_id": 1}]}})),
        ("f.json", "{not json"),
        ("g.csv", "a,b\n1,2\n"),
        ("h.txt", "hello"),
        ("missing.json", None),
    ],
)
def test_unrecognised_ground_truth_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str | None
) -> None:
    gt = tmp_path / name
    if text is not None:
        gt.write_text(text)
    pred = tmp_path / "p.npz"
    np.savez(pred, x=np.zeros((7, 7), np.float32))
    rc, _, err = run(capsys, "--gt", str(gt), "--pred", str(pred), "--protocol", "ezvsl-vggss")
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_set_rejects_unknown_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "--gt", "x", "--pred", "y", "--protocol", "ezvsl-vggss", "--set", "nope=1")
    assert rc == 2 and "unknown protocol settings" in err


def test_dataset_samples_carry_image_id_to_the_scorer() -> None:
    """``avloc eval --model`` path: the sample dict holds ``image_id`` and the collated batch hands it to IIoU."""
    from avloc.data.collate import collate_samples
    from avloc.data.datasets import build_sample
    from avloc.frontends.audio import AudioFrontendConfig
    from avloc.frontends.image import ImageConfig
    from avloc.metrics import create_protocol
    from avloc.metrics.targets import targets_from_batch

    image = np.zeros((32, 32, 3), np.uint8)
    wav = np.zeros(16000, np.float32)
    entries = [{"id": f"s{i}", "boxes": [[4, 4, 20, 20]], "size": [32, 32], **({"image_id": "shared"} if i < 2 else {})}
               for i in range(3)]
    samples = [build_sample(e, image, wav, 16000, ImageConfig(), AudioFrontendConfig(), 0.5) for e in entries]
    assert [s["image_id"] for s in samples] == ["shared", "shared", "s2"]
    targets = targets_from_batch(collate_samples(samples))
    acc = create_protocol("sslalign-vggss").accumulator()
    assert acc.group_keys(targets) == ["shared", "shared", "s2"]
