"""Issue 20: collections (run.json, resuming, one bad input, lists), Ray with 2 workers = sequential, the API."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from avloc.cli.main import main
from avloc.formats.localize import validate_document as validate
from clips import write_clip

FAST = ["--model", "avsync-objectness", "--no-overlay", "--quiet"]
N_CLIPS = 6
HAS_RAY = importlib.util.find_spec("ray") is not None


def _clip(path: Path, seed: int, frames: int = 20) -> Path:
    return write_clip(path, seconds=frames / 10, fps=10, size=(96, 72), picture="noise", audio="noise", seed=seed)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("clips")
    for k in range(N_CLIPS):
        _clip(d / f"c{k}.mp4", k)
    return d


@pytest.fixture(scope="module")
def sequential(clips: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seq")
    # the thread count the Ray actors will use (conftest's one thread): a module fixture is built before the
    # function-scoped autouse fixture sets it, and CPU kernels sum in another order with another thread count
    torch.set_num_threads(1)
    assert main(["localize", str(clips), "--out", str(out), "--save-heatmaps", *FAST]) == 0
    return out


def _run(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def test_run_json_and_valid_outputs(sequential: Path) -> None:
    run = _run(sequential)
    assert run["schema_version"] == "1.0" and run["command"][:2] == ["avloc", "localize"] and run["finished"]
    assert run["config"]["fps"] == 5.0 and run["config"]["model"] == "avsync-objectness"
    assert len(run["config"]["model_sha256"]) == 64
    assert [s["stem"] for s in run["inputs"]] == [f"c{k}" for k in range(N_CLIPS)]
    for s in run["inputs"]:
        assert s["status"] == "done" and s["error"] is None and s["seconds"] > 0
        assert set(s["outputs"]) == {"json", "sheet", "heatmaps"}
        doc = json.loads((sequential / s["outputs"]["json"]).read_text())
        assert not validate(doc) and len(doc["frames"]) == 10


def test_rerun_skips_finished_and_redoes_partial(sequential: Path, clips: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "o"
    shutil.copytree(sequential, out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "c2.sheet.png").unlink()  # a partial set: redone (replacing it needs no --force)
    (out / "c3.avloc.json").write_text('{"schema_version": 1}')  # an invalid JSON: redone
    assert main(["localize", str(clips), "--out", str(out), "--save-heatmaps", *FAST]) == 0
    st = {s["stem"]: s["status"] for s in _run(out)["inputs"]}
    assert st == {"c0": "skipped", "c1": "skipped", "c2": "done", "c3": "done", "c4": "skipped", "c5": "skipped"}
    for k in (0, 1, 4, 5):
        assert (out / f"c{k}.avloc.json").stat().st_mtime_ns == mtimes[f"c{k}.avloc.json"]
    assert (out / "c2.sheet.png").exists() and not validate(json.loads((out / "c3.avloc.json").read_text()))
    assert "6 input(s): 2 done, 4 skipped, 0 failed" in caplog.text


def test_other_configuration_needs_force(sequential: Path, clips: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "o"
    shutil.copytree(sequential, out)
    assert main(["localize", str(clips / "c0.mp4"), str(clips / "c1.mp4"), "--out", str(out), "--fps", "3", *FAST]) == 2
    assert "made with fps=5.0, not 3.0; pass --force" in caplog.text
    assert main(["localize", str(clips / "c0.mp4"), str(clips / "c1.mp4"), "--out", str(out), "--fps", "3",
                 "--force", *FAST]) == 0
    assert [s["status"] for s in _run(out)["inputs"]] == ["done", "done"]


def test_a_corrupt_input_is_reported_and_the_rest_finish(clips: Path, tmp_path: Path, caplog) -> None:
    d = tmp_path / "in"
    d.mkdir()
    for k in (0, 1):
        shutil.copy(clips / f"c{k}.mp4", d)
    (d / "bad.mp4").write_bytes(b"not a video at all" * 100)
    out = tmp_path / "o"
    assert main(["localize", str(d), "--out", str(out), *FAST]) == 2
    st = {s["stem"]: s for s in _run(out)["inputs"]}
    assert st["bad"]["status"] == "failed" and "bad.mp4" in st["bad"]["error"] and "\n" not in st["bad"]["error"]
    assert st["c0"]["status"] == st["c1"]["status"] == "done"
    assert "3 input(s): 2 done, 0 skipped, 1 failed" in caplog.text and "  failed: " in caplog.text


def test_txt_and_jsonl_lists(clips: Path, tmp_path: Path) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text(f"# two clips\n{clips / 'c0.mp4'}\n\n{clips / 'c1.mp4'}\n")
    man = tmp_path / "sub" / "m.jsonl"
    man.parent.mkdir()
    shutil.copy(clips / "c2.mp4", man.parent / "c2.mp4")
    man.write_text(json.dumps({"path": "c2.mp4"}) + "\n" + json.dumps({"video": str(clips / "c3.mp4")}) + "\n")
    out = tmp_path / "o"
    assert main(["localize", str(lst), str(man), "--out", str(out), *FAST]) == 0
    assert [s["stem"] for s in _run(out)["inputs"]] == ["c0", "c1", "c2", "c3"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    assert main(["localize", str(bad), "--out", str(tmp_path / "o2"), *FAST]) == 2


def kill_when(p: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 180,
              after: Callable[[], None] | None = None) -> None:
    """SIGKILL the run ``p`` as soon as ``ready()`` (polled), failing if it ends or times out first; ``after``
    runs in any case (e.g. to kill what the run left behind)."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert p.poll() is None and time.monotonic() < deadline, f"the run ended before {what}"
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
        if after is not None:
            after()


@pytest.mark.slow  # a CLI process killed midway, then a re-run: 15-30 s
def test_sigkill_midway_then_rerun_completes_without_redoing(clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "avloc.cli.main", "localize", str(clips), "--out", str(out), *FAST]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def first_done() -> bool:  # its first input finished and recorded (the record follows the outputs)
        try:
            return any(s["status"] == "done" for s in _run(out)["inputs"])
        except (OSError, ValueError):
            return False

    kill_when(p, first_done, "its first finished input")
    killed = _run(out)
    assert killed["finished"] is None
    first = (out / "c0.avloc.json").stat().st_mtime_ns
    done_before = {s["stem"] for s in killed["inputs"] if s["status"] == "done"}
    assert "c0" in done_before and len(done_before) < N_CLIPS
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    run = _run(out)
    assert run["finished"] is not None and (out / "c0.avloc.json").stat().st_mtime_ns == first
    st = {s["stem"]: s["status"] for s in run["inputs"]}
    assert all(st[s] == "skipped" for s in done_before) and all(v in ("done", "skipped") for v in st.values())
    assert not any(e.name.startswith(".") for e in out.iterdir())  # the killed run's temporaries are gone


def test_api_round_trip(clips: Path, tmp_path: Path) -> None:
    import avloc

    res = avloc.localize(clips / "c0.mp4", model="avsync-objectness", fps=5, save_heatmaps=True, overlay=False)
    assert len(res.times) == len(res.frames) == res.maps.shape[0] == 10 and len(res.boxes) == 10
    assert json.loads(res.to_json()) == res.document.to_dict() and res.summary["analysed_frames"] == 10
    assert "10 frames" in repr(res) and len(repr(res)) < 300 and "<img" in res._repr_html_()
    paths = res.save(tmp_path / "o")
    assert set(paths) == {"json", "sheet", "heatmaps"}
    [back] = avloc.load_results(tmp_path / "o")
    assert back.frames == res.frames and np.array_equal(back.maps, res.maps)
    ov = res.overlay(tmp_path / "ov.mp4")
    assert ov.stat().st_size > 0
    arr = avloc.localize(np.zeros((10, 48, 64, 3), np.uint8), model="avsync-objectness", video_fps=10,
                         audio=np.zeros(16000, np.float32))
    assert len(arr.frames) == 5
    assert [f.source_time for f in arr.frames] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    with pytest.raises(Exception, match="unknown option"):
        avloc.localize(clips / "c0.mp4", model="avsync-objectness", no_such_option=1)


def test_load_results_of_a_run(sequential: Path) -> None:
    import avloc

    res = avloc.load_results(sequential)
    assert [Path(r.input).stem for r in res] == [f"c{k}" for k in range(N_CLIPS)]
    assert all(r.maps is not None and r.maps.shape[0] == len(r.frames) for r in res)


@pytest.mark.slow  # starts Ray three times: 80-170 s of the default run on 2 cores
@pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed (pip install 'avloc[ray]')")
def test_ray_two_workers_equals_sequential(sequential: Path, clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "ray"
    assert main(["localize", str(clips), "--out", str(out), "--save-heatmaps", "--workers", "2", *FAST]) == 0
    run = _run(out)
    assert run["config"]["workers"] == 2 and all(s["status"] == "done" for s in run["inputs"])
    for k in range(N_CLIPS):
        a = json.loads((sequential / f"c{k}.avloc.json").read_text())
        b = json.loads((out / f"c{k}.avloc.json").read_text())
        assert a["frames"] == b["frames"] and a["outputs"] == b["outputs"]
        with np.load(sequential / f"c{k}.heatmaps.npz") as ha, np.load(out / f"c{k}.heatmaps.npz") as hb:
            assert np.array_equal(ha["maps"], hb["maps"]) and np.array_equal(ha["times"], hb["times"])
        assert (sequential / f"c{k}.sheet.png").read_bytes() == (out / f"c{k}.sheet.png").read_bytes()
    # frames batched across videos: the same maps to float16 rounding
    out2 = tmp_path / "ray2"
    assert main(["localize", str(clips), "--out", str(out2), "--save-heatmaps", "--workers", "2",
                 "--batch-across-videos", *FAST]) == 0
    for k in range(N_CLIPS):
        with np.load(sequential / f"c{k}.heatmaps.npz") as ha, np.load(out2 / f"c{k}.heatmaps.npz") as hb:
            np.testing.assert_allclose(ha["maps"].astype(np.float32), hb["maps"].astype(np.float32), atol=2e-3)
    # a bad input on the Ray path fails alone; the finished ones are skipped
    (tmp_path / "bad.mp4").write_bytes(b"junk" * 50)
    rc = main(["localize", str(clips), str(tmp_path / "bad.mp4"), "--out", str(out), "--save-heatmaps",
               "--workers", "2", *FAST])
    st = {s["stem"]: s for s in _run(out)["inputs"]}
    assert rc == 2 and st["bad"]["status"] == "failed" and st["bad"]["error"]
    assert all(st[f"c{k}"]["status"] == "skipped" for k in range(N_CLIPS))


def test_workers_options_are_checked(clips: Path, tmp_path: Path, capsys) -> None:
    assert main(["localize", str(clips), "--out", str(tmp_path / "o"), "--gpus-per-worker", "1", *FAST]) == 2
    assert "--gpus-per-worker needs --workers" in capsys.readouterr().err


def test_across_videos_default_follows_the_gpus() -> None:
    """Batching frames across videos is on by default only where the workers have GPUs; an explicit choice wins."""
    from avloc.applications.runner import RunnerConfig

    assert not RunnerConfig(workers=2).batch_across_inputs()
    assert RunnerConfig(workers=2, gpus_per_worker=1).batch_across_inputs()
    assert not RunnerConfig(workers=2, gpus_per_worker=1, across_inputs=False).batch_across_inputs()
    assert RunnerConfig(workers=2, across_inputs=True).batch_across_inputs()


# ---------------------------------------------------------------------------------------------
# issue 30: collections that cannot trample


def _statuses(out: Path) -> dict[str, str]:
    return {s["stem"]: s["status"] for s in _run(out)["inputs"]}


def test_a_second_run_into_the_folder_is_refused_at_once(clips: Path, tmp_path: Path, capsys) -> None:
    """The folder is locked for a collection run: a second run fails at once with one line naming the holder."""
    from avloc.inference.collection import COLLECTION_LOCK
    from avloc.io.outputs import HeldLock

    out = tmp_path / "o"
    out.mkdir()
    with HeldLock(out / COLLECTION_LOCK, "test"):  # the first run, as far as the second can tell
        rc = main(["localize", str(clips / "c0.mp4"), str(clips / "c1.mp4"), "--out", str(out), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "another avloc localize run is writing into this folder" in err[0] and f"pid {os.getpid()}" in err[0]
    assert not any(out.iterdir())  # nothing written, and the holder's lock file went with it
    assert main(["localize", str(clips / "c0.mp4"), str(clips / "c1.mp4"), "--out", str(out), *FAST]) == 0
    assert not (out / COLLECTION_LOCK).exists()  # released at the end


def test_a_checkpoint_saved_again_at_the_same_path_is_redone(clips: Path, tmp_path: Path, caplog) -> None:
    """Resume is keyed by the model's content, not its path: new weights under the same name redo every input."""
    from avloc.methods import create_method
    from avloc.methods.zoo import save_model
    from test_classif import tiny_classif_config

    ck, out = tmp_path / "m.safetensors", tmp_path / "o"
    args = ["localize", str(clips / "c0.mp4"), str(clips / "c1.mp4"), "--out", str(out), "--model", str(ck),
            "--no-overlay", "--quiet"]
    torch.manual_seed(0)
    save_model(create_method("classif", tiny_classif_config()), ck)
    assert main(args) == 0
    first = json.loads((out / "c0.avloc.json").read_text())
    assert first["model"]["sha256"] == _run(out)["config"]["model_sha256"]
    assert main(args) == 0 and set(_statuses(out).values()) == {"skipped"}
    torch.manual_seed(1)
    save_model(create_method("classif", tiny_classif_config()), ck)  # retrained, saved at the same path
    assert main(args) == 0 and set(_statuses(out).values()) == {"done"}
    again = json.loads((out / "c0.avloc.json").read_text())
    assert again["model"]["sha256"] != first["model"]["sha256"] and again["frames"] != first["frames"]
    assert "made by another content of the model" in caplog.text


def test_outputs_are_never_inputs(clips: Path, tmp_path: Path, caplog) -> None:
    """``avloc localize DIR --out DIR`` does not take its own overlays as inputs on a re-run, and says so."""
    d = tmp_path / "d"
    d.mkdir()
    for k in (0, 1):
        shutil.copy(clips / f"c{k}.mp4", d)
    args = ["localize", str(d), "--out", str(d), "--model", "avsync-objectness", "--quiet"]  # with overlays
    assert main(args) == 0 and (d / "c0.avloc.mp4").is_file()
    caplog.clear()
    assert main(args) == 0
    assert _statuses(d) == {"c0": "skipped", "c1": "skipped"}
    assert "left out 2 file(s) that avloc wrote (outputs are never inputs)" in caplog.text
    caplog.clear()
    assert main(["localize", str(d / "c0.avloc.mp4"), str(d / "c1.mp4"), "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "c0.avloc.mp4: an output of avloc localize, not an input" in caplog.text


def test_a_file_avloc_did_not_write_is_never_replaced(clips: Path, tmp_path: Path, caplog) -> None:
    """A user's ``c0.sheet.png`` with no JSON beside it fails that input with one line, also with --force; a set
    of ours whose JSON went missing (the previous run.json records it) is redone."""
    out = tmp_path / "o"
    out.mkdir()
    mine = out / "c0.sheet.png"
    mine.write_bytes(b"the user's own picture")
    args = ["localize", str(clips / "c0.mp4"), str(clips / "c1.mp4"), "--out", str(out), *FAST]
    for extra in ([], ["--force"]):
        assert main([*args, *extra]) == 2
        st = {s["stem"]: s for s in _run(out)["inputs"]}
        assert st["c0"]["status"] == "failed" and st["c1"]["status"] in ("done", "skipped")
        assert f"{mine} exists and avloc did not write it" in st["c0"]["error"]
        assert mine.read_bytes() == b"the user's own picture" and not (out / "c0.avloc.json").exists()
    mine.unlink()
    assert main(args) == 0 and _statuses(out) == {"c0": "done", "c1": "skipped"}
    (out / "c0.avloc.json").unlink()  # ours, partial now: the sheet is recorded in run.json
    caplog.clear()
    assert main(args) == 0 and _statuses(out) == {"c0": "done", "c1": "skipped"}
    assert "c0.mp4: redoing it (no JSON output)" in caplog.text
    theirs = out / "c1.heatmaps.npz"  # beside a complete set made without heatmaps: skipping leaves it alone ...
    theirs.write_bytes(b"someone else's arrays")
    assert main(args) == 0 and _statuses(out) == {"c0": "skipped", "c1": "skipped"}
    assert main([*args, "--force"]) == 2  # ... redoing the set would replace it: refused
    st = {s["stem"]: s for s in _run(out)["inputs"]}
    assert st["c0"]["status"] == "done" and f"{theirs} exists and avloc did not write it" in st["c1"]["error"]
    assert theirs.read_bytes() == b"someone else's arrays" and (out / "c1.avloc.json").is_file()


@pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed (pip install 'avloc[ray]')")
def test_an_unreachable_cluster_fails_in_seconds(clips: Path, tmp_path: Path, capsys) -> None:
    """``--ray-address`` of a closed port: one line within the connect time-out, before anything is written."""
    out = tmp_path / "o"
    t0 = time.monotonic()
    rc = main(["localize", str(clips / "c0.mp4"), "--out", str(out), "--workers", "1", "--ray-address", "127.0.0.1:1",
               *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and time.monotonic() - t0 < 20
    assert len(err) == 1 and "--ray-address 127.0.0.1:1: cannot reach a Ray cluster there" in err[0], err
    assert not (out / "run.json").exists()


def test_the_address_probe_has_a_time_out() -> None:
    """A peer that accepts and stays silent fails within the time-out; one that speaks another protocol (an HTTP/1
    server, e.g. Ray's dashboard port) fails at once; neither reaches ``ray.init``'s retries."""
    import socket
    import threading

    from avloc.applications.ray_runner import probe_address
    from avloc.errors import ConfigError

    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody ever answers
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match=r"cannot reach a Ray cluster there \(no answer within 0.5 s\)"):
            probe_address(f"127.0.0.1:{silent.getsockname()[1]}", 0.5)
        assert time.monotonic() - t0 < 5
    with socket.create_server(("127.0.0.1", 0)) as http:
        def answer() -> None:
            conn, _ = http.accept()
            with conn:
                conn.recv(64)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        th = threading.Thread(target=answer, daemon=True)
        th.start()
        with pytest.raises(ConfigError, match="something answers there, but not a Ray cluster's head"):
            probe_address(f"127.0.0.1:{http.getsockname()[1]}", 5)
        th.join(timeout=5)
    with pytest.raises(ConfigError, match="give auto or HOST:PORT"):
        probe_address("head-node", 0.5)


def test_ganged_source_shares_batches_and_keys_rows_by_thread() -> None:
    """Analyses running at once share one model call per round; each gets its own rows back (by thread, not by
    call order); a batch that fails fails only its own analysis."""
    import threading

    from avloc.inference.gang import GangedSource
    from avloc.inference.sources import SourceOutput

    class Doubling:  # a per-frame source: maps = 2 x the images' first channel; it refuses the value 13
        context_seconds, is_clip, analyses_sources, model = 0.0, False, False, None

        def __init__(self) -> None:
            self.calls: list[int] = []

        def maps(self, images, audio, times, keep=None):
            self.calls.append(images.shape[0])
            if (images == 13).any():
                raise ValueError("poisoned batch")
            n = images.shape[0]
            return SourceOutput(2 * images[:, 0].numpy(), [float(t) for t in times], [None] * n, [None] * n)

    inner = Doubling()
    gang, joined = GangedSource(inner), threading.Barrier(3)
    got: dict[tuple[int, int], object] = {}

    def analysis(k: int, values: list[float]) -> None:
        with gang.member():
            joined.wait()  # all three are members before the first batch
            for b, v in enumerate(values):
                try:
                    got[k, b] = gang.maps(torch.full((k + 1, 3, 2, 2), v), torch.zeros(k + 1, 4), torch.full((k + 1,), v))
                except ValueError as e:
                    got[k, b] = e

    plan = {0: [1.0, 2.0], 1: [5.0, 13.0, 7.0], 2: [9.0]}
    threads = [threading.Thread(target=analysis, args=(k, v)) for k, v in plan.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert inner.calls[0] == 1 + 2 + 3  # the first round: one call for the three analyses
    for (k, b), out in got.items():
        v = plan[k][b]
        if v == 13:
            assert isinstance(out, ValueError)  # only the poisoned batch failed ...
        else:
            assert isinstance(out, SourceOutput) and out.maps.shape == (k + 1, 2, 2)
            assert np.all(out.maps == 2 * v) and out.onscreen == [v] * (k + 1)  # ... each got its own rows
    assert len(got) == 6
