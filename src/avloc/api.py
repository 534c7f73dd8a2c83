"""The in-memory Python API: ``avloc.localize(...) -> Result`` and ``avloc.load_results(dir)``.

``localize`` runs :func:`avloc.inference.pipeline.analyse_video` and writes nothing unless asked
(:meth:`Result.save`, :meth:`Result.overlay`). An array input (frames ``(T, H, W, 3)`` uint8 plus an
optional mono audio array) is first encoded to a temporary H.264/AAC mp4 (constant quality ``crf=0``; the
picture still goes through yuv420p, so colours are subsampled as in any mp4) that lives as long as the
result: the pipeline has one decoding path, the same the CLI uses, so an array and the same clip as a file
give the same answer.

``load_results(dir)`` reads a finished run back: a collection's ``DIR/run.json`` (its done and skipped
inputs, in order), or every ``NAME.avloc.json`` of a folder, or one such file; each with its heatmaps when
``NAME.heatmaps.npz`` is there.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avloc.errors import ConfigError, DataError


@dataclass
class Result:
    """One video's localization: the ``NAME.avloc.json`` document (``schema.json``) and the heatmaps."""

    document: dict[str, Any]
    maps: np.ndarray | None  # (n, H, W) float16 full-frame heatmaps; None when loaded without heatmaps.npz
    analysis: Any = field(default=None, repr=False)  # the VideoAnalysis behind save() and overlay()
    _scratch: Any = field(default=None, repr=False)  # the temporary folder of an array input

    @property
    def input(self) -> str | None:
        return self.document["input"].get("path")

    @property
    def frames(self) -> list[dict[str, Any]]:
        """The per-frame records (time, peak, boxes, on-screen, classes / sources where the method gives them)."""
        return list(self.document["frames"])

    @property
    def times(self) -> np.ndarray:
        return np.array([f["time"] for f in self.document["frames"]], np.float64)  # (n,) s

    @property
    def boxes(self) -> list[list[dict[str, Any]]]:
        return [f["boxes"] for f in self.document["frames"]]

    @property
    def classes(self) -> list[list[dict[str, Any]] | None]:
        return [f.get("classes") for f in self.document["frames"]]

    @property
    def sources(self) -> list[list[dict[str, Any]] | None]:
        return [f.get("sources") for f in self.document["frames"]]

    @property
    def onscreen(self) -> list[bool | None]:
        return [f["onscreen"] for f in self.document["frames"]]

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.document["summary"])

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.document, indent=indent, allow_nan=False)

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
        from avloc.inference.pipeline import write_overlay_video
        from avloc.io.atomic import atomic_path

        with atomic_path(path, suffix=".mp4") as tmp:
            write_overlay_video(self.analysis, tmp)
        return Path(path)


def _write_array_input(folder: Path, frames: np.ndarray, fps: float, audio: np.ndarray | None, sample_rate: int) -> Path:
    from avloc.io.media import write_video

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ConfigError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if audio is not None and audio.ndim != 1:
        raise ConfigError(f"audio must be mono (N,) float, got shape {audio.shape}")
    path = folder / "array.mp4"
    write_video(path, iter(frames), fps, None if audio is None else audio.astype(np.float32), sample_rate, crf=0)
    return path


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
    from avloc.inference.pipeline import analyse_video

    known = {f.name for f in fields(LocalizeConfig)}
    bad = sorted(set(options) - known)
    if bad:
        raise ConfigError(f"unknown option(s) {bad}; valid: {sorted(known)}")
    cfg = LocalizeConfig(fps=fps, **options)
    cfg.validate()
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
    scratch = None
    if isinstance(source, np.ndarray):
        if video_fps is None:
            raise ConfigError("an array input needs video_fps (the frames' rate)")
        scratch = tempfile.TemporaryDirectory(prefix="avloc-array-")
        path = _write_array_input(Path(scratch.name), source, video_fps, audio, sample_rate)
    else:
        path = Path(source)
    analysis = analyse_video(path, model, cfg, model_name=name, tagger=tagger, progress=False)
    doc = analysis.document({})
    return Result(doc, np.asarray(analysis.maps), analysis, scratch)


def _load_one(json_path: Path) -> Result:
    try:
        doc = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{json_path}: not a readable avloc JSON output ({e})") from None
    maps = None
    name = doc.get("outputs", {}).get("heatmaps")
    if name and Path(name).name != name:  # outputs are file names in the JSON's folder: never read outside it
        raise DataError(f"{json_path}: outputs.heatmaps {name!r} is not a file name in {json_path.parent}")
    if name and (json_path.parent / name).is_file():
        with np.load(json_path.parent / name) as z:
            maps = z["maps"]
    return Result(doc, maps)


def load_results(path: str | Path) -> list[Result]:
    """The results of a finished run (module doc), in the run's order."""
    from avloc.inference.batch import RUN_FILE, read_run
    from avloc.inference.pipeline import OUTPUT_SUFFIXES

    p = Path(path)
    if p.is_file():
        return [_load_one(p)]
    if (p / RUN_FILE).is_file():
        run = read_run(p)
        names = [s["outputs"]["json"] for s in run["inputs"]
                 if s["status"] in ("done", "skipped") and "json" in s.get("outputs", {})]
        outside = [n for n in names if not isinstance(n, str) or Path(n).name != n]
        if outside:
            raise DataError(f"{p / RUN_FILE}: outputs.json {outside[0]!r} is not a file name in {p}")
        return [_load_one(p / n) for n in names]
    found = sorted(p.glob(f"*{OUTPUT_SUFFIXES['json']}"))
    if not found:
        raise DataError(f"{p}: no run.json and no *{OUTPUT_SUFFIXES['json']} output here")
    return [_load_one(f) for f in found]
