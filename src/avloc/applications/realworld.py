"""Score an ``avloc localize`` configuration on a real-footage set (``realclips`` protocol).

Runs the very pipeline users run (:func:`avloc.inference.localize_video`, heatmaps saved, no overlay) on each
clip, takes the analysed frame nearest each annotated time, and scores the maps and on-screen probabilities
through :func:`avloc.engine.evaluate.evaluate_predictions` -- no second scorer.
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
from avloc.formats.localize import FrameRecord
from avloc.inference.config import LocalizeConfig
from avloc.methods.base import LocalizationMethod

log = logging.getLogger(__name__)

PROTOCOL = "realclips"


@dataclass
class RealClipsRun:
    """Per-frame predictions of one configuration on a set, and their scores."""

    preds: dict[str, np.ndarray] = field(default_factory=dict)
    onscreen: dict[str, float] = field(default_factory=dict)
    records: dict[str, FrameRecord] = field(default_factory=dict)  # the record of each annotated frame
    scores: dict[str, Any] = field(default_factory=dict)


def run_on_clips(
    clips: Sequence[AnnotatedClip],
    model: LocalizationMethod | None,
    cfg: LocalizeConfig,
    work_dir: str | Path,
    tagger: Any = None,
) -> RealClipsRun:
    """Localize every clip with ``cfg`` (overlay off, heatmaps on) and score it (module doc).

    ``onscreen_confidence`` of ``None`` (``--visual-only``) counts as "on-screen" (probability 1), the only
    answer a mode without audio can give.
    """
    from avloc.inference.pipeline import localize_video

    cfg = replace(cfg, overlay=False, save_heatmaps=True, force=True)
    run = RealClipsRun()
    for i, clip in enumerate(clips):
        log.info("realclips %d/%d: %s", i + 1, len(clips), clip.path.name)
        res = localize_video(clip.path, model, cfg, work_dir, model_name=None, tagger=tagger, progress=False)
        with np.load(res.outputs["heatmaps"]) as z:
            times, maps = np.asarray(z["times"]), np.asarray(z["maps"], np.float32)
        for f in clip.frames:
            k = int(np.argmin(np.abs(times - f.t)))
            fid = clip.frame_id(f)
            run.preds[fid] = maps[k]
            conf = res.records[k].onscreen_confidence
            run.onscreen[fid] = 1.0 if conf is None else float(conf)
            run.records[fid] = res.records[k]
    targets = [t for c in clips for t in c.targets()]
    run.scores = evaluate_predictions(run.preds, targets, PROTOCOL, onscreen=run.onscreen)
    return run
