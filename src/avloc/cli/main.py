"""The ``avloc`` command: dispatches to one module per subcommand.

Each subcommand module defines ``add_parser(subparsers, name)`` (which sets
``run`` with ``set_defaults``) and ``run(args) -> int``. Only the module of the
command being run is imported, so quick commands stay quick.

The error boundary (:func:`main`): every *expected* failure — avloc's own
errors (:class:`avloc.errors.AvlocError`) and OS errors on inputs and outputs
(a full disk, a read-only or unwritable location, a file in the way) — prints
one line on stderr naming the file and what to do, and exits with status 2
(a checkpoint with several problems adds one indented line per problem). An
unexpected exception is a bug: its traceback is printed, followed by a line
asking to report it, and the exit status is 1. Ctrl-C (exit 130) and SIGTERM
(exit 143) unwind the stack, so a run's temporary outputs are removed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import traceback
from typing import Any

from avloc.errors import REPORT_LINE, describe_error

# subcommand -> (module under avloc.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("avloc.cli.info", "list registered methods, encoders, datasets and protocols"),
    "probe": ("avloc.cli.probe", "show streams, duration, fps, frames, resolution and audio of media files"),
    "data": ("avloc.cli.data", "generate benchmark data (make) or prepare manifests (prepare)"),
    "demo": ("avloc.cli.demo", "generate a demo clip and run the main job on it"),
    "localize": ("avloc.cli.localize", "find the sounding objects in videos"),
    "train": ("avloc.cli.train", "train a method"),
    "eval": ("avloc.cli.eval", "evaluate saved predictions or a model with a named protocol"),
    "bench": ("avloc.cli.bench", "list or run the benchmark scripts behind the docs' tables"),
    "import": ("avloc.cli.import_", "convert a published checkpoint (LVS, EZ-VSL, SLAVC, SSL-Alignment, FNAC) to avloc's format"),
    "pseudo-boxes": ("avloc.cli.pseudo_boxes", "automatic boxes of sounding objects from a classification model"),
    "report": ("avloc.cli.report", "a static HTML report (index, video pages, timeline) of avloc localize outputs"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Parser with full sub-parsers for ``command`` (all commands when ``None``)."""
    from avloc import __version__

    parser = argparse.ArgumentParser(prog="avloc", description="Audio-visual sound source localization.")
    parser.add_argument("--version", action="version", version=f"avloc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(module).add_parser(sub, name)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    args.argv = argv  # recorded next to a run's outputs (run.json)
    _log_to_stderr()
    previous = _exit_on_sigterm()
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("avloc: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("avloc: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except Exception as e:  # the error boundary (module doc)
        return report_error(f"avloc {args.command}", e)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _log_to_stderr() -> None:
    """The library logs through ``logging`` (logger ``avloc``); the CLI shows its INFO messages on stderr."""
    log = logging.getLogger("avloc")
    if not log.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (it may be replaced after the handler was made)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C so that ``finally`` blocks (output transactions) clean up."""


def _exit_on_sigterm() -> Any:
    """While a command runs, SIGTERM unwinds the stack (temporaries removed) instead of killing at once."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


def report_error(prefix: str, e: BaseException, subject: object = None) -> int:
    """Print ``e`` as the CLI does (module doc); returns the exit status (2 expected, 1 a bug).

    Batch commands call this per input (``subject``: named in the line unless the
    message already names it), so one failing input never stops the others.
    """
    msg = describe_error(e)
    about = "" if subject is None else f"{subject}: "
    if msg is not None:
        print(f"{prefix}: error: {'' if str(subject) in msg else about}{msg}", file=sys.stderr)
        return 2
    traceback.print_exception(e, file=sys.stderr)
    print(f"{prefix}: {about}{REPORT_LINE}", file=sys.stderr)
    return 1


def batch_status(statuses: list[int]) -> int:
    """Exit status of a batch from its per-input statuses: 1 if any hit a bug, else 2 if any failed, else 0."""
    bad = [s for s in statuses if s]
    return 0 if not bad else (1 if 1 in bad else 2)


if __name__ == "__main__":
    sys.exit(main())
