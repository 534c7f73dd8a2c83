"""Helpers of the benchmark references (``bench/``): timing, markdown tables, docs sections.

The scripts under ``bench/`` are thin drivers over public library calls; what they share lives here.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from avloc.formats.atomic import write_text_atomic


def repo_root() -> Path:
    """The checkout this package runs from (the folder holding ``bench/`` and ``pyproject.toml``), else the cwd."""
    from avloc.cli.bench import default_bench_dir

    return default_bench_dir().parent


def throughput(
    fn: Callable[[], object], items: int, min_seconds: float, warmup: int = 1, min_calls: int = 3
) -> tuple[float, float]:
    """(best, median) items/s of ``fn`` (which processes ``items`` items) over calls timed for at least
    ``min_seconds`` and ``min_calls`` calls; the best call is the least disturbed by other load (as
    ``timeit`` reports the minimum)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_seconds or len(times) < min_calls:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return items / min(times), items / statistics.median(times)


def cpu_us_per_item(fn: Callable[[int], object], items: int, repeats: int = 5) -> float:
    """Median over ``repeats`` passes of the CPU time (``time.process_time``: this process, all its threads) per
    call of ``fn(i)``, ``i`` in ``range(items)``, in microseconds. On a shared machine CPU time is the steady
    figure: wall time counts the other jobs' turns as well."""
    fn(0)  # warm-up: imports, first allocations
    per: list[float] = []
    for _ in range(repeats):
        t0 = time.process_time()
        for i in range(items):
            fn(i)
        per.append((time.process_time() - t0) / items * 1e6)
    return statistics.median(per)


def rate_table(rows: list[tuple[str, int, tuple[float, float]]], unit: str) -> str:
    """Markdown table of ``(what, batch, (best, median))`` rows in ``unit``."""
    lines = [f"| what | batch | {unit}, best | {unit}, median |", "|---|---:|---:|---:|"]
    lines += [f"| {what} | {b} | {best:,.1f} | {med:,.1f} |" for what, b, (best, med) in rows]
    return "\n".join(lines)


def replace_section(path: Path, section: str, body: str) -> None:
    """Replace (or append) the ``section`` heading's block of ``path``; other sections are kept byte for byte."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{section}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + block
    write_text_atomic(path, text)


def git_commit() -> str:
    """Short commit of the checkout, or ``unknown``."""
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=repo_root(), capture_output=True, text=True
    ).stdout.strip()
    return out or "unknown"
