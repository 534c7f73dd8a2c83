"""Score an ``avloc localize`` configuration on a real-footage set (``realclips`` protocol).

Runs the very pipeline users run (:func:`avloc.inference.localize_video`, heatmaps saved, no overlay) on each
clip, takes the analysed frame nearest each annotated time, and scores the maps, the on-screen probabilities
and what the frame's record says (boxes, peak, speaker, heard sources and their own maps) through
:func:`avloc.engine.evaluate.evaluate_predictions` -- no second scorer. Everything is read from the records and
the heatmaps file, so any configuration (any method, any on-screen model or speaker choice) is scored alike.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from avloc.data.realclips import AnnotatedClip
from avloc.engine.evaluate import evaluate_predictions
from avloc.errors import DataError
from avloc.formats.localize import FrameRecord
from avloc.inference.config import LocalizeConfig
from avloc.io.media import probe
from avloc.methods.base import LocalizationMethod
from avloc.metrics.realworld import FramePrediction

log = logging.getLogger(__name__)

PROTOCOL = "realclips"


@dataclass
class RealClipsRun:
    """Per-frame predictions of one configuration on a set, and their scores."""

    preds: dict[str, np.ndarray] = field(default_factory=dict)
    onscreen: dict[str, float] = field(default_factory=dict)
    records: dict[str, FrameRecord] = field(default_factory=dict)  # the record of each annotated frame
    frames: dict[str, FramePrediction] = field(default_factory=dict)  # the record, normalised
    scores: dict[str, Any] = field(default_factory=dict)


def frame_prediction(rec: FrameRecord, size: tuple[int, int], source_maps: dict[str, np.ndarray] | None) -> FramePrediction:
    """A record in source pixels of a ``size`` = (W, H) picture -> :class:`FramePrediction` (normalised)."""
    w, h = size
    boxes = np.array([[b.x1 / w, b.y1 / h, b.x2 / w, b.y2 / h] for b in rec.boxes], np.float64).reshape(-1, 4)
    sp = rec.speaker.box if rec.speaker is not None else None
    return FramePrediction(
        peak=(rec.peak.x / w, rec.peak.y / h), boxes=boxes,
        speaker=None if sp is None else (sp.x1 / w, sp.y1 / h, sp.x2 / w, sp.y2 / h),
        sources=tuple((s.label, s.score) for s in rec.sources or ()), source_maps=source_maps,
    )


def _source_maps(z: Any) -> dict[int, dict[str, np.ndarray]] | None:
    """Analysed frame -> label -> own map of each grounded heard source (``None``: the file has no source maps)."""
    if "source_maps" not in z:
        return None
    out: dict[int, dict[str, np.ndarray]] = {}
    for k, label, m in zip(np.asarray(z["source_frames"]), np.asarray(z["source_labels"]), np.asarray(z["source_maps"]),
                           strict=True):
        out.setdefault(int(k), {})[str(label)] = np.asarray(m, np.float32)
    return out


def localize_clips(
    clips: Sequence[AnnotatedClip],
    model: LocalizationMethod | None,
    cfg: LocalizeConfig,
    work_dir: str | Path,
    tagger: Any = None,
) -> RealClipsRun:
    """Localize every clip with ``cfg`` (overlay off, heatmaps on) and keep the analysed frame nearest each
    annotated time (module doc); nothing is scored.

    ``onscreen_confidence`` of ``None`` (``--visual-only``) counts as "on-screen" (probability 1), the only
    answer a mode without audio can give.
    """
    from avloc.inference.pipeline import localize_video

    cfg = replace(cfg, overlay=False, save_heatmaps=True, force=True)
    run = RealClipsRun()
    for i, clip in enumerate(clips):
        log.info("realclips %d/%d: %s", i + 1, len(clips), clip.path.name)
        res = localize_video(clip.path, model, cfg, work_dir, model_name=None, tagger=tagger, progress=False)
        info = probe(clip.path)  # the display size the records' pixels refer to (the document's "input")
        size = (int(info.width or 0), int(info.height or 0))
        with np.load(res.outputs["heatmaps"]) as z:
            times, maps, own = np.asarray(z["times"]), np.asarray(z["maps"], np.float32), _source_maps(z)
        for f in clip.frames:
            k = int(np.argmin(np.abs(times - f.t)))
            fid = clip.frame_id(f)
            rec = res.records[k]
            run.preds[fid] = maps[k]
            run.onscreen[fid] = 1.0 if rec.onscreen_confidence is None else float(rec.onscreen_confidence)
            run.records[fid] = rec
            run.frames[fid] = frame_prediction(rec, size, None if own is None else own.get(k, {}))
    return run


def score_run(run: RealClipsRun, clips: Sequence[AnnotatedClip]) -> dict[str, Any]:
    """The ``realclips`` scores of ``run`` on the annotated frames of ``clips`` (a subset of the run's clips)."""
    targets = [t for c in clips for t in c.targets()]
    if not any((t.scored and len(t.boxes)) or t.onscreen is not None for t in targets):
        raise DataError("realclips: nothing to score (no frame with 'scored': true and a box, nor an on/off-screen label)")
    ids = {t.id for t in targets}
    return evaluate_predictions({k: v for k, v in run.preds.items() if k in ids}, targets, PROTOCOL,
                                onscreen=run.onscreen, frames=run.frames)


def run_on_clips(
    clips: Sequence[AnnotatedClip],
    model: LocalizationMethod | None,
    cfg: LocalizeConfig,
    work_dir: str | Path,
    tagger: Any = None,
) -> RealClipsRun:
    """:func:`localize_clips` then :func:`score_run` on all of them (``run.scores``)."""
    run = localize_clips(clips, model, cfg, work_dir, tagger)
    run.scores = score_run(run, clips)
    return run
