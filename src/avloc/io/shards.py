"""Tar shards of a shard set: :class:`ShardWriter` writes them, :class:`ShardReader` reads samples back by reference.

The layout is WebDataset's (module doc of :mod:`avloc.formats.shards`): each sample is three consecutive
members ``<key>.jpg`` (the model input picture, JPEG), ``<key>.npy`` (the audio window, int16, a plain
``.npy`` file) and ``<key>.json`` (its manifest entry), written with :mod:`tarfile` (USTAR, owner and
time zeroed, so the same samples give the same bytes). The writer returns each sample's ``shard``
reference: the data offset, length and CRC-32 of every member.

Reading is random access by those references, not a tar scan: each shard is memory-mapped once per
process (lazily, so DataLoader workers map their own) and its size checked against the index first, so
a truncated copy is one error naming it. Every read then checks what it cannot trust: the picture must
decode (OpenCV's libjpeg-turbo, the fastest decoder measured in docs/BENCHMARKS.md, identical pixels to
Pillow's) to exactly ``size x size x 3``; the audio member must carry exactly the ``.npy`` header of the
window; with ``verify=True`` both members' CRC-32 must match (about 0.3 us per kB, so off by default:
the structural checks run always). Any failure is one :class:`~avloc.errors.DataError` line naming the
shard and the sample.
"""

from __future__ import annotations

import io
import mmap
import os
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from avloc.errors import DataError
from avloc.formats.atomic import atomic_path
from avloc.formats.shards import AUDIO_EXT, IMAGE_EXT, ShardFile, ShardSetIndex

#: the audio window's dtype in a shard (little-endian int16, i.e. 16-bit PCM) and its full scale
AUDIO_DTYPE = np.dtype("<i2")
AUDIO_SCALE = 32768.0
#: digits of a shard's number in its file name (``000000.tar``; WebDataset's usual brace pattern)
SHARD_DIGITS = 6
#: digits of a sample key (its index in the set)
KEY_DIGITS = 9


def npy_header(samples: int) -> bytes:
    """The ``.npy`` (format 1.0) header of ``samples`` int16 values: what every audio member starts with."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": AUDIO_DTYPE.str, "fortran_order": False, "shape": (samples,)})
    return buf.getvalue()


def npy_member_bytes(samples: int) -> int:
    """The exact size of an audio member of ``samples`` values."""
    return len(npy_header(samples)) + samples * AUDIO_DTYPE.itemsize


def to_pcm16(wav: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] -> int16 (round to nearest, clipped to the int16 range)."""
    return np.clip(np.rint(wav * AUDIO_SCALE), -AUDIO_SCALE, AUDIO_SCALE - 1).astype(AUDIO_DTYPE)


class ShardWriter:
    """Writes samples into ``folder/shards/NNNNNN.tar``, ``samples_per_shard`` each, each shard atomically.

    Use as a context manager; :meth:`add` returns the sample's ``shard`` reference, :meth:`close` the
    :class:`ShardFile` list. On an error the shard being written is removed; finished shards stay.
    """

    def __init__(self, folder: str | Path, samples_per_shard: int, subdir: str = "shards") -> None:
        if samples_per_shard < 1:
            raise DataError(f"samples per shard must be positive, got {samples_per_shard}")
        self.folder, self.subdir, self.per_shard = Path(folder), subdir, samples_per_shard
        self.files: list[ShardFile] = []
        self._n = 0  # samples written in all
        self._in_shard = 0
        self._tar: tarfile.TarFile | None = None
        self._atomic: Any = None

    def _rel(self, number: int) -> str:
        return f"{self.subdir}/{number:0{SHARD_DIGITS}d}.tar"

    def _open(self) -> tarfile.TarFile:
        if self._tar is None:
            self._atomic = atomic_path(self.folder / self._rel(len(self.files)))
            tmp = self._atomic.__enter__()
            self._tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)
            self._in_shard = 0
        return self._tar

    def _finish(self, error: BaseException | None = None) -> None:
        if self._tar is None:
            return
        tar, atomic = self._tar, self._atomic
        self._tar = self._atomic = None
        tar.close()
        if error is not None:
            atomic.__exit__(type(error), error, error.__traceback__)
            return
        size = os.path.getsize(tar.name)  # type: ignore[arg-type]
        atomic.__exit__(None, None, None)
        self.files.append(ShardFile(self._rel(len(self.files)), self._in_shard, size))

    def add(self, members: dict[str, bytes]) -> dict[str, Any]:
        """Append one sample (``{"jpg": ..., "npy": ..., "json": ...}``, written in that order) -> its reference."""
        tar = self._open()
        key = f"{self._n:0{KEY_DIGITS}d}"
        ref: dict[str, Any] = {"path": self._rel(len(self.files)), "key": key}
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode = len(data), 0o444
            start = tar.offset
            header = len(info.tobuf(tarfile.USTAR_FORMAT, tar.encoding, tar.errors))
            tar.addfile(info, io.BytesIO(data))
            if ext in (IMAGE_EXT, AUDIO_EXT):
                ref[ext] = [start + header, len(data), zlib.crc32(data)]
        self._n += 1
        self._in_shard += 1
        if self._in_shard == self.per_shard:
            self._finish()
        return ref

    def close(self) -> tuple[ShardFile, ...]:
        self._finish()
        return tuple(self.files)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._finish(exc)


class ShardReader:
    """Samples of a shard set by number, from references checked once (module doc)."""

    def __init__(self, folder: str | Path, index: ShardSetIndex, refs: np.ndarray, keys: list[str],
                 verify: bool = False) -> None:
        """``refs``: (N, 7) int64 rows ``shard number, jpg offset, bytes, crc, npy offset, bytes, crc``."""
        self.folder, self.index, self.refs, self.keys, self.verify = Path(folder), index, refs, keys, verify
        self.side = index.image_size
        self.header = npy_header(index.window_samples)
        self._maps: dict[int, mmap.mmap] = {}

    def __getstate__(self) -> dict[str, Any]:  # a spawned worker maps the shards itself
        return {**self.__dict__, "_maps": {}}

    def _where(self, i: int) -> str:
        return f"{self.folder / self.index.shards[int(self.refs[i, 0])].path}: sample {self.keys[i]}"

    def _map(self, shard: int) -> mmap.mmap:
        m = self._maps.get(shard)
        if m is None:
            f = self.index.shards[shard]
            p = self.folder / f.path
            try:
                with p.open("rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size != f.bytes:
                        raise DataError(f"{p}: damaged shard: {size} bytes, the index says {f.bytes} (truncated or "
                                        "replaced); re-run `avloc data extract --format shards`")
                    m = self._maps[shard] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            except OSError as e:
                raise DataError(f"{p}: cannot read shard ({e.strerror or e})") from None
        return m

    def _member(self, i: int, shard: int, off: int, n: int, crc: int, what: str) -> np.ndarray:
        data = np.frombuffer(self._map(shard), np.uint8, n, off)
        if self.verify and zlib.crc32(data.data) != crc:
            raise DataError(f"{self._where(i)}: damaged {what} (CRC-32 mismatch); re-run `avloc data extract`")
        return data

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``i``: its picture, (S, S, 3) uint8 RGB, and its audio window, (N,) int16 (a copy: the shard
        stays read-only)."""
        import cv2

        shard, j_off, j_n, j_crc, a_off, a_n, a_crc = self.refs[i].tolist()
        img = cv2.imdecode(self._member(i, shard, j_off, j_n, j_crc, "picture"),
                           cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None or img.shape != (self.side, self.side, 3):
            got = "does not decode as JPEG" if img is None else f"decodes to {img.shape}"
            raise DataError(f"{self._where(i)}: damaged picture: it {got}, not ({self.side}, {self.side}, 3)")
        data = self._member(i, shard, a_off, a_n, a_crc, "audio window")
        h = len(self.header)
        if data[:h].tobytes() != self.header:
            raise DataError(f"{self._where(i)}: damaged audio window: its .npy header is not that of "
                            f"{self.index.window_samples} int16 samples")
        return img, data[h:].view(AUDIO_DTYPE).copy()

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()
