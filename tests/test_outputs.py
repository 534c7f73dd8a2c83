"""Issue 18, outputs and the CLI error boundary: unwritable / full / odd ``--out``, whole-set ``--force``,
per-input isolation, two concurrent runs, SIGKILL, leftover temporaries (each failure case as a test)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from avloc.cli.main import main
from avloc.errors import OutputExistsError, OutputLockedError
from avloc.io.outputs import OutputTransaction, _recover, is_avloc_temporary, is_temporary_name
from clips import write_clip

SRC = Path(__file__).resolve().parents[1] / "src"
FAST = ["--model", "centre"]  # a training-free model that costs nothing: these tests are about outputs
SUFFIXES = {"json": ".avloc.json", "video": ".avloc.mp4", "heatmaps": ".heatmaps.npz", "sheet": ".sheet.png"}


def _clip(path: Path, seconds: float = 2.0) -> Path:
    return write_clip(path, seconds=seconds, fps=10, size=(96, 64))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _clip(tmp_path_factory.mktemp("clips") / "a.mp4")


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()} if d.exists() else {}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err.strip().splitlines()


def _cli(*argv: str, **kw) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-m", "avloc.cli.main", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _mount(args: list[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a read-only bind or a tmpfs (as root, permissions alone do not stop writes)")
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"mount is not permitted here: {r.stderr.strip()}")


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "ro"
    d.mkdir()
    (d / "existing").mkdir()
    _mount(["--bind", str(d), str(d)])
    try:
        _mount(["-o", "remount,bind,ro", str(d)])
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "full"
    d.mkdir()
    _mount(["-t", "tmpfs", "-o", "size=48k", "tmpfs", str(d)])
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


def _no_leftovers(out: Path) -> None:
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporaries or a lock left behind"


# -- 1, 2: --out is a file, below a file, read-only -------------------------------------------------
@pytest.mark.parametrize("where", ["file", "below-file"])
def test_out_is_a_file(tmp_path, clip, capsys, where: str) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    out = f if where == "file" else f / "sub"
    rc, err = _run(capsys, "localize", str(clip), "--out", str(out), "--quiet", *FAST)
    assert rc == 2 and len(err) == 1 and "is a file, not a folder" in err[0] and str(f) in err[0]
    assert f.read_text() == "x"


@pytest.mark.parametrize("sub", ["", "existing", "new/deeper"])
def test_out_read_only(readonly_dir, clip, capsys, sub: str) -> None:
    out = readonly_dir / sub if sub else readonly_dir
    rc, err = _run(capsys, "localize", str(clip), "--out", str(out), "--quiet", *FAST)
    assert rc == 2 and len(err) == 1 and "read-only" in err[0] and "writable" in err[0], err


# -- 3, 4: disk full (a fault-injecting writer, then a real full tmpfs); the previous set survives ----
def test_disk_full_at_the_contact_sheet_keeps_the_previous_set(tmp_path, clip, capsys, monkeypatch) -> None:
    out = tmp_path / "o"
    assert main(["localize", str(clip), "--out", str(out), "--quiet", *FAST]) == 0
    before = _snapshot(out)
    from PIL import Image

    def full(self, fp, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(fp))

    monkeypatch.setattr(Image.Image, "save", full)
    for extra in ([], ["--force"], ["--force", "--save-heatmaps", "--fps", "3"]):
        rc, err = _run(capsys, "localize", str(clip), "--out", str(out), "--quiet", *FAST, *extra)
        assert rc == 2 and len(err) == 1
        if extra:
            assert "disk is full" in err[0] and "a.mp4" in err[0]
        assert _snapshot(out) == before  # the old overlay, JSON and sheet, byte for byte
        _no_leftovers(out)


def test_disk_full_leaves_no_partial_set_and_no_block(tmp_path, clip, capsys, tiny_tmpfs) -> None:
    rc, err = _run(capsys, "localize", str(clip), "--out", str(tiny_tmpfs), "--quiet", *FAST)
    assert rc == 2 and len(err) == 1 and "disk is full" in err[0], err
    assert list(tiny_tmpfs.iterdir()) == []  # no overlay without its JSON, no temporaries
    rc, err = _run(capsys, "localize", str(clip), "--out", str(tmp_path / "big"), "--quiet", *FAST)
    assert rc == 0


def test_failed_force_rerun_keeps_the_previous_overlay(tmp_path, clip, capsys, monkeypatch) -> None:
    out = tmp_path / "o"
    assert main(["localize", str(clip), "--out", str(out), "--quiet", *FAST]) == 0
    before = _snapshot(out)
    import avloc.inference.analyse as pl

    real = pl.build_document

    def broken(*a, **k):  # fails after the new overlay and sheet are complete (in the temporary folder)
        raise OSError(errno.EIO, "Input/output error", "x")

    monkeypatch.setattr(pl, "build_document", broken)
    rc, err = _run(capsys, "localize", str(clip), "--out", str(out), "--quiet", *FAST, "--force", "--fps", "3")
    assert rc == 2 and len(err) == 1
    assert _snapshot(out) == before
    monkeypatch.setattr(pl, "build_document", real)
    _no_leftovers(out)


# -- 5: --force with fewer outputs replaces the whole set ---------------------------------------------
def test_force_replaces_the_whole_set(tmp_path, clip) -> None:
    import json

    out = tmp_path / "o"
    assert main(["localize", str(clip), "--out", str(out), "--quiet", *FAST, "--save-heatmaps"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.avloc.json", "a.avloc.mp4", "a.heatmaps.npz", "a.sheet.png"]
    assert main(["localize", str(clip), "--out", str(out), "--quiet", *FAST, "--no-overlay", "--fps", "2", "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.avloc.json", "a.sheet.png"]
    doc = json.loads((out / "a.avloc.json").read_text())
    assert len(doc["frames"]) == 4 and set(doc["outputs"]) == {"json", "sheet"}


# -- 6: per-input isolation for every error kind ------------------------------------------------------
def test_os_error_and_bug_on_some_inputs_do_not_stop_the_batch(tmp_path, capsys, monkeypatch) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for n in "abcd":
        _clip(src / f"{n}.mp4", seconds=1.0)
    import avloc.inference.decode as pl

    real = pl.probe

    def flaky(p):
        if Path(p).stem == "b":
            raise OSError(errno.EIO, "Input/output error", str(p))
        if Path(p).stem == "c":
            raise RuntimeError("a bug")
        return real(p)

    monkeypatch.setattr(pl, "probe", flaky)
    rc = main(["localize", str(src), "--out", str(tmp_path / "o"), "--quiet", *FAST, "--no-overlay"])
    err = capsys.readouterr().err
    assert rc == 1  # a bug among the failures
    assert "b.mp4: Input/output error" in err and "Traceback" in err and "RuntimeError: a bug" in err
    assert "c.mp4: this is a bug in avloc: please report it" in err
    assert {p.name for p in (tmp_path / "o").iterdir()} == {"a.avloc.json", "a.sheet.png", "d.avloc.json", "d.sheet.png",
                                                          "run.json"}  # a collection run (issue 20)


def test_unexpected_error_prints_traceback_and_report_line(capsys, monkeypatch) -> None:
    import avloc.cli.info as info

    monkeypatch.setattr(info, "run", lambda args: 1 / 0)
    rc = main(["info"])
    err = capsys.readouterr().err
    assert rc == 1 and "ZeroDivisionError" in err and "please report" in err.strip().splitlines()[-1]


# -- 7: two runs on one output ------------------------------------------------------------------------
def test_second_run_is_told_who_holds_the_lock(tmp_path, clip) -> None:
    out = tmp_path / "o"
    tx = OutputTransaction(out, "a", SUFFIXES, {"json", "sheet"}).begin()
    try:
        p = _cli("localize", str(clip), "--out", str(out), "--quiet", *FAST, "--no-overlay")
        _, err = p.communicate(timeout=120)
        assert p.returncode == 2 and "another run is writing" in err and f"pid {os.getpid()}" in err, err
        assert len(err.strip().splitlines()) == 1
        with pytest.raises(OutputLockedError):
            OutputTransaction(out, "a", SUFFIXES, {"json"}).begin()
    finally:
        tx.abort()
    assert not list(out.iterdir())  # lock file and temporary folder gone


def test_two_concurrent_processes_one_wins(tmp_path, clip) -> None:
    out = tmp_path / "o"
    procs = [_cli("localize", str(clip), "--out", str(out), "--quiet", *FAST) for _ in range(2)]
    res = [(p.wait(timeout=180), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(r for r, _ in res)
    assert codes == [0, 2], res
    loser = next(e for r, e in res if r == 2)
    assert "another run is writing" in loser or "exists" in loser
    assert sorted(p.name for p in out.iterdir()) == ["a.avloc.json", "a.avloc.mp4", "a.sheet.png"]


def test_existing_set_is_rechecked_under_the_lock(tmp_path) -> None:
    out = tmp_path / "o"
    tx = OutputTransaction(out, "a", SUFFIXES, {"json"})
    tx.check()  # passes: nothing there yet
    out.mkdir()
    (out / "a.avloc.json").write_text("{}")  # another run finished in between
    with pytest.raises(OutputExistsError):
        tx.begin()
    assert sorted(p.name for p in out.iterdir()) == ["a.avloc.json"]


# -- 8: SIGKILL, leftovers, folder expansion --------------------------------------------------------
def test_sigterm_cleans_up_and_keeps_the_previous_set(tmp_path) -> None:
    d = tmp_path / "o"
    clip = _clip(tmp_path / "a.mp4", seconds=6.0)
    assert main(["localize", str(clip), "--out", str(d), "--quiet", "--no-overlay", *FAST]) == 0
    before = _snapshot(d)
    p = _cli("localize", str(clip), "--out", str(d), "--quiet", "--force", "--fps", "10", *FAST)
    deadline = time.monotonic() + 120
    while not any(x.name.startswith(".a.avloc-tmp-") for x in d.iterdir()):
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM and "terminated" in err
    assert _snapshot(d) == before
    _no_leftovers(d)


def test_sigkill_keeps_the_previous_set_and_leftovers_are_cleaned(tmp_path, capsys) -> None:
    d = tmp_path / "in"  # inputs and outputs in one folder, as a user may do
    d.mkdir()
    _clip(d / "a.mp4", seconds=6.0)
    assert main(["localize", str(d / "a.mp4"), "--out", str(d), "--quiet", *FAST, "--no-overlay"]) == 0
    before = _snapshot(d)
    p = _cli("localize", str(d / "a.mp4"), "--out", str(d), "--quiet", *FAST, "--force", "--fps", "10")
    deadline = time.monotonic() + 120
    while not any(x.name.startswith(".a.avloc-tmp-") for x in d.iterdir()):
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    hidden = [x.name for x in d.iterdir() if x.name.startswith(".")]
    assert any(h.startswith(".a.avloc-tmp-") for h in hidden)
    assert {k: v for k, v in _snapshot(d).items() if not k.startswith(".")} == before
    (d / ".a.avloc.mp4.abc12345.mp4").write_bytes(b"truncated")  # what an older version left when killed
    capsys.readouterr()
    rc = main(["localize", str(d), "--out", str(d), "--quiet", *FAST, "--no-overlay", "--force"])
    out = capsys.readouterr()
    assert rc == 0 and out.out.count("frames, on-screen") == 1  # one input: the hidden files are not inputs
    assert not [x.name for x in d.iterdir() if x.name.startswith(".")]
    rc = main(["localize", str(d / ".a.avloc.mp4.abc12345.mp4"), "--out", str(tmp_path / "o2"), "--quiet", *FAST])
    assert rc == 2 and "temporary file of an interrupted avloc run" in capsys.readouterr().err


def test_prepare_folder_ignores_hidden_and_temporary_files(tmp_path) -> None:
    from avloc.data.prepare import prepare
    from avloc.formats.manifest import read_manifest

    root = tmp_path / "v"
    root.mkdir()
    _clip(root / "a.mp4", seconds=1.0)
    (root / ".a.avloc-tmp-abcd1234").mkdir()
    (root / ".a.avloc-tmp-abcd1234" / "a.avloc.mp4").write_bytes(b"half")
    (root / ".a.avloc.mp4.abc12345.mp4").write_bytes(b"half")
    (root / "b.mp4.part").write_bytes(b"half")
    (root / "c.mp4~").write_bytes(b"half")
    res = prepare("folder", root, tmp_path / "m.jsonl")
    assert [e["id"] for e in read_manifest(tmp_path / "m.jsonl")] == ["a"] and not res.problems


@pytest.mark.parametrize(
    ("name", "temp"),
    [("a.mp4", False), (".a.mp4", True), ("a.mp4.part", True), ("a.mp4~", True), ("a.tmp", True), ("a.b.mp4", False)],
)
def test_temporary_names(name: str, temp: bool) -> None:
    assert is_temporary_name(name) is temp


def test_avloc_temporaries_are_recognised() -> None:
    assert is_avloc_temporary("/x/.a.avloc-tmp-k2j3h4g5/a.avloc.mp4")
    assert is_avloc_temporary(".demo.avloc.mp4.abc12345.mp4") and is_avloc_temporary(".demo.k2j3h4g5.maps.tmp")
    assert not is_avloc_temporary("/x/a.avloc.mp4")


@pytest.mark.parametrize("phase", ["aside", "moving-in", "done"])
def test_a_commit_killed_midway_is_repaired(tmp_path, phase: str) -> None:
    """Kill points of the commit (module doc of avloc.io.outputs): the next begin() restores a whole set."""
    out = tmp_path / "o"
    out.mkdir()
    old = {"a.avloc.json": b"old json", "a.avloc.mp4": b"old mp4", "a.sheet.png": b"old png"}
    new = {"a.avloc.json": b"new json", "a.sheet.png": b"new png"}
    tmp = out / ".a.avloc-tmp-zzzz1234"
    (tmp / "previous").mkdir(parents=True)
    if phase == "aside":  # the JSON and the overlay moved aside, the sheet not yet
        for n, b in old.items():
            (tmp / "previous" / n if n != "a.sheet.png" else out / n).write_bytes(b)
        for n, b in new.items():
            (tmp / n).write_bytes(b)
        expect = old
    elif phase == "moving-in":  # all aside, the journal written, the new sheet moved in, not the JSON
        for n, b in old.items():
            (tmp / "previous" / n).write_bytes(b)
        (tmp / "committing").touch()
        (out / "a.sheet.png").write_bytes(new["a.sheet.png"])
        (tmp / "a.avloc.json").write_bytes(new["a.avloc.json"])
        expect = old
    else:  # the JSON moved in last: the new set is complete
        for n, b in old.items():
            (tmp / "previous" / n).write_bytes(b)
        (tmp / "committing").touch()
        for n, b in new.items():
            (out / n).write_bytes(b)
        expect = new
    tx = OutputTransaction(out, "a", SUFFIXES, {"json", "sheet"}, force=True).begin()
    assert tx.cleaned == [tmp]
    tx.abort()
    assert _snapshot(out) == expect


def test_recover_without_backup_touches_nothing(tmp_path) -> None:
    (tmp_path / "a.avloc.json").write_text("x")
    t = tmp_path / ".a.avloc-tmp-q"
    t.mkdir()
    _recover(t, {k: tmp_path / f"a{s}" for k, s in SUFFIXES.items()}, "json")
    assert (tmp_path / "a.avloc.json").read_text() == "x"


# -- 17: data prepare --out an existing folder ----------------------------------------------------------
def test_prepare_out_is_a_folder(tmp_path, capsys) -> None:
    root = tmp_path / "v"
    root.mkdir()
    _clip(root / "a.mp4", seconds=1.0)
    (tmp_path / "m").mkdir()
    rc, err = _run(capsys, "data", "prepare", "folder", "--root", str(root), "--out", str(tmp_path / "m"), "--force")
    assert rc == 2 and len(err) == 1 and "is a folder" in err[0] and "manifest.jsonl" in err[0]


def test_heatmaps_of_the_set_are_consistent(tmp_path, clip) -> None:
    import json

    out = tmp_path / "o"
    assert main(["localize", str(clip), "--out", str(out), "--quiet", *FAST, "--no-overlay", "--save-heatmaps"]) == 0
    doc = json.loads((out / "a.avloc.json").read_text())
    with np.load(out / "a.heatmaps.npz") as z:
        assert len(z["times"]) == len(doc["frames"])


def test_prepare_folder_isolates_os_errors_per_entry(tmp_path, monkeypatch) -> None:
    import avloc.data.prepare.steps as steps
    from avloc.data.prepare import prepare

    root = tmp_path / "v"
    root.mkdir()
    for n in "ab":
        _clip(root / f"{n}.mp4", seconds=1.0)
    real = steps._video_info

    def flaky(p):
        if p.stem == "a":
            raise OSError(errno.EIO, "Input/output error", str(p))
        return real(p)

    monkeypatch.setattr(steps, "_video_info", flaky)
    res = prepare("folder", root, tmp_path / "m.jsonl")
    assert res.n_written == 1 and "Input/output error" in res.problems["a"][0]


def test_out_not_writable_by_this_user(clip) -> None:
    """Permissions without root's override: the CLI run as an unprivileged user on a folder it cannot write."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root to run the CLI as another (unprivileged) user")
    d = Path(tempfile.mkdtemp(prefix="avloc-perm-", dir="/tmp"))
    try:
        d.chmod(0o755)
        shutil.copy(clip, d / "a.mp4")
        (d / "a.mp4").chmod(0o644)
        (d / "locked").mkdir(mode=0o555)
        try:
            p = _cli("localize", str(d / "a.mp4"), "--out", str(d / "locked" / "sub"), "--quiet", *FAST,
                     user=65534, group=65534, cwd=str(d))
        except PermissionError as e:
            pytest.skip(f"the unprivileged user cannot run this interpreter ({e}); the read-only mount tests cover it")
        _, err = p.communicate(timeout=120)
        if "Permission denied" in err and "python" in err.lower() and "avloc" not in err:
            pytest.skip(f"the unprivileged user cannot run the interpreter here: {err.strip()[:200]}")
        assert p.returncode == 2 and len(err.strip().splitlines()) == 1, err
        assert "not writable by this user" in err and str(d / "locked") in err
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_out_not_writable_message(tmp_path, clip, capsys, monkeypatch) -> None:
    """The same check in-process, with the permission answer of an unprivileged user injected."""
    import avloc.io.outputs as outputs

    monkeypatch.setattr(outputs.os, "access", lambda p, mode: False)
    rc, err = _run(capsys, "localize", str(clip), "--out", str(tmp_path / "o"), "--quiet", *FAST)
    assert rc == 2 and len(err) == 1 and "not writable by this user" in err[0] and str(tmp_path) in err[0]
