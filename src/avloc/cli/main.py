"""The ``avloc`` command: dispatches to one module per subcommand.

Each subcommand module defines ``add_parser(subparsers)`` and ``run(args) -> int``.
User errors (:class:`avloc.errors.AvlocError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from avloc.errors import AvlocError

# subcommand -> module under avloc.cli (imported lazily so `avloc probe` stays fast)
COMMANDS: dict[str, str] = {
    "info": "avloc.cli.info",
    "probe": "avloc.cli.probe",
}


def build_parser() -> argparse.ArgumentParser:
    from avloc import __version__

    parser = argparse.ArgumentParser(prog="avloc", description="Audio-visual sound source localization.")
    parser.add_argument("--version", action="version", version=f"avloc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
