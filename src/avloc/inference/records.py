"""Stage 3 of ``avloc localize``: an analysed frame (:class:`FrameResult`, model output mapped to the whole
frame) -> its typed record (:class:`avloc.formats.localize.FrameRecord`), and the video's document.

Decisions a user reads are made here from what the method gives, the same way for every method:

* **silent** (audio RMS below ``cfg.silence_db``): off-screen with confidence 0, no boxes;
* **on-screen**: the method's own P(on-screen) (``Capability.ONSCREEN``), else the map-contrast statistic
  (:func:`avloc.inference.postprocess.onscreen_statistic`); ``None`` in visual-only mode;
* **boxes**: for methods grounding heard sources, one box per visible instance of each heard source (the
  method's instances, else the top component of the source's own map), labelled with the heard class and
  scored ``P(source on-screen) x instance score``; the same instance heard as two classes ("Speech", "Male
  speech") keeps its best label. Otherwise the method's own boxes, else the combined map's components.
  A frame called off-screen has no boxes (they would point at something the sound does not come from).
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from avloc.formats.localize import (
    SCHEMA_VERSION,
    Box,
    DetectedClass,
    FrameRecord,
    LocalizeDocument,
    Point,
    Source,
    Speaker,
)
from avloc.inference.config import LocalizeConfig
from avloc.inference.postprocess import DB_FLOOR, FrameResult, FrameSource, map_boxes, onscreen_statistic
from avloc.io.media import MediaInfo
from avloc.metrics.ops import peak_points

#: decimals kept in the JSON: pixel coordinates, probabilities and scores, times
PIXEL_DECIMALS, SCORE_DECIMALS, TIME_DECIMALS = 2, 4, 6


def peak_of(m: np.ndarray, src_wh: tuple[int, int]) -> Point:
    """Peak of a full-frame map in source pixels: the centre of its first arg-max cell (:func:`peak_points`)."""
    x, y = peak_points(np.asarray(m)[None])[0]
    return Point(round(float(x) * src_wh[0], PIXEL_DECIMALS), round(float(y) * src_wh[1], PIXEL_DECIMALS))


def _box(xyxy: Any, score: float, **named: Any) -> Box:
    x1, y1, x2, y2 = (round(float(v), PIXEL_DECIMALS) for v in xyxy)
    return Box(x1, y1, x2, y2, round(min(max(float(score), 0.0), 1.0), SCORE_DECIMALS), **named)


def _map_box(m: np.ndarray, src_wh: tuple[int, int], cfg: LocalizeConfig, score: float, **named: Any) -> Box | None:
    """The top connected component of a map as a box (:func:`map_boxes`), or ``None`` for an empty map."""
    found = map_boxes(m, src_wh, cfg, score)
    if not found:
        return None
    b = found[0]
    return _box((b["x1"], b["y1"], b["x2"], b["y2"]), b["score"], **named)


def onscreen_of(r: FrameResult, cfg: LocalizeConfig) -> tuple[bool | None, float | None]:
    """The frame's on-screen decision and P(on-screen) (module doc)."""
    if cfg.visual_only:
        return None, None
    if r.rms_db is not None and r.rms_db < cfg.silence_db:
        return False, 0.0
    p = r.model_onscreen if r.model_onscreen is not None else onscreen_statistic(r.map, r.rms_db or DB_FLOOR, cfg)
    return bool(p >= cfg.onscreen_threshold), round(float(p), SCORE_DECIMALS)


def source_record(k: int, s: FrameSource, src_wh: tuple[int, int], cfg: LocalizeConfig, silent: bool) -> Source:
    """One heard source (module doc): its own P(on-screen), peak and boxes (none when silent)."""
    h = s.heard
    p_on = None if h.onscreen is None else round(float(h.onscreen), SCORE_DECIMALS)
    weight = float(h.score) if p_on is None else p_on
    boxes: tuple[Box, ...] = ()
    peak = None
    if not silent and s.map is not None:
        peak = peak_of(s.map, src_wh)
    if not silent and len(s.boxes):
        boxes = tuple(_box(b, weight * inst.score, label=h.label, instance=inst.name, source=k)
                      for b, inst in zip(s.boxes, h.instances, strict=True))
    elif not silent and s.map is not None and (h.kind != "none" or (p_on or 0.0) >= cfg.onscreen_threshold):
        # a sound with no visual counterpart is boxed only where its motion evidence calls it visible
        b = _map_box(s.map, src_wh, cfg, weight, label=h.label, instance=h.grounding, source=k)
        boxes = () if b is None else (b,)
    detail = {a: (round(v, SCORE_DECIMALS) if isinstance(v, float) else v) for a, v in h.detail.items()}
    return Source(h.label, round(float(h.score), SCORE_DECIMALS), h.kind, h.grounding, p_on, peak, boxes, detail)  # type: ignore[arg-type]


def frame_boxes(r: FrameResult, sources: tuple[Source, ...] | None, onscreen: bool | None, silent: bool,
                src_wh: tuple[int, int], cfg: LocalizeConfig, conf: float | None) -> tuple[Box, ...]:
    """The frame's boxes, best first (module doc)."""
    if silent or onscreen is False:
        return ()
    scale = 1.0 if conf is None else conf
    if sources is not None:
        best: dict[str, Box] = {}
        for b in (b for s in sources for b in s.boxes):
            key = b.instance or f"{b.x1},{b.y1},{b.x2},{b.y2}"
            if key not in best or b.score > best[key].score:
                best[key] = b
        if best:
            return tuple(sorted(best.values(), key=lambda b: -b.score)[: cfg.max_boxes])
    if r.model_boxes is not None:  # (K, 5) source pixels + score
        return tuple(_box(b[:4], float(b[4]) * scale) for b in r.model_boxes[: cfg.max_boxes])
    return tuple(_box((b["x1"], b["y1"], b["x2"], b["y2"]), b["score"])
                 for b in map_boxes(r.map, src_wh, cfg, scale))


def frame_record(r: FrameResult, cfg: LocalizeConfig, src_wh: tuple[int, int]) -> FrameRecord:
    """The typed record of one analysed frame (module doc)."""
    silent = r.rms_db is not None and r.rms_db < cfg.silence_db
    onscreen, conf = onscreen_of(r, cfg)
    sources = None
    if r.sources is not None:
        sources = tuple(source_record(k, s, src_wh, cfg, silent) for k, s in enumerate(r.sources))
    classes = None
    if r.classes is not None:  # class-aware methods: the detected classes, most probable first, with their peaks
        c = r.classes
        order = sorted(np.flatnonzero(c.detected).tolist(), key=lambda i: -float(c.probabilities[i]))
        classes = tuple(DetectedClass(int(i), round(float(c.probabilities[i]), SCORE_DECIMALS), peak_of(c.maps[i], src_wh))
                        for i in order)
    d = r.details
    speaker = None
    if d is not None and d.speaker is not None and r.speaker_box is not None and not silent:
        speaker = Speaker(d.speaker.track, _box(r.speaker_box, d.speaker.confidence, instance=f"face {d.speaker.track}"),
                          round(float(d.speaker.confidence), SCORE_DECIMALS))
    return FrameRecord(
        index=r.index, time=round(r.time, TIME_DECIMALS), source_time=round(r.source_time, TIME_DECIMALS),
        audio_rms_db=None if r.rms_db is None else round(max(r.rms_db, DB_FLOOR), 2), silent=bool(silent),
        peak=peak_of(r.map, src_wh), onscreen=onscreen, onscreen_confidence=conf,
        boxes=frame_boxes(r, sources, onscreen, silent, src_wh, cfg, conf),
        sources=sources, speaker=speaker, faces=None if d is None else d.faces,
        grounded=None if d is None else d.grounded,
        onscreen_features=None if d is None else dict(d.onscreen_features),
        classes=classes, semantic=r.semantic,
    )


def build_document(
    info: MediaInfo, model_name: str | None, source: Any, cfg: LocalizeConfig, window: float,
    map_wh: tuple[int, int], outs: dict[str, Path], records: list[FrameRecord], seconds: float, tagger: Any,
    model_sha256: str | None = None,
) -> LocalizeDocument:
    """The ``NAME.avloc.json`` document of one video (docs/localize.md); ``model_sha256``: the digest of the
    model's content, recorded as ``model.sha256`` when given (collection runs)."""
    from avloc import __version__
    from avloc.config import config_to_dict

    m = source.model
    live = [r.onscreen for r in records if r.onscreen is not None]
    duration = float(info.duration or 0.0)
    return LocalizeDocument(
        schema_version=SCHEMA_VERSION,
        tool={"name": "avloc localize", "version": __version__},
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        input=info.to_dict(),
        model={
            "name": "object-prior (visual only)" if cfg.visual_only else (model_name if model_name is not None else m.name),
            "method": m.name,
            "config": config_to_dict(m.cfg),
            "combine": cfg.combine,
            "audio_tagger": None if tagger is None else tagger.describe(),
            **({} if model_sha256 is None else {"sha256": model_sha256}),
        },
        config={**asdict(cfg), "window_seconds": window},
        heatmap_size={"width": map_wh[0], "height": map_wh[1]},
        outputs={k: v.name for k, v in outs.items()},
        frames=records,
        summary={
            "analysed_frames": len(records),
            "onscreen_fraction": float(np.mean(live)) if live else None,
            "processing_seconds": round(seconds, 3),
            "realtime_factor": round(duration / seconds, 3) if seconds > 0 else None,
        },
    )
