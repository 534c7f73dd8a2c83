"""``localize_video``: the streaming localize pipeline behind ``avloc localize``.

Two streaming passes over the file, memory independent of the video's length
except for the decoded audio track and one small JSON record per analysed frame:

1. **Analysis**: frames are decoded at the analysis rate (``cfg.fps``),
   downscaled early by FFmpeg to the model's working size (short side = the
   model's input size), batched (per-frame methods) or chunked with context
   (temporal methods such as synchrony), each paired with the audio window
   centred on it. Each map is mapped back to cover the whole frame, smoothed
   over time, turned into boxes and an on-screen decision. Maps go to a
   temporary file on disk, not to memory.
2. **Overlay** (unless ``cfg.overlay`` is false): the file is decoded again at
   its average frame rate (variable-rate sources are resampled to constant rate
   by :func:`avloc.io.media.iter_frames`, which keeps them in sync with the
   audio), each frame gets the *nearest analysed* heatmap, boxes and banner,
   and is encoded on the fly with the original audio by
   :func:`avloc.io.media.write_video`.

Outputs are transactional (:class:`avloc.io.outputs.OutputTransaction`): every
file is written into a temporary folder beside them and the set is moved into
place only when all succeeded, replacing the whole previous set; an existing
set is refused without ``cfg.force``; a lock per input stem stops two runs
writing the same set.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avloc.errors import ConfigError, MediaError
from avloc.frontends.image import ImageConfig, preprocess_image
from avloc.inference.config import SCHEMA_VERSION, LocalizeConfig
from avloc.inference.postprocess import (
    DB_FLOOR,
    FrameResult,
    boxes_to_source,
    map_boxes,
    map_size,
    onscreen_statistic,
    smooth,
    unwarp_map,
)
from avloc.inference.render import NEUTRAL_COLOUR, contact_sheet, display_heat, draw_overlay, heat_layer, side_by_side
from avloc.inference.sources import CombinedSource, ModelSource, SourceOutput, VisualOnlySource
from avloc.io.audio import rms_db
from avloc.io.media import MediaInfo, fit_size, iter_frames, probe
from avloc.io.outputs import OutputTransaction
from avloc.methods.base import LocalizationMethod

#: class-aware methods: the contact sheet shows each frame next to its most probable detected classes' maps
SHEET_CLASS_PANELS = 3
#: the smallest picture side analysed: below it a frame holds too few pixels to say where a sound comes from
#: (a 1x1 video would otherwise be "on-screen" at every frame); 16x16 and above are analysed
MIN_VIDEO_SIDE = 8
#: file-name suffixes of the outputs, per input ``NAME``
OUTPUT_SUFFIXES = {"json": ".avloc.json", "video": ".avloc.mp4", "heatmaps": ".heatmaps.npz", "sheet": ".sheet.png"}


@dataclass
class LocalizeResult:
    """What :func:`localize_video` wrote and a summary of what it found."""

    input: Path
    outputs: dict[str, Path]
    frames: int
    duration: float
    seconds: float  # wall-clock processing time
    onscreen_fraction: float | None
    records: list[dict[str, Any]] = field(repr=False, default_factory=list)

    @property
    def realtime_factor(self) -> float:
        return self.duration / self.seconds if self.seconds > 0 else math.inf


@dataclass
class _Item:
    index: int
    time: float
    source_time: float
    image: torch.Tensor  # (3, S, S) model input in [0, 1]
    audio: np.ndarray  # (N,) window centred on the frame
    rms_db: float | None
    work: np.ndarray | None  # (h, w, 3) uint8 working-size frame, kept only for the contact sheet


def output_paths(path: str | Path, out_dir: str | Path) -> dict[str, Path]:
    stem = Path(path).stem
    return {k: Path(out_dir) / f"{stem}{s}" for k, s in OUTPUT_SUFFIXES.items()}


def working_size(width: int, height: int, image: ImageConfig) -> tuple[int, int]:
    """Decode size (w, h): aspect kept, short side = what the model's preprocessing starts from
    (``pad``: long side = the model's size, never upscaled)."""
    if image.mode == "pad":
        return fit_size(width, height, max_side=image.size)
    short = max(image.size, image.resize) if image.mode == "crop" else image.size
    return fit_size(width, height, short_side=short)


def make_source(model: LocalizationMethod | None, cfg: LocalizeConfig) -> ModelSource | CombinedSource | VisualOnlySource:
    if cfg.visual_only:
        src = VisualOnlySource()
        src.model.to(cfg.device)
        return src
    if model is None:
        raise ConfigError("a model is needed unless visual_only is set")
    if cfg.combine == "synchrony":
        return CombinedSource(model, cfg.window_seconds)
    return ModelSource(model, cfg.window_seconds)


def _chunks(frames: Iterator[_Item], context: int, chunk: int) -> Iterator[tuple[list[_Item], int, int]]:
    """Yield (buffer, a, b): compute maps on the whole buffer, keep items [a, b).

    The buffer holds up to ``context`` already-emitted frames before ``a`` and
    ``context`` frames after ``b`` (temporal methods); memory is bounded by
    ``chunk + 2 * context`` frames.
    """
    buf: list[_Item] = []
    emitted = 0
    for it in frames:
        buf.append(it)
        if len(buf) - emitted >= chunk + context:
            yield buf, emitted, emitted + chunk
            emitted += chunk
            drop = max(0, emitted - context)
            del buf[:drop]
            emitted -= drop
    if emitted < len(buf):
        yield buf, emitted, len(buf)


def _analyse(
    items: Iterator[_Item],
    source: ModelSource | CombinedSource | VisualOnlySource,
    image_cfg: ImageConfig,
    cfg: LocalizeConfig,
    work_wh: tuple[int, int],
    map_wh: tuple[int, int],
    works: dict[int, np.ndarray],
) -> Iterator[FrameResult]:
    context = math.ceil(source.context_seconds * cfg.fps) if source.context_seconds > 0 else 0
    device = torch.device(cfg.device)
    chunk = max(cfg.batch_size, 2 * context)  # temporal methods: amortise the context over a longer chunk
    for buf, a, b in _chunks(items, context, chunk):
        sel = buf if context else buf[a:b]
        keep = slice(a, b) if context else slice(None)
        images = torch.stack([it.image for it in sel]).to(device)  # (T, 3, S, S)
        audio = torch.from_numpy(np.stack([it.audio for it in sel])).to(device)  # (T, N)
        times = torch.tensor([it.time for it in sel], dtype=torch.float32)
        out: SourceOutput = source.maps(images, audio, times, keep)  # maps for buf[a:b] only
        for j in range(a, b):
            it, k = buf[j], j - a
            raw = out.maps[k]
            full = unwarp_map(raw, work_wh, map_wh, image_cfg)
            mb = out.boxes[k]
            if mb is not None:
                src_b = boxes_to_source(mb[:, :4], work_wh, image_cfg)
                mb = np.concatenate([src_b, mb[:, 4:5]], axis=1)
            if it.work is not None:
                works[it.index] = it.work
            extra: dict[str, Any] = {}
            cls = out.classes[k] if out.classes else None
            if cls is not None:  # class-aware methods: each detected class's map, full frame (others stay zero)
                cm = np.zeros((len(cls["probabilities"]), *full.shape), np.float32)
                for c in np.flatnonzero(cls["detected"]):
                    cm[c] = unwarp_map(cls["maps"][c], work_wh, map_wh, image_cfg)
                extra["classes"] = {"probabilities": cls["probabilities"], "detected": cls["detected"], "maps": cm}
            srcs = out.sources[k] if out.sources else None
            if srcs is not None:  # heard sources (avsemantic): each grounded source's own map, full frame
                extra["sources"] = [
                    {**h, "map": None if h["map"] is None else unwarp_map(h["map"], work_wh, map_wh, image_cfg)}
                    for h in srcs
                ]
                extra["details"] = out.details[k] or {}
            yield FrameResult(
                it.index, it.time, it.source_time, full, raw, it.rms_db, out.onscreen[k], mb, out.semantic[k], extra
            )


def _peak(m: np.ndarray, src_wh: tuple[int, int]) -> dict[str, float]:
    """Peak of a full-frame map in source pixels (cell centre)."""
    py, px = np.unravel_index(int(np.argmax(m)), m.shape)
    return {"x": round((px + 0.5) * src_wh[0] / m.shape[1], 2), "y": round((py + 0.5) * src_wh[1] / m.shape[0], 2)}


def _record(r: FrameResult, cfg: LocalizeConfig, work_wh: tuple[int, int], src_wh: tuple[int, int]) -> dict[str, Any]:
    silent = r.rms_db is not None and r.rms_db < cfg.silence_db
    rec: dict[str, Any] = {
        "index": r.index,
        "time": round(r.time, 6),
        "source_time": round(r.source_time, 6),
        "audio_rms_db": None if r.rms_db is None else round(max(r.rms_db, DB_FLOOR), 2),
        "silent": bool(silent),
    }
    rec["peak"] = _peak(r.map, src_wh)
    if cfg.visual_only:
        conf: float | None = None
        rec["onscreen"], rec["onscreen_confidence"] = None, None
    elif silent:
        conf = 0.0
        rec["onscreen"], rec["onscreen_confidence"] = False, 0.0
    else:
        conf = r.model_onscreen if r.model_onscreen is not None else onscreen_statistic(r.map, r.rms_db or DB_FLOOR, cfg)
        rec["onscreen"], rec["onscreen_confidence"] = bool(conf >= cfg.onscreen_threshold), round(float(conf), 4)
    srcs = r.extra.get("sources")
    if srcs is not None:  # heard sources: what is heard, how it is grounded, its own peak and box
        rec["sources"] = _source_records(srcs, src_wh, cfg, silent)
        rec.update(r.extra.get("details", {}))
    if silent:
        rec["boxes"] = []
    elif srcs is not None:
        rec["boxes"] = _source_boxes(rec["sources"], r.map, src_wh, cfg, conf)
    elif r.model_boxes is not None:
        sx, sy = src_wh[0] / work_wh[0], src_wh[1] / work_wh[1]
        rec["boxes"] = [
            {"x1": round(b[0] * sx, 2), "y1": round(b[1] * sy, 2), "x2": round(b[2] * sx, 2), "y2": round(b[3] * sy, 2),
             "score": round(float(b[4]) * (1.0 if conf is None else conf), 4)}
            for b in r.model_boxes[: cfg.max_boxes]
        ]
    else:
        rec["boxes"] = map_boxes(r.map, src_wh, cfg, 1.0 if conf is None else conf)
    if r.semantic is not None:
        rec["semantic"] = r.semantic
    cls = r.extra.get("classes")
    if cls is not None:  # class-aware methods: the detected classes, most probable first, each with its map's peak
        order = sorted(np.flatnonzero(cls["detected"]).tolist(), key=lambda c: -float(cls["probabilities"][c]))
        rec["classes"] = [
            {"class": int(c), "probability": round(float(cls["probabilities"][c]), 4), "peak": _peak(cls["maps"][c], src_wh)}
            for c in order
        ]
    return rec


def _source_records(
    srcs: list[dict[str, Any]], src_wh: tuple[int, int], cfg: LocalizeConfig, silent: bool
) -> list[dict[str, Any]]:
    """JSON of a frame's heard sources: label, score, kind, grounding, and for grounded ones peak and top box."""
    out = []
    for h in srcs:
        rec: dict[str, Any] = {"label": h["label"], "score": round(float(h["score"]), 4), "kind": h["kind"],
                               "grounding": h["grounding"], **h["detail"]}
        if h["map"] is not None and not silent:
            rec["peak"] = _peak(h["map"], src_wh)
            boxes = map_boxes(h["map"], src_wh, cfg, float(h["score"]))
            rec["box"] = boxes[0] if boxes else None
        out.append(rec)
    return out


def _source_boxes(
    sources: list[dict[str, Any]], m: np.ndarray, src_wh: tuple[int, int], cfg: LocalizeConfig, conf: float | None
) -> list[dict[str, Any]]:
    """One labelled box per grounding ("dog 0.91", "Speech -> face 1"), best first; with nothing grounded,
    the combined map's boxes when the frame is on-screen and none when it is not (no arbitrary box)."""
    seen: dict[str, dict[str, Any]] = {}
    for h in sources:
        b = h.get("box")
        if b is None or h["grounding"] in seen:
            continue
        label = f"{h['label']} -> {h['grounding']}" if h["kind"] == "human" else h["label"]
        seen[h["grounding"]] = {**b, "label": f"{label} {h['score']:.2f}"}
    if seen:
        return sorted(seen.values(), key=lambda b: -b["score"])[: cfg.max_boxes]
    if conf is not None and conf < cfg.onscreen_threshold:
        return []
    return map_boxes(m, src_wh, cfg, 1.0 if conf is None else conf)


def _heat_strength(rec: dict[str, Any]) -> float:
    if rec["silent"]:
        return 0.0
    c = rec["onscreen_confidence"]
    return 1.0 if c is None else float(c)


def localize_video(
    path: str | Path,
    model: LocalizationMethod | None,
    cfg: LocalizeConfig,
    out_dir: str | Path,
    model_name: str | None = None,
    tagger: Any = None,
    progress: bool = True,
) -> LocalizeResult:
    """Localize the sounding objects of one video; write its outputs into ``out_dir`` (module doc).

    ``model`` is any :class:`LocalizationMethod` (``None`` only with
    ``cfg.visual_only``); ``tagger`` an optional
    :class:`avloc.inference.semantic.SemanticMapper` (zero-shot semantic mode).
    Raises :class:`avloc.errors.MediaError` for unreadable inputs or a missing
    audio track (unless ``cfg.visual_only``), :class:`OutputExistsError` when an
    output exists and ``cfg.force`` is false.
    """
    from tqdm import tqdm

    cfg.validate()
    t_start = time.perf_counter()
    path = Path(path)
    info: MediaInfo = probe(path)
    if not info.has_video or not info.width or not info.height:
        raise MediaError(f"{path}: no video stream (avloc localize needs pictures)")
    if min(info.width, info.height) < MIN_VIDEO_SIDE:
        raise MediaError(f"{path}: {info.width}x{info.height} pixels is too small to analyse "
                         f"(at least {MIN_VIDEO_SIDE}x{MIN_VIDEO_SIDE} needed)")
    if not info.has_audio and not cfg.visual_only:
        raise MediaError(f"{path}: no audio track; pass --visual-only to localize with the object prior alone")
    if cfg.visual_only and (model is not None or tagger is not None):
        raise ConfigError("--visual-only uses the object prior alone: do not combine it with --model or --audio-tagger")
    outs = output_paths(path, out_dir)
    wanted = {"json", "sheet"} | ({"video"} if cfg.overlay else set()) | ({"heatmaps"} if cfg.save_heatmaps else set())
    outs = {k: v for k, v in outs.items() if k in wanted}
    tx = OutputTransaction(out_dir, path.stem, OUTPUT_SUFFIXES, outs, force=cfg.force)
    tx.check()  # before any work: a writable folder, and no previous set unless cfg.force

    source = make_source(model, cfg)
    image_cfg: ImageConfig = source.model.cfg.image
    audio_cfg = source.model.cfg.audio
    window = cfg.window_seconds if cfg.window_seconds is not None else audio_cfg.window_seconds
    src_wh = (info.width, info.height)
    work_wh = working_size(info.width, info.height, image_cfg)
    map_wh = map_size(info.width, info.height, cfg.map_long_side)
    duration = float(info.duration or 0.0)
    n_est = max(1, math.ceil(duration * cfg.fps))
    sheet_idx = {int(i) for i in np.linspace(0, n_est - 1, min(cfg.sheet_frames, n_est)).round()}

    # Memory flat in the video's length: the analysis streams the audio at the model's rate
    # (AudioStream holds a few windows); the overlay streams the source's audio (iter_audio).
    from avloc.io.media import AudioStream, decode_audio

    if tagger is not None and info.has_audio:  # semantic mode: the whole track once, at YAMNet's rate
        from avloc.inference.semantic import YAMNET_RATE

        tagger.set_audio(*decode_audio(path, sample_rate=YAMNET_RATE))
        source = tagger.wrap(source)

    def items() -> Iterator[_Item]:
        n_win = max(1, round(window * audio_cfg.sample_rate))
        with contextlib.ExitStack() as stack:
            audio = (stack.enter_context(AudioStream(path, audio_cfg.sample_rate))
                     if info.has_audio and not cfg.visual_only else None)
            yield from _items(audio, n_win)

    def _items(audio: AudioStream | None, n_win: int) -> Iterator[_Item]:
        for fr in iter_frames(path, fps=cfg.fps, size=work_wh):
            img = torch.from_numpy(fr.image).permute(2, 0, 1)  # (3, h, w) uint8
            x = preprocess_image(img, image_cfg)  # (3, S, S) in [0, 1]
            if audio is not None:
                aw = audio.window(fr.time, window)
                db: float | None = rms_db(aw)
            else:
                aw, db = np.zeros(n_win, np.float32), None
            yield _Item(fr.index, fr.time, fr.source_time, x, aw, db, fr.image if fr.index in sheet_idx else None)

    works: dict[int, np.ndarray] = {}
    thumbs: list[np.ndarray] = []
    records: list[dict[str, Any]] = []
    cls_probs: list[np.ndarray] = []
    cls_det: list[np.ndarray] = []
    tx.begin()  # lock this stem's outputs, clean what killed runs left, open the temporary folder
    try:
        assert tx.dir is not None
        maps_tmp = tx.dir / "maps.tmp"
        # class-aware methods with --save-heatmaps: one map per class and frame (zero unless detected), on disk too
        cls_tmp = tx.dir / "classmaps.tmp"
        with open(maps_tmp, "wb") as maps_file, open(cls_tmp, "wb") as cls_file, tqdm(
            total=n_est, unit="frame", desc=f"{path.name}: analyse", disable=not progress, leave=False
        ) as bar:
            stream = smooth(_analyse(items(), source, image_cfg, cfg, work_wh, map_wh, works), cfg)
            for r in stream:
                rec = _record(r, cfg, work_wh, src_wh)
                records.append(rec)
                maps_file.write(r.map.astype(np.float16).tobytes())
                cls = r.extra.get("classes")
                if cls is not None and "heatmaps" in outs:
                    cls_file.write(cls["maps"].astype(np.float16).tobytes())
                    cls_probs.append(cls["probabilities"])
                    cls_det.append(cls["detected"])
                work = works.pop(r.index, None)
                if work is not None:
                    tw = cfg.sheet_thumb_width
                    th = max(2, round(work.shape[0] * tw / work.shape[1]))
                    import cv2

                    small = cv2.resize(work, (tw, th), interpolation=cv2.INTER_AREA)
                    thumb = draw_overlay(small, display_heat(r.map, _heat_strength(rec)), rec, src_wh, cfg.overlay_alpha)
                    cls = r.extra.get("classes")
                    if cls is not None:  # class-aware methods: the frame, then each detected class's own map
                        panels = [
                            draw_overlay(small, display_heat(cls["maps"][c["class"]], 1.0), {"time": rec["time"]}, src_wh,
                                         cfg.overlay_alpha, banner=(f"class {c['class']}  p={c['probability']:.2f}",
                                                                    NEUTRAL_COLOUR))
                            for c in rec["classes"][:SHEET_CLASS_PANELS]
                        ]
                        thumb = side_by_side([thumb, *panels], 1 + SHEET_CLASS_PANELS)
                    thumbs.append(thumb)
                bar.update(1)
        if not records:
            raise MediaError(f"{path}: no frames to analyse at {cfg.fps} fps")
        n = len(records)
        maps = np.memmap(maps_tmp, dtype=np.float16, mode="r", shape=(n, map_wh[1], map_wh[0]))
        times = np.array([r["time"] for r in records], np.float64)

        if "video" in outs:
            ov_wh = fit_size(info.width, info.height, max_side=cfg.overlay_max_side)
            out_fps = float(info.fps or cfg.fps)

            def overlay_frames(maps: np.ndarray) -> Iterator[np.ndarray]:
                j, layer_j = 0, -1
                layer = None
                with tqdm(total=info.frames, unit="frame", desc=f"{path.name}: overlay", disable=not progress, leave=False) as bar2:
                    for fr in iter_frames(path, fps=out_fps, size=ov_wh, start=0.5 / out_fps):
                        t = fr.time - 0.5 / out_fps  # the output frame's own time
                        while j + 1 < n and abs(times[j + 1] - t) <= abs(times[j] - t):
                            j += 1
                        rec = records[j]
                        heat = display_heat(np.asarray(maps[j], np.float32), _heat_strength(rec))
                        if layer_j != j:  # the coloured heat layer changes only with the analysed frame
                            h_, w_ = fr.image.shape[:2]
                            layer, layer_j = heat_layer(heat, (w_, h_), cfg.overlay_alpha), j
                        bar2.update(1)
                        yield draw_overlay(fr.image, heat, rec, src_wh, cfg.overlay_alpha, layer=layer)

            from avloc.io.media import iter_audio, write_video

            with tx.writing("video") as tmp:
                audio = iter_audio(path) if info.has_audio else None  # streamed, encoded alongside the frames
                write_video(tmp, overlay_frames(maps), out_fps, audio, info.audio_sample_rate)
        if "heatmaps" in outs:
            with tx.writing("heatmaps") as tmp:
                arrays: dict[str, np.ndarray] = {"times": times, "maps": maps}
                if len(cls_probs) == n:  # class-aware method: class_maps (n, C, H, W), probabilities, detected
                    n_cls = len(cls_probs[0])
                    arrays["class_maps"] = np.memmap(cls_tmp, dtype=np.float16, mode="r", shape=(n, n_cls, map_wh[1], map_wh[0]))
                    arrays["class_probabilities"] = np.stack(cls_probs).astype(np.float32)
                    arrays["class_detected"] = np.stack(cls_det)
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
                del arrays
        from PIL import Image

        with tx.writing("sheet") as tmp:
            per_row = 1 + SHEET_CLASS_PANELS if thumbs and thumbs[0].shape[1] > cfg.sheet_thumb_width else 1
            Image.fromarray(contact_sheet(thumbs, max(1, cfg.sheet_columns // per_row))).save(tmp, format="PNG")
        del maps

        seconds = time.perf_counter() - t_start
        live = [r["onscreen"] for r in records if r["onscreen"] is not None]
        on_frac = float(np.mean(live)) if live else None
        doc = build_json(info, model_name, source, cfg, window, map_wh, outs, records, duration, seconds, on_frac, tagger)
        import json

        with tx.writing("json") as tmp:
            tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
        tx.commit()  # the whole set replaces the previous one, JSON last
    except BaseException:
        tx.abort()  # the previous set stays as it was
        raise
    return LocalizeResult(path, outs, len(records), duration, seconds, on_frac, records)


def build_json(
    info: MediaInfo,
    model_name: str | None,
    source: Any,
    cfg: LocalizeConfig,
    window: float,
    map_wh: tuple[int, int],
    outs: dict[str, Path],
    records: list[dict[str, Any]],
    duration: float,
    seconds: float,
    on_frac: float | None,
    tagger: Any,
) -> dict[str, Any]:
    """The ``NAME.avloc.json`` document (``schema.json``, docs/localize.md)."""
    from avloc import __version__
    from avloc.config import config_to_dict

    m = source.model
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "avloc localize", "version": __version__},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "input": info.to_dict(),
        "model": {
            "name": model_name if not cfg.visual_only else "object-prior (visual only)",
            "method": m.name,
            "config": config_to_dict(m.cfg),
            "combine": cfg.combine,
            "audio_tagger": None if tagger is None else tagger.describe(),
        },
        "config": {**asdict(cfg), "window_seconds": window},
        "heatmap_size": {"width": map_wh[0], "height": map_wh[1]},
        "outputs": {k: v.name for k, v in outs.items()},
        "frames": records,
        "summary": {
            "analysed_frames": len(records),
            "onscreen_fraction": on_frac,
            "processing_seconds": round(seconds, 3),
            "realtime_factor": round(duration / seconds, 3) if seconds > 0 else None,
        },
    }
