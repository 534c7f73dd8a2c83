"""Saved prediction archives (``avloc eval --pred``): :class:`avloc.io.arrays.NpzArchive` against ``np.load``,
and hostile archives refused from their directory and headers, before any data is read (issue 30)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from avloc.errors import DataError
from avloc.io.arrays import MAX_MEMBER_BYTES, NpzArchive


def test_equals_np_load_and_reads_lazily(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    arrays = {
        "a": rng.standard_normal((7, 7)).astype(np.float32),
        "b": rng.standard_normal((14, 14)),  # float64
        "c": np.asfortranarray(rng.standard_normal((5, 9)).astype(np.float32)),
        "d": rng.standard_normal((3, 4, 4)).astype(np.float16),
        "e": rng.standard_normal((7, 7)).astype(np.float32),  # same header as "a"
        "f": (rng.standard_normal((6, 6)) > 0),  # bool maps (binary predictions)
        "g": rng.integers(0, 255, (4, 4), dtype=np.uint8),
        "h": rng.standard_normal((0, 3)).astype(np.float32),
        "i": rng.standard_normal((8, 8)).astype(">f4"),  # big-endian: a plain number too
    }
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)  # type: ignore[operator]
        with NpzArchive(path) as got, np.load(path) as want:
            assert list(got) == list(want.files) and len(got) == len(arrays) and "a" in got and "z" not in got
            for k in want.files:
                assert got.shape(k) == want[k].shape
                assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k])


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes], compress: bool = False) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _with_header(header: str, data: bytes = b"") -> bytes:
    """A version-1 ``.npy`` member with ``header`` verbatim (padded as NumPy pads it)."""
    text = header.encode("latin1")
    pad = (-(10 + len(text) + 1)) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


GOOD = _npy(np.zeros((4, 4), np.float32))

#: member bytes -> what the one-line error must say
HOSTILE: dict[str, tuple[bytes, str]] = {
    "structured": (_npy(np.zeros(3, dtype=[("x", "f4"), ("y", "i4")])), "not a plain number"),
    "string": (_npy(np.array(["ab", "c"])), "not a plain number"),
    "bytes": (_npy(np.array([b"ab", b"c"])), "not a plain number"),
    "void": (_npy(np.zeros(3, dtype="V4")), "not a plain number"),
    "object": (_npy(np.array([{"a": 1}], dtype=object)), "not a plain number"),
    "complex": (_npy(np.zeros(3, np.complex64)), "not a plain number"),
    "datetime": (_npy(np.zeros(3, "datetime64[s]")), "not a plain number"),
    "subarray": (_with_header("{'descr': [('x', '<f4', (2,))], 'fortran_order': False, 'shape': (3,), }"), "not a plain number"),
    "no magic": (b"NOTNUMPY" + GOOD[8:], "no NumPy magic"),
    "version 9": (GOOD[:6] + b"\x09\x00" + GOOD[8:], "version 9"),
    "garbage header": (_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 4), }"[:30]), "malformed .npy header"),
    "code in header": (_with_header("__import__('os').system('true')"), "malformed .npy header"),
    "negative shape": (_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-4, 4), }"), "negative dimension"),
    "float shape": (_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4.0, 4), }"), "malformed .npy header"),
    "huge shape": (_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }"), "bytes (at most"),
    "header length past the end": (GOOD[:8] + (9000).to_bytes(2, "little") + GOOD[10:60], "truncated"),
    "header too long": (GOOD[:6] + b"\x02\x00" + (10**6).to_bytes(4, "little") + GOOD[12:], "at most 10000"),
    "truncated data": (GOOD[:-10], "truncated or padded"),
    "padded data": (GOOD + b"\0" * 16, "truncated or padded"),
    "tiny": (b"\x93NU", "no NumPy magic"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_from_their_header(tmp_path: Path, case: str) -> None:
    data, says = HOSTILE[case]
    path = _zip(tmp_path / "p.npz", {"ok.npy": GOOD, "bad.npy": data})
    with pytest.raises(DataError, match=r"member 'bad\.npy'") as info:
        NpzArchive(path)
    assert says in str(info.value) and len(str(info.value).splitlines()) == 1


def test_not_an_archive_and_not_arrays(tmp_path: Path) -> None:
    for name, content in (("empty.npz", b""), ("text.npz", b"hello"), ("npy.npz", GOOD)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=r"not a readable \.npz"):
            NpzArchive(tmp_path / name)
    with pytest.raises(DataError, match=r"'notes\.txt' is not a \.npy array"):
        NpzArchive(_zip(tmp_path / "x.npz", {"a.npy": GOOD, "notes.txt": b"hi"}))


def _bomb(path: Path, nbytes: int, chunk: int = 2**24) -> Path:
    """One member of ``nbytes`` zeros behind a valid ``.npy`` header, deflated (~1000:1)."""
    n = nbytes // 4
    head = _with_header(f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({n},), }}")
    zeros = bytes(chunk)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z, \
            z.open("clip.npy", "w", force_zip64=True) as f:
        f.write(head)
        for _ in range(n * 4 // chunk):
            f.write(zeros)
        f.write(bytes(n * 4 % chunk))
    return path


def test_zip_bomb_is_refused_from_the_directory(tmp_path: Path) -> None:
    path = _bomb(tmp_path / "bomb.npz", MAX_MEMBER_BYTES + 2**24)
    assert path.stat().st_size < MAX_MEMBER_BYTES // 100
    with pytest.raises(DataError, match="refused before reading"):
        NpzArchive(path)


@pytest.mark.slow
def test_eval_of_a_4_8_gb_zip_bomb_stays_small(tmp_path: Path) -> None:
    """The campaign's case: a ~5 MB ``.npz`` inflating to 4.8 GB; ``avloc eval`` refuses it in well under 1 GB."""
    import subprocess
    import sys

    pred = _bomb(tmp_path / "bomb.npz", 48 * 10**8)
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps([{"file": "clip", "class": "x", "bbox": [[0.1, 0.1, 0.5, 0.5]]}]))
    code = ("import sys\nfrom avloc.cli.main import main\nrc = main(sys.argv[1:])\n"
            "hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0].split()[1]\n"
            "print(hwm, file=sys.stderr)\nsys.exit(rc)")  # VmHWM: this process's own peak (ru_maxrss counts the parent's)
    res = subprocess.run([sys.executable, "-c", code, "eval", "--gt", str(gt), "--pred", str(pred), "--protocol",
                          "ezvsl-vggss"], capture_output=True, text=True, timeout=300)
    err, peak_kb = res.stderr.strip().splitlines()
    assert res.returncode == 2 and "refused before reading" in err
    assert int(peak_kb) < 2**20  # KiB: under 1 GiB
