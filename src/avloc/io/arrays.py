"""Numeric arrays from untrusted ``.npz`` files (saved predictions): no pickles, no bombs, sizes known up front.

:class:`NpzArchive` reads ``np.savez`` / ``np.savez_compressed`` files. Opening one reads only the zip
directory and each member's ``.npy`` header, and checks, before any array data is read:

* every member is a ``NAME.npy`` array whose header NumPy's own parser accepts (literal syntax, at most
  :data:`MAX_HEADER_BYTES`; format versions 1 and 2);
* its dtype is a plain number (bool, signed / unsigned integer, float): structured, string, void, object,
  complex and datetime arrays are refused;
* its shape (from the header) gives exactly the member's uncompressed size as the zip directory declares
  it, and that size is at most ``max_member_bytes`` (:data:`MAX_MEMBER_BYTES`), so a 5 MB archive that
  would inflate to gigabytes is refused from its directory alone.

The archive is then a read-only ``Mapping`` (name -> array) that reads and decompresses a member only
when it is asked for, so scoring thousands of maps holds one batch in memory, not the whole file;
:meth:`NpzArchive.shape` answers from the header. Every failure is one :class:`~avloc.errors.DataError`
line naming the file and the member.
"""

from __future__ import annotations

import io
import tokenize
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avloc.errors import DataError

#: largest array one member may hold: a 8192 x 8192 float32 map (raw heatmaps of any method of the field
#: are at most a few hundred pixels a side; class maps C x H x W stay far below)
MAX_MEMBER_BYTES = 256 * 2**20
#: longest ``.npy`` header accepted (NumPy's own default limit, ``numpy.lib.format``)
MAX_HEADER_BYTES = 10_000
#: dtype kinds a map may have: bool, signed and unsigned integers, floats
NUMERIC_KINDS = frozenset("biuf")
#: bytes read from the start of each member while indexing (its header; a whole small map, e.g. 14 x 14)...
PREFETCH_BYTES = 4096
#: ... and kept, up to this much in all, so that small maps are not opened twice (5,158 VGG-SS maps: 4.7 MB)
PREFETCH_BUDGET = 64 * 2**20
_MAGIC = b"\x93NUMPY"
_PREFIX = len(_MAGIC) + 2  # magic, major and minor version bytes


@dataclass(frozen=True)
class ArrayInfo:
    """What a ``.npy`` header says: dtype, shape, memory order, and where the data starts."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize


def parse_npy_header(head: bytes, where: str) -> ArrayInfo:
    """The :class:`ArrayInfo` of a ``.npy`` file that starts with ``head`` (magic, version, length, header).

    ``head`` must hold the whole header (see :func:`npy_header_length`); raises :class:`DataError`.
    """
    version = npy_version(head, where)
    size_bytes = 2 if version == 1 else 4
    reader = np.lib.format.read_array_header_1_0 if version == 1 else np.lib.format.read_array_header_2_0
    try:
        shape, fortran, dtype = reader(io.BytesIO(head[_PREFIX:]), max_header_size=MAX_HEADER_BYTES)
    except (ValueError, TypeError, SyntaxError, tokenize.TokenError, RecursionError, MemoryError) as e:
        raise DataError(f"{where}: malformed .npy header ({_first_line(e)})") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise DataError(f"{where}: dtype {dtype.str!r} is not a plain number (bool, integer or float); save numeric maps")
    if any(d < 0 for d in shape):
        raise DataError(f"{where}: malformed .npy header (negative dimension in shape {shape})")
    offset = _PREFIX + size_bytes + int.from_bytes(head[_PREFIX : _PREFIX + size_bytes], "little")
    return ArrayInfo(dtype, tuple(int(d) for d in shape), bool(fortran), offset)


def npy_version(head: bytes, where: str) -> int:
    """The major format version of a ``.npy`` file starting with ``head`` (1 or 2; others refused)."""
    if len(head) < _PREFIX or head[: len(_MAGIC)] != _MAGIC:
        raise DataError(f"{where}: not a .npy array (no NumPy magic bytes)")
    if head[len(_MAGIC)] not in (1, 2):
        raise DataError(f"{where}: .npy format version {head[len(_MAGIC)]} is not supported (1 or 2)")
    return head[len(_MAGIC)]


def npy_header_length(head: bytes, where: str) -> int:
    """Bytes from the start of a ``.npy`` file to the end of its header (``head``: at least its first 12 bytes)."""
    size_bytes = 2 if npy_version(head, where) == 1 else 4
    if len(head) < _PREFIX + size_bytes:
        raise DataError(f"{where}: truncated .npy header")
    n = int.from_bytes(head[_PREFIX : _PREFIX + size_bytes], "little")
    if n > MAX_HEADER_BYTES:
        raise DataError(f"{where}: .npy header of {n} bytes (at most {MAX_HEADER_BYTES})")
    return _PREFIX + size_bytes + n


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


class NpzArchive(Mapping[str, np.ndarray]):
    """A checked ``.npz`` file as a lazy ``name -> array`` mapping (module doc); use it as a context manager."""

    def __init__(self, path: str | Path, max_member_bytes: int = MAX_MEMBER_BYTES) -> None:
        self.path = Path(path)
        self.max_member_bytes = max_member_bytes
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise DataError(f"{self.path}: not a readable .npz archive ({_first_line(e)})") from None
        self._small: dict[str, bytes] = {}
        try:
            self._members = self._index()
        except BaseException:
            self._zip.close()
            raise

    def _index(self) -> dict[str, tuple[zipfile.ZipInfo, ArrayInfo]]:
        headers: dict[bytes, ArrayInfo] = {}  # thousands of maps share a few headers: each parsed once
        out: dict[str, tuple[zipfile.ZipInfo, ArrayInfo]] = {}
        kept = 0
        for info in self._zip.infolist():
            where = f"{self.path}: member {info.filename!r}"
            if not info.filename.endswith(".npy") or info.is_dir():
                raise DataError(f"{where} is not a .npy array")
            if info.file_size > self.max_member_bytes + MAX_HEADER_BYTES:
                raise DataError(f"{where} inflates to {info.file_size} bytes (at most {self.max_member_bytes} per map): "
                                "refused before reading")
            first = self._read(info, where, min(info.file_size, PREFETCH_BYTES))
            n = npy_header_length(first, where)
            head = first[:n] if n <= len(first) else self._read(info, where, n)
            if head not in headers:
                headers[head] = parse_npy_header(head, where)
            arr = headers[head]
            if arr.nbytes > self.max_member_bytes:
                raise DataError(f"{where}: shape {arr.shape} of {arr.dtype} is {arr.nbytes} bytes "
                                f"(at most {self.max_member_bytes} per map)")
            if arr.offset + arr.nbytes != info.file_size:
                raise DataError(f"{where}: shape {arr.shape} needs {arr.nbytes} bytes of data, the member holds "
                                f"{info.file_size - arr.offset} (truncated or padded)")
            name = info.filename[: -len(".npy")]
            out[name] = (info, arr)
            if len(first) == info.file_size and kept + len(first) <= PREFETCH_BUDGET:
                self._small[name] = first  # the whole member, already checked: not opened again
                kept += len(first)
        return out

    def _read(self, info: zipfile.ZipInfo, where: str, n: int) -> bytes:
        """The first ``n`` bytes of member ``info`` (decompressing no more than that)."""
        try:
            with self._zip.open(info) as f:
                data = f.read(n)
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as e:
            raise DataError(f"{where}: unreadable ({_first_line(e)})") from None
        if len(data) < n:
            raise DataError(f"{where}: truncated ({len(data)} of {n} bytes)")
        return data

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of array ``name``, from its header (nothing read)."""
        return self._members[name][1].shape

    def __getitem__(self, name: str) -> np.ndarray:
        info, arr = self._members[name]
        raw = self._small.get(name) or self._read(info, f"{self.path}: member {info.filename!r}", arr.offset + arr.nbytes)
        out = np.frombuffer(raw, dtype=arr.dtype, count=int(np.prod(arr.shape)), offset=arr.offset)
        return out.reshape(arr.shape, order="F" if arr.fortran_order else "C")

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> NpzArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
