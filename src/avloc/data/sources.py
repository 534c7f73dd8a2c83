"""Loaders of the raw real-recording sources used to build benchmarks (DigitScenes).

The sources live in one directory (``--raw DIR``, see ``shared/data/SOURCES.md``):

================================ ==============================================================
``fsdd/recordings/*.wav``        Free Spoken Digit Dataset, ``{digit}_{speaker}_{take}.wav``,
                                 8 kHz mono; 6 speakers x 10 digits x 50 takes
``mnist/t10k-*-idx?-ubyte.gz``   MNIST test set: 10,000 handwritten digits 28x28 + labels (IDX)
``esc10/<class>/*.ogg``          ESC-10, 400 clips of 5 s at 44.1 kHz; fold = first field of name
``cifar10/cifar10_subset.npz``   CIFAR-10 photos 32x32: ``train_images`` (10k), ``test_images`` (2k)
================================ ==============================================================

Every loader raises :class:`avloc.errors.DataError` naming the missing or
corrupt file and the directory it was looked for in. Audio is decoded lazily
and cached per (file, rate) by :class:`AudioCache`.
"""

from __future__ import annotations

import gzip
import re
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from avloc.errors import DataError, MediaError
from avloc.io.audio import load_audio

FSDD_DIR = "fsdd/recordings"
MNIST_IMAGES = "mnist/t10k-images-idx3-ubyte.gz"
MNIST_LABELS = "mnist/t10k-labels-idx1-ubyte.gz"
ESC10_DIR = "esc10"
CIFAR_NPZ = "cifar10/cifar10_subset.npz"

_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
_ESC_NAME = re.compile(r"^([1-5])-(\d+)-([A-Z])\.ogg$")


def _need_dir(root: Path, rel: str, what: str) -> Path:
    p = root / rel
    if not p.is_dir():
        raise DataError(f"{what} not found: expected the folder {p} (raw data dir {root}); see shared/data/SOURCES.md")
    return p


def _need_file(root: Path, rel: str, what: str) -> Path:
    p = root / rel
    if not p.is_file():
        raise DataError(f"{what} not found: expected the file {p} (raw data dir {root}); see shared/data/SOURCES.md")
    return p


# ----------------------------------------------------------------------------- FSDD


@dataclass(frozen=True)
class Utterance:
    """One FSDD recording: spoken ``digit`` by ``speaker`` (take number ``take``)."""

    digit: int
    speaker: str
    take: int
    path: Path

    @property
    def uid(self) -> str:
        """Source id, the file stem (``{digit}_{speaker}_{take}``)."""
        return f"{self.digit}_{self.speaker}_{self.take}"


def list_fsdd(root: str | Path) -> list[Utterance]:
    """All FSDD utterances under ``root/fsdd/recordings``, sorted by (speaker, digit, take)."""
    d = _need_dir(Path(root), FSDD_DIR, "FSDD spoken digits")
    out: list[Utterance] = []
    for p in d.iterdir():
        m = _FSDD_NAME.match(p.name)
        if m:
            out.append(Utterance(int(m.group(1)), m.group(2), int(m.group(3)), p))
    if not out:
        raise DataError(f"FSDD folder {d} holds no '{{digit}}_{{speaker}}_{{take}}.wav' files")
    out.sort(key=lambda u: (u.speaker, u.digit, u.take))
    return out


# ----------------------------------------------------------------------------- MNIST


def _read_idx(path: Path, expect_dims: int) -> np.ndarray:
    """Read a gzip IDX file (big-endian header, unsigned bytes) as a uint8 array."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read gzip IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic {raw[:4]!r})")
    ndim = raw[3]
    if ndim != expect_dims:
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected {expect_dims}")
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    n = int(np.prod(dims))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != n:
        raise DataError(f"{path}: IDX body has {body.size} bytes, header says {dims} = {n}")
    return body.reshape(dims)


def load_mnist(root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST test set: ``(images (N, 28, 28) uint8, labels (N,) int64)``."""
    r = Path(root)
    images = _read_idx(_need_file(r, MNIST_IMAGES, "MNIST images"), 3)
    labels = _read_idx(_need_file(r, MNIST_LABELS, "MNIST labels"), 1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"MNIST in {r}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"MNIST labels in {r} go beyond 9")
    return images, labels


# ----------------------------------------------------------------------------- ESC-10


@dataclass(frozen=True)
class EscClip:
    """One ESC-10 clip: cross-validation ``fold`` (1-5), class index/name, file."""

    fold: int
    label: int
    category: str
    path: Path

    @property
    def uid(self) -> str:
        """Source id, the file stem (``{fold}-{freesound id}-{take}``)."""
        return self.path.stem


def list_esc10(root: str | Path) -> list[EscClip]:
    """All ESC-10 clips under ``root/esc10/<NNN - Class>/``, sorted by (class, name)."""
    d = _need_dir(Path(root), ESC10_DIR, "ESC-10 environmental sounds")
    classes = sorted(p for p in d.iterdir() if p.is_dir())
    out: list[EscClip] = []
    for label, cdir in enumerate(classes):
        category = cdir.name.split(" - ", 1)[-1]
        for p in sorted(cdir.iterdir()):
            m = _ESC_NAME.match(p.name)
            if m:
                out.append(EscClip(int(m.group(1)), label, category, p))
    if not out:
        raise DataError(f"ESC-10 folder {d} holds no '<fold>-<id>-<take>.ogg' clips in class folders")
    return out


# ----------------------------------------------------------------------------- CIFAR-10


@dataclass(frozen=True)
class CifarSubset:
    """CIFAR-10 photos (N, 32, 32, 3) uint8 with their class labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]


def load_cifar(root: str | Path) -> CifarSubset:
    """The CIFAR-10 subset npz (``train_images``, ``test_images``, labels, ``classes``)."""
    p = _need_file(Path(root), CIFAR_NPZ, "CIFAR-10 subset")
    try:
        with np.load(p) as z:
            missing = {"train_images", "train_labels", "test_images", "test_labels", "classes"} - set(z.files)
            if missing:
                raise DataError(f"{p}: missing arrays {sorted(missing)}")
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{p}: cannot read npz ({e})") from None
    for k in ("train_images", "test_images"):
        a = data[k]
        if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
            raise DataError(f"{p}: {k} must be (N, H, W, 3) uint8, got {a.shape} {a.dtype}")
    return CifarSubset(
        data["train_images"],
        data["train_labels"].astype(np.int64),
        data["test_images"],
        data["test_labels"].astype(np.int64),
        tuple(str(c) for c in data["classes"]),
    )


# ----------------------------------------------------------------------------- bundle


class AudioCache:
    """Decode audio files lazily at one sample rate and keep them in memory."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._cache: dict[Path, np.ndarray] = {}

    def get(self, path: Path) -> np.ndarray:
        """Mono float32 samples of ``path`` at ``sample_rate`` (decoded once)."""
        wav = self._cache.get(path)
        if wav is None:
            try:
                wav, _ = load_audio(path, self.sample_rate)
            except MediaError as e:
                raise DataError(f"raw source audio unusable: {e}") from None
            self._cache[path] = wav
        return wav

    def __len__(self) -> int:
        return len(self._cache)


class RawSources:
    """All raw sources under one directory, loaded on first use.

    Raises :class:`DataError` at construction if ``root`` is not a directory;
    each source raises when first accessed if its files are missing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(
                f"raw data directory not found: {self.root}; pass --raw DIR pointing at shared/data "
                "(with fsdd/, mnist/, esc10/, cifar10/) or set AVLOC_DATA"
            )
        self._audio: dict[int, AudioCache] = {}

    @cached_property
    def fsdd(self) -> list[Utterance]:
        return list_fsdd(self.root)

    @cached_property
    def mnist(self) -> tuple[np.ndarray, np.ndarray]:
        return load_mnist(self.root)

    @cached_property
    def esc10(self) -> list[EscClip]:
        return list_esc10(self.root)

    @cached_property
    def cifar(self) -> CifarSubset:
        return load_cifar(self.root)

    def check(self) -> None:
        """Load every source's index now, so missing files fail early."""
        _ = self.fsdd, self.mnist, self.esc10, self.cifar

    def audio(self, path: Path, sample_rate: int) -> np.ndarray:
        """Cached mono float32 audio of a source file at ``sample_rate``."""
        cache = self._audio.get(sample_rate)
        if cache is None:
            cache = self._audio[sample_rate] = AudioCache(sample_rate)
        return cache.get(path)
