"""Writes that fail cleanly (issue 30): a full disk mid-write leaves the previous complete file, one line, exit 2.

Two ways to make a write fail: monkeypatching the writer to write half a file and then raise ENOSPC as
safetensors does (``SafetensorError``, not an ``OSError``), and a real file-size limit (``RLIMIT_FSIZE``,
no root needed) in a subprocess, where the kernel refuses the write itself (EFBIG).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avloc.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, write_safetensors
from avloc.formats.atomic import atomic_paths

SRC = Path(__file__).resolve().parents[1] / "src"


def _ckpt(value: float) -> Checkpoint:
    return Checkpoint(method="random", config={}, state_dict={"w": torch.full((256,), value)})


def _fail_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    """``safetensors.torch.save_file`` writes half the file, then fails as it does on a full disk."""
    import safetensors.torch
    from safetensors import SafetensorError

    def save_file(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str] | None = None) -> None:
        Path(filename).write_bytes(b"\0" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def test_safetensors_full_disk_is_an_os_error_and_keeps_the_previous_file(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, _ckpt(1.0))
    _fail_midway(monkeypatch)
    with pytest.raises(OSError) as info:
        save_checkpoint(path, _ckpt(2.0))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert torch.equal(load_checkpoint(path).state_dict["w"], torch.full((256,), 1.0))  # the previous file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary left behind


def test_a_safetensors_bug_is_not_disguised_as_a_disk_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    def save_file(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str] | None = None) -> None:
        raise SafetensorError("Error while serializing: unsupported dtype")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    with pytest.raises(SafetensorError, match="unsupported dtype"):  # not an OSError: the CLI reports it as a bug
        write_safetensors(tmp_path / "x.safetensors", {"a": torch.zeros(4)}, {})
    assert not list(tmp_path.iterdir())


def test_files_written_together_are_replaced_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model and its training state: the second write fails, so neither file changes (they stay consistent)."""
    last, state = tmp_path / "last.safetensors", tmp_path / "state.safetensors"
    with atomic_paths(last, state) as (t_last, t_state):
        save_checkpoint(t_last, _ckpt(1.0))
        save_checkpoint(t_state, _ckpt(1.0))
    with pytest.raises(OSError), atomic_paths(last, state) as (t_last, t_state):
        save_checkpoint(t_last, _ckpt(2.0))
        _fail_midway(monkeypatch)
        save_checkpoint(t_state, _ckpt(2.0))
    for p in (last, state):
        assert torch.equal(load_checkpoint(p).state_dict["w"], torch.full((256,), 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors", "state.safetensors"]


_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing the process
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from avloc.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE / SIGXFSZ semantics checked on Linux")
def test_cli_write_past_a_file_size_limit_is_one_line_exit_2(tmp_path: Path) -> None:
    """A real kernel refusal mid-write (``avloc import --force`` over an existing checkpoint)."""
    from published_layouts import published_checkpoint

    src, out = tmp_path / "lvs.pth", tmp_path / "m.safetensors"
    torch.save(published_checkpoint("lvs"), src)
    out.write_bytes(b"previous")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-c", _LIMITED.format(limit=1 << 20), "import", "--from", "lvs", str(src), "--out", str(out),
           "--force"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "m.safetensors" in lines[0] and "File too large" in lines[0], res.stderr
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lvs.pth", "m.safetensors"]


def test_wav_and_text_writers_keep_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``write_wav`` (libsndfile alone reports a full disk as "system error" and leaves half a file) and the
    atomic text/bytes writers: ENOSPC midway is an OSError naming the file, and the previous file stays."""
    import numpy as np

    from avloc.formats.atomic import write_text_atomic
    from avloc.io.audio import write_wav

    wav, txt = tmp_path / "a.wav", tmp_path / "m.jsonl"
    write_wav(wav, np.zeros(800, np.float32), 8000)
    write_text_atomic(txt, "previous\n")
    before = wav.read_bytes()
    real = Path.write_bytes

    def half_then_full(self: Path, data: bytes) -> int:  # type: ignore[override]
        real(self, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(OSError) as info:
        write_wav(wav, np.ones(800, np.float32), 8000)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(Path, "write_text", lambda self, text: half_then_full(self, text.encode()))
    with pytest.raises(OSError):
        write_text_atomic(txt, "new\n" * 100)
    assert wav.read_bytes() == before and txt.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "m.jsonl"]
