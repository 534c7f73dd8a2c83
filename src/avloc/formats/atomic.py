"""Atomic output writing and the no-overwrite-without-force rule."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from avloc.errors import OutputExistsError


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: done once, at import, and put back at once
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def check_writable(path: str | Path, force: bool) -> Path:
    """Raise :class:`OutputExistsError` if ``path`` exists and ``force`` is false."""
    p = Path(path)
    if p.exists() and not force:
        raise OutputExistsError(f"{p} exists; pass --force to overwrite it")
    return p


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    On error the temporary file is removed and ``path`` is left untouched, so
    readers never see a half-written result. The result gets the permissions of
    a newly created file (``0o666`` minus the umask), not ``mkstemp``'s private
    ``0o600``.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or final.suffix or ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            tmp_path.chmod(0o666 & ~_UMASK)
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[tuple[Path, ...]]:
    """:func:`atomic_path` for files that belong together (a model and the training state that produced it).

    Yields one temporary path per entry of ``paths``; once the block has written every one of them they
    are renamed over ``paths``; if it fails (a full disk on the second file), none is, so the previous
    complete set stays as it was. A rename needs no free space, so a full disk cannot split the set.
    """
    with contextlib.ExitStack() as stack:
        tmps = tuple(stack.enter_context(atomic_path(p)) for p in paths)
        yield tmps  # on success the ExitStack renames every temporary; on an error it removes them all


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
