"""The ``avloc`` command: dispatches to one module per subcommand.

Each subcommand module defines ``add_parser(subparsers, name)`` (which sets
``run`` with ``set_defaults``) and ``run(args) -> int``. Only the module of the
command being run is imported, so quick commands stay quick. User errors
(:class:`avloc.errors.AvlocError`) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from avloc.errors import AvlocError

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
    "pseudo-boxes": ("avloc.cli.pseudo_boxes", "automatic boxes of sounding objects from a classification model"),
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
    try:
        return int(args.run(args) or 0)
    except AvlocError as e:
        print(f"avloc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("avloc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
