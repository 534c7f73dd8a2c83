"""The in-memory Python API: ``avloc.localize(...) -> Result`` and ``avloc.load_results(dir)``.

``localize`` runs :func:`avloc.inference.pipeline.analyse_video` and writes nothing unless asked
(:meth:`Result.save`, :meth:`Result.overlay`). An array input (frames ``(T, H, W, 3)`` uint8 at
``video_fps`` plus an optional mono audio array) goes through the same stages as a file, read from memory
(:class:`avloc.inference.decode.ArrayVideo`: no encoding round trip).

``load_results(dir)`` reads a finished run back through the one reader of ``NAME.avloc.json``
(:func:`avloc.formats.localize.read_document`): a collection's ``DIR/run.json`` (its done and skipped inputs,
in order), or every ``NAME.avloc.json`` of a folder, or one such file; each with its heatmaps when
``NAME.heatmaps.npz`` is there.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avloc.errors import ConfigError, DataError
from avloc.formats.localize import Box, FrameRecord, LocalizeDocument, Source, read_document


@dataclass
class Result:
    """One video's localization: its document (typed frame records, :mod:`avloc.formats.localize`) and the
    heatmaps."""

    document: LocalizeDocument
    maps: np.ndarray | None = field(repr=False)  # (n, H, W) float16 full-frame heatmaps; None without heatmaps.npz
    analysis: Any = field(default=None, repr=False)  # the VideoAnalysis behind save() and overlay()
    sheet: Path | None = field(default=None, repr=False)  # the contact sheet of a loaded result

    @property
    def input(self) -> str | None:
        return self.document.input.get("path")

    @property
    def frames(self) -> list[FrameRecord]:
        """The per-frame records (time, peak, boxes, on-screen, sources / classes where the method gives them)."""
        return list(self.document.frames)

    @property
    def times(self) -> np.ndarray:
        return np.array(self.document.times, np.float64)  # (n,) s

    @property
    def boxes(self) -> list[tuple[Box, ...]]:
        return [f.boxes for f in self.document.frames]

    @property
    def sources(self) -> list[tuple[Source, ...] | None]:
        return [f.sources for f in self.document.frames]

    @property
    def onscreen(self) -> list[bool | None]:
        return [f.onscreen for f in self.document.frames]

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.document.summary)

    def to_json(self, indent: int | None = 1) -> str:
        return self.document.to_json(indent)

    def __repr__(self) -> str:
        s = self.document.summary
        on = s.get("onscreen_fraction")
        heard = _top_heard(self.document)
        return (f"Result({self.input!r}, {s['analysed_frames']} frames, on-screen "
                f"{'-' if on is None else f'{on:.0%}'}, model {self.document.model.get('name')!r}"
                f"{', heard ' + ', '.join(heard) if heard else ''})")

    def _repr_html_(self) -> str:
        """A notebook's view: the summary, the heard classes and the contact sheet (when there is one)."""
        from avloc.inference.render import png_data_url

        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.document.summary.items())
        heard = ", ".join(_top_heard(self.document)) or "-"
        img = None
        if self.analysis is not None:
            from avloc.inference.render import contact_sheet

            img = png_data_url(contact_sheet(self.analysis.thumbs, self.analysis.cfg.sheet_columns))
        elif self.sheet is not None and self.sheet.is_file():
            img = png_data_url(self.sheet)
        pic = f'<img src="{img}" style="max-width:100%">' if img else ""
        return (f"<div><b>avloc result</b>: {html.escape(str(self.input))}<table>{rows}"
                f"<tr><th>heard</th><td>{html.escape(heard)}</td></tr></table>{pic}</div>")

    def save(self, out_dir: str | Path, force: bool = False) -> dict[str, Path]:
        """Write the outputs its configuration asks for into ``out_dir`` (as ``avloc localize``); their paths."""
        if self.analysis is None:
            raise ConfigError("a loaded result is already saved (its files are where load_results found them)")
        from avloc.inference.pipeline import write_outputs

        res = write_outputs(self.analysis, out_dir, force=force)
        return res.outputs

    def overlay(self, path: str | Path) -> Path:
        """Write the overlay video (heatmap, boxes, banner over the source, with its audio) to ``path``."""
        if self.analysis is None:
            raise ConfigError("overlay() needs a result of avloc.localize (a loaded one has no decoded source)")
        from avloc.formats.atomic import atomic_path
        from avloc.inference.pipeline import write_overlay_video

        with atomic_path(path, suffix=".mp4") as tmp:
            write_overlay_video(self.analysis, tmp)
        return Path(path)


def _top_heard(doc: LocalizeDocument, top: int = 3) -> list[str]:
    total: dict[str, float] = {}
    for f in doc.frames:
        for label, score in f.heard().items():
            total[label] = total.get(label, 0.0) + score
    return sorted(total, key=lambda k: -total[k])[:top]


def localize(
    source: str | Path | np.ndarray,
    model: Any = None,
    fps: float = 5.0,
    *,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    video_fps: float | None = None,
    audio_tagger: str | Path | None = None,
    **options: Any,
) -> Result:
    """Localize the sounding objects of one video, in memory.

    ``source``: a video file, or frames ``(T, H, W, 3)`` uint8 at ``video_fps`` with ``audio`` ``(N,)`` at
    ``sample_rate`` (module doc). ``model``: a :class:`~avloc.methods.base.LocalizationMethod`, a checkpoint,
    zoo or method name (default: :data:`avloc.inference.DEFAULT_MODEL`), ignored with ``visual_only=True``.
    ``fps``: analysed frames per second; ``options``: any other :class:`~avloc.inference.LocalizeConfig`
    field (``visual_only``, ``smoothing``, ``save_heatmaps``, ``overlay``, ``device``, ...).
    """
    from dataclasses import fields

    from avloc.inference import DEFAULT_MODEL, LocalizeConfig
    from avloc.inference.decode import ArrayVideo
    from avloc.inference.pipeline import analyse_video

    known = {f.name for f in fields(LocalizeConfig)}
    bad = sorted(set(options) - known)
    if bad:
        raise ConfigError(f"unknown option(s) {bad}; valid: {sorted(known)}")
    cfg = LocalizeConfig(fps=fps, **options)
    media: Path | ArrayVideo
    if isinstance(source, np.ndarray):
        if video_fps is None:
            raise ConfigError("an array input needs video_fps (the frames' rate)")
        media = ArrayVideo(source, video_fps, audio, sample_rate if audio is not None else None)
    elif isinstance(source, str | Path):
        media = Path(source)
    else:
        raise ConfigError(f"source must be a video path or a (T, H, W, 3) uint8 array, got {type(source).__name__}")
    name: str | None = None
    if cfg.visual_only:
        model = None
    elif model is None or isinstance(model, str | Path):
        from avloc.methods.zoo import load_model

        name = str(model or DEFAULT_MODEL)
        model = load_model(name, device=cfg.device)
    else:
        name = model.name or type(model).__name__
    tagger = None
    if audio_tagger is not None:
        from avloc.inference.semantic import SemanticMapper

        tagger = SemanticMapper(audio_tagger, device=cfg.device)
    analysis = analyse_video(media, model, cfg, model_name=name, tagger=tagger, progress=False)
    return Result(analysis.document({}), np.asarray(analysis.maps), analysis)


def _load_one(json_path: Path) -> Result:
    doc = read_document(json_path)  # refuses output names that leave the folder
    maps = None
    name = doc.outputs.get("heatmaps")
    if name and (json_path.parent / name).is_file():
        maps = _load_maps(json_path.parent / name)
    sheet = doc.outputs.get("sheet")
    return Result(doc, maps, sheet=None if sheet is None else json_path.parent / sheet)


def _load_maps(path: Path) -> np.ndarray:
    """``maps`` of a ``NAME.heatmaps.npz`` (no pickles); :class:`DataError` when it is not such an archive."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            maps = np.asarray(z["maps"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable avloc heatmaps archive ({e})") from None
    if maps.ndim != 3 or maps.dtype.kind != "f":
        raise DataError(f"{path}: maps must be (n, H, W) floats, got {maps.shape} {maps.dtype}")
    return maps


def load_results(path: str | Path) -> list[Result]:
    """The results of a finished run (module doc), in the run's order."""
    from avloc.formats.localize import OUTPUT_SUFFIXES
    from avloc.formats.runfile import RUN_FILE, read_run

    p = Path(path)
    if p.is_file():
        return [_load_one(p)]
    run = read_run(p) if (p / RUN_FILE).is_file() else None  # output names checked: file names in the folder
    if run is not None:
        return [_load_one(p / r.outputs["json"]) for r in run.inputs
                if r.status in ("done", "skipped") and "json" in r.outputs]
    found = sorted(p.glob(f"*{OUTPUT_SUFFIXES['json']}"))
    if not found:
        raise DataError(f"{p}: no run.json and no *{OUTPUT_SUFFIXES['json']} output here")
    return [_load_one(f) for f in found]
