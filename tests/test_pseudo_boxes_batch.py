"""Issue 20: ``avloc pseudo-boxes`` as a collection (one bad entry, resume, --force, Ray = sequential byte for byte),
the Ray path of ``avloc localize`` killed midway, and the --workers options of both commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from avloc.cli.main import main
from test_batch import FAST, HAS_RAY, N_CLIPS, _clip, kill_when
from test_classif import tiny_classif_config

N = 4  # good entries
NEEDS_RAY = pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed (pip install 'avloc[ray]')")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classif checkpoint, N clips and ``in.jsonl`` naming them."""
    from avloc.methods import create_method
    from avloc.methods.zoo import save_model

    d = tmp_path_factory.mktemp("pbmedia")
    torch.manual_seed(0)
    save_model(create_method("classif", tiny_classif_config()), d / "m.safetensors")
    for k in range(N):
        _clip(d / f"c{k}.mp4", k)
    _write(d / "in.jsonl", [f"c{k}" for k in range(N)], d)
    return d


def _write(manifest: Path, ids: list[str], media: Path) -> Path:
    """A manifest of video entries ``ID -> media/ID.mp4`` (``bad`` -> a junk file beside the manifest)."""
    rows = []
    for i in ids:
        video = manifest.parent / "bad.mp4" if i == "bad" else media / f"{i}.mp4"
        rows.append({"id": i, "video": str(video), "size": [96, 72], "labels": [1]})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def _args(media: Path, manifest: Path, out: Path, *more: str) -> list[str]:
    return ["pseudo-boxes", "--model", str(media / "m.safetensors"), "--manifest", str(manifest), "--out", str(out),
            "--quiet", *more]


def _record(out: Path) -> dict:
    return json.loads(out.with_name(out.name + ".run.json").read_text())


def _statuses(out: Path) -> dict[str, str]:
    return {s["input"]: s["status"] for s in _record(out)["inputs"]}


def _ids(out: Path) -> list[str]:
    return [json.loads(line)["id"] for line in out.read_text().splitlines()]


def _parts(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def test_sequential_order_record_and_no_overwrite(media: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.jsonl"
    args = _args(media, media / "in.jsonl", out)
    assert main(args) == 0
    assert _ids(out) == [f"c{k}" for k in range(N)]  # the manifest's order
    rec = _record(out)
    assert rec["tool"]["name"] == "avloc pseudo-boxes" and rec["finished"] and rec["config"]["workers"] == 0
    assert set(_statuses(out).values()) == {"done"} and not _parts(out).exists()  # complete: work area removed
    before = out.read_bytes()
    assert main(args) == 2 and "exists; pass --force" in capsys.readouterr().err  # a finished OUT is not ours to replace
    assert main([*args, "--force"]) == 0
    assert out.read_bytes() == before and set(_statuses(out).values()) == {"done"}


@pytest.mark.parametrize("video", [3, ["c0.mp4"], {"path": "c0.mp4"}, ""])
def test_media_fields_of_the_wrong_type_are_one_line(media: Path, tmp_path: Path, capsys, video: object) -> None:
    man = tmp_path / "in.jsonl"
    man.write_text(json.dumps({"id": "c0", "video": video, "size": [96, 72], "labels": [1]}) + "\n")
    assert main(_args(media, man, tmp_path / "out.jsonl")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'video' must be a media path" in err[0] and "in.jsonl:1" in err[0], err


def test_an_edited_part_is_redone_not_copied(media: Path, tmp_path: Path, capsys, caplog) -> None:
    """Issue 30: a finished entry's part edited into an invalid manifest entry is redone, never copied into OUT."""
    man = _write(tmp_path / "in.jsonl", ["c0", "bad"], media)
    (tmp_path / "bad.mp4").write_bytes(b"junk" * 100)
    out = tmp_path / "out.jsonl"
    assert main(_args(media, man, out)) == 2  # "bad" fails: the work area stays
    (part,) = (p for p in _parts(out).iterdir() if p.name not in ("config.json", "written.json"))
    doc = json.loads(part.read_text())
    good = doc["entries"][0]["boxes"]
    doc["entries"][0]["boxes"] = [[50.0, 50.0, 10.0, 10.0]]  # an empty box
    part.write_text(json.dumps(doc))
    assert main(_args(media, man, out)) == 2
    assert _statuses(out) == {"c0": "done", "bad": "failed"} and "empty box" in caplog.text
    assert json.loads(out.read_text().splitlines()[0])["boxes"] == good


def test_a_bad_entry_fails_alone_and_a_rerun_redoes_only_it(media: Path, tmp_path: Path, capsys, caplog) -> None:
    man = _write(tmp_path / "in.jsonl", ["c0", "c1", "bad", "c2", "c3"], media)
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all" * 100)
    out = tmp_path / "out.jsonl"
    args = _args(media, man, out)
    assert main(args) == 2
    err = capsys.readouterr().err + caplog.text
    assert "5 entries: 4 done, 0 skipped, 1 failed" in err
    rec = {s["input"]: s for s in _record(out)["inputs"]}
    assert rec["bad"]["status"] == "failed" and "bad.mp4" in rec["bad"]["error"] and "\n" not in rec["bad"]["error"]
    assert _ids(out) == ["c0", "c1", "c2", "c3"]  # written without the failed entry
    parts = sorted(p for p in _parts(out).iterdir() if p.name not in ("config.json", "written.json"))
    assert len(parts) == 4
    mtimes = {p.name: p.stat().st_mtime_ns for p in parts}
    first = out.read_bytes()

    # the same command again: the finished entries are skipped (their parts untouched), the bad one retried
    assert main(args) == 2
    assert _statuses(out) == {"c0": "skipped", "c1": "skipped", "bad": "failed", "c2": "skipped", "c3": "skipped"}
    assert {p.name: p.stat().st_mtime_ns for p in parts} == mtimes and out.read_bytes() == first

    # another configuration over the work area is refused; an OUT edited since is not replaced
    assert main([*args, "--threshold", "0.6"]) == 2
    assert "threshold=0.5, not 0.6; pass --force" in capsys.readouterr().err
    out.write_bytes(first + b"\n")
    assert main(args) == 2 and "exists; pass --force" in capsys.readouterr().err
    out.write_bytes(first)

    # the bad clip repaired: only it runs, OUT is complete and the work area goes
    shutil.copy(media / "c0.mp4", tmp_path / "bad.mp4")
    assert main(args) == 0
    assert _statuses(out) == {"c0": "skipped", "c1": "skipped", "bad": "done", "c2": "skipped", "c3": "skipped"}
    assert _ids(out) == ["c0", "c1", "bad", "c2", "c3"] and not _parts(out).exists()
    assert main(args) == 2  # complete now: a re-run needs --force ...
    assert main([*args, "--force"]) == 0  # ... which redoes every entry
    assert set(_statuses(out).values()) == {"done"}


@pytest.mark.slow  # starts Ray: 30-45 s on 2 cores
@NEEDS_RAY
def test_ray_two_workers_equals_sequential(media: Path, tmp_path: Path) -> None:
    man = _write(tmp_path / "in.jsonl", ["c0", "c1", "bad", "c2", "c3"], media)
    (tmp_path / "bad.mp4").write_bytes(b"junk" * 50)
    seq, ray = tmp_path / "seq" / "out.jsonl", tmp_path / "ray" / "out.jsonl"
    assert main(_args(media, man, seq)) == 2
    assert main(_args(media, man, ray, "--workers", "2", "--threads-per-worker", "1")) == 2
    assert ray.read_bytes() == seq.read_bytes()  # same lines, same order (the manifest's), same bytes
    a, b = _record(seq), _record(ray)
    assert b["config"]["workers"] == 2 and b["config"]["threads_per_worker"] == 1
    assert [(s["input"], s["status"], s["error"]) for s in a["inputs"]] == \
        [(s["input"], s["status"], s["error"]) for s in b["inputs"]]
    for name in sorted(p.name for p in _parts(seq).iterdir() if p.name not in ("config.json", "written.json")):
        assert (_parts(ray) / name).read_bytes() == (_parts(seq) / name).read_bytes()  # every finished entry's part


def _session_pids(sid: int) -> list[int]:
    """The processes of session ``sid`` (a run started with ``start_new_session``: the driver and its Ray)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid:
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _kill_session(sid: int) -> None:
    """SIGKILL what the killed run left running (Ray's workers outlive their driver a while), and wait for it."""
    deadline = time.monotonic() + 30
    while pids := _session_pids(sid):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        assert time.monotonic() < deadline, f"processes of the killed run still alive: {pids}"
        time.sleep(0.2)


@NEEDS_RAY
@pytest.mark.slow
def test_ray_sigkill_midway_then_rerun_completes_without_redoing(tmp_path: Path) -> None:
    from avloc.inference.collection import listed_names

    clips = tmp_path / "clips"
    clips.mkdir()
    for k in range(N_CLIPS):
        _clip(clips / f"c{k}.mp4", k)
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "avloc.cli.main", "localize", str(clips), "--out", str(out), "--workers", "2", *FAST]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    kill_when(p, (out / "c0.avloc.json").exists, "its first output", after=lambda: _kill_session(p.pid))  # midway
    killed = json.loads((out / "run.json").read_text())
    assert killed["finished"] is None
    # finished = a complete, valid output set on disk (the workers write them; run.json may lag behind)
    finished = {f"c{k}" for k in range(N_CLIPS)
                if (names := listed_names(out / f"c{k}.avloc.json")) and all((out / n).is_file() for n in names)}
    assert "c0" in finished and len(finished) < N_CLIPS
    mtimes = {s: (out / f"{s}.avloc.json").stat().st_mtime_ns for s in finished}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    st = {s["stem"]: s["status"] for s in run["inputs"]}
    assert run["finished"] is not None
    assert all(st[s] == "skipped" for s in finished) and all(st[s] == "done" for s in st if s not in finished)
    assert {s: (out / f"{s}.avloc.json").stat().st_mtime_ns for s in finished} == mtimes
    assert not any(e.name.startswith(".") for e in out.iterdir())  # the killed run's temporaries and locks are gone


@pytest.mark.parametrize("command", ["localize", "pseudo-boxes"])
@pytest.mark.parametrize(("options", "message"), [
    (["--threads-per-worker", "2"], "--threads-per-worker needs --workers"),
    (["--workers", "1", "--threads-per-worker", "-1"], "--threads-per-worker must be >= 0, got -1"),
    (["--gpus-per-worker", "1"], "--gpus-per-worker needs --workers"),
    (["--ray-address", "auto"], "--ray-address needs --workers"),
])
def test_workers_options_are_checked(command: str, options: list[str], message: str, media: Path, tmp_path: Path,
                                     capsys) -> None:
    if command == "localize":
        args = ["localize", str(media / "c0.mp4"), "--out", str(tmp_path / "o"), *FAST, *options]
    else:
        args = _args(media, media / "in.jsonl", tmp_path / "out.jsonl", *options)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before anything is written


@NEEDS_RAY
@pytest.mark.slow
def test_ray_pseudo_boxes_sigkill_midway_then_rerun_completes_without_redoing(media: Path, tmp_path: Path) -> None:
    """``avloc pseudo-boxes --workers 2`` killed (SIGKILL) after its first finished entry: the same command then
    skips every entry whose part was written, runs the rest, and OUT equals a sequential run's byte for byte."""
    n = 16
    man = tmp_path / "in.jsonl"
    man.write_text("".join(json.dumps({"id": f"e{k:02d}", "video": str(media / f"c{k % N}.mp4"), "size": [96, 72],
                                       "labels": [1]}) + "\n" for k in range(n)))
    seq = tmp_path / "seq" / "out.jsonl"
    assert main(_args(media, man, seq, "--threads", "1")) == 0
    out = tmp_path / "ray" / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cmd = [sys.executable, "-m", "avloc.cli.main",
           *_args(media, man, out, "--threads", "1", "--workers", "2", "--threads-per-worker", "1")]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def parts() -> set[str]:
        d = _parts(out)
        return {q.name for q in d.iterdir() if q.name not in ("config.json", "written.json")} if d.is_dir() else set()

    kill_when(p, lambda: bool(parts()), "its first finished entry", after=lambda: _kill_session(p.pid))
    assert not out.exists()  # OUT is assembled only at the end
    finished = parts()
    assert 1 <= len(finished) < n, f"{len(finished)} of {n} entries finished before the kill"
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    st = _statuses(out)
    assert sum(v == "skipped" for v in st.values()) == len(finished)  # the killed run's entries are not redone
    assert sum(v == "done" for v in st.values()) == n - len(finished)
    assert out.read_bytes() == seq.read_bytes() and not _parts(out).exists()


def test_a_second_run_on_out_is_refused_at_once(media: Path, tmp_path: Path, capsys) -> None:
    """Issue 30: the run holds a lock beside OUT; a second run on the same OUT fails at once naming the first."""
    from avloc.applications.pseudo_box_run import LOCK_SUFFIX
    from avloc.io.outputs import HeldLock

    out = tmp_path / "out.jsonl"
    with HeldLock(tmp_path / f".out.jsonl{LOCK_SUFFIX}", "test"):
        assert main(_args(media, media / "in.jsonl", out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another avloc pseudo-boxes run is writing it" in err[0] and f"pid {os.getpid()}" in err[0]
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_saved_again_at_the_same_path_redoes_every_entry(media: Path, tmp_path: Path, caplog) -> None:
    """Issue 30: the work area is keyed by the model's content; new weights under the same path redo the entries it
    holds instead of copying results of the old weights into OUT."""
    from avloc.methods import create_method
    from avloc.methods.zoo import save_model

    ck = tmp_path / "m.safetensors"
    shutil.copy(media / "m.safetensors", ck)
    man = _write(tmp_path / "in.jsonl", ["c0", "c1", "bad"], media)
    (tmp_path / "bad.mp4").write_bytes(b"junk" * 100)
    out = tmp_path / "out.jsonl"
    args = ["pseudo-boxes", "--model", str(ck), "--manifest", str(man), "--out", str(out), "--quiet"]
    assert main(args) == 2 and _statuses(out) == {"c0": "done", "c1": "done", "bad": "failed"}
    assert main(args) == 2 and _statuses(out) == {"c0": "skipped", "c1": "skipped", "bad": "failed"}
    torch.manual_seed(7)
    save_model(create_method("classif", tiny_classif_config()), ck)  # retrained, saved at the same path
    caplog.clear()
    assert main(args) == 2 and _statuses(out) == {"c0": "done", "c1": "done", "bad": "failed"}
    assert "made by another content of" in caplog.text


@NEEDS_RAY
def test_an_unreachable_cluster_fails_in_seconds(media: Path, tmp_path: Path, capsys) -> None:
    t0 = time.monotonic()
    rc = main(_args(media, media / "in.jsonl", tmp_path / "out.jsonl", "--workers", "1", "--ray-address", "127.0.0.1:1"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and time.monotonic() - t0 < 20 and len(err) == 1
    assert "--ray-address 127.0.0.1:1: cannot reach a Ray cluster there" in err[0]
    assert not (tmp_path / "out.jsonl.parts").exists()
