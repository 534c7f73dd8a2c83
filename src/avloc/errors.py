"""User-facing errors.

Every error a user can cause (bad file, bad manifest, unknown name, bad
config) is an :class:`AvlocError`. The CLI prints its message on one line and
exits with status 2; library callers can catch the specific subclass.
"""

from __future__ import annotations


class AvlocError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""


class MediaError(AvlocError):
    """A media file is missing, unreadable, truncated or lacks a needed stream."""


class DataError(AvlocError):
    """A manifest, annotation or data directory is invalid."""


class ConfigError(AvlocError):
    """A configuration value or override is invalid."""


class CheckpointError(AvlocError):
    """A checkpoint is missing, corrupt, unsafe or incompatible."""


class OutputExistsError(AvlocError):
    """An output would overwrite an existing file and ``--force`` was not given."""


class OutputLocationError(AvlocError):
    """An output location is a file, is read-only or cannot be written."""


class OutputLockedError(AvlocError):
    """Another run holds the lock on the outputs this run would write."""


#: what to do about an OS error, by errno name (the CLI's one-line message)
_OS_ADVICE = {
    "ENOSPC": "the disk is full: free some space or choose another location",
    "EDQUOT": "the disk quota is exceeded: free some space or choose another location",
    "EROFS": "the file system is read-only: choose a writable location",
    "EACCES": "permission denied: choose a location you can write (or read)",
    "EPERM": "operation not permitted: choose a location you can write (or read)",
    "ENOTDIR": "a part of the path is a file, not a folder: choose another path",
    "EEXIST": "a file is in the way: remove it or choose another path",
    "EISDIR": "this is a folder, not a file: give a file path",
    "ENOENT": "no such file or folder: check the path",
    "ENAMETOOLONG": "the name is too long: choose a shorter path",
    "EIO": "input/output error: check the disk or device",
    "EMFILE": "too many open files: raise the limit (ulimit -n) or process fewer inputs at once",
}


def describe_os_error(e: OSError) -> str:
    """One line for an :class:`OSError`: the file it concerns, what happened, what to do."""
    import errno

    name = errno.errorcode.get(e.errno or 0, "")
    what = e.strerror or str(e) or type(e).__name__
    where = ""
    if e.filename is not None:
        where = f"{e.filename}"
        if getattr(e, "filename2", None) is not None:
            where += f" -> {e.filename2}"
        where += ": "
    advice = _OS_ADVICE.get(name)
    return f"{where}{what}" + (f" ({advice})" if advice else "")


def describe_error(e: BaseException) -> str | None:
    """The one-line message of an *expected* failure, or ``None`` when ``e`` is unexpected (a bug).

    Expected: avloc's own errors and OS errors (a full disk, a read-only or
    unwritable location, a file in the way).
    """
    if isinstance(e, AvlocError):
        return str(e)
    if isinstance(e, OSError):
        return describe_os_error(e)
    return None


REPORT_LINE = "this is a bug in avloc: please report it with the command and the traceback above"
