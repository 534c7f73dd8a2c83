"""``avloc pseudo-boxes --manifest IN --out OUT [--workers N]``: the resumable run over IN's entries.

The procedure is :mod:`avloc.applications.pseudo_boxes` (Sec. 5.2); this module runs it over a manifest the way
``avloc localize`` runs a collection (:mod:`avloc.inference.batch`): one bad entry never stops the others,
a summary at the end (done / skipped / failed with the one-line reason), a progress bar, and a re-run of the
same command does not redo finished entries.

**Running**: ``workers=0`` decodes and runs the model entry after entry in this process (no Ray import).
``workers=N`` runs one Ray Data pipeline (:func:`avloc.inference.batch.ray_pipeline`): each entry decoded
(:func:`~avloc.applications.pseudo_boxes.decode_entry`) in a CPU task, the classification model in ``N`` actors
(``gpus_per_worker`` GPUs each; the model then runs on CUDA) that return each clip's boxes; this process
turns them into manifest entries (:func:`~avloc.applications.pseudo_boxes.boxes_to_entries`) and writes them. With the
same torch thread count (``threads_per_worker`` 0: this process's ``--threads``) OUT is byte-identical to
the sequential path's; on a GPU the scores agree to float rounding.

**Files next to OUT**:

* ``OUT``: the pseudo-box manifest, its entries in IN's order, written atomically once every entry has run;
* ``OUT.run.json``: the run record (the ``run.json`` format of :mod:`avloc.inference.batch`, tool
  ``avloc pseudo-boxes``, one input per entry of IN, ``input`` = the entry's id), rewritten atomically at the
  start, after every entry and at the end; every run on OUT rewrites it, and it stays after the run;
* ``OUT.parts/``: the work area. ``config.json`` holds what the results depend on (model, IN, OUT's folder,
  ``top_k``, ``threshold``, ``connectivity``); ``ID-HASH.json`` holds one finished entry
  (``{"source": IN's entry, "entries": [its pseudo-box entries]}``), written atomically when it finishes.

**Resuming**: without ``force`` an entry whose part holds the same source entry is skipped (an entry edited in
IN is redone); a work area of another configuration is refused ("pass --force"). When no entry failed, OUT is
assembled and ``OUT.parts/`` removed, so the next run on OUT needs ``--force`` as before. When some failed, OUT
is assembled from the others (exit 2) and ``OUT.parts/`` is kept; its ``written.json`` lists the sha256 of every
OUT it wrote (recorded before OUT is replaced, so a run killed at any point still knows its OUT). Re-running the
same command then redoes only the failed entries and replaces that OUT. Any other existing OUT is never replaced
without ``force``; ``force`` removes ``OUT.parts/`` and redoes every entry. A manifest without any pseudo box
(every map flat) is not written: the run fails with that reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import pickle
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from avloc.applications.pseudo_boxes import ClipBox, PseudoBoxConfig, boxes_to_entries, clip_pseudo_boxes, decode_entry
from avloc.errors import ConfigError, DataError, OutputExistsError
from avloc.inference.batch import (
    BatchConfig,
    InputState,
    ModelSpec,
    RunLog,
    Tracker,
    actor_threads,
    failure,
    ray_pipeline,
    require_ray,
    summarize,
)

if TYPE_CHECKING:
    from avloc.methods.classif import Classif, ClassifConfig

log = logging.getLogger("avloc")

TOOL = "avloc pseudo-boxes"
#: what the runners call when an entry has run: (entry index, its state, its boxes and frame size, or None if it failed)
Keep = Callable[[int, InputState, "list[ClipBox] | None", "tuple[int, int] | None"], None]
PARTS_SUFFIX = ".parts"
RUN_SUFFIX = ".run.json"
_CONFIG = "config.json"
_WRITTEN = "written.json"


@dataclass
class PseudoBoxRun:
    """What a run did: each entry's state, the pseudo boxes in OUT, whether OUT was written."""

    states: list[InputState]
    boxes: int
    written: bool
    seconds: float

    @property
    def clips_per_second(self) -> float:
        done = sum(s.status == "done" for s in self.states)
        return done / max(self.seconds, 1e-9)


def parts_dir(out: str | Path) -> Path:
    p = Path(out)
    return p.with_name(p.name + PARTS_SUFFIX)


def run_file(out: str | Path) -> Path:
    p = Path(out)
    return p.with_name(p.name + RUN_SUFFIX)


def _part_path(parts: Path, entry_id: str) -> Path:
    return parts / f"{hashlib.sha256(entry_id.encode()).hexdigest()[:16]}.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assemble(dst: Path, parts: Path, results: list[list[dict[str, Any]]], keep_parts: bool) -> None:
    """Write OUT atomically from the finished entries (IN's order); its sha256 is recorded in the work area first,
    so that a run killed at any point here still knows OUT as its own."""
    from avloc.formats.atomic import write_text_atomic
    from avloc.formats.manifest import manifest_line

    text = "".join(manifest_line(x) for new in results for x in new)
    sha = hashlib.sha256(text.encode()).hexdigest()
    write_text_atomic(parts / _WRITTEN, json.dumps({"sha256": [*_written(parts), sha]}) + "\n")
    write_text_atomic(dst, text)
    if not keep_parts:
        shutil.rmtree(parts)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _written(parts: Path) -> list[str]:
    """The sha256 of every OUT this work area has written (or was about to write when killed)."""
    doc = _read_json(parts / _WRITTEN)
    return [str(x) for x in doc["sha256"]] if isinstance(doc, dict) and isinstance(doc.get("sha256"), list) else []


def check_out(out: Path, force: bool) -> None:
    """Raise :class:`OutputExistsError` unless ``out`` may be written (module doc: only this work area's OUT)."""
    if force or not out.exists():
        return
    if not (out.is_file() and _sha256(out) in _written(parts_dir(out))):
        raise OutputExistsError(f"{out} exists; pass --force to overwrite it")


def _open_parts(parts: Path, key: dict[str, Any], force: bool) -> None:
    """Create the work area for ``key``, or check that the one there is for ``key`` (refused otherwise)."""
    from avloc.formats.atomic import write_text_atomic

    if force and parts.exists():
        shutil.rmtree(parts)
    have = _read_json(parts / _CONFIG) if parts.exists() else None
    if have is None:
        if parts.exists() and any(parts.iterdir()):
            raise DataError(f"{parts}: not a pseudo-boxes work area (no readable {_CONFIG}); "
                            "pass --force to replace it")
        parts.mkdir(parents=True, exist_ok=True)
        write_text_atomic(parts / _CONFIG, json.dumps(key, indent=1, sort_keys=True) + "\n")
        return
    for k, v in key.items():
        if have.get(k) != v:
            raise ConfigError(f"{parts} holds results made with {k}={have.get(k)!r}, not {v!r}; "
                              "pass --force to redo every entry")


def _finished_part(path: Path, entry: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The entries a part holds when it is complete, made from ``entry`` and valid manifest entries, else ``None``
    (redo: a part edited or damaged since it was written is never copied into OUT unchecked)."""
    from avloc.formats.manifest import entry_problems

    doc = _read_json(path)
    if not (isinstance(doc, dict) and doc.get("source") == entry and isinstance(doc.get("entries"), list)):
        return None
    problems = [q for x in doc["entries"] for q in (entry_problems(x) if isinstance(x, dict) else ["not an object"])]
    if problems:
        log.warning("%s: %s; the entry is redone", path, problems[0])
        return None
    return list(doc["entries"])


def load_classif(name: str, device: str = "cpu") -> Classif:
    """The classification model ``name`` (checkpoint or zoo name) in eval mode; :class:`ConfigError` if it is not one."""
    from avloc.methods.classif import Classif

    model, _ = ModelSpec(name, device=device).load()
    if not isinstance(model, Classif):
        raise ConfigError(f"{name}: pseudo boxes need a classification model (method 'classif'), got {model.name!r}")
    return model.eval()


def _reason(entry_id: str, e: BaseException, traceback_lines: int = 0) -> tuple[str, bool]:
    msg, bug = failure(e, traceback_lines)
    return (msg if repr(entry_id) in msg else f"entry {entry_id!r}: {msg}"), bug


def run_pseudo_boxes(
    model_name: str,
    manifest: str | Path,
    out: str | Path,
    cfg: PseudoBoxConfig,
    batch: BatchConfig,
    limit: int | None = None,
    command: list[str] | None = None,
) -> PseudoBoxRun:
    """Pseudo boxes for every entry of ``manifest`` into the manifest ``out`` (module doc)."""
    from avloc.formats.atomic import write_text_atomic
    from avloc.formats.manifest import read_manifest

    batch.validate()
    src, dst = Path(manifest), Path(out)
    check_out(dst, batch.force)  # before loading anything
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    entries = read_manifest(src)
    entries = entries[:limit] if limit else entries
    if batch.workers:
        require_ray()
    model = load_classif(model_name)  # checked before anything is written; the Ray driver reads its cfg
    key = {"model": model_name, "manifest": str(src.resolve()), "out_dir": str(dst.parent.resolve()),
           **asdict(cfg)}
    parts = parts_dir(dst)
    _open_parts(parts, key, batch.force)
    spec = ModelSpec(model_name, device="cuda" if batch.gpus_per_worker else "cpu")
    states = [InputState(str(e["id"]), str(e["id"])) for e in entries]
    index = {str(e["id"]): i for i, e in enumerate(entries)}  # ids are unique (read_manifest)
    results: dict[int, list[dict[str, Any]]] = {}
    todo: list[int] = []
    for i, e in enumerate(entries):
        done = _finished_part(_part_path(parts, e["id"]), e)
        if done is None:
            todo.append(i)
        else:
            states[i].status, results[i] = "skipped", done
    config = {**key, "limit": limit, "workers": batch.workers, "ray_address": batch.ray_address,
              "gpus_per_worker": batch.gpus_per_worker, "threads_per_worker": batch.threads_per_worker}
    run_log = RunLog(run_file(dst), list(command if command is not None else sys.argv), config, states, tool=TOOL)
    run_log.write()
    t0 = time.perf_counter()
    if todo:

        def keep(i: int, st: InputState, boxes: list[ClipBox] | None, hw: tuple[int, int] | None) -> None:
            """Turn a finished entry's boxes into manifest entries and write its part."""
            e = entries[i]
            if boxes is not None and hw is not None:
                try:
                    new = boxes_to_entries(e, boxes, hw, model.cfg, cfg, src, dst.parent)
                    write_text_atomic(_part_path(parts, e["id"]),
                                      json.dumps({"source": e, "entries": new}, allow_nan=False) + "\n")
                    results[i] = new
                except Exception as err:  # e.g. a full disk: this entry fails, the others go on
                    st = dataclasses.replace(st, status="failed", seconds=None)
                    st.error, st.bug = _reason(e["id"], err)
                    if st.bug:
                        log.error("entry %r: unexpected error", e["id"], exc_info=err)
            tracker.finished(i, st)

        tracker = Tracker(states, run_log, len(todo), TOOL, "entry", batch.progress,
                          done_line=lambda st: f"entry {st.input!r}: {len(results.get(index[st.input], []))} "
                                               f"pseudo box(es) in {st.seconds or 0.0:.2f} s")
        try:
            if batch.workers:
                _run_ray(todo, entries, states, model.cfg, src, cfg, spec, batch, keep)
            else:
                _run_sequential(todo, entries, states, model, src, cfg, tracker, keep)
        finally:
            tracker.close()
    boxes = sum(len(results[i]) for i in results)
    failed = any(s.status == "failed" for s in states)
    if boxes:
        _assemble(dst, parts, [results.get(i, []) for i in range(len(entries))], keep_parts=failed)
    run_log.finish()
    summarize(states, tool=TOOL, noun="entries")
    if not boxes and not failed:
        raise DataError(f"no pseudo box from {src}: every attention map was flat")
    if failed:
        log.info("%s: %s; re-run the same command to retry the failed entries (finished ones are kept in %s)",
                 TOOL, f"wrote {dst} without them" if boxes else f"{dst} not written (no pseudo box)", parts)
    return PseudoBoxRun(states, boxes, bool(boxes), time.perf_counter() - t0)


def _run_sequential(todo: list[int], entries: list[dict[str, Any]], states: list[InputState], model: Classif,
                    src: Path, cfg: PseudoBoxConfig, tracker: Tracker, keep: Keep) -> None:
    for i in todo:
        tracker.started(i)
        st = dataclasses.replace(states[i])
        t0 = time.perf_counter()
        try:
            clip = decode_entry(model.cfg, src, entries[i])
            boxes = clip_pseudo_boxes(model, clip.frames, clip.audio, cfg)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # per-entry isolation: the other entries still run
            st.status, st.seconds = "failed", None
            st.error, st.bug = _reason(entries[i]["id"], e)
            if st.bug:
                log.error("entry %r: unexpected error", entries[i]["id"], exc_info=e)
            keep(i, st, None, None)
        else:
            st.status, st.error, st.seconds = "done", None, round(time.perf_counter() - t0, 3)
            keep(i, st, boxes, clip.hw)


# ---------------------------------------------------------------------------------------------
# Ray


def _decode_entry_task(row: dict[str, Any], model_cfg: ClassifConfig, manifest: str) -> dict[str, Any]:
    """Ray CPU task: decode one entry (errors travel in the row, never raised)."""
    t0 = time.perf_counter()
    entry = json.loads(row["entry"])
    try:
        clip = decode_entry(model_cfg, manifest, entry)
        payload, error, bug = pickle.dumps(clip, protocol=5), "", False
    except Exception as e:
        (error, bug), payload = _reason(entry["id"], e), b""
    return {**row, "payload": payload, "error": error, "bug": bug, "decode_seconds": time.perf_counter() - t0}


class _PseudoBoxActor:
    """Ray actor: the classification model, loaded once; each decoded clip's boxes (Sec. 5.2)."""

    def __init__(self, spec: ModelSpec, cfg: PseudoBoxConfig, threads: int) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.spec, self.cfg = spec, cfg
        self.model = load_classif(str(spec.name), spec.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows = [dict(zip(batch, vals)) for vals in zip(*batch.values())]
        res: dict[str, list[Any]] = {k: [] for k in ("index", "status", "error", "bug", "boxes", "hw", "seconds")}
        for r in rows:
            t0 = time.perf_counter()
            status, error, bug, boxes, hw = "failed", str(r["error"]), bool(r["bug"]), "[]", "[]"
            if not error:
                try:
                    clip = pickle.loads(r["payload"])
                    dev = self.spec.device
                    out = clip_pseudo_boxes(self.model, clip.frames.to(dev), clip.audio.to(dev), self.cfg)
                    status, boxes, hw = "done", json.dumps([asdict(b) for b in out]), json.dumps(list(clip.hw))
                except Exception as e:  # a bug's traceback travels in the reason: the actor's log stays there
                    error, bug = _reason(json.loads(r["entry"])["id"], e, traceback_lines=3)
            for k, v in zip(res, (int(r["index"]), status, error, bug, boxes, hw,
                                  round(float(r["decode_seconds"]) + time.perf_counter() - t0, 3))):
                res[k].append(v)
        return res


def _run_ray(todo: list[int], entries: list[dict[str, Any]], states: list[InputState], model_cfg: ClassifConfig,
             src: Path, cfg: PseudoBoxConfig, spec: ModelSpec, batch: BatchConfig, keep: Keep) -> None:
    rows = [{"index": i, "entry": json.dumps(entries[i])} for i in todo]
    pipeline = ray_pipeline(rows, _decode_entry_task, {"model_cfg": model_cfg, "manifest": str(src.resolve())},
                            _PseudoBoxActor, {"spec": spec, "cfg": cfg, "threads": actor_threads(batch)}, batch)
    with contextlib.closing(pipeline):  # Ray shut down on the way out, also on an error or Ctrl-C
        for row in pipeline:
            i = int(row["index"])
            st = dataclasses.replace(states[i], status=str(row["status"]), bug=bool(row["bug"]))
            if st.status == "done":
                st.error, st.seconds = None, float(row["seconds"])
                boxes = [ClipBox(**b) for b in json.loads(str(row["boxes"]))]
                hw = tuple(json.loads(str(row["hw"])))
                keep(i, st, boxes, (int(hw[0]), int(hw[1])))
            else:
                st.error, st.seconds = str(row["error"]), None
                keep(i, st, None, None)
