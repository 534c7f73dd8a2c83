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
