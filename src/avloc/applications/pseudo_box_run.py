"""``avloc pseudo-boxes --manifest IN --out OUT [--workers N]``: the resumable run over IN's entries.

The procedure is :mod:`avloc.applications.pseudo_boxes` (Sec. 5.2); this module makes it a job of the one
collection runner (:mod:`avloc.applications.runner`, which ``avloc localize`` collections use too): one bad entry
never stops the others, a summary at the end (done / skipped / failed with the one-line reason), a progress bar,
a re-run of the same command does not redo finished entries, and ``workers=N`` runs on Ray.

**The job** (:class:`PseudoBoxJob`): decode an entry into a clip (:func:`~avloc.applications.pseudo_boxes.decode_entry`:
an entry is one short clip, decoded whole); infer its boxes with the classification model
(:func:`~avloc.applications.pseudo_boxes.clip_pseudo_boxes`; on CUDA with ``gpus_per_worker``); commit them as
manifest entries (:func:`~avloc.applications.pseudo_boxes.boxes_to_entries`) into the entry's part, written
atomically. With the same torch thread count (``threads_per_worker`` 0: this process's ``--threads``) the Ray
path writes the same parts and OUT, byte for byte, as the sequential one; on a GPU the scores agree to float
rounding. The run holds a lock beside OUT (``.OUT.avloc-run.lock``): a second run on the same OUT fails at once.

**Files next to OUT**:

* ``OUT``: the pseudo-box manifest, its entries in IN's order, written atomically once every entry has run;
* ``OUT.run.json``: the run record (the ``run.json`` format, :mod:`avloc.formats.runfile`, tool
  ``avloc pseudo-boxes``, one input per entry of IN, ``input`` = the entry's id), rewritten atomically at the
  start, after every entry and at the end; every run on OUT rewrites it, and it stays after the run;
* ``OUT.parts/``: the work area. ``config.json`` holds what the results depend on (model, the digest of its
  content ``model_sha256``, IN, OUT's folder, ``top_k``, ``threshold``, ``connectivity``); ``ID-HASH.json`` holds
  one finished entry
  (``{"source": IN's entry, "entries": [its pseudo-box entries]}``), written atomically when it finishes.

**Resuming**: without ``force`` an entry whose part holds the same source entry is skipped (an entry edited in
IN is redone), and so is one whose part is damaged or was edited into entries the manifest checks refuse; a work
area of another configuration is refused ("pass --force"), one made by another content of the same model (a
checkpoint saved again at the same path) is emptied and every entry redone. When no entry failed, OUT is
assembled and ``OUT.parts/`` removed, so the next run on OUT needs ``--force`` as before. When some failed, OUT
is assembled from the others (exit 2) and ``OUT.parts/`` is kept; its ``written.json`` lists the sha256 of every
OUT it wrote (recorded before OUT is replaced, so a run killed at any point still knows its OUT). Re-running the
same command then redoes only the failed entries and replaces that OUT. Any other existing OUT is never replaced
without ``force``; ``force`` removes ``OUT.parts/`` and redoes every entry. A manifest without any pseudo box
(every map flat) is not written: the run fails with that reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avloc.applications.models import ModelSpec
from avloc.applications.pseudo_boxes import PseudoBoxConfig, boxes_to_entries, clip_pseudo_boxes, decode_entry
from avloc.applications.runner import Done, Existing, Found, Item, Outcome, RunnerConfig, check_backend, run
from avloc.errors import ConfigError, DataError, OutputExistsError

if TYPE_CHECKING:
    from avloc.methods.classif import Classif, ClassifConfig

log = logging.getLogger("avloc")

TOOL = "avloc pseudo-boxes"
PARTS_SUFFIX = ".parts"
RUN_SUFFIX = ".run.json"
LOCK_SUFFIX = ".avloc-run.lock"
_CONFIG = "config.json"
_WRITTEN = "written.json"


@dataclass
class PseudoBoxRun:
    """What a run did: each entry's outcome, the pseudo boxes in OUT, whether OUT was written."""

    outcomes: list[Outcome]
    boxes: int
    written: bool
    seconds: float

    @property
    def clips_per_second(self) -> float:
        done = sum(o.status == "done" for o in self.outcomes)
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
    """Create the work area for ``key``, or check that the one there is for ``key`` (module doc: refused when made
    with another configuration; emptied of its parts when made by another content of the same model)."""
    from avloc.formats.atomic import write_text_atomic

    if force and parts.exists():
        shutil.rmtree(parts)
    have = _read_json(parts / _CONFIG) if parts.exists() else None
    if not isinstance(have, dict):
        if parts.exists() and any(parts.iterdir()):
            raise DataError(f"{parts}: not a pseudo-boxes work area (no readable {_CONFIG}); "
                            "pass --force to replace it")
        parts.mkdir(parents=True, exist_ok=True)
        write_text_atomic(parts / _CONFIG, json.dumps(key, indent=1, sort_keys=True) + "\n")
        return
    for k, v in key.items():
        if k != "model_sha256" and have.get(k) != v:
            raise ConfigError(f"{parts} holds results made with {k}={have.get(k)!r}, not {v!r}; "
                              "pass --force to redo every entry")
    if have.get("model_sha256") != key["model_sha256"]:
        log.info("%s: made by another content of %s (a checkpoint saved again at the same path?); every entry is "
                 "redone", parts, key["model"])
        for f in parts.iterdir():
            if f.name not in (_CONFIG, _WRITTEN):
                f.unlink()
        write_text_atomic(parts / _CONFIG, json.dumps(key, indent=1, sort_keys=True) + "\n")


def _part_state(path: Path, entry: dict[str, Any]) -> Existing:
    """A part complete, made from ``entry`` and holding valid manifest entries: ``COMPLETE`` (its entries as the
    payload); damaged or edited since it was written: ``STALE`` (redone, never copied into OUT unchecked)."""
    from avloc.formats.manifest import entry_problems

    if not path.exists():
        return Existing(Found.NOTHING)
    doc = _read_json(path)
    if not (isinstance(doc, dict) and isinstance(doc.get("entries"), list)):
        return Existing(Found.STALE, f"{path} is damaged")
    if doc.get("source") != entry:
        return Existing(Found.STALE, "the entry changed in the manifest")
    problems = [q for x in doc["entries"] for q in (entry_problems(x) if isinstance(x, dict) else ["not an object"])]
    if problems:
        log.warning("%s: %s; the entry is redone", path, problems[0])
        return Existing(Found.STALE, f"{path.name}: {problems[0]}")
    return Existing(Found.COMPLETE, payload=list(doc["entries"]))


def load_classif(name: str, device: str = "cpu") -> Classif:
    """The classification model ``name`` (checkpoint or zoo name) in eval mode; :class:`ConfigError` if it is not one."""
    from avloc.methods.classif import Classif

    model, _ = ModelSpec(name, device=device).load()
    if not isinstance(model, Classif):
        raise ConfigError(f"{name}: pseudo boxes need a classification model (method 'classif'), got {model.name!r}")
    return model.eval()


@dataclass
class PseudoBoxJob:
    """``avloc pseudo-boxes`` of one manifest entry as a runner job (module doc); items carry the entry."""

    spec: ModelSpec
    cfg: PseudoBoxConfig
    model_cfg: ClassifConfig
    manifest: Path  # resolved: the Ray workers' working folder may differ
    out_dir: Path  # resolved
    parts: Path
    tool: str = TOOL
    noun: str = "entries"
    unit: str = "entry"
    per_worker: int = 1
    preloaded: Classif | None = None  # the driver's model (sequential path; never pickled)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "preloaded": None}

    def subject(self, item: Item) -> str:
        return f"entry {item.input!r}"

    def done_line(self, o: Outcome) -> str:
        return f"entry {o.item.input!r}: {len(o.payload or [])} pseudo box(es) in {o.record.seconds or 0.0:.2f} s"

    def existing(self, item: Item) -> Existing:
        return _part_state(_part_path(self.parts, item.input), item.data)

    def load(self) -> Classif:
        model, self.preloaded = self.preloaded or load_classif(str(self.spec.name), self.spec.device), None
        return model

    def decode(self, item: Item) -> Iterator[Any]:
        yield decode_entry(self.model_cfg, self.manifest, item.data)  # one short clip: decoded whole

    def infer(self, worker: Classif, item: Item, pieces: Iterator[Any]) -> tuple[list[Any], tuple[int, int]]:
        clip = next(pieces)
        dev = self.spec.device
        return clip_pseudo_boxes(worker, clip.frames.to(dev), clip.audio.to(dev), self.cfg), clip.hw

    def commit(self, item: Item, inferred: tuple[list[Any], tuple[int, int]]) -> Done:
        from avloc.formats.atomic import write_text_atomic

        boxes, hw = inferred
        new = boxes_to_entries(item.data, boxes, hw, self.model_cfg, self.cfg, self.manifest, self.out_dir)
        write_text_atomic(_part_path(self.parts, item.input),
                          json.dumps({"source": item.data, "entries": new}, allow_nan=False) + "\n")
        return Done(payload=new)


def run_pseudo_boxes(
    model_name: str,
    manifest: str | Path,
    out: str | Path,
    cfg: PseudoBoxConfig,
    batch: RunnerConfig,
    limit: int | None = None,
    command: list[str] | None = None,
) -> PseudoBoxRun:
    """Pseudo boxes for every entry of ``manifest`` into the manifest ``out`` (module doc)."""
    from avloc.io.outputs import HeldLock

    src, dst = Path(manifest), Path(out)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with HeldLock(dst.with_name(f".{dst.name}{LOCK_SUFFIX}"), f"{dst}: another avloc pseudo-boxes run is writing it"):
        check_out(dst, batch.force)  # before loading anything
        entries = read_manifest_entries(src, limit)
        check_backend(batch)
        model = load_classif(model_name)  # checked before anything is written; its config serves the decode step
        spec = ModelSpec(model_name, device="cuda" if batch.gpus_per_worker else "cpu")
        key = {"model": model_name, "model_sha256": spec.digest(), "manifest": str(src.resolve()),
               "out_dir": str(dst.parent.resolve()), **asdict(cfg)}
        parts = parts_dir(dst)
        _open_parts(parts, key, batch.force)
        job = PseudoBoxJob(spec, cfg, model.cfg, src.resolve(), dst.parent.resolve(), parts,
                           preloaded=None if batch.workers else model)
        del model
        items = [Item(str(e["id"]), e) for e in entries]
        t0 = time.perf_counter()
        outcomes = run(job, items, batch, run_file(dst), list(command if command is not None else sys.argv),
                       {**key, "limit": limit})
        return _finish(dst, parts, src, outcomes, time.perf_counter() - t0)


def read_manifest_entries(src: Path, limit: int | None) -> list[dict[str, Any]]:
    from avloc.formats.manifest import read_manifest

    entries = read_manifest(src)
    return entries[:limit] if limit else entries


def _finish(dst: Path, parts: Path, src: Path, outcomes: list[Outcome], seconds: float) -> PseudoBoxRun:
    """Assemble OUT from the finished entries (module doc) and say what is left to do."""
    results = [o.payload or [] for o in outcomes]
    boxes = sum(len(r) for r in results)
    failed = any(o.status == "failed" for o in outcomes)
    if boxes:
        _assemble(dst, parts, results, keep_parts=failed)
    if not boxes and not failed:
        raise DataError(f"no pseudo box from {src}: every attention map was flat")
    if failed:
        log.info("%s: %s; re-run the same command to retry the failed entries (finished ones are kept in %s)",
                 TOOL, f"wrote {dst} without them" if boxes else f"{dst} not written (no pseudo box)", parts)
    return PseudoBoxRun(outcomes, boxes, bool(boxes), seconds)
