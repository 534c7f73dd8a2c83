"""Collections of videos: ``avloc localize INPUTS... --out DIR [--workers N]``, on the one runner.

**Inputs** (:func:`collect_inputs`): video files, folders of videos, a ``.txt`` of paths (one a line, ``#``
comments, relative to the list's folder) or a ``.jsonl`` manifest whose entries carry ``path`` or ``video``
(relative to the manifest's folder). avloc's own outputs are never inputs: a folder's ``*.avloc.mp4`` overlays
(and hidden or temporary files) are left out and counted in the summary, so ``avloc localize DIR --out DIR``
does not take its own overlays on a re-run; an explicit input with an output's name is refused.

**The job** (:class:`LocalizeJob`, run by :func:`avloc.applications.runner.run`, which documents resuming,
isolation, the record and the Ray path):

* decode: probe and check the video, then its frames at the analysis rate with their audio windows in
  batches of ``cfg.batch_size`` (:func:`~avloc.inference.pipeline.decode_video`, streamed);
* infer: the output set's transaction is opened (:class:`avloc.io.outputs.OutputTransaction`: the stem's lock,
  a temporary folder) and the model analyses the frames as they come, its maps spooled into that folder
  (:func:`~avloc.inference.pipeline.analyse_video`); with ``--batch-across-videos`` on a Ray worker, the
  videos it runs at once share the model's batches (:class:`avloc.inference.gang.GangedSource`);
* commit: overlay, heatmaps, sheet and JSON written into the transaction, then moved into place, JSON last
  (:func:`~avloc.inference.write.write_into`). The JSON records ``model.sha256``, the digest of the model's
  content (:meth:`avloc.applications.models.ModelSpec.digest`).

**What is there** (:meth:`LocalizeJob.existing`): a set is *ours* when its valid JSON lists its files or the
folder's previous ``run.json`` recorded them for that stem. Complete, same configuration and model content:
skipped. Ours but partial (no JSON, an invalid one, a listed file missing, an interrupted commit) or made by
another model content: redone. Complete with another configuration (fps, model name, outputs asked for):
refused without ``--force``. A file avloc did not write with an output's name (a user's ``clip.sheet.png``
with no JSON listing it): an input that would run is refused with one line naming it, also with ``--force``
(the transaction checks it again under the stem's lock); a complete set beside it is skipped as usual.

**The folder** is locked for the run (``DIR/.avloc-run.lock``): a second run into it fails at once naming the
first. ``DIR/run.json`` is the run record (:mod:`avloc.formats.runfile`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from avloc.applications.models import ModelSpec
from avloc.applications.runner import Done, Existing, Found, Item, Outcome, RunnerConfig, check_backend, run
from avloc.errors import DataError, describe_error
from avloc.formats.localize import OUTPUT_SUFFIXES, LocalizeDocument, output_paths, read_document, stem_of
from avloc.formats.runfile import RUN_FILE
from avloc.inference.config import LocalizeConfig

log = logging.getLogger("avloc")

TOOL = "avloc localize"
#: the collection's lock in DIR (hidden: never an input, never a stem's lock ``.STEM.avloc.lock``)
COLLECTION_LOCK = ".avloc-run.lock"
#: file extensions picked up when an INPUT is a folder
VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv", ".ts", ".3gp"}
#: configuration keys that may differ between a run and the outputs it skips
_FREE_KEYS = {"force", "device"}


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


@dataclass
class Inputs:
    """What :func:`collect_inputs` found."""

    files: list[Path] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (input as given, one-line reason)
    ignored: list[Path] = field(default_factory=list)  # avloc's own outputs in the folders given: never inputs

    def note(self) -> list[str]:
        """The summary's line about the outputs left out, if any."""
        if not self.ignored:
            return []
        return [f"left out {len(self.ignored)} file(s) that avloc wrote (outputs are never inputs), "
                f"e.g. {self.ignored[0]}"]


def _folder_videos(p: Path, found: Inputs) -> list[Path]:
    from avloc.io.outputs import is_temporary_name

    videos: list[Path] = []
    for f in sorted(p.iterdir()):
        if f.suffix.lower() not in VIDEO_EXTENSIONS or is_temporary_name(f.name) or not f.is_file():
            continue
        (found.ignored if stem_of(f.name) is not None else videos).append(f)
    return videos


def collect_inputs(inputs: Sequence[str]) -> Inputs:
    """Files as given, folders expanded to their video files (sorted), lists read (module doc).

    Folder expansion leaves out hidden and temporary files (:func:`avloc.io.outputs.is_temporary_name`) and
    avloc's outputs (counted in ``ignored``); an explicit input with an output's name, or inside an avloc
    temporary folder, is refused.
    """
    from avloc.errors import describe_os_error
    from avloc.io.outputs import is_avloc_temporary

    found = Inputs()
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            try:
                videos = _folder_videos(p, found)
            except OSError as e:
                found.errors.append((s, describe_os_error(e)))
                continue
            if not videos:
                found.errors.append((s, f"{p}: folder has no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})"))
            found.files.extend(videos)
        elif is_avloc_temporary(p):
            found.errors.append((s, f"{p}: a temporary file of an interrupted avloc run, not an input "
                                    "(the next run on it removes it)"))
        elif is_input_list(p):
            try:
                found.files.extend(read_input_list(p))
            except (DataError, OSError) as e:
                found.errors.append((s, describe_error(e) or str(e)))
        else:
            found.files.append(p)
    return _refuse_outputs(found)


def _refuse_outputs(found: Inputs) -> Inputs:
    """Explicit (or listed) inputs named like an avloc output are refused: outputs are never inputs."""
    keep = []
    for f in found.files:
        if stem_of(f.name) is not None:
            found.errors.append((str(f), f"{f}: an output of avloc localize, not an input (outputs are never inputs)"))
        else:
            keep.append(f)
    found.files = keep
    return found


# ---------------------------------------------------------------------------------------------
# what is there


def _read(json_path: Path) -> tuple[LocalizeDocument | None, str | None]:
    """The output set's JSON when valid, else ``(None, why)``."""
    if not json_path.exists():
        return None, "no JSON output"
    try:
        return read_document(json_path), None
    except (DataError, OSError) as e:
        return None, describe_error(e)


def listed_names(json_path: Path) -> set[str]:
    """The file names a valid output JSON lists (itself included); empty when it is missing or invalid."""
    doc, _ = _read(json_path)
    return set() if doc is None else {json_path.name, *doc.outputs.values()}


@dataclass(frozen=True)
class Ours:
    """:class:`~avloc.io.outputs.OutputTransaction`'s ``owned``: an existing output is avloc's when the previous
    run recorded it for this stem (``claimed``) or the set's valid JSON lists it (read when asked)."""

    json_path: Path
    claimed: frozenset[str] = frozenset()

    def __call__(self, kind: str, path: Path) -> bool:
        return path.name in self.claimed or path.name in listed_names(self.json_path)


@dataclass(frozen=True)
class VideoInput:
    """A localize item's data: the video, and what the folder says of its output set."""

    path: Path
    claimed: frozenset[str] = frozenset()  # output names the folder's previous run.json recorded for the stem
    interrupted: bool = False  # an interrupted commit of the stem left its temporary folder


def previous_claims(out: Path) -> dict[str, frozenset[str]]:
    """Output names the folder's ``run.json`` recorded per stem (inputs done or skipped); a damaged record
    claims nothing (warned)."""
    from avloc.formats.runfile import read_run

    try:
        rec = read_run(out)
    except DataError as e:
        log.warning("%s; the outputs it recorded are owned only where their JSON lists them", e)
        return {}
    claims: dict[str, frozenset[str]] = {}
    for r in rec.inputs if rec is not None else []:
        if r.status in ("done", "skipped"):
            claims[r.output_stem] = claims.get(r.output_stem, frozenset()) | frozenset(r.outputs.values())
    return claims


def interrupted_stems(out: Path) -> set[str]:
    """Stems whose transaction's temporary folder is in ``out`` (a run killed while writing them)."""
    from avloc.io.outputs import TEMP_TAG

    return {e.name[1: e.name.index(TEMP_TAG)] for e in out.iterdir()
            if e.name.startswith(".") and TEMP_TAG in e.name and e.is_dir()}


# ---------------------------------------------------------------------------------------------
# the job


@dataclass
class _Worker:
    model: Any
    tagger: Any
    gang: Any = None  # GangedSource when the worker batches across videos


@dataclass
class _Analysed:
    tx: Any  # OutputTransaction, begun
    analysis: Any  # VideoAnalysis, maps spooled into tx.dir
    outs: dict[str, Path]


@dataclass
class LocalizeJob:
    """``avloc localize`` of one video as a runner job (module doc)."""

    spec: ModelSpec
    cfg: LocalizeConfig
    out: Path
    model_cfg: Any  # the map source's model config: the preprocessing the decode step needs
    digest: str  # ModelSpec.digest
    per_worker: int = 1
    tool: str = TOOL
    noun: str = "input(s)"
    unit: str = "video"
    #: the model and tagger the driver loaded (sequential path: used once instead of loading again; never pickled)
    preloaded: tuple[Any, Any] | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "preloaded": None}

    @property
    def model_name(self) -> str | None:
        return "object-prior (visual only)" if self.cfg.visual_only else self.spec.name

    def subject(self, item: Item) -> str:
        return item.input

    def done_line(self, o: Outcome) -> str:
        return (f"{o.item.input}: {o.frames} frames in {o.record.seconds or 0.0:.1f} s -> "
                + ", ".join(o.record.outputs.values()))

    def existing(self, item: Item) -> Existing:
        """What an earlier run left for ``item`` (module doc)."""
        assert item.stem is not None
        vid: VideoInput = item.data
        finals = output_paths(item.stem, self.out)
        present = [p for p in finals.values() if p.exists() or p.is_symlink()]
        if not present:
            return Existing(Found.NOTHING)
        if vid.interrupted:  # its transaction puts the set back first, then checks ownership again
            return Existing(Found.STALE, "a killed run was writing its outputs")
        doc, why = _read(finals["json"])
        names = vid.claimed | ({finals["json"].name, *doc.outputs.values()} if doc is not None else set())
        foreign = next((p for p in present if p.name not in names), None)
        note = None if foreign is None else (f"{foreign} exists and avloc did not write it (no {finals['json'].name} "
                                             "lists it): move it away or choose another --out")
        found, why = self._state(finals["json"], vid.path, doc, why, ours=any(p.name in names for p in present))
        return Existing(found, why, dict(doc.outputs) if found is Found.COMPLETE and doc else {}, foreign=note)

    def _state(self, json_path: Path, path: Path, doc: LocalizeDocument | None, why: str | None,
               ours: bool) -> tuple[Found, str | None]:
        """The state of the set of ``path`` (its JSON ``doc`` or why there is none), whoever else's files lie beside
        it; ``ours``: whether any of its files is ours."""
        if doc is None:
            return (Found.STALE, why) if ours else (Found.NOTHING, None)
        missing = [n for n in doc.outputs.values() if not (self.out / n).is_file()]
        if missing:
            return Found.STALE, f"{missing[0]} is missing"
        other = self._made_otherwise(path, doc)
        if other is not None:
            return Found.OTHER, f"{json_path} exists, {other}; pass --force to replace the whole set"
        if doc.model.get("sha256") != self.digest:
            return Found.STALE, ("made by another content of the model (e.g. a checkpoint saved again at the same "
                                 "path)" if doc.model.get("sha256") else "made without the model's digest")
        return Found.COMPLETE, None

    def _made_otherwise(self, path: Path, doc: LocalizeDocument) -> str | None:
        """How a complete set's configuration differs from this run's, or ``None``."""
        from avloc.inference.pipeline import wanted_outputs

        want = set(wanted_outputs(path, self.out, self.cfg))
        if not want <= set(doc.outputs):
            return f"made without {', '.join(sorted(want - set(doc.outputs)))}"
        if doc.model.get("name") != self.model_name:
            return f"made with model {doc.model.get('name')!r}, not {self.model_name!r}"
        for k, v in asdict(self.cfg).items():
            if k in _FREE_KEYS or (k == "window_seconds" and v is None):
                continue
            if k in doc.config and doc.config[k] != v:
                return f"made with {k}={doc.config[k]!r}, not {v!r}"
        return None

    def load(self) -> _Worker:
        from avloc.inference.gang import GangedSource
        from avloc.inference.pipeline import make_source

        model, tagger = self.preloaded if self.preloaded is not None else self.spec.load()
        self.preloaded = None
        gang = GangedSource(make_source(model, self.cfg)) if self.per_worker > 1 else None
        return _Worker(model, tagger, gang)

    def decode(self, item: Item) -> Iterator[Any]:
        """The probe (:class:`~avloc.io.media.MediaInfo`), then lists of ``cfg.batch_size`` frames."""
        from avloc.inference.pipeline import decode_video

        video = decode_video(item.data.path, self.model_cfg, self.cfg)
        yield video.info
        frames = iter(video.frames)
        while chunk := list(islice(frames, self.cfg.batch_size)):
            yield chunk

    def infer(self, worker: _Worker, item: Item, pieces: Iterator[Any]) -> _Analysed:
        from avloc.inference.pipeline import DecodedVideo, analyse_video, wanted_outputs
        from avloc.io.outputs import OutputTransaction

        vid: VideoInput = item.data
        info = next(pieces)  # decoded (and checked) before any output is touched
        outs = wanted_outputs(vid.path, self.out, self.cfg)
        assert item.stem is not None
        tx = OutputTransaction(self.out, item.stem, OUTPUT_SUFFIXES, outs, force=item.replace,
                               owned=Ours(outs["json"], vid.claimed)).begin()
        try:
            decoded = DecodedVideo(vid.path, info, (fr for chunk in pieces for fr in chunk))
            with worker.gang.member() if worker.gang is not None else contextlib.nullcontext():
                analysis = analyse_video(vid.path, worker.model, self.cfg, model_name=self.spec.name,
                                         tagger=worker.tagger, progress=False, scratch=tx.dir, decoded=decoded,
                                         source=worker.gang)
        except BaseException:
            tx.abort()
            raise
        analysis.model_sha256 = self.digest
        return _Analysed(tx, analysis, outs)

    def commit(self, item: Item, a: _Analysed) -> Done:
        from avloc.inference.pipeline import write_into

        try:
            write_into(a.tx, a.analysis, a.outs)
            a.tx.commit()
        except BaseException:
            a.tx.abort()
            raise
        return Done({k: p.name for k, p in a.outs.items()}, frames=len(a.analysis.records))


def localize_job(spec: ModelSpec, cfg: LocalizeConfig, out: Path, batch: RunnerConfig) -> LocalizeJob:
    """The job for this run: the model loaded once here, for its preprocessing and its digest (kept for the
    sequential path; the Ray workers load their own)."""
    from avloc.inference.gang import shareable
    from avloc.inference.pipeline import make_source

    # the Ray workers load their own model on their device: here only its configuration and digest are needed
    model, tagger = (spec if not batch.workers else dataclasses.replace(spec, device="cpu")).load()
    source = make_source(model, cfg)  # --visual-only: the object prior, whose content is hashed
    across = batch.workers > 0 and batch.batch_across_inputs() and shareable(source, tagger)
    digest = spec.digest(source.model if spec.name is None else model)
    job = LocalizeJob(spec, cfg, out, source.model.cfg, digest, per_worker=batch.inputs_per_worker if across else 1)
    if not batch.workers:
        job.preloaded = (model, tagger)
    return job


def _items(found: Inputs, out: Path) -> list[Item]:
    """One item per input: the errors of :func:`collect_inputs`, then the files (an output name taken twice: the
    second refused)."""
    claims, interrupted = previous_claims(out), interrupted_stems(out)
    items = [Item(s, error=e) for s, e in found.errors]
    seen: dict[str, Path] = {}
    for f in found.files:
        if f.stem in seen:
            items.append(Item(str(f), stem=f.stem,
                              error=f"{f}: same output name as {seen[f.stem]}; run it with another --out"))
            continue
        seen[f.stem] = f
        items.append(Item(str(f), VideoInput(f, claims.get(f.stem, frozenset()), f.stem in interrupted), f.stem))
    return items


def run_collection(inputs: Sequence[str], out_dir: str | Path, cfg: LocalizeConfig, spec: ModelSpec,
                   batch: RunnerConfig, command: Sequence[str] | None = None) -> list[Outcome]:
    """Localize every input into ``out_dir`` (module doc); returns each input's outcome, in order."""
    from avloc.io.outputs import HeldLock, check_output_folder

    out = check_output_folder(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with HeldLock(out / COLLECTION_LOCK, f"{out}: another avloc localize run is writing into this folder"):
        found = collect_inputs(inputs)
        check_backend(batch)
        job = localize_job(spec, cfg, out, batch)
        settings = {**asdict(cfg), "model": spec.name, "model_sha256": job.digest, "audio_tagger": spec.tagger}
        return run(job, _items(found, out), batch, out / RUN_FILE, list(command if command is not None else sys.argv),
                   settings, found.note())
