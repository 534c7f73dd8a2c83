"""Collections of videos: ``avloc localize INPUTS... --out DIR [--workers N]``, resumable, on Ray when asked.

**Inputs** (:func:`collect_inputs`): video files, folders of videos, a ``.txt`` of paths (one a line,
``#`` comments, relative to the list's folder) or a ``.jsonl`` manifest whose entries carry ``path`` or
``video`` (relative to the manifest's folder).

**Running**: ``workers=0`` runs the inputs one after another in this process (no Ray import).
``workers=N`` runs one Ray Data pipeline (:func:`_run_ray`): decoding (:func:`~avloc.inference.pipeline.decode_video`)
in CPU tasks; the model in ``N`` actors (``ActorPoolStrategy``, ``gpus_per_worker`` GPUs each) that get
``videos_per_call`` decoded videos per call and, with ``across_videos`` and a per-frame map source, batch
their frames *across videos* (:func:`maps_across_videos`; outputs then equal the sequential path's to float
rounding, see :class:`BatchConfig`; without it each video's frames run in the sequential path's chunks and the
outputs are byte-identical); each actor then writes each video's outputs exactly as the sequential
path does (:func:`~avloc.inference.pipeline.write_outputs`, one transaction per video). Ray is started
locally (``ray.init(num_cpus=..., include_dashboard=False, log_to_driver=False)``) unless ``ray_address``
(``auto`` or ``HOST:PORT``) names a cluster to join, whose nodes must have avloc installed. Each actor uses
``threads_per_worker`` torch threads (``--threads-per-worker``; 0: as many as this process, see
:class:`BatchConfig`). The pipeline (:func:`ray_pipeline`), the run record (:class:`RunLog`) and the progress
bar (:class:`Tracker`) also serve ``avloc pseudo-boxes`` (:mod:`avloc.applications.pseudo_box_run`).

**Resuming**: without ``force`` an input whose ``NAME.avloc.json`` is complete and valid (schema-checked
against ``schema.json``, every output it lists present, made with the same model and configuration) is
skipped; a partial set (no JSON, an invalid one, a missing file) is redone; a complete set made with another
configuration is refused (failed, "pass --force"). ``force`` redoes all. One bad input never stops the
others; the run ends with a summary and the CLI exits 2 if any failed.

**DIR/run.json** (version 1; written atomically at the start, after every input, and at the end)::

    {"version": 1,
     "command": ["avloc", "localize", ...],          # argv of the run
     "config": {...},                                # the resolved LocalizeConfig + model, workers, ...
     "started": "2025-01-01T12:00:00+00:00",         # ISO 8601, UTC
     "finished": "2025-01-01T12:01:00+00:00" | null, # null while running (or when killed)
     "inputs": [{"input": "clips/a.mp4",             # as given / listed
                 "stem": "a",                        # outputs are DIR/STEM.avloc.json, ...
                 "status": "done" | "failed" | "skipped" | "pending",  # pending: queued or running
                 "error": "one-line reason" | null,
                 "outputs": {"json": "a.avloc.json", "sheet": "a.sheet.png", ...},  # relative to DIR
                 "seconds": 1.23 | null}]}           # processing time (null unless done)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pickle
import sys
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from avloc.errors import REPORT_LINE, ConfigError, DataError, describe_error
from avloc.inference.config import LocalizeConfig
from avloc.inference.sources import ModelSource, SourceOutput, VisualOnlySource

log = logging.getLogger("avloc")

RUN_VERSION = 1
RUN_FILE = "run.json"
#: file extensions picked up when an INPUT is a folder
VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv", ".ts", ".3gp"}
#: configuration keys that may differ between a run and the outputs it skips
_FREE_KEYS = {"force", "device"}


@dataclass
class BatchConfig:
    """How a collection runs (module doc)."""

    workers: int = 0  # 0: sequential, in this process; N: Ray, N model actors
    ray_address: str | None = None  # None: a local Ray; "auto" or "HOST:PORT": join that cluster
    gpus_per_worker: float = 0.0
    #: decoded videos an actor gets per call; their frames are batched together (per-frame sources)
    videos_per_call: int = 2
    #: torch threads per actor; 0: as many as this process uses (torch's default), which keeps the outputs
    #: byte-identical to the sequential path (CPU kernels sum in another order with another thread count)
    #: at the price of oversubscribed cores when N workers share a small machine
    threads_per_worker: int = 0
    #: batch frames across the videos of a call (per-frame sources): fuller batches (a GPU's gain), but a
    #: frame then shares its batch with other videos' frames and CPU kernels may round differently, so the
    #: maps agree with the sequential path to float precision, not byte for byte; off: each video's frames
    #: in the sequential path's chunks (byte-identical outputs); None (default): on when the workers have GPUs
    #: (where full batches are the gain and GPU kernels differ from the CPU path anyway), off on CPU
    across_videos: bool | None = None
    force: bool = False  # redo every input
    progress: bool = True

    def batch_across_videos(self) -> bool:
        """``across_videos`` resolved: as set, else on exactly when the Ray workers have GPUs."""
        return self.gpus_per_worker > 0 if self.across_videos is None else self.across_videos

    def validate(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"--workers must be >= 0, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise ConfigError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.gpus_per_worker and not self.workers:
            raise ConfigError("--gpus-per-worker needs --workers N (the GPUs go to the Ray model actors)")
        if self.threads_per_worker < 0:
            raise ConfigError(f"--threads-per-worker must be >= 0, got {self.threads_per_worker}")
        if self.threads_per_worker and not self.workers:
            raise ConfigError("--threads-per-worker needs --workers N (the threads of each Ray model actor)")
        if self.ray_address and not self.workers:
            raise ConfigError("--ray-address needs --workers N (the Ray model actors run on that cluster)")
        if self.videos_per_call < 1:
            raise ConfigError(f"videos_per_call must be >= 1, got {self.videos_per_call}")


@dataclass(frozen=True)
class ModelSpec:
    """What to load in each process that runs the model (the driver, or every Ray actor)."""

    name: str | None  # checkpoint / zoo / method name; None with cfg.visual_only
    tagger: str | None = None  # YAMNet .tflite (zero-shot semantic mode)
    device: str = "cpu"

    def load(self) -> tuple[Any, Any]:
        model = tagger = None
        if self.name is not None:
            from avloc.methods.zoo import load_model

            model = load_model(self.name, device=self.device)
        if self.tagger is not None:
            from avloc.inference.semantic import SemanticMapper

            tagger = SemanticMapper(self.tagger, device=self.device)
        return model, tagger


# ---------------------------------------------------------------------------------------------
# inputs


def read_input_list(path: Path) -> list[Path]:
    """The videos a ``.txt`` list or a ``.jsonl`` manifest names (relative paths: to the list's folder)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text list of videos") from None
    out: list[Path] = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if path.suffix.lower() == ".jsonl":
            try:
                entry = json.loads(s)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("path", entry.get("video")), str):
                raise DataError(f"{path}:{n}: an entry needs a 'path' or 'video' string")
            s = str(entry.get("path", entry.get("video")))
        p = Path(s)
        out.append(p if p.is_absolute() else path.parent / p)
    if not out:
        raise DataError(f"{path}: the list names no video")
    return out


def is_input_list(p: Path) -> bool:
    return p.suffix.lower() in (".txt", ".jsonl") and p.is_file()


def collect_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given, folders expanded to their video files (sorted), lists read; returns (files, [(input, error)]).

    Folder expansion skips hidden and temporary files (:func:`avloc.io.outputs.is_temporary_name`);
    an explicit input inside an avloc temporary folder is refused.
    """
    from avloc.errors import describe_os_error
    from avloc.io.outputs import is_avloc_temporary, is_temporary_name

    files: list[Path] = []
    errors: list[tuple[str, str]] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            try:
                found = sorted(f for f in p.iterdir()
                               if f.suffix.lower() in VIDEO_EXTENSIONS and not is_temporary_name(f.name) and f.is_file())
            except OSError as e:
                errors.append((s, describe_os_error(e)))
                continue
            if not found:
                errors.append((s, f"{p}: folder has no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})"))
            files.extend(found)
        elif is_avloc_temporary(p):
            errors.append((s, f"{p}: a temporary file of an interrupted avloc run, not an input "
                              "(the next run on it removes it)"))
        elif is_input_list(p):
            try:
                files.extend(read_input_list(p))
            except (DataError, OSError) as e:
                errors.append((s, describe_error(e) or str(e)))
        else:
            files.append(p)
    return files, errors


# ---------------------------------------------------------------------------------------------
# run.json


@dataclass
class InputState:
    input: str
    stem: str
    status: str = "pending"  # done | failed | skipped | pending (queued or running)
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None
    frames: int = 0  # not in run.json: for the progress bar and the summary
    bug: bool = False  # an unexpected error (exit 1), not an expected failure (exit 2)

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "stem": self.stem, "status": self.status, "error": self.error,
                "outputs": self.outputs, "seconds": self.seconds}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RunLog:
    """``DIR/run.json`` (module doc) or another run record at ``path``, rewritten atomically whenever an input changes."""

    def __init__(self, path: Path, command: list[str], config: dict[str, Any], states: list[InputState],
                 tool: str = "avloc localize") -> None:
        self.path, self.tool = path, tool
        self.command, self.config, self.states = command, config, states
        self.started: str = _now()
        self.finished: str | None = None

    def document(self) -> dict[str, Any]:
        from avloc import __version__

        # avloc/report/run_schema.json (what ``avloc report`` reads): schema_version and tool; ``version`` kept
        # for this module's own resume check
        return {"schema_version": "1.0", "tool": {"name": self.tool, "version": str(__version__)},
                "version": RUN_VERSION, "command": self.command, "config": self.config, "started": self.started,
                "finished": self.finished, "inputs": [s.to_dict() for s in self.states]}

    def write(self) -> None:
        from avloc.formats.atomic import write_text_atomic

        write_text_atomic(self.path, json.dumps(self.document(), indent=1, allow_nan=False) + "\n")

    def finish(self) -> None:
        self.finished = _now()
        self.write()


def read_run(out_dir: str | Path) -> dict[str, Any]:
    """``DIR/run.json`` as a dict; raises :class:`DataError` when absent or not a version-1 run."""
    p = Path(out_dir) / RUN_FILE
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: no run.json (not a collection run's output folder)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{p}: not valid JSON ({e.msg}); was the run killed while writing it?") from None
    if not isinstance(doc, dict) or doc.get("version") != RUN_VERSION or not isinstance(doc.get("inputs"), list):
        raise DataError(f"{p}: not a version-{RUN_VERSION} run.json")
    return doc


# ---------------------------------------------------------------------------------------------
# resuming


def expected_model_name(spec: ModelSpec, cfg: LocalizeConfig) -> str | None:
    return "object-prior (visual only)" if cfg.visual_only else spec.name


def existing_set(json_path: Path, cfg: LocalizeConfig, model_name: str | None) -> tuple[str, str | None]:
    """State of the output set whose marker is ``json_path``: ``("complete", None)``, ``("none", None)``,
    ``("partial", why)`` (to redo) or ``("other", why)`` (complete, from another configuration)."""
    from avloc.formats.localize import OUTPUT_SUFFIXES, read_document
    from avloc.inference.pipeline import wanted_outputs

    stem = json_path.name[: -len(OUTPUT_SUFFIXES["json"])]
    siblings = [json_path.parent / f"{stem}{s}" for s in OUTPUT_SUFFIXES.values()]
    if not json_path.exists():
        return ("partial", "no JSON output") if any(p.exists() for p in siblings) else ("none", None)
    try:
        doc = read_document(json_path)
    except DataError as e:
        return "partial", str(e)
    for name in doc.outputs.values():
        if not (json_path.parent / name).is_file():
            return "partial", f"{name} is missing"
    want = set(wanted_outputs(json_path, json_path.parent, cfg))
    if not want <= set(doc.outputs):
        return "other", f"made without {', '.join(sorted(want - set(doc.outputs)))}"
    if doc.model.get("name") != model_name:
        return "other", f"made with model {doc.model.get('name')!r}, not {model_name!r}"
    have = doc.config
    for k, v in asdict(cfg).items():
        if k in _FREE_KEYS or (k == "window_seconds" and v is None):
            continue
        if k in have and have[k] != v:
            return "other", f"made with {k}={have[k]!r}, not {v!r}"
    return "complete", None


# ---------------------------------------------------------------------------------------------
# frames batched across videos (the Ray actors)


def batchable(source: ModelSource | VisualOnlySource, tagger: Any) -> bool:
    """Whether a map source's frames can be batched across videos: per-frame, no context, no tagger."""
    return tagger is None and source.context_seconds == 0.0 and not source.is_clip and not source.analyses_sources


def _cat(outs: list[SourceOutput]) -> SourceOutput:
    return SourceOutput(np.concatenate([o.maps for o in outs]), *(
        [x for o in outs for x in getattr(o, f.name)] for f in dataclasses.fields(SourceOutput)[1:]))


def _cut(out: SourceOutput, a: int, b: int) -> SourceOutput:
    return SourceOutput(out.maps[a:b], *(getattr(out, f.name)[a:b] for f in dataclasses.fields(SourceOutput)[1:]))


def maps_across_videos(source: Any, videos: Sequence[Any], batch_size: int, device: str) -> list[SourceOutput]:
    """The map source's outputs for every frame of every decoded video, in batches of ``batch_size`` frames
    that run across video boundaries; split back per video."""
    import torch

    from avloc.frontends.image import preprocess_image

    image_cfg = source.model.cfg.image
    frames = [(fr.image, fr.audio, fr.time) for v in videos for fr in v.frames]
    outs: list[SourceOutput] = []
    for a in range(0, len(frames), batch_size):
        part = frames[a: a + batch_size]
        images = torch.stack([preprocess_image(torch.from_numpy(im).permute(2, 0, 1), image_cfg) for im, _, _ in part])
        audio = torch.from_numpy(np.stack([au for _, au, _ in part]))  # (B, N)
        times = torch.tensor([t for _, _, t in part], dtype=torch.float32)
        outs.append(source.maps(images.to(device), audio.to(device), times))  # (B, 3, S, S) -> B maps
    every = _cat(outs)
    split, a = [], 0
    for v in videos:
        split.append(_cut(every, a, a + len(v.frames)))
        a += len(v.frames)
    return split


class PrecomputedSource:
    """A map source that hands out outputs already computed (:func:`maps_across_videos`), in frame order."""

    context_seconds = 0.0

    def __init__(self, inner: Any, out: SourceOutput) -> None:
        self.model, self._out, self._pos = inner.model, out, 0

    def maps(self, images: Any, audio: Any, times: Any, keep: slice | None = None) -> SourceOutput:
        n = int(images.shape[0])
        a, self._pos = self._pos, self._pos + n
        return _cut(self._out, a, a + n)


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class _Todo:
    index: int  # into the run's states
    path: Path
    force: bool  # replace what is there (a partial set, or --force)


def failure(e: BaseException, traceback_lines: int = 0) -> tuple[str, bool]:
    """(one-line reason, is a bug); a bug's reason ends with the last ``traceback_lines`` of its traceback
    (for Ray workers, whose log does not reach the driver)."""
    msg = describe_error(e)
    if msg is not None:
        return msg, False
    msg = f"{REPORT_LINE} ({type(e).__name__}: {e})"
    if traceback_lines:
        import traceback

        msg += " | " + " ".join(traceback.format_exception(e)[-traceback_lines:]).replace("\n", " ")
    return msg, True


class Tracker:
    """A run's record and its progress bar, updated as inputs start and finish (localize and pseudo-boxes)."""

    def __init__(self, states: list[InputState], run_log: RunLog, total: int, tool: str, unit: str, progress: bool,
                 done_line: Callable[[InputState], str], frame_rate: bool = False) -> None:
        from tqdm import tqdm

        self.states, self.run_log, self.tool, self.done_line, self.frame_rate = states, run_log, tool, done_line, frame_rate
        self.bar = tqdm(total=total, unit=unit, desc=tool, disable=not progress, file=sys.stderr)
        self.t0, self.frames = time.perf_counter(), 0

    def started(self, i: int) -> None:
        self.states[i].status = "pending"  # run_schema.json: pending = queued or running
        self.run_log.write()

    def finished(self, i: int, st: InputState) -> None:
        self.states[i] = st
        self.run_log.write()
        self.bar.update(1)
        if self.frame_rate:
            self.frames += st.frames
            self.bar.set_postfix_str(f"{self.frames / max(time.perf_counter() - self.t0, 1e-9):.1f} frames/s")
        if st.status == "done":
            log.info("%s", self.done_line(st))
        else:
            log.error("%s: error: %s", self.tool, st.error)

    def close(self) -> None:
        self.bar.close()


def run_collection(
    inputs: Sequence[str],
    out_dir: str | Path,
    cfg: LocalizeConfig,
    spec: ModelSpec,
    batch: BatchConfig,
    command: list[str] | None = None,
) -> list[InputState]:
    """Localize every input into ``out_dir`` (module doc); returns each input's final state."""
    from avloc.inference.pipeline import OUTPUT_SUFFIXES
    from avloc.io.outputs import check_output_folder

    batch.validate()
    out = check_output_folder(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, errors = collect_inputs(inputs)
    states = [InputState(s, Path(s).stem, "failed", e) for s, e in errors]
    todo: list[_Todo] = []
    seen: dict[str, Path] = {}
    name = expected_model_name(spec, cfg)
    for f in files:
        st = InputState(str(f), f.stem)
        states.append(st)
        if f.stem in seen:
            st.status, st.error = "failed", f"{f}: same output name as {seen[f.stem]}; run it with another --out"
            continue
        seen[f.stem] = f
        json_path = out / f"{f.stem}{OUTPUT_SUFFIXES['json']}"
        kind, why = ("none", None) if batch.force else existing_set(json_path, cfg, name)
        if kind == "complete":
            st.status = "skipped"
            st.outputs = json.loads(json_path.read_text())["outputs"]
        elif kind == "other":
            st.status, st.error = "failed", f"{json_path} exists, {why}; pass --force to replace the whole set"
        else:
            if kind == "partial":
                log.info("%s: redoing its partial outputs (%s)", f, why)
            todo.append(_Todo(len(states) - 1, f, force=batch.force or kind == "partial"))
    config = {**asdict(cfg), "model": spec.name, "audio_tagger": spec.tagger, "workers": batch.workers,
              "ray_address": batch.ray_address, "gpus_per_worker": batch.gpus_per_worker,
              "threads_per_worker": batch.threads_per_worker, "batch_across_videos": batch.batch_across_videos()}
    run_log = RunLog(out / RUN_FILE, list(command if command is not None else sys.argv), config, states)
    run_log.write()
    if todo:
        tracker = Tracker(states, run_log, len(todo), "avloc localize", "video", batch.progress, frame_rate=True,
                          done_line=lambda st: f"{st.input}: {st.frames} frames in {st.seconds or 0.0:.1f} s -> "
                                               + ", ".join(st.outputs.values()))
        try:
            if batch.workers:
                _run_ray(todo, states, out, cfg, spec, batch, tracker.finished)
            else:
                _run_sequential(todo, states, out, cfg, spec, batch, tracker.started, tracker.finished)
        finally:
            tracker.close()
    run_log.finish()
    summarize(states)
    return states


def _run_sequential(todo: list[_Todo], states: list[InputState], out: Path, cfg: LocalizeConfig, spec: ModelSpec,
                    batch: BatchConfig, started: Callable[[int], None],
                    finished: Callable[[int, InputState], None]) -> None:
    from avloc.inference.pipeline import localize_video

    model, tagger = spec.load()
    for t in todo:
        started(t.index)
        st = dataclasses.replace(states[t.index])
        t0 = time.perf_counter()
        try:
            res = localize_video(t.path, model, dataclasses.replace(cfg, force=t.force), out, model_name=spec.name,
                                 tagger=tagger, progress=False)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # per-input isolation: the other inputs still run
            st.status, st.seconds = "failed", None
            st.error, st.bug = failure(e)
            if st.bug:
                log.error("%s: unexpected error", st.input, exc_info=e)
            if st.input not in st.error:
                st.error = f"{st.input}: {st.error}"
        else:
            st.status, st.error, st.frames = "done", None, res.frames
            st.outputs = {k: p.name for k, p in res.outputs.items()}
            st.seconds = round(time.perf_counter() - t0, 3)
        finished(t.index, st)


def summarize(states: list[InputState], tool: str = "avloc localize", noun: str = "input(s)") -> None:
    """Log the summary line (done / skipped / failed) and one line per failed input."""
    count = {k: sum(s.status == k for s in states) for k in ("done", "skipped", "failed")}
    log.info("%s: %d %s: %d done, %d skipped, %d failed",
             tool, len(states), noun, count["done"], count["skipped"], count["failed"])
    for s in states:
        if s.status == "failed":
            log.info("  failed: %s", s.error)


def exit_status(states: list[InputState]) -> int:
    """1 if any input hit a bug, else 2 if any failed, else 0."""
    failed = [s for s in states if s.status == "failed"]
    return 0 if not failed else (1 if any(s.bug for s in failed) else 2)


# ---------------------------------------------------------------------------------------------
# Ray


def _decode_task(row: dict[str, Any], model_cfg: Any, cfg: LocalizeConfig) -> dict[str, Any]:
    """Ray CPU task: probe, check and decode one video (errors travel in the row, never raised)."""
    from avloc.inference.pipeline import decode_video

    t0 = time.perf_counter()
    try:
        payload, error, bug = pickle.dumps(decode_video(row["input"], model_cfg, cfg), protocol=5), "", False
    except Exception as e:
        (error, bug), payload = failure(e), b""
    return {**row, "payload": payload, "error": error, "bug": bug, "decode_seconds": time.perf_counter() - t0}


class _LocalizeActor:
    """Ray actor: the model, loaded once; analyses and writes the decoded videos it is given."""

    def __init__(self, spec: ModelSpec, cfg: LocalizeConfig, out_dir: str, threads: int, across_videos: bool) -> None:
        import torch

        from avloc.inference.pipeline import make_source

        if threads:
            torch.set_num_threads(threads)
        self.spec, self.cfg, self.out_dir, self.across = spec, cfg, Path(out_dir), across_videos
        self.model, self.tagger = spec.load()
        self.source = make_source(self.model, cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        from avloc.inference.pipeline import analyse_video, write_outputs

        rows = [dict(zip(batch, vals)) for vals in zip(*batch.values())]
        decoded = {i: pickle.loads(r["payload"]) for i, r in enumerate(rows) if not r["error"]}
        shared: dict[int, SourceOutput] = {}
        if self.across and decoded and batchable(self.source, self.tagger):
            try:
                outs = maps_across_videos(self.source, list(decoded.values()), self.cfg.batch_size, self.cfg.device)
                shared = dict(zip(decoded, outs))
            except Exception:  # a model failure on the shared batch: each video alone, so only its own fails
                log.warning("batched model call failed; analysing the videos one by one", exc_info=True)
        res: dict[str, list[Any]] = {k: [] for k in ("index", "status", "error", "bug", "outputs", "seconds", "frames")}
        for i, r in enumerate(rows):
            t0 = time.perf_counter()
            status, error, bug, outputs, frames = "failed", str(r["error"]), bool(r["bug"]), "{}", 0
            if i in decoded:
                try:
                    src = PrecomputedSource(self.source, shared[i]) if i in shared else self.source
                    analysis = analyse_video(r["input"], self.model, self.cfg, model_name=self.spec.name,
                                             tagger=self.tagger, progress=False, decoded=decoded[i], source=src)
                    lr = write_outputs(analysis, self.out_dir, force=bool(r["force"]))
                    status, error, frames = "done", "", lr.frames
                    outputs = json.dumps({k: p.name for k, p in lr.outputs.items()})
                except Exception as e:  # a bug's traceback travels in the reason: the actor's log does not reach the driver
                    error, bug = failure(e, traceback_lines=3)
            for k, v in zip(res, (int(r["index"]), status, error, bug, outputs,
                                  round(float(r["decode_seconds"]) + time.perf_counter() - t0, 3), frames)):
                res[k].append(v)
        return res


def start_ray(batch: BatchConfig) -> bool:
    """Connect to ``batch.ray_address`` or start a local Ray; returns whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if batch.ray_address:
        ray.init(address=batch.ray_address, **common)
    else:  # decode tasks need a CPU beside the N actors, also on a machine with fewer cores
        ray.init(num_cpus=max(os.cpu_count() or 1, batch.workers + 1), **common)
    return True


def require_ray() -> None:
    """Raise :class:`ConfigError` (what to install) unless Ray Data can be imported."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("--workers needs Ray: pip install 'avloc[ray]' (or run without --workers)") from None


def actor_threads(batch: BatchConfig) -> int:
    """Torch threads of each Ray model actor: ``threads_per_worker``, or this process's count (0)."""
    import torch

    return batch.threads_per_worker or torch.get_num_threads()


def ray_pipeline(rows: list[dict[str, Any]], decode: Callable[..., dict[str, Any]], decode_kwargs: dict[str, Any],
                 actor: type, actor_kwargs: dict[str, Any], batch: BatchConfig) -> Generator[dict[str, Any], None, None]:
    """One Ray Data pipeline (module doc): each row through ``decode`` in a CPU task, then ``actor`` (an
    actor pool of ``batch.workers``, ``batch.videos_per_call`` rows a call); yields the actors' rows as they
    come. Ray is started here (and shut down at the end) unless it is already running."""
    require_ray()
    import ray
    import ray.data

    ours = start_ray(batch)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its own progress lines: the run has one bar
        ds: Any = ray.data.from_items(rows, override_num_blocks=len(rows))
        # max_calls=0 is a task's default (a worker serves any number of calls); given explicitly it makes the
        # decode step's remote arguments differ from the actors', so Ray Data does not fuse decoding into the
        # actors: decode tasks and model actors then run side by side (decode overlaps the model)
        ds = ds.map(decode, fn_kwargs=decode_kwargs, num_cpus=1, max_calls=0)
        ds = ds.map_batches(
            actor, fn_constructor_kwargs=actor_kwargs, compute=ray.data.ActorPoolStrategy(size=batch.workers),
            batch_size=batch.videos_per_call, num_cpus=1, num_gpus=batch.gpus_per_worker or None, batch_format="numpy",
        )
        yield from ds.iter_rows()
    finally:
        if ours:
            ray.shutdown()


def _run_ray(todo: list[_Todo], states: list[InputState], out: Path, cfg: LocalizeConfig, spec: ModelSpec,
             batch: BatchConfig, finished: Callable[[int, InputState], None]) -> None:
    from avloc.inference.pipeline import make_source

    require_ray()
    model, _ = ModelSpec(spec.name).load()  # the driver only reads the preprocessing the decode tasks need
    model_cfg = make_source(model, cfg).model.cfg
    del model
    rows = [{"index": t.index, "input": str(t.path), "force": t.force} for t in todo]
    actor_kwargs = {"spec": spec, "cfg": cfg, "out_dir": str(out), "threads": actor_threads(batch),
                    "across_videos": batch.batch_across_videos()}
    pipeline = ray_pipeline(rows, _decode_task, {"model_cfg": model_cfg, "cfg": cfg}, _LocalizeActor, actor_kwargs,
                            batch)
    with contextlib.closing(pipeline):  # Ray shut down on the way out, also on an error or Ctrl-C
        for row in pipeline:
            i = int(row["index"])
            st = dataclasses.replace(states[i], status=str(row["status"]), frames=int(row["frames"]),
                                     bug=bool(row["bug"]))
            if st.status == "done":
                st.error, st.seconds = None, float(row["seconds"])
                st.outputs = json.loads(str(row["outputs"]))
            else:
                err = str(row["error"])
                st.error = err if st.input in err else f"{st.input}: {err}"
            finished(i, st)
