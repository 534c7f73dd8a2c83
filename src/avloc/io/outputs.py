"""Transactional output sets: all of a run's files appear together, or none do.

A run that writes several files for one input (``avloc localize``: overlay,
JSON, heatmaps, contact sheet) opens an :class:`OutputTransaction` on the
output folder and the input's stem:

1. :meth:`~OutputTransaction.check` (cheap, before any work): the folder is
   a folder, writable, and, without ``force``, holds no file of the set.
2. :meth:`~OutputTransaction.begin`: takes an advisory ``fcntl`` lock on
   ``.STEM.avloc.lock`` (a second run on the same stem fails at once and is
   told who holds it), repairs and removes what killed runs left for this
   stem, repeats the existence check *under the lock* (no check-then-write
   race), and creates the temporary folder ``.STEM.avloc-tmp-XXXXXXXX``
   beside the outputs, where the run writes every file (:meth:`path`).
3. :meth:`~OutputTransaction.commit`: moves the *whole* previous set (every
   kind, also those this run does not write) into ``previous/`` inside the
   temporary folder, the completion marker (the JSON) first; touches the
   journal file ``committing``; moves the new files into place, the marker
   last; removes the temporary folder and the lock. :meth:`abort` (or any
   exception in the ``with`` block) removes the temporary folder.

So readers never see a partial set (a set is complete when its marker
exists), a failed run leaves the previous set as it was, and ``--force``
replaces the whole previous set, stale kinds included. A run killed at any
point leaves only its hidden temporary folder and lock file; the next run on
that stem puts back the previous set if the kill came mid-commit (the journal
says which half) and removes them. Folder expansion skips such names
(:func:`is_temporary_name`) and explicit inputs inside them are refused
(:func:`is_avloc_temporary`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from avloc.errors import OutputExistsError, OutputLocationError, OutputLockedError

TEMP_TAG = ".avloc-tmp-"
LOCK_SUFFIX = ".avloc.lock"
_BACKUP = "previous"  # the previous set, inside the temporary folder, during a commit
_JOURNAL = "committing"  # present once the previous set is wholly aside and new files start moving in
_TEMP_DIR = re.compile(r"^\.(?P<stem>.+)\.avloc-tmp-[A-Za-z0-9_]+$")
# what versions before transactional outputs left when killed: atomic_path's `.NAME.SUFFIX.XXXXXXXX.EXT`
# and the map spools `.STEM.XXXXXXXX.maps.tmp` (XXXXXXXX: tempfile's 8 random [a-z0-9_] characters)
_LEGACY = (
    re.compile(r"^\.(?P<stem>.+)\.(avloc\.mp4|avloc\.json|heatmaps\.npz|sheet\.png)\.[a-z0-9_]{8}\.(mp4|json|npz|png)$"),
    re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}\.(maps|classmaps)\.tmp$"),
)
#: name endings of temporary files other programs leave (editors, downloads, copies)
TEMP_ENDINGS = ("~", ".tmp", ".temp", ".part", ".partial", ".crdownload", ".download", ".swp")


def is_temporary_name(name: str) -> bool:
    """Hidden (``.name``, which covers avloc's own temporaries) or another program's temporary file."""
    return name.startswith((".", "#", "~$")) or name.lower().endswith(TEMP_ENDINGS)


def is_avloc_temporary(path: str | Path) -> bool:
    """Whether ``path`` is, or lies inside, a temporary left by an avloc run."""
    return any(_TEMP_DIR.match(part) or any(r.match(part) for r in _LEGACY) for part in Path(path).parts)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def check_output_folder(folder: str | Path) -> Path:
    """Raise :class:`OutputLocationError` unless ``folder`` is, or can be created as, a writable folder."""
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise OutputLocationError(f"{p} is a file, not a folder: give a folder for the outputs")
    a = p
    while not a.exists() and a != a.parent:
        a = a.parent
    if not a.is_dir():
        raise OutputLocationError(f"{p}: {a} is a file, not a folder: choose another output folder")
    if not os.access(a, os.W_OK | os.X_OK):
        readonly = bool(os.statvfs(a).f_flag & os.ST_RDONLY)
        why = "is on a read-only file system" if readonly else "is not writable by this user"
        where = f"{p}" if a == p else f"{p}: {a}"
        raise OutputLocationError(f"{where} {why}: choose a writable output folder")
    return p


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(p: Path) -> None:
    """Flush a file, or a folder output (every file in it, then its folders), to disk."""
    if not p.is_dir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
        return
    for root, _dirs, names in os.walk(p, topdown=False):
        for n in names:
            with open(Path(root) / n, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(root))


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _recover(tmp: Path, finals: Mapping[str, Path], marker: str) -> None:
    """Undo an interrupted commit whose temporary folder is ``tmp`` (module doc, step 3)."""
    backup = tmp / _BACKUP
    if not backup.is_dir():
        return  # the commit had not started: the previous set was never touched
    if (tmp / _JOURNAL).exists():
        if finals[marker].exists():
            return  # the marker moves in last: the new set is complete, the backup is merely stale
        for f in finals.values():  # phase 2: every file of the set in place is a new one
            if f.exists() or f.is_symlink():
                _remove(f)
    for b in sorted(backup.iterdir(), key=lambda b: b.name == finals[marker].name):  # the marker back last
        os.replace(b, finals[marker].parent / b.name)


class OutputTransaction:
    """The output set of one stem in one folder, written all at once (module doc).

    ``suffixes`` maps every kind of the set to its file-name suffix (the whole
    set, also kinds this run does not write); ``wanted`` the kinds this run
    writes; ``marker`` the kind whose presence means the set is complete. An
    output may be a file or a folder (``avloc report`` writes its site as one).
    ``owned(kind, path)`` tells whether an existing output is one avloc wrote:
    ``force`` replaces only those, and any other is refused (never deleted).
    """

    def __init__(
        self,
        out_dir: str | Path,
        stem: str,
        suffixes: Mapping[str, str],
        wanted: Iterable[str],
        force: bool = False,
        marker: str = "json",
        owned: Callable[[str, Path], bool] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.stem = stem
        self.finals = {k: self.out_dir / f"{stem}{s}" for k, s in suffixes.items()}
        want = set(wanted)
        unknown = want - set(self.finals)
        if unknown or marker not in want:
            raise ValueError(f"wanted kinds {sorted(want)} must include {marker!r} and be among {sorted(self.finals)}")
        self.wanted = [k for k in self.finals if k in want]
        self.force = force
        self.marker = marker
        self.owned = owned
        self.dir: Path | None = None
        self.cleaned: list[Path] = []  # leftovers of killed runs that begin() removed
        self._lock_fd: int | None = None
        self._lock_path = self.out_dir / f".{stem}{LOCK_SUFFIX}"

    @property
    def paths(self) -> dict[str, Path]:
        """Final paths of the kinds this run writes."""
        return {k: self.finals[k] for k in self.wanted}

    # -- before any work -------------------------------------------------------------------------
    def check(self) -> None:
        """Cheap checks before any work (module doc, step 1)."""
        check_output_folder(self.out_dir)
        self._refuse_existing()

    def _refuse_existing(self) -> None:
        existing = [p for p in self.finals.values() if p.exists() or p.is_symlink()]
        if self.force:
            foreign = [p for k, p in self.finals.items() if p in existing and self.owned is not None
                       and not self.owned(k, p)]
            if foreign:
                raise OutputExistsError(f"{foreign[0]} exists and was not written by avloc: --force replaces only "
                                        "avloc's own outputs; move it away yourself or choose another output location")
            return
        if existing:
            more = f" (and {len(existing) - 1} more file(s) of its output set)" if len(existing) > 1 else ""
            raise OutputExistsError(f"{existing[0]} exists{more}; pass --force to replace the whole set")

    # -- the transaction -------------------------------------------------------------------------
    def begin(self) -> OutputTransaction:
        """Lock, clean leftovers, re-check, open the temporary folder (module doc, step 2)."""
        if self.dir is not None:
            raise RuntimeError("transaction already begun")
        check_output_folder(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._clean_leftovers()
            self._refuse_existing()
            self.dir = Path(tempfile.mkdtemp(prefix=f".{self.stem}{TEMP_TAG}", dir=self.out_dir))
        except BaseException:
            self._unlock()
            raise
        return self

    def path(self, kind: str) -> Path:
        """Where this run writes ``kind`` (inside the temporary folder)."""
        if self.dir is None:
            raise RuntimeError("transaction not begun")
        if kind not in self.wanted:
            raise KeyError(f"{kind!r} is not an output of this run ({', '.join(self.wanted)})")
        return self.dir / self.finals[kind].name

    @contextlib.contextmanager
    def writing(self, kind: str) -> Iterator[Path]:
        """Yield :meth:`path`; a file left half-written by an exception is removed at once (frees the space)."""
        p = self.path(kind)
        try:
            yield p
        except BaseException:
            p.unlink(missing_ok=True)
            raise

    def commit(self) -> dict[str, Path]:
        """Replace the previous set by this run's files (module doc, step 3); returns the final paths."""
        if self.dir is None:
            raise RuntimeError("transaction not begun")
        tmp = self.dir
        missing = [k for k in self.wanted if not (self.path(k).is_file() or self.path(k).is_dir())]
        if missing:
            raise RuntimeError(f"commit without the outputs {missing}")
        for k in self.wanted:
            _fsync_tree(self.path(k))
        backup = tmp / _BACKUP
        backup.mkdir()
        old_order = [self.marker, *(k for k in self.finals if k != self.marker)]
        new_order = [*(k for k in self.wanted if k != self.marker), self.marker]
        try:
            for k in old_order:
                f = self.finals[k]
                if f.exists() or f.is_symlink():
                    os.replace(f, backup / f.name)
            (tmp / _JOURNAL).touch()
            for k in new_order:
                os.replace(self.path(k), self.finals[k])
            _fsync_dir(self.out_dir)
        except BaseException:
            _recover(tmp, self.finals, self.marker)
            self.abort()
            raise
        self._finish()
        return self.paths

    def abort(self) -> None:
        """Drop this run's files; the previous set stays as it was."""
        self._finish()

    def _finish(self) -> None:
        try:
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None
        finally:
            self._unlock()

    def __enter__(self) -> OutputTransaction:
        return self.begin()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if et is None and self.dir is not None:
            self.commit()
        else:
            self.abort()

    # -- leftovers and the lock ------------------------------------------------------------------
    def _clean_leftovers(self) -> None:
        """Repair (:func:`_recover`) and remove what killed runs left for this stem; we hold its lock."""
        for e in self.out_dir.iterdir():
            m = _TEMP_DIR.match(e.name)
            if m and m["stem"] == self.stem and e.is_dir():
                _recover(e, self.finals, self.marker)
                shutil.rmtree(e, ignore_errors=True)
                self.cleaned.append(e)
            elif any((lm := r.match(e.name)) and lm["stem"] == self.stem for r in _LEGACY) and e.is_file():
                e.unlink(missing_ok=True)
                self.cleaned.append(e)

    def _lock(self) -> None:
        what = f"{self.finals[self.marker]}: another run is writing this output set"
        self._lock_fd = HeldLock(self._lock_path, what).acquire()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            _release(self._lock_path, self._lock_fd)
            self._lock_fd = None


def _release(path: Path, fd: int) -> None:
    try:
        path.unlink(missing_ok=True)  # removed while still held (see HeldLock.acquire)
    finally:
        os.close(fd)


class HeldLock:
    """An advisory ``fcntl`` lock on the file ``path``, held by one process at a time (``with`` it).

    A second process fails at once with :class:`OutputLockedError` naming the holder (pid, host, since when,
    its command), which the holder writes into the file. The file is removed on release; a killed holder's
    lock is released by the kernel, and its file is taken over by the next run. ``what`` starts the error's
    line (what the lock protects).
    """

    def __init__(self, path: str | Path, what: str) -> None:
        self.path, self.what = Path(path), what
        self._fd: int | None = None

    def acquire(self) -> int:
        """Take the lock (or raise :class:`OutputLockedError`); returns its file descriptor."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "a process that has not said who it is"
                os.close(fd)
                raise OutputLockedError(
                    f"{self.what} ({holder}); wait for it to finish or choose another output folder"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its holder removed the file between our open and lock: lock the new one
        started = datetime.now(UTC).isoformat(timespec="seconds")
        who = f"pid {os.getpid()} on {socket.gethostname()}, since {started}: {' '.join(sys.argv[:1] + sys.argv[1:6])}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, (who + "\n").encode(), 0)
        self._fd = fd
        return fd

    def release(self) -> None:
        if self._fd is not None:
            _release(self.path, self._fd)
            self._fd = None

    def __enter__(self) -> HeldLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
