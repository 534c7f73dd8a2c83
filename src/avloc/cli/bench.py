"""``avloc bench [NAME] [-- ARGS]``: list or run the benchmark scripts that regenerate the docs' tables.

The scripts live in the repository's ``bench/`` folder (development tools, not part
of the installed package): ``bench/speed/*.py`` time things (``docs/BENCHMARKS.md``),
``bench/paper/<method>/`` reproduce the tables of ``docs/RESULTS.md`` (each with a
README giving the exact commands). ``avloc bench`` lists them by path without
``.py`` (``speed/train``, ``paper/dnm/run``) with their first docstring line;
``avloc bench NAME ARGS...`` runs ``bench/NAME.py ARGS...`` with this interpreter,
so the figures come from exactly the installed code.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

from avloc.errors import AvlocError


def default_bench_dir() -> Path:
    """``bench/`` of the checkout this package is installed from (editable install), else ``./bench``."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "bench").is_dir() and (parent / "pyproject.toml").is_file():
            return parent / "bench"
    return Path.cwd() / "bench"


def list_benchmarks(bench_dir: Path) -> dict[str, str]:
    """Script name (without ``.py``) -> first line of its module docstring."""
    if not bench_dir.is_dir():
        raise AvlocError(f"benchmark folder {bench_dir} not found; run from the avloc checkout or pass --bench-dir")
    out: dict[str, str] = {}
    for path in sorted(bench_dir.rglob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        out[path.relative_to(bench_dir).with_suffix("").as_posix()] = doc.strip().splitlines()[0] if doc.strip() else ""
    return out


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(name, help="list or run the benchmark scripts behind docs/RESULTS.md and docs/BENCHMARKS.md",
                       description=__doc__)
    p.add_argument("name", nargs="?", help="benchmark script to run (omit to list them)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script (see `avloc bench NAME --help`)")
    p.add_argument("--bench-dir", type=Path, default=None, help="folder of the scripts (default: the checkout's bench/)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    bench_dir: Path = args.bench_dir or default_bench_dir()
    scripts = list_benchmarks(bench_dir)
    if args.name is None:
        width = max((len(n) for n in scripts), default=0)
        for n, doc in scripts.items():
            print(f"{n:<{width}}  {doc}")
        return 0
    if args.name not in scripts:
        raise AvlocError(f"unknown benchmark {args.name!r}; valid: {', '.join(scripts)}")
    extra = list(args.args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    env = dict(os.environ)
    return subprocess.call([sys.executable, str(bench_dir / f"{args.name}.py"), *extra], env=env)
