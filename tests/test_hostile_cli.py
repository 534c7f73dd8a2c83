"""Issue 30, end to end in a fresh process: hostile inputs to ``avloc train``, ``avloc import`` and ``avloc eval``
give one line on stderr and exit status 2 (the CLI's error boundary, :func:`avloc.cli.main.main`), never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _avloc(*args: str, cwd: Path) -> tuple[int, list[str]]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    res = subprocess.run([sys.executable, "-m", "avloc.cli.main", *args], capture_output=True, text=True, cwd=cwd,
                         env=env, timeout=300)
    return res.returncode, res.stderr.strip().splitlines()


#: config file content -> what the one line must say (``avloc train --config FILE``)
BAD_CONFIGS: dict[str, tuple[bytes, str]] = {
    "binary": (bytes(range(256)), "not a text (UTF-8 JSON or TOML) config file"),
    "list-section": (b'{"method_name": "lvs", "method": [1, 2]}', "section 'method' must be a mapping"),
    "list-method-name": (b'{"method_name": ["lvs"], "method": {}}', "'method_name' must be a name"),
    "negative-image-size": (b'{"method_name": "lvs", "method": {"image": {"size": -5}}}', "image.size must lie in [1, 4096]"),
    "sample-rate-0": (b'{"method_name": "lvs", "method": {"audio": {"sample_rate": 0}}}', "audio.sample_rate must lie in"),
    "lr-inf": (b'{"method_name": "lvs", "train": {"optim": {"lr": 1e999}}}', "optim.lr: expected a finite number, got inf"),
    "weight-decay-nan": (b'{"method_name": "lvs", "train": {"optim": {"weight_decay": NaN}}}', "NaN is not a valid setting"),
    "bool-for-int": (b'{"method_name": "lvs", "method": {"embed_dim": true}}', "embed_dim: expected an integer"),
    "string-for-section": (b'{"method_name": "lvs", "train": "fast"}', "section 'train' must be a mapping"),
    "unknown-key": (b'{"method_name": "lvs", "method": {"embed_dimm": 3}}', "unknown keys ['embed_dimm']; valid keys"),
    "deep": (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    "combination": (b'{"method_name": "lvs", "method": {"eps_n": 0.9, "eps_p": 0.5}}', "eps_n < eps_p"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_train_with_a_bad_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    from avloc.cli.main import main

    content, says = BAD_CONFIGS[case]
    (tmp_path / "bad.json").write_bytes(content)
    rc = main(["train", "--config", str(tmp_path / "bad.json"), "--train", "none.jsonl", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and says in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["binary", "list-section", "negative-image-size", "lr-inf"])
def test_train_with_a_bad_config_in_a_fresh_process(tmp_path: Path, case: str) -> None:
    content, says = BAD_CONFIGS[case]
    (tmp_path / "bad.json").write_bytes(content)
    rc, err = _avloc("train", "--config", "bad.json", "--train", "none.jsonl", "--out", "run", cwd=tmp_path)
    assert rc == 2 and len(err) == 1 and says in err[0], err


def test_import_of_an_empty_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty.pth").write_bytes(b"")
    rc, err = _avloc("import", "--from", "lvs", "empty.pth", "--out", "m.safetensors", cwd=tmp_path)
    assert rc == 2 and len(err) == 1 and "empty.pth: empty file (0 bytes)" in err[0], err
    assert not (tmp_path / "m.safetensors").exists()


def test_eval_of_a_zip_bomb_is_one_line(tmp_path: Path) -> None:
    """A member declaring 1 GiB of zeros, deflated to about 1 MB: refused from the zip directory."""
    n = 2**28  # float32 values: 1 GiB
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({n},), }}".encode("latin1")
    header += b" " * ((-(11 + len(header))) % 64) + b"\n"
    zeros = bytes(2**24)
    with zipfile.ZipFile(tmp_path / "p.npz", "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z, \
            z.open("clip.npy", "w", force_zip64=True) as f:
        f.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
        for _ in range(4 * n // len(zeros)):
            f.write(zeros)
    (tmp_path / "gt.json").write_text(json.dumps([{"file": "clip", "class": "x", "bbox": [[0.1, 0.1, 0.5, 0.5]]}]))
    rc, err = _avloc("eval", "--gt", "gt.json", "--pred", "p.npz", "--protocol", "ezvsl-vggss", cwd=tmp_path)
    assert rc == 2 and len(err) == 1 and "refused before reading" in err[0], err


def test_eval_of_a_structured_prediction_is_one_line(tmp_path: Path) -> None:
    np.savez(tmp_path / "p.npz", clip=np.zeros((4, 4), dtype=[("x", "<f4")]))
    (tmp_path / "gt.json").write_text(json.dumps([{"file": "clip", "class": "x", "bbox": [[0.1, 0.1, 0.5, 0.5]]}]))
    rc, err = _avloc("eval", "--gt", "gt.json", "--pred", "p.npz", "--protocol", "ezvsl-vggss", cwd=tmp_path)
    assert rc == 2 and len(err) == 1 and "is not a plain number" in err[0], err
