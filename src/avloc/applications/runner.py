"""The one runner of collections: ``avloc localize INPUTS... --out DIR`` and ``avloc pseudo-boxes`` (docs/localize.md).

A :class:`Job` says how to handle one input of its kind, in three steps:

1. ``decode(item)`` (CPU): the input -> *pieces*, streamed (localize: the probe, then batches of frames with
   their audio windows; pseudo-boxes: the decoded clip); in this process, or in a Ray task;
2. ``infer(worker, item, pieces)`` (the model, which ``load()`` built once per process): the pieces -> what the
   model found; in this process, or in a Ray worker;
3. ``commit(item, inferred)``: that -> the input's outputs, written atomically, in the process that inferred;
   returns a small :class:`Done` (output names, frame count, a payload for the caller);

and ``existing(item)``: what an earlier run left for the input (:class:`Found`).

:func:`run` does the rest, for every job alike:

* **resume** (:func:`plan`): without ``force`` an input whose outputs are complete and made with the same
  configuration and the same model *content* is skipped; outputs that are ours but partial, or made by another
  model content under the same name (a checkpoint retrained at the same path), are redone; outputs made with
  another configuration are refused ("pass --force"); an input that would run while a file avloc did not write
  is in the way of one of its outputs is refused, also with ``force``. ``force`` redoes every other input.
* **isolation** (:func:`execute`): one bad input never stops the others. An :class:`avloc.errors.AvlocError`
  (or an OS error) fails the input with its one-line reason; anything else is a bug: its traceback is logged
  with "report this", the input fails, the run goes on, and the exit status is 1 (:func:`exit_status`).
* **ordering**: inputs start in the given order; the record keeps that order whatever order they finish in.
* **progress**: one tqdm bar over the inputs to run (frames/s when the job counts frames), a line per input.
* **the record**: ``run.json`` (:mod:`avloc.formats.runfile`), written atomically at the start, after every
  input and at the end (``finished`` stays null when the run is killed).
* **sequential or Ray**: ``workers=0`` runs the steps one input after another in this process;
  ``workers=N`` (:mod:`avloc.applications.ray_runner`) runs ``decode`` in Ray tasks that stream their
  pieces, and ``infer`` + ``commit`` in ``N`` Ray workers: the same job code, so the same outputs.

The caller holds the collection's lock (:class:`avloc.io.outputs.HeldLock`) around :func:`run`, so that a
second run into the same place fails at once instead of trampling the first.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from avloc.errors import REPORT_LINE, ConfigError, describe_error
from avloc.formats.runfile import RunInput, RunRecord, write_run

log = logging.getLogger("avloc")


@dataclass
class RunnerConfig:
    """How a collection runs (module doc); checked on creation."""

    workers: int = 0  # 0: sequential, in this process; N: Ray, N model workers
    ray_address: str | None = None  # None: a local Ray; "auto" or "HOST:PORT": join that cluster
    gpus_per_worker: float = 0.0
    #: torch threads per Ray worker; 0: as many as this process uses (torch's default), which keeps the outputs
    #: byte-identical to the sequential path (CPU kernels sum in another order with another thread count)
    #: at the price of oversubscribed cores when N workers share a small machine
    threads_per_worker: int = 0
    #: batch the model's inputs across the inputs a worker runs at once (localize, per-frame models): fuller
    #: batches (a GPU's gain), but a frame then shares its batch with other videos' frames and CPU kernels may
    #: round differently, so maps agree with the sequential path to float precision, not byte for byte;
    #: None (default): on when the workers have GPUs, off on CPU
    across_inputs: bool | None = None
    #: inputs one Ray worker runs at once when batching across inputs (each streams its own decode task)
    inputs_per_worker: int = 2
    #: pieces a Ray decode task may run ahead of its worker (localize: batches of frames): bounds the memory
    #: a video in flight takes, whatever its length, while keeping the worker fed (two in hand, two coming)
    decode_ahead: int = 4
    #: seconds to reach ``ray_address`` before giving up with one line (issue 30: a closed port retried 200 s)
    connect_timeout: float = 20.0
    force: bool = False  # redo every input
    progress: bool = True

    def __post_init__(self) -> None:
        for name, flag in (("gpus_per_worker", "--gpus-per-worker"), ("threads_per_worker", "--threads-per-worker")):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"{flag} must be >= 0, got {v}")
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        needs = [("gpus_per_worker", "--gpus-per-worker", "the GPUs go to the Ray model workers"),
                 ("threads_per_worker", "--threads-per-worker", "the threads of each Ray model worker"),
                 ("ray_address", "--ray-address", "the Ray model workers run on that cluster")]
        for name, flag, why in needs:
            if getattr(self, name) and not self.workers:
                raise ConfigError(f"{flag} needs --workers N ({why})")
        if self.inputs_per_worker < 1 or self.decode_ahead < 1:
            raise ConfigError("inputs_per_worker and decode_ahead must be >= 1")
        if not (math.isfinite(self.connect_timeout) and self.connect_timeout > 0):
            raise ConfigError(f"connect_timeout must be a positive number of seconds, got {self.connect_timeout}")

    def batch_across_inputs(self) -> bool:
        """``across_inputs`` resolved: as set, else on exactly when the Ray workers have GPUs."""
        return self.gpus_per_worker > 0 if self.across_inputs is None else self.across_inputs

    def settings(self) -> dict[str, Any]:
        """How the run was spread, for the record (``run.json`` ``config``)."""
        return {"workers": self.workers, "ray_address": self.ray_address, "gpus_per_worker": self.gpus_per_worker,
                "threads_per_worker": self.threads_per_worker, "batch_across_inputs": self.batch_across_inputs()}


# ---------------------------------------------------------------------------------------------
# what a job is


@dataclass(frozen=True)
class Item:
    """One input of a run."""

    input: str  # run.json's ``input``: the path as given or listed (localize), the entry's id (pseudo-boxes)
    data: Any = None  # what the job needs (localize: the video's path; pseudo-boxes: the manifest entry)
    stem: str | None = None  # the output name (localize: outputs are STEM.avloc.json, ...)
    error: str | None = None  # refused before the run (an unreadable list, an output name taken twice, ...)
    replace: bool = False  # set by the runner: the outputs there are ours and are replaced
    index: int = -1  # set by the runner: position in the run


class Found(Enum):
    """What an earlier run left for an input (:meth:`Job.existing`)."""

    NOTHING = "nothing"  # nothing of ours: run it
    COMPLETE = "complete"  # same configuration, same model content: skipped
    STALE = "stale"  # ours, but partial or made by another model content: redone, replacing it
    OTHER = "other"  # complete, made with another configuration: refused without --force


@dataclass(frozen=True)
class Existing:
    found: Found
    why: str | None = None  # STALE: what is wrong (logged); OTHER: the input's one-line failure
    outputs: dict[str, str] = field(default_factory=dict)  # COMPLETE: its output names (run.json)
    payload: Any = None  # COMPLETE: what ``commit`` returned then (pseudo-boxes: the manifest entries)
    #: a file avloc did not write in the way of an output (one line naming it): an input that would run fails
    #: with it instead, also with --force (a skipped one leaves it alone)
    foreign: str | None = None


@dataclass
class Done:
    """What ``commit`` wrote (small and picklable: it travels back from a Ray worker)."""

    outputs: dict[str, str] = field(default_factory=dict)  # kind -> file name
    frames: int = 0  # analysed frames (the progress bar's frames/s); 0 when the job does not count them
    payload: Any = None  # for the caller (pseudo-boxes: the input's manifest entries)


class Job(Protocol):
    """One kind of input (module doc). A job is picklable: Ray sends it to its tasks and workers."""

    tool: str  # "avloc localize": run.json's tool and the log lines' prefix
    noun: str  # what the summary counts: "input(s)", "entries"
    unit: str  # the progress bar's unit
    #: inputs one Ray worker runs at once (more than 1 only when the job batches the model across inputs)
    per_worker: int

    def existing(self, item: Item) -> Existing: ...
    def load(self) -> Any: ...
    def decode(self, item: Item) -> Iterator[Any]: ...
    def infer(self, worker: Any, item: Item, pieces: Iterator[Any]) -> Any: ...
    def commit(self, item: Item, inferred: Any) -> Done: ...
    def subject(self, item: Item) -> str: ...  # how a failure line names the input
    def done_line(self, outcome: Outcome) -> str: ...  # the log line of a finished input


@dataclass
class Outcome:
    """What became of one input: its run.json record and what the runner needs besides."""

    item: Item
    record: RunInput
    bug: bool = False  # an unexpected error (exit 1), not an expected failure (exit 2)
    frames: int = 0
    payload: Any = None
    traceback: str | None = None  # a bug's traceback (logged by the driver: a Ray worker's log stays there)

    @property
    def status(self) -> str:
        return self.record.status


# ---------------------------------------------------------------------------------------------
# one input


def failed(job: Job, item: Item, e: BaseException) -> Outcome:
    """The outcome of an input that raised ``e``: its one-line reason, or a bug with its traceback."""
    msg = describe_error(e)
    bug, tb = msg is None, None
    if msg is None:
        msg = f"{REPORT_LINE} ({type(e).__name__}: {e})"
        tb = "".join(traceback.format_exception(e))
    about = job.subject(item)
    reason = " ".join((msg if about in msg else f"{about}: {msg}").split())  # one line
    return Outcome(item, RunInput(item.input, "failed", error=reason, stem=item.stem), bug=bug, traceback=tb)


def execute(job: Job, worker: Any, item: Item, pieces: Iterator[Any]) -> Outcome:
    """``infer`` then ``commit`` one input (module doc), its failure isolated; the same on both paths."""
    t0 = time.perf_counter()
    try:
        done = job.commit(item, job.infer(worker, item, pieces))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # per-input isolation: the other inputs still run
        return failed(job, item, e)
    rec = RunInput(item.input, "done", outputs=done.outputs, seconds=round(time.perf_counter() - t0, 3),
                   stem=item.stem)
    return Outcome(item, rec, frames=done.frames, payload=done.payload)


# ---------------------------------------------------------------------------------------------
# the run


def plan(job: Job, items: Sequence[Item], force: bool) -> tuple[list[Outcome | None], list[Item]]:
    """Each input's outcome when decided before running (refused, skipped), else ``None``; and the inputs to run
    (module doc: resume)."""
    decided: list[Outcome | None] = []
    todo: list[Item] = []
    for i, it in enumerate(items):
        it = dataclasses.replace(it, index=i)
        if it.error is not None:
            decided.append(Outcome(it, RunInput(it.input, "failed", error=it.error, stem=it.stem)))
            continue
        ex = job.existing(it)
        if ex.found is Found.COMPLETE and not force:
            decided.append(Outcome(it, RunInput(it.input, "skipped", outputs=ex.outputs, stem=it.stem),
                                   payload=ex.payload))
        elif (ex.found is Found.OTHER and not force) or ex.foreign is not None:
            reason = ex.why if ex.found is Found.OTHER and not force else ex.foreign
            decided.append(Outcome(it, RunInput(it.input, "failed", error=reason, stem=it.stem)))
        else:
            if ex.found is Found.STALE and not force:
                log.info("%s: redoing it (%s)", job.subject(it), ex.why)
            decided.append(None)
            todo.append(dataclasses.replace(it, replace=force or ex.found is not Found.NOTHING))
    return decided, todo


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Tracker:
    """The run's record (written after every change) and its progress bar."""

    def __init__(self, job: Job, outcomes: list[Outcome], record: RunRecord, where: Path, todo: int,
                 progress: bool) -> None:
        from tqdm import tqdm

        self.job, self.outcomes, self.record, self.where = job, outcomes, record, where
        self.bar = tqdm(total=todo, unit=job.unit, desc=job.tool, disable=not progress, file=sys.stderr)
        self.t0, self.frames = time.perf_counter(), 0
        self.write(check=True)

    def write(self, check: bool = False) -> None:
        self.record.inputs = [o.record for o in self.outcomes]
        write_run(self.where.parent, self.record, name=self.where.name, check=check)

    def finished(self, o: Outcome) -> None:
        self.outcomes[o.item.index] = o
        self.write()
        self.bar.update(1)
        if o.frames:
            self.frames += o.frames
            self.bar.set_postfix_str(f"{self.frames / max(time.perf_counter() - self.t0, 1e-9):.1f} frames/s")
        if o.traceback is not None:
            log.error("%s: unexpected error\n%s", self.job.subject(o.item), o.traceback.rstrip())
        if o.status == "done":
            log.info("%s", self.job.done_line(o))
        else:
            log.error("%s: error: %s", self.job.tool, o.record.error)

    def finish(self) -> None:
        self.record.finished = _now()
        self.write(check=True)


def check_backend(config: RunnerConfig) -> None:
    """Before any work: Ray importable when ``workers`` asks for it, and ``ray_address`` reachable (a wrong address
    fails within ``connect_timeout`` with one line)."""
    if not config.workers:
        return
    from avloc.applications.ray_runner import probe_address, require_ray

    require_ray()
    if config.ray_address and config.ray_address != "auto":
        probe_address(config.ray_address, config.connect_timeout)


def run(job: Job, items: Sequence[Item], config: RunnerConfig, record: Path, command: Sequence[str],
        settings: dict[str, Any], notes: Sequence[str] = ()) -> list[Outcome]:
    """Run ``items`` through ``job`` (module doc); ``record``: where run.json goes; ``settings``: what the results
    depend on (run.json ``config``, with the runner's own settings added); ``notes``: lines for the summary.
    Returns every input's outcome, in the given order."""
    from avloc import __version__

    decided, todo = plan(job, items, config.force)
    # run_schema.json: pending = queued or running (what a killed run leaves)
    pending = [Outcome(it, RunInput(it.input, "pending", stem=it.stem)) for it in todo]
    it_pending = iter(pending)
    outcomes = [d if d is not None else next(it_pending) for d in decided]
    rec = RunRecord(tool={"name": job.tool, "version": str(__version__)}, started=_now(), finished=None,
                    inputs=[], command=list(command), config={**settings, **config.settings()})
    tracker = Tracker(job, outcomes, rec, record, len(todo), config.progress)
    try:
        if todo and config.workers:
            from avloc.applications.ray_runner import run_on_ray

            run_on_ray(job, todo, config, tracker.finished)
        elif todo:
            _run_sequential(job, todo, tracker.finished)
    finally:
        tracker.bar.close()
    tracker.finish()
    summarize(job, outcomes, notes)
    return outcomes


def _run_sequential(job: Job, todo: list[Item], finished: Callable[[Outcome], None]) -> None:
    worker = job.load()
    for it in todo:
        finished(execute(job, worker, it, job.decode(it)))


def summarize(job: Job, outcomes: Sequence[Outcome], notes: Sequence[str] = ()) -> None:
    """Log the summary line (done / skipped / failed), the notes, and one line per failed input."""
    count = {k: sum(o.status == k for o in outcomes) for k in ("done", "skipped", "failed")}
    log.info("%s: %d %s: %d done, %d skipped, %d failed",
             job.tool, len(outcomes), job.noun, count["done"], count["skipped"], count["failed"])
    for n in notes:
        log.info("  %s", n)
    for o in outcomes:
        if o.status == "failed":
            log.info("  failed: %s", o.record.error)


def exit_status(outcomes: Sequence[Outcome]) -> int:
    """1 if any input hit a bug, else 2 if any failed, else 0."""
    bad = [o for o in outcomes if o.status == "failed"]
    return 0 if not bad else (1 if any(o.bug for o in bad) else 2)
