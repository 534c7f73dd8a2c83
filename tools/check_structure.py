"""Structure checks of ``src/avloc`` that no linter makes: long functions and import cycles at module top level.

Usage::

    python tools/check_structure.py [--max-lines 80] [--src src] [PATH ...]

* functions (and methods) longer than ``--max-lines`` lines, decorators and docstring included, longest first;
  with ``PATH`` arguments only those files are checked (e.g. the files a change touched);
* cycles among the modules' *top-level* imports (imports inside functions, under ``if TYPE_CHECKING:`` or
  guarded by ``try`` are not counted: they run later or not at all), each cycle once.

Exit status 1 when either list is not empty, so the script can gate a change.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

#: the function length the project allows (docs/STYLE: "no function over 80 lines")
MAX_LINES = 80


def module_name(path: Path, src: Path) -> str:
    parts = list(path.with_suffix("").relative_to(src).parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def long_functions(path: Path, max_lines: int) -> Iterator[tuple[int, str, int]]:
    """``(length, qualified name, first line)`` of every function in ``path`` longer than ``max_lines``."""
    tree = ast.parse(path.read_text(), filename=str(path))

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[int, str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                length = (child.end_lineno or child.lineno) - first + 1
                if length > max_lines:
                    yield length, f"{prefix}{child.name}", first
                yield from walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")

    yield from walk(tree, "")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def top_level_imports(path: Path, name: str, package: str, known: set[str]) -> set[str]:
    """The project modules ``path`` imports when it is itself imported (module body, ``if`` branches)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and not _is_type_checking(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Import):
                out.update(_resolve(a.name, known) for a in node.names if a.name.split(".")[0] == package)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                if base.split(".")[0] != package:
                    continue
                for a in node.names:  # ``from pkg import submodule`` imports the submodule
                    sub = f"{base}.{a.name}"
                    out.add(sub if sub in known else _resolve(base, known))

    visit(tree.body)
    out.discard(name)
    return {m for m in out if m}


def _resolve(module: str, known: set[str]) -> str:
    """``module`` or its closest known parent (``import a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``)."""
    parts = module.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("paths", nargs="*", help="check only these files for long functions (default: all of --src)")
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    ap.add_argument("--max-lines", type=int, default=MAX_LINES)
    args = ap.parse_args(argv)
    src = Path(args.src)
    files = sorted(src.rglob("*.py"))
    names = {module_name(p, src): p for p in files}
    chosen = [Path(p).resolve() for p in args.paths] or files
    long = sorted(((n, f"{p.relative_to(src) if p.is_relative_to(src) else p}:{line} {q}")
                   for p in chosen if p.suffix == ".py" for n, q, line in long_functions(p, args.max_lines)),
                  reverse=True)
    for n, where in long:
        print(f"{n:4d} lines  {where}")
    package = next(iter(names)).split(".")[0]
    graph = {m: top_level_imports(p, m, package, set(names)) for m, p in names.items()}
    found = cycles(graph)
    for comp in found:
        print("import cycle at module top level: " + " <-> ".join(comp))
    print(f"{len(long)} function(s) over {args.max_lines} lines; {len(found)} top-level import cycle(s)")
    return 1 if long or found else 0


if __name__ == "__main__":
    sys.exit(main())
