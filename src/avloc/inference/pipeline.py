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
from avloc.metrics.ops import peak_points

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
    """Peak of a full-frame map in source pixels: the centre of its first arg-max cell (:func:`peak_points`)."""
    x, y = peak_points(np.asarray(m)[None])[0]
    return {"x": round(float(x) * src_wh[0], 2), "y": round(float(y) * src_wh[1], 2)}


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


@dataclass
class VideoAnalysis:
    """What :func:`analyse_video` found in one video, in memory (no output written).

    ``records`` are the JSON frames (``NAME.avloc.json`` ``frames``); ``maps`` the full-frame heatmaps
    ``(n, H, W)`` float16 (a memory map of a scratch file when one was given); ``class_maps`` /
    ``class_probabilities`` / ``class_detected`` the per-class maps of class-aware methods (kept with
    ``cfg.save_heatmaps``); ``thumbs`` the contact sheet's frames.
    """

    input: Path
    info: MediaInfo
    cfg: LocalizeConfig
    model_name: str | None
    source: Any  # the map source (ModelSource, CombinedSource, VisualOnlySource; ``source.model`` is the model)
    tagger: Any
    window: float  # audio window per frame, s
    src_wh: tuple[int, int]  # the source's picture size
    map_wh: tuple[int, int]
    records: list[dict[str, Any]]
    times: np.ndarray  # (n,) s
    maps: np.ndarray  # (n, H, W) float16
    thumbs: list[np.ndarray] = field(repr=False, default_factory=list)
    class_maps: np.ndarray | None = None  # (n, C, H, W) float16
    class_probabilities: np.ndarray | None = None  # (n, C) float32
    class_detected: np.ndarray | None = None  # (n, C) bool
    #: methods that ground several heard sources (``Capability.SOURCES``), kept with ``cfg.save_heatmaps``: the
    #: own map of every grounded source (K, H, W) float16, its frame (K,) (index into ``maps``), label and score
    source_maps: np.ndarray | None = None
    source_frames: np.ndarray | None = None
    source_labels: np.ndarray | None = None
    source_scores: np.ndarray | None = None
    started: float = 0.0  # time.perf_counter() when the analysis began

    @property
    def duration(self) -> float:
        return float(self.info.duration or 0.0)

    @property
    def onscreen_fraction(self) -> float | None:
        live = [r["onscreen"] for r in self.records if r["onscreen"] is not None]
        return float(np.mean(live)) if live else None

    def document(self, outputs: dict[str, Path], seconds: float | None = None) -> dict[str, Any]:
        """The ``NAME.avloc.json`` document (``schema.json``); ``seconds``: processing time (default: until now)."""
        secs = time.perf_counter() - self.started if seconds is None else seconds
        return build_json(self.info, self.model_name, self.source, self.cfg, self.window, self.map_wh, outputs,
                          self.records, self.duration, secs, self.onscreen_fraction, self.tagger)


def check_video(path: Path, model: LocalizationMethod | None, cfg: LocalizeConfig, tagger: Any,
                info: MediaInfo | None = None) -> MediaInfo:
    """Probe ``path`` (unless ``info`` is given) and refuse what cannot be analysed (no pictures, too small, no
    audio, bad combination)."""
    cfg.validate()
    info = probe(path) if info is None else info
    if not info.has_video or not info.width or not info.height:
        raise MediaError(f"{path}: no video stream (avloc localize needs pictures)")
    if min(info.width, info.height) < MIN_VIDEO_SIDE:
        raise MediaError(f"{path}: {info.width}x{info.height} pixels is too small to analyse "
                         f"(at least {MIN_VIDEO_SIDE}x{MIN_VIDEO_SIDE} needed)")
    if not info.has_audio and not cfg.visual_only:
        raise MediaError(f"{path}: no audio track; pass --visual-only to localize with the object prior alone")
    if cfg.visual_only and (model is not None or tagger is not None):
        raise ConfigError("--visual-only uses the object prior alone: do not combine it with --model or --audio-tagger")
    return info


def wanted_outputs(path: str | Path, out_dir: str | Path, cfg: LocalizeConfig) -> dict[str, Path]:
    """The outputs ``cfg`` asks for (JSON and sheet always; overlay video, heatmaps) and their paths."""
    wanted = {"json", "sheet"} | ({"video"} if cfg.overlay else set()) | ({"heatmaps"} if cfg.save_heatmaps else set())
    return {k: v for k, v in output_paths(path, out_dir).items() if k in wanted}


@dataclass
class RawFrame:
    """One analysed frame as decoded: working-size picture and the audio window centred on it."""

    index: int
    time: float
    source_time: float
    image: np.ndarray  # (h, w, 3) uint8, working size
    audio: np.ndarray  # (N,) float32 window at the model's rate (zeros without audio)
    rms_db: float | None


@dataclass
class DecodedVideo:
    """What :func:`decode_video` read from one video: its probe and every analysed frame (:class:`RawFrame`)."""

    input: Path
    info: MediaInfo
    frames: list[RawFrame]


def iter_raw_frames(path: Path, info: MediaInfo, cfg: LocalizeConfig, sample_rate: int, window: float,
                    work_wh: tuple[int, int]) -> Iterator[RawFrame]:
    """Decode ``path`` at ``cfg.fps`` and working size, each frame with its audio window (streamed)."""
    from avloc.io.media import AudioStream

    n_win = max(1, round(window * sample_rate))
    with contextlib.ExitStack() as stack:
        audio = (stack.enter_context(AudioStream(path, sample_rate))
                 if info.has_audio and not cfg.visual_only else None)
        for fr in iter_frames(path, fps=cfg.fps, size=work_wh):
            if audio is not None:
                aw = audio.window(fr.time, window)
                db: float | None = rms_db(aw)
            else:
                aw, db = np.zeros(n_win, np.float32), None
            yield RawFrame(fr.index, fr.time, fr.source_time, fr.image, aw, db)


def decode_video(path: str | Path, model_cfg: Any, cfg: LocalizeConfig) -> DecodedVideo:
    """Probe, check and decode one video for :func:`analyse_video` (``decoded=``): the CPU half of the analysis.

    ``model_cfg``: the map source's model config (its ``image`` and ``audio`` preprocessing). Holds every
    analysed frame in memory (working size, uint8), so it suits short clips (the batch runner's decode tasks).
    """
    path = Path(path)
    info = check_video(path, None, cfg, None)  # the model/tagger combination is checked where they are loaded
    window = cfg.window_seconds if cfg.window_seconds is not None else model_cfg.audio.window_seconds
    assert info.width and info.height  # check_video
    work_wh = working_size(info.width, info.height, model_cfg.image)
    frames = list(iter_raw_frames(path, info, cfg, model_cfg.audio.sample_rate, window, work_wh))
    if not frames:
        raise MediaError(f"{path}: no frames to analyse at {cfg.fps} fps")
    return DecodedVideo(path, info, frames)


def analyse_video(
    path: str | Path,
    model: LocalizationMethod | None,
    cfg: LocalizeConfig,
    *,
    model_name: str | None = None,
    tagger: Any = None,
    progress: bool = True,
    scratch: Path | None = None,
    decoded: DecodedVideo | None = None,
    source: Any = None,
    info: MediaInfo | None = None,
) -> VideoAnalysis:
    """Analyse one video (pass 1 of the module doc) -> :class:`VideoAnalysis`, writing no output.

    ``scratch``: a folder for the maps (memory-mapped files), so memory stays flat in the video's length;
    ``None`` keeps them in memory. ``decoded``: the frames and audio windows :func:`decode_video` read
    elsewhere (a Ray decode task, :mod:`avloc.inference.batch`), used instead of decoding here; ``source``: the
    map source to use instead of one made from ``model`` (the batch runner's frames-across-videos source);
    ``info``: what :func:`check_video` returned for ``path`` (the probe is then not repeated).
    Raises :class:`avloc.errors.MediaError` for unreadable inputs, a missing
    audio track (unless ``cfg.visual_only``) or a video without frames at ``cfg.fps``.
    """
    t_start = time.perf_counter()
    path = Path(path)
    if info is None:
        info = check_video(path, model, cfg, tagger, info=None if decoded is None else decoded.info)
    if source is None:
        source = make_source(model, cfg)
    image_cfg: ImageConfig = source.model.cfg.image
    audio_cfg = source.model.cfg.audio
    window = cfg.window_seconds if cfg.window_seconds is not None else audio_cfg.window_seconds
    assert info.width and info.height  # check_video
    src_wh = (info.width, info.height)
    work_wh = working_size(*src_wh, image_cfg)
    map_wh = map_size(*src_wh, cfg.map_long_side)
    n_est = max(1, math.ceil(float(info.duration or 0.0) * cfg.fps))
    sheet_idx = {int(i) for i in np.linspace(0, n_est - 1, min(cfg.sheet_frames, n_est)).round()}

    # Memory flat in the video's length: the analysis streams the audio at the model's rate
    # (AudioStream holds a few windows); the overlay streams the source's audio (iter_audio).
    from avloc.io.media import decode_audio

    if tagger is not None and info.has_audio:  # semantic mode: the whole track once, at YAMNet's rate
        from avloc.inference.semantic import YAMNET_RATE

        tagger.set_audio(*decode_audio(path, sample_rate=YAMNET_RATE))
        source = tagger.wrap(source)

    def items() -> Iterator[_Item]:
        raws = (decoded.frames if decoded is not None
                else iter_raw_frames(path, info, cfg, audio_cfg.sample_rate, window, work_wh))
        for fr in raws:
            img = torch.from_numpy(fr.image).permute(2, 0, 1)  # (3, h, w) uint8
            x = preprocess_image(img, image_cfg)  # (3, S, S) in [0, 1]
            yield _Item(fr.index, fr.time, fr.source_time, x, fr.audio, fr.rms_db,
                        fr.image if fr.index in sheet_idx else None)

    keep_classes = cfg.save_heatmaps
    maps_sink, cls_sink = _MapSink(scratch, "maps"), _MapSink(scratch, "classmaps")
    works: dict[int, np.ndarray] = {}
    thumbs: list[np.ndarray] = []
    records: list[dict[str, Any]] = []
    cls_probs: list[np.ndarray] = []
    cls_det: list[np.ndarray] = []
    src_maps: list[np.ndarray] = []
    src_meta: list[tuple[int, str, float]] = []  # (frame, label, score) of each grounded source's map
    has_sources = False
    from tqdm import tqdm

    with maps_sink, cls_sink, tqdm(total=n_est, unit="frame", desc=f"{path.name}: analyse", disable=not progress,
                                   leave=False) as bar:
        for r in smooth(_analyse(items(), source, image_cfg, cfg, work_wh, map_wh, works), cfg):
            rec = _record(r, cfg, work_wh, src_wh)
            records.append(rec)
            maps_sink.add(r.map)
            cls = r.extra.get("classes")
            if cls is not None and keep_classes:  # class-aware methods: one map per class and frame (zero unless detected)
                cls_sink.add(cls["maps"])
                cls_probs.append(cls["probabilities"])
                cls_det.append(cls["detected"])
            if keep_classes and r.extra.get("sources") is not None:  # heard sources: each grounded one's own map
                has_sources = True
                for h in r.extra["sources"]:
                    if h["map"] is not None:
                        src_maps.append(np.asarray(h["map"], np.float16))
                        src_meta.append((len(records) - 1, str(h["label"]), float(h["score"])))
            work = works.pop(r.index, None)
            if work is not None:
                thumbs.append(_thumb(work, r, rec, src_wh, cfg))
            bar.update(1)
    if not records:
        raise MediaError(f"{path}: no frames to analyse at {cfg.fps} fps")
    n = len(records)
    analysis = VideoAnalysis(
        path, info, cfg, model_name, source, tagger, window, src_wh, map_wh, records,
        np.array([r["time"] for r in records], np.float64), maps_sink.array((n, map_wh[1], map_wh[0])), thumbs,
        started=t_start,
    )
    if len(cls_probs) == n:  # class-aware method: class_maps (n, C, H, W), probabilities, detected
        analysis.class_maps = cls_sink.array((n, len(cls_probs[0]), map_wh[1], map_wh[0]))
        analysis.class_probabilities = np.stack(cls_probs).astype(np.float32)
        analysis.class_detected = np.stack(cls_det)
    if has_sources:
        analysis.source_maps = (np.stack(src_maps) if src_maps
                                else np.zeros((0, map_wh[1], map_wh[0]), np.float16))
        analysis.source_frames = np.asarray([m[0] for m in src_meta], np.int64)
        analysis.source_labels = np.asarray([m[1] for m in src_meta], dtype=str)
        analysis.source_scores = np.asarray([m[2] for m in src_meta], np.float32)
    return analysis


class _MapSink:
    """float16 maps appended frame by frame: to a scratch file (read back memory-mapped) or kept in memory."""

    def __init__(self, scratch: Path | None, name: str) -> None:
        self.path = None if scratch is None else scratch / f"{name}.tmp"
        self.parts: list[np.ndarray] = []
        self.file: Any = None

    def __enter__(self) -> _MapSink:
        if self.path is not None:
            self.file = open(self.path, "wb")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()

    def add(self, m: np.ndarray) -> None:
        h = m.astype(np.float16)
        if self.file is not None:
            self.file.write(h.tobytes())
        else:
            self.parts.append(h)

    def array(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.path is not None:
            return np.memmap(self.path, dtype=np.float16, mode="r", shape=shape)
        return np.stack(self.parts).reshape(shape) if self.parts else np.zeros(shape, np.float16)


def _thumb(work: np.ndarray, r: FrameResult, rec: dict[str, Any], src_wh: tuple[int, int], cfg: LocalizeConfig) -> np.ndarray:
    """The contact sheet's picture of one frame (class-aware methods: next to each detected class's own map)."""
    import cv2

    tw = cfg.sheet_thumb_width
    th = max(2, round(work.shape[0] * tw / work.shape[1]))
    small = cv2.resize(work, (tw, th), interpolation=cv2.INTER_AREA)
    thumb = draw_overlay(small, display_heat(r.map, _heat_strength(rec)), rec, src_wh, cfg.overlay_alpha)
    cls = r.extra.get("classes")
    if cls is not None:
        panels = [
            draw_overlay(small, display_heat(cls["maps"][c["class"]], 1.0), {"time": rec["time"]}, src_wh,
                         cfg.overlay_alpha, banner=(f"class {c['class']}  p={c['probability']:.2f}", NEUTRAL_COLOUR))
            for c in rec["classes"][:SHEET_CLASS_PANELS]
        ]
        thumb = side_by_side([thumb, *panels], 1 + SHEET_CLASS_PANELS)
    return thumb


# ---------------------------------------------------------------------------------------------
# the output writers (each writes one file of the set; write_outputs runs them in one transaction)


def write_overlay_video(analysis: VideoAnalysis, tmp: Path, progress: bool = False) -> None:
    """Pass 2 (module doc): the source decoded again, each frame with the nearest analysed heatmap, boxes and
    banner, encoded with the original audio into ``tmp``."""
    from tqdm import tqdm

    from avloc.io.media import iter_audio, write_video

    a, cfg, info, path = analysis, analysis.cfg, analysis.info, analysis.input
    src_wh = a.src_wh
    ov_wh = fit_size(*src_wh, max_side=cfg.overlay_max_side)
    out_fps = float(info.fps or cfg.fps)
    n, times, records = len(a.records), a.times, a.records

    def overlay_frames() -> Iterator[np.ndarray]:
        j, layer_j = 0, -1
        layer, heat = None, np.zeros((1, 1), np.float32)
        with tqdm(total=info.frames, unit="frame", desc=f"{path.name}: overlay", disable=not progress, leave=False) as bar:
            for fr in iter_frames(path, fps=out_fps, size=ov_wh, start=0.5 / out_fps):
                t = fr.time - 0.5 / out_fps  # the output frame's own time
                while j + 1 < n and abs(times[j + 1] - t) <= abs(times[j] - t):
                    j += 1
                rec = records[j]
                if layer_j != j:  # the heat and its coloured layer change only with the analysed frame
                    heat = display_heat(np.asarray(a.maps[j], np.float32), _heat_strength(rec))
                    h_, w_ = fr.image.shape[:2]
                    layer, layer_j = heat_layer(heat, (w_, h_), cfg.overlay_alpha), j
                bar.update(1)
                yield draw_overlay(fr.image, heat, rec, src_wh, cfg.overlay_alpha, layer=layer)

    audio = iter_audio(path) if info.has_audio else None  # streamed, encoded alongside the frames
    write_video(tmp, overlay_frames(), out_fps, audio, info.audio_sample_rate, preset=cfg.overlay_preset)


def write_heatmaps(analysis: VideoAnalysis, tmp: Path) -> None:
    """``NAME.heatmaps.npz``: ``times``, ``maps``; for class-aware methods ``class_maps`` /
    ``class_probabilities`` / ``class_detected``; for methods grounding several heard sources ``source_maps``
    (K, H, W), ``source_frames`` (K,) index into ``maps``, ``source_labels``, ``source_scores``."""
    arrays: dict[str, np.ndarray] = {"times": analysis.times, "maps": analysis.maps}
    if analysis.class_maps is not None:
        assert analysis.class_probabilities is not None and analysis.class_detected is not None
        arrays["class_maps"] = analysis.class_maps
        arrays["class_probabilities"] = analysis.class_probabilities
        arrays["class_detected"] = analysis.class_detected
    if analysis.source_maps is not None:
        assert analysis.source_frames is not None and analysis.source_labels is not None
        assert analysis.source_scores is not None
        arrays["source_maps"] = analysis.source_maps
        arrays["source_frames"] = analysis.source_frames
        arrays["source_labels"] = analysis.source_labels
        arrays["source_scores"] = analysis.source_scores
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]


def write_sheet(analysis: VideoAnalysis, tmp: Path) -> None:
    """``NAME.sheet.png``: the contact sheet of evenly spaced analysed frames."""
    from PIL import Image

    cfg, thumbs = analysis.cfg, analysis.thumbs
    per_row = 1 + SHEET_CLASS_PANELS if thumbs and thumbs[0].shape[1] > cfg.sheet_thumb_width else 1
    Image.fromarray(contact_sheet(thumbs, max(1, cfg.sheet_columns // per_row))).save(tmp, format="PNG")


def write_json(analysis: VideoAnalysis, tmp: Path, outputs: dict[str, Path]) -> None:
    """``NAME.avloc.json`` (``schema.json``); its summary's processing time runs until now."""
    import json

    tmp.write_text(json.dumps(analysis.document(outputs), indent=1, allow_nan=False) + "\n")


def _write_into(tx: OutputTransaction, analysis: VideoAnalysis, outs: dict[str, Path], progress: bool) -> None:
    if "video" in outs:
        with tx.writing("video") as tmp:
            write_overlay_video(analysis, tmp, progress)
    if "heatmaps" in outs:
        with tx.writing("heatmaps") as tmp:
            write_heatmaps(analysis, tmp)
    with tx.writing("sheet") as tmp:
        write_sheet(analysis, tmp)
    with tx.writing("json") as tmp:  # last: its summary holds the whole processing time
        write_json(analysis, tmp, outs)


def write_outputs(analysis: VideoAnalysis, out_dir: str | Path, force: bool | None = None,
                  progress: bool = False) -> LocalizeResult:
    """Write the outputs ``analysis.cfg`` asks for into ``out_dir``, all or none (module doc)."""
    outs = wanted_outputs(analysis.input, out_dir, analysis.cfg)
    tx = OutputTransaction(out_dir, analysis.input.stem, OUTPUT_SUFFIXES, outs,
                           force=analysis.cfg.force if force is None else force)
    tx.check()
    tx.begin()
    try:
        _write_into(tx, analysis, outs, progress)
        tx.commit()
    except BaseException:
        tx.abort()
        raise
    return _result(analysis, outs)


def _result(analysis: VideoAnalysis, outs: dict[str, Path]) -> LocalizeResult:
    return LocalizeResult(analysis.input, outs, len(analysis.records), analysis.duration,
                          time.perf_counter() - analysis.started, analysis.onscreen_fraction, analysis.records)


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

    :func:`analyse_video` then the writers of :func:`write_outputs`, in one transaction checked before any
    work. ``model`` is any :class:`LocalizationMethod` (``None`` only with ``cfg.visual_only``); ``tagger`` an
    optional :class:`avloc.inference.semantic.SemanticMapper` (zero-shot semantic mode). Raises
    :class:`avloc.errors.MediaError` for unreadable inputs or a missing audio track (unless
    ``cfg.visual_only``), :class:`OutputExistsError` when an output exists and ``cfg.force`` is false.
    """
    path = Path(path)
    info = check_video(path, model, cfg, tagger)  # probed once, passed on to analyse_video
    outs = wanted_outputs(path, out_dir, cfg)
    tx = OutputTransaction(out_dir, path.stem, OUTPUT_SUFFIXES, outs, force=cfg.force)
    tx.check()  # before any work: a writable folder, and no previous set unless cfg.force
    tx.begin()  # lock this stem's outputs, clean what killed runs left, open the temporary folder
    try:
        assert tx.dir is not None
        analysis = analyse_video(
            path, model, cfg, model_name=model_name, tagger=tagger, progress=progress, scratch=tx.dir, info=info
        )
        _write_into(tx, analysis, outs, progress)
        tx.commit()  # the whole set replaces the previous one, JSON last
    except BaseException:
        tx.abort()  # the previous set stays as it was
        raise
    return _result(analysis, outs)


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
