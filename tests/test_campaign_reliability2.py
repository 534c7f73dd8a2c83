"""Replay of issue 30's bad-input campaign (its "Why"): every case that reproduces on a CPU in seconds gets
one line on stderr naming the problem and exit status 2 (a :class:`avloc.errors.AvlocError` through the CLI's
error boundary, :func:`avloc.cli.main.main`), never a traceback, and loses nothing.

Cases another module already replays through the same boundary are not run twice: :data:`ELSEWHERE` names the
test for each, and :func:`test_every_campaign_case_is_replayed` checks that test still exists. The rest run here.
Not replayed (not a few-second CPU check): ``--workers`` memory over a 10-minute video, and the 4.8 GB zip
bomb (slow-marked in ``test_arrays.py``).

A checkpoint refusal lists every problem (``checkpoint refused, N problems:`` then one ``  - `` line each, the
format of issue 18); :func:`_refusal` accepts that form and nothing else.
"""

from __future__ import annotations

import ast
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avloc.cli.main import main
from test_arrays import GOOD, _zip
from test_arrays import HOSTILE as HOSTILE_MEMBERS
from test_gt_validation import CASES as GT_CASES

TESTS = Path(__file__).resolve().parent

#: campaign case -> ``module::test`` that replays it through the same boundary
ELSEWHERE: dict[str, str] = {
    "train: binary config": "test_hostile_cli.py::test_train_with_a_bad_config_is_one_line",
    "train: a list for a section": "test_hostile_cli.py::test_train_with_a_bad_config_is_one_line",
    "train: a list for the method name": "test_hostile_cli.py::test_train_with_a_bad_config_is_one_line",
    "train: negative image size": "test_hostile_cli.py::test_train_with_a_bad_config_is_one_line",
    "train: sample rate 0": "test_hostile_cli.py::test_train_with_a_bad_config_is_one_line",
    "train: learning rate inf": "test_hostile_cli.py::test_train_with_a_bad_config_in_a_fresh_process",
    "train: weight decay NaN": "test_hostile_cli.py::test_train_with_a_bad_config_is_one_line",
    "train --resume: truncated or missing state, damaged config or metrics log":
        "test_engine.py::test_resume_of_a_damaged_run_names_the_file_and_exits_2",
    "DataLoader worker error (library)": "test_loader.py::test_worker_errors_keep_their_type_and_message",
    "import: zero-byte file": "test_hostile_cli.py::test_import_of_an_empty_file_is_one_line",
    "import: missing or 0-d tensors, stride-0 expanded, sparse, meta, negative BN variance":
        "test_import.py::test_hostile_tensors_are_refused_before_use",
    "import: --sample-rate 2000000000": "test_import.py::test_empty_file_and_out_of_range_options",
    "safetensors write on a full disk": "test_full_disk.py::test_cli_write_past_a_file_size_limit_is_one_line_exit_2",
    "safetensors SafetensorError is an OSError, previous file kept":
        "test_full_disk.py::test_safetensors_full_disk_is_an_os_error_and_keeps_the_previous_file",
    "report --serve serves the site only": "test_report.py::test_serve_serves_the_site_and_its_media_only",
    "report --force onto an unrelated folder, a file, a JSON in DIR":
        "test_report.py::test_force_never_replaces_what_avloc_did_not_write",
    "report: NaN in a per-video JSON": "test_report.py::test_malformed_outputs_are_index_errors_not_crashes",
    "pseudo-boxes: media field of the wrong type": "test_pseudo_boxes_batch.py::test_media_fields_of_the_wrong_type_are_one_line",
    "pseudo-boxes: an edited OUT.parts/*.json": "test_pseudo_boxes_batch.py::test_an_edited_part_is_redone_not_copied",
    "collection: a second run into one folder": "test_batch.py::test_a_second_run_into_the_folder_is_refused_at_once",
    "collection: a checkpoint saved again at the same path":
        "test_batch.py::test_a_checkpoint_saved_again_at_the_same_path_is_redone",
    "collection: localize DIR --out DIR": "test_batch.py::test_outputs_are_never_inputs",
    "collection: a user's clip.sheet.png": "test_batch.py::test_a_file_avloc_did_not_write_is_never_replaced",
    "collection: --ray-address of no cluster": "test_batch.py::test_an_unreachable_cluster_fails_in_seconds",
    "eval: a zip bomb .npz": "test_hostile_cli.py::test_eval_of_a_zip_bomb_is_one_line",
    "eval: a structured prediction": "test_hostile_cli.py::test_eval_of_a_structured_prediction_is_one_line",
    "API: zero-height arrays, fps 0/NaN, NaN audio": "test_api.py::test_bad_arrays_are_one_clean_error",
    "API: load_results on garbage and on names outside the folder":
        "test_api.py::test_load_results_never_crashes_or_leaves_the_folder",
    "run.json output names outside the folder": "test_report.py::test_run_json_output_names_stay_in_the_folder",
}


def test_every_campaign_case_is_replayed() -> None:
    """Each test :data:`ELSEWHERE` names exists (a rename or removal would silently drop a campaign case)."""
    for case, where in ELSEWHERE.items():
        module, name = where.split("::")
        tree = ast.parse((TESTS / module).read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in names, f"{case}: {where} is gone"


def _one_line(err: str, command: str) -> str:
    """The single stderr line of a refused command (no traceback)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"avloc {command}: error: "), err
    return lines[0]


def _refusal(err: str, command: str) -> str:
    """A checkpoint refusal: one line naming the file, then one ``  - `` line per problem; returns them joined."""
    first, *problems = err.strip().splitlines()
    assert "Traceback" not in err and first.startswith(f"avloc {command}: error: ") and "checkpoint refused" in first, err
    assert problems and all(p.startswith("  - ") for p in problems), err
    return err


# -- avloc train --resume of a damaged run directory: the state's header ("metadata"), its tensors, the config --


def _cfg() -> dict[str, Any]:
    """A tiny LVS recipe (8-channel CNNs, 32-pixel images) that trains 2 steps in a second."""
    method = {"image": {"size": 32, "resize": 32}, "visual_encoder": "small_cnn",
              "visual_encoder_kwargs": {"channels": [8, 16], "out_stride": 4}, "audio_encoder": "small_cnn_audio",
              "audio_encoder_kwargs": {"channels": [8, 16], "time_stride": 2}, "embed_dim": 8, "visual_proj_hidden": 8,
              "freeze_visual": False}
    train = {"steps": 2, "batch_size": 2, "val_every": 0, "ckpt_every": 1, "log_every": 1, "progress": False,
             "device": "cpu"}
    return {"method_name": "lvs", "method": method, "train": train}


def _manifest(d: Path, n: int = 4) -> Path:
    """``n`` noise images and tones, and their manifest."""
    from PIL import Image

    from avloc.io.audio import write_wav

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
        write_wav(d / f"{i}.wav", (0.3 * np.sin(np.arange(8000) * 0.05 * (i + 1))).astype(np.float32), 16000)
        lines.append(json.dumps({"id": str(i), "image": f"{i}.jpg", "audio": f"{i}.wav"}) + "\n")
    (d / "m.jsonl").write_text("".join(lines))
    return d / "m.jsonl"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("train")
    (d / "cfg.json").write_text(json.dumps(_cfg()))
    assert main(["train", "--config", str(d / "cfg.json"), "--train", str(_manifest(d / "data")), "--out",
                 str(d / "run")]) == 0
    return d / "run"


def _edit_state(run: Path, edit: Callable[[dict[str, str], dict[str, Any]], None]) -> None:
    """Rewrite the run's training state with its header and tensors edited in place."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = run / "train_state.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    edit(meta, tensors)
    save_file(tensors, str(path), metadata=meta)


def _skeleton(change: Callable[[Any], Any]) -> Callable[[dict[str, str], dict[str, Any]], None]:
    def edit(meta: dict[str, str], _: dict[str, Any]) -> None:
        meta["avloc_train_state"] = json.dumps(change(json.loads(meta["avloc_train_state"])))
    return edit


def _set(key: str, value: Any) -> Callable[[Any], Any]:
    def change(sk: Any) -> Any:
        return {"__dict__": [[k, value if k == key else v] for k, v in sk["__dict__"]]}
    return change


def _narrow(_: dict[str, str], tensors: dict[str, Any]) -> None:
    key = next(k for k in tensors if k.endswith("visual_proj.net.0.weight"))
    tensors[key] = tensors[key][:, :1].contiguous()


def _config(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        cfg = json.loads((run / "config.json").read_text())
        change(cfg)
        (run / "config.json").write_text(json.dumps(cfg))
    return damage


#: damage -> (file it is in, what the line says)
DAMAGED_RUNS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "state header not JSON": (lambda r: _edit_state(r, lambda m, _: m.update(avloc_train_state="{")),
                              "train_state.safetensors", "JSONDecodeError"),
    "state header a list": (lambda r: _edit_state(r, _skeleton(lambda _: [1])), "train_state.safetensors", "bare list"),
    "state __dict__ an integer": (lambda r: _edit_state(r, _skeleton(lambda _: {"__dict__": 5})),
                                  "train_state.safetensors", "__dict__ holds no list"),
    "state __dict__ of triples": (lambda r: _edit_state(r, _skeleton(lambda _: {"__dict__": [[1, 2, 3]]})),
                                  "train_state.safetensors", "[key, value] pairs"),
    "state step a string": (lambda r: _edit_state(r, _skeleton(_set("step", "x"))),
                            "train_state.safetensors", "step: not a whole number >= 0"),
    "state step negative": (lambda r: _edit_state(r, _skeleton(_set("step", -5))),
                            "train_state.safetensors", "step: not a whole number >= 0"),
    "state rng garbage": (lambda r: _edit_state(r, _skeleton(_set("rng", {"__dict__": [["python", 3]]}))),
                          "train_state.safetensors", "rng is not a list of RNG states"),
    "state model an integer": (lambda r: _edit_state(r, _skeleton(_set("model", 7))),
                               "train_state.safetensors", "model is not a mapping of tensors"),
    "state names no tensor": (lambda r: _edit_state(r, _skeleton(_set("model", {"__tensor__": "s/nope"}))),
                              "train_state.safetensors", "refers to no stored tensor"),
    "state weight narrowed": (lambda r: _edit_state(r, _narrow), "train_state.safetensors",
                              "model weight 'visual_proj.net.0.weight' is (8, 1, 1, 1)"),
    "config method a number": (_config(lambda c: c.update(method=5)), "config.json", "'method' must be a name"),
    "config train a string": (_config(lambda c: c.update(train="x")), "config.json", "expected a section"),
    "config lr inf": (_config(lambda c: c["train"]["optim"].update(lr=1e999)), "config.json",
                      "optim.lr: expected a finite number, got inf"),
    "config image size negative": (_config(lambda c: c["method_config"]["image"].update(size=-5)), "config.json",
                                   "image.size must lie in [1, 4096]"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_RUNS))
def test_resume_of_a_damaged_run(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    damage, name, says = DAMAGED_RUNS[case]
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    damage(run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "steps=4"]) == 2
    line = _one_line(capsys.readouterr().err, "train")
    assert f"cannot resume: {run / name} is damaged" in line and says in line and "--force" in line, line
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # the run is left as it was


def test_a_damaged_run_still_resumes_when_repaired(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The checks refuse nothing a run writes: the undamaged copy resumes and finishes."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert main(["train", "--resume", "--out", str(run), "steps=3"]) == 0
    assert "trained 3 steps" in capsys.readouterr().out


def test_an_error_in_a_dataloader_worker_is_one_line(run_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """``avloc train`` with ``num_workers=2``: a sample no worker can read is its one line, not the worker's traceback."""
    data = tmp_path / "data"
    shutil.copytree(run_dir.parent / "data", data)
    (data / "2.jpg").write_bytes(b"not an image")
    (tmp_path / "cfg.json").write_text(json.dumps(_cfg()))
    capfd.readouterr()
    rc = main(["train", "--config", str(tmp_path / "cfg.json"), "--train", str(data / "m.jsonl"), "--out",
               str(tmp_path / "run"), "num_workers=2"])
    err = [line for line in capfd.readouterr().err.splitlines() if not line.startswith("avloc train: lvs for")]
    assert rc == 2
    line = _one_line("\n".join(err), "train")
    assert f"{data / '2.jpg'}: cannot read image" in line


# -- a checkpoint with a negative BatchNorm variance: refused, not all-NaN maps with exit 0 --------------------


def test_negative_batchnorm_variance_in_a_checkpoint_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from avloc.methods.zoo import ZOO_DIR
    from clips import write_clip

    with safe_open(str(ZOO_DIR / "lvs-digitscenes.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in tensors if k.endswith("running_var"))
    tensors[key] = -tensors[key].abs() - 1.0
    bad = tmp_path / "negvar.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    clip = write_clip(tmp_path / "clip.mp4", seconds=1.0, fps=5, size=(96, 72))
    assert main(["localize", str(clip), "--out", str(tmp_path / "o"), "--model", str(bad), "--quiet"]) == 2
    err = _refusal(capsys.readouterr().err, "localize")
    assert str(bad) in err and "variances are negative" in err
    assert not (tmp_path / "o").exists()


# -- avloc report on per-video JSONs a careless edit broke: listed as invalid, the site is not lost ----------


@pytest.fixture(scope="module")
def localized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from clips import write_clip

    d = tmp_path_factory.mktemp("localized")
    clip = write_clip(d / "a.mp4", seconds=1.0, fps=5, size=(96, 72))
    assert main(["localize", str(clip), "--out", str(d / "o"), "--model", "avsync-objectness", "--quiet"]) == 0
    return d / "o"


def _inf_score(doc: dict[str, Any]) -> str:
    score = doc["frames"][0]["boxes"][0]["score"]
    return json.dumps(doc).replace(f'"score": {score}', '"score": 1e999', 1)


def _tag(doc: dict[str, Any], score: Any) -> str:
    doc["frames"][0]["semantic"] = {"audioset": [{"label": "Dog", "score": score}], "imagenet": [], "used": True}
    return json.dumps(doc)


#: edit -> (new JSON text from the good document, what the site's index says of it)
EDITED_JSONS: dict[str, tuple[Callable[[dict[str, Any]], str], str]] = {
    "1e999": (_inf_score, "1e999"),
    "class score a string": (lambda d: _tag(d, "high"), "&#x27;high&#x27; is not of type &#x27;number&#x27;"),
    "class score null": (lambda d: _tag(d, None), "None is not of type &#x27;number&#x27;"),
    "source score a string": (lambda d: json.dumps({**d, "frames": [{**d["frames"][0], "sources": [
        {"label": "Dog", "score": "x", "kind": "object", "grounding": "coco:dog", "boxes": []}]}, *d["frames"][1:]]}),
        "is not of type &#x27;number&#x27;"),
}


@pytest.mark.parametrize("case", sorted(EDITED_JSONS))
def test_report_lists_an_edited_json_as_invalid(localized: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                case: str) -> None:
    edit, says = EDITED_JSONS[case]
    d = tmp_path / "o"
    shutil.copytree(localized, d)
    bad = edit(json.loads((d / "a.avloc.json").read_text()))
    (d / "b.avloc.json").write_text(bad)
    for suffix in ("avloc.mp4", "sheet.png"):
        shutil.copy(d / f"a.{suffix}", d / f"b.{suffix}")
    capsys.readouterr()
    assert main(["report", str(d), "--no-thumbnails"]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "2 video(s) (1 done, 1 invalid)" in out.out, out
    index = (d / "report" / "index.html").read_text()
    assert "b.avloc.json" in index and says in index
    assert len(list((d / "report" / "videos").glob("*.html"))) == 1  # the valid video keeps its page
    assert (d / "b.avloc.json").read_text() == bad  # the reported folder is never touched


# -- avloc eval on hostile ground truth and predictions -------------------------------------------------------

#: ground-truth cases of test_gt_validation.CASES (its load_gt test) replayed through ``avloc eval``
EVAL_GT = ["slavc-not-utf8", "slavc-huge-field", "avsol-time-overflow", "dsol-1e308", "dsol-negative-width",
           "qian-negative-width", "vggss-400-digit-int", "deep-nesting"]


def _eval(capsys: pytest.CaptureFixture[str], gt: Path, pred: Path, protocol: str = "ezvsl-vggss") -> str:
    capsys.readouterr()
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "--protocol", protocol]) == 2
    return _one_line(capsys.readouterr().err, "eval")


@pytest.mark.parametrize("case", EVAL_GT)
def test_eval_refuses_hostile_ground_truth(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    name, content, says = GT_CASES[case]
    gt = tmp_path / name
    gt.write_bytes(content if isinstance(content, bytes) else content.encode())
    np.savez(tmp_path / "p.npz", a=np.zeros((4, 4), np.float32))
    line = _eval(capsys, gt, tmp_path / "p.npz")
    assert str(gt) in line and all(s in line for s in says), line


def test_eval_refuses_a_400_digit_flickr_coordinate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann = tmp_path / "Annotations"
    ann.mkdir()
    (ann / "1.xml").write_text(f"<annotation><object><bbox><name>x</name><xmin>{'9' * 400}</xmin><ymin>1</ymin>"
                               "<xmax>20</xmax><ymax>30</ymax></bbox></object></annotation>", encoding="utf-8")
    np.savez(tmp_path / "p.npz", **{"1": np.zeros((4, 4), np.float32)})
    line = _eval(capsys, ann, tmp_path / "p.npz", "lvs-flickr")
    assert "1.xml" in line and "400 digits" in line, line


#: members of test_arrays.HOSTILE (its NpzArchive test) replayed through ``avloc eval``
EVAL_PRED = ["string", "bytes", "void", "object", "garbage header", "code in header", "float shape", "huge shape",
             "header length past the end", "truncated data"]


@pytest.mark.parametrize("case", EVAL_PRED)
def test_eval_refuses_hostile_predictions(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    data, says = HOSTILE_MEMBERS[case]
    pred = _zip(tmp_path / "p.npz", {"a.npy": GOOD, "clip.npy": data})
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps([{"file": "clip", "class": "x", "bbox": [[0.1, 0.1, 0.5, 0.5]]}]))
    line = _eval(capsys, gt, pred)
    assert "p.npz" in line and "member 'clip.npy'" in line and says in line, line


# -- the Python API: beyond test_api.py's arrays, what the refusal says ----------------------------------------


@pytest.mark.parametrize(("source", "says"), [
    (np.zeros((4, 1, 1, 3), np.uint8), "<array>: 1x1 pixels is too small to analyse"),
    ([[1, 2, 3]], "source must be a video path or a (T, H, W, 3) uint8 array, got list"),
])
def test_api_refusals_are_one_line(source: Any, says: str) -> None:
    """The message names the input as ``<array>`` (never the repr of its arrays) and fits one line."""
    import avloc
    from avloc.errors import AvlocError

    with pytest.raises(AvlocError) as info:
        avloc.localize(source, video_fps=10.0, audio=np.zeros(8000, np.float32), sample_rate=16000,
                       model="avsync-objectness", overlay=False)
    assert str(info.value).startswith(says) and "\n" not in str(info.value), str(info.value)
