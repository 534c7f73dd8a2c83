"""Stage 2 of ``avloc localize``: run the model over the decoded frames -> maps and typed frame records.

Frames (:mod:`avloc.inference.decode`) are batched (per-frame methods) or chunked with context (temporal
methods such as synchrony); each map is mapped back to cover the whole frame, smoothed over time and turned
into a :class:`avloc.formats.localize.FrameRecord` (:mod:`avloc.inference.records`). Maps go to a scratch
file on disk when one is given, so memory stays flat in the video's length.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avloc.errors import ConfigError, MediaError
from avloc.formats.localize import FrameRecord, LocalizeDocument
from avloc.frontends.image import ImageConfig, preprocess_image
from avloc.inference.config import LocalizeConfig
from avloc.inference.decode import ArrayVideo, DecodedVideo, Media, check_video, iter_raw_frames, track_of, working_size
from avloc.inference.postprocess import (
    FrameClasses,
    FrameResult,
    FrameSource,
    boxes_to_source,
    map_size,
    smooth,
    unwarp_map,
)
from avloc.inference.records import build_document, frame_record
from avloc.inference.render import NEUTRAL_COLOUR, display_heat, draw_overlay, side_by_side
from avloc.inference.sources import CombinedSource, ModelSource, SourceOutput, VisualOnlySource
from avloc.io.media import MediaInfo
from avloc.methods.base import LocalizationMethod

#: class-aware methods: the contact sheet shows each frame next to its most probable detected classes' maps
SHEET_CLASS_PANELS = 3


@dataclass
class _Item:
    index: int
    time: float
    source_time: float
    image: torch.Tensor  # (3, S, S) model input in [0, 1]
    audio: np.ndarray  # (N,) window centred on the frame
    rms_db: float | None
    work: np.ndarray | None  # (h, w, 3) uint8 working-size frame, kept only for the contact sheet


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
    src_wh: tuple[int, int],
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
        geo = _Geometry(work_wh, src_wh, map_wh, image_cfg)
        for j in range(a, b):
            it = buf[j]
            if it.work is not None:
                works[it.index] = it.work
            yield _frame_result(it, out, j - a, geo)


@dataclass(frozen=True)
class _Geometry:
    """Model-input geometry -> the source frame: the working and source sizes, the stored map size and the
    model's crop."""

    work_wh: tuple[int, int]
    src_wh: tuple[int, int]
    map_wh: tuple[int, int]
    image: ImageConfig

    def map(self, m: np.ndarray | torch.Tensor) -> np.ndarray:
        return unwarp_map(np.asarray(m, np.float32), self.work_wh, self.map_wh, self.image)

    def boxes(self, b: np.ndarray) -> np.ndarray:
        """(K, 4) model-input pixels -> source pixels (through the working-size frame the model saw)."""
        if not len(b):
            return np.zeros((0, 4))
        scale = np.array([self.src_wh[0] / self.work_wh[0], self.src_wh[1] / self.work_wh[1]] * 2)
        return boxes_to_source(b, self.work_wh, self.image) * scale


def _frame_result(it: _Item, out: SourceOutput, k: int, geo: _Geometry) -> FrameResult:
    """The ``k``-th kept frame of a source's output, mapped to the whole frame (typed, :class:`FrameResult`)."""
    raw = out.maps[k]
    mb = out.boxes[k]
    if mb is not None:
        mb = np.concatenate([geo.boxes(mb[:, :4]), mb[:, 4:5]], axis=1)
    r = FrameResult(it.index, it.time, it.source_time, geo.map(raw), raw, it.rms_db, out.onscreen[k], mb,
                    out.semantic[k])
    cls = out.classes[k] if out.classes else None
    if cls is not None:  # class-aware methods: each detected class's map, full frame (others stay zero)
        cm = np.zeros((len(cls["probabilities"]), *r.map.shape), np.float32)
        for c in np.flatnonzero(cls["detected"]):
            cm[c] = geo.map(cls["maps"][c])
        r.classes = FrameClasses(cls["probabilities"], cls["detected"], cm)
    if out.sources:  # heard sources: each one's own map over the whole frame, its instances' boxes
        r.sources = [
            FrameSource(h, None if h.map is None else geo.map(h.map),
                        geo.boxes(np.asarray([i.box for i in h.instances], np.float64).reshape(-1, 4)))
            for h in out.sources[k]
        ]
        r.details = out.details[k]
        if r.details.speaker is not None:
            r.speaker_box = geo.boxes(np.asarray([r.details.speaker.box], np.float64))[0]
    return r


def heat_strength(rec: FrameRecord) -> float:
    """How strongly a frame's heat is drawn: 0 when silent, else its P(on-screen) (1 in visual-only mode)."""
    if rec.silent:
        return 0.0
    c = rec.onscreen_confidence
    return 1.0 if c is None else float(c)


@dataclass
class VideoAnalysis:
    """What :func:`analyse_video` found in one video, in memory (no output written).

    ``records`` are the typed frame records (``NAME.avloc.json`` ``frames``); ``maps`` the full-frame heatmaps
    ``(n, H, W)`` float16 (a memory map of a scratch file when one was given); ``class_maps`` /
    ``class_probabilities`` / ``class_detected`` the per-class maps of class-aware methods (kept with
    ``cfg.save_heatmaps``); ``thumbs`` the contact sheet's frames.
    """

    input: Path  # the file (an array input: its name, which names its outputs)
    info: MediaInfo
    cfg: LocalizeConfig
    model_name: str | None
    source: Any  # the map source (ModelSource, CombinedSource, VisualOnlySource; ``source.model`` is the model)
    tagger: Any
    window: float  # audio window per frame, s
    src_wh: tuple[int, int]  # the source's picture size
    map_wh: tuple[int, int]
    records: list[FrameRecord]
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
    #: the digest of the model's content (:meth:`avloc.applications.models.ModelSpec.digest`), recorded in the
    #: JSON's ``model.sha256`` when known (collection runs resume only over outputs of the same content)
    model_sha256: str | None = None
    media: Media | None = field(default=None, repr=False)  # what the overlay decodes again (default: ``input``)

    @property
    def duration(self) -> float:
        return float(self.info.duration or 0.0)

    @property
    def onscreen_fraction(self) -> float | None:
        live = [r.onscreen for r in self.records if r.onscreen is not None]
        return float(np.mean(live)) if live else None

    def document(self, outputs: dict[str, Path], seconds: float | None = None) -> LocalizeDocument:
        """The ``NAME.avloc.json`` document; ``seconds``: processing time (default: until now)."""
        secs = time.perf_counter() - self.started if seconds is None else seconds
        return build_document(self.info, self.model_name, self.source, self.cfg, self.window, self.map_wh, outputs,
                              self.records, secs, self.tagger, model_sha256=self.model_sha256)


def analyse_video(
    path: str | Path | ArrayVideo,
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
    elsewhere (a Ray decode task, :mod:`avloc.inference.collection`), used instead of decoding here; ``source``: the
    map source to use instead of one made from ``model`` (:class:`avloc.inference.gang.GangedSource`);
    ``info``: what :func:`check_video` returned for ``path`` (the probe is then not repeated).
    Raises :class:`avloc.errors.MediaError` for unreadable inputs, a missing
    audio track (unless ``cfg.visual_only``) or a video without frames at ``cfg.fps``.
    """
    t_start = time.perf_counter()
    media: Media = path if isinstance(path, ArrayVideo) else Path(path)
    path = Path(path.name) if isinstance(path, ArrayVideo) else Path(path)
    if info is None:
        info = check_video(media, model, cfg, tagger, info=None if decoded is None else decoded.info)
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
    if tagger is not None and info.has_audio:  # semantic mode: the whole track once, at YAMNet's rate
        from avloc.inference.semantic import YAMNET_RATE

        tagger.set_audio(track_of(media, YAMNET_RATE), YAMNET_RATE)
        source = tagger.wrap(source)

    def items() -> Iterator[_Item]:
        raws = (decoded.frames if decoded is not None
                else iter_raw_frames(media, info, cfg, audio_cfg.sample_rate, window, work_wh))
        for fr in raws:
            img = torch.from_numpy(fr.image).permute(2, 0, 1)  # (3, h, w) uint8
            x = preprocess_image(img, image_cfg)  # (3, S, S) in [0, 1]
            yield _Item(fr.index, fr.time, fr.source_time, x, fr.audio, fr.rms_db,
                        fr.image if fr.index in sheet_idx else None)

    from tqdm import tqdm

    col = _Collector(scratch, cfg, src_wh, map_wh)
    works: dict[int, np.ndarray] = {}
    with col, tqdm(total=n_est, unit="frame", desc=f"{path.name}: analyse", disable=not progress, leave=False) as bar:
        for r in smooth(_analyse(items(), source, image_cfg, cfg, work_wh, src_wh, map_wh, works), cfg):
            col.add(r, works.pop(r.index, None))
            bar.update(1)
    if not col.records:
        raise MediaError(f"{path}: no frames to analyse at {cfg.fps} fps")
    analysis = VideoAnalysis(path, info, cfg, model_name, source, tagger, window, src_wh, map_wh, col.records,
                             np.array([r.time for r in col.records], np.float64), np.empty(0), col.thumbs,
                             started=t_start, media=media)
    col.finish(analysis)
    return analysis


class _Collector:
    """Gathers what :func:`analyse_video` keeps of each frame: its record, its map (and, with
    ``cfg.save_heatmaps``, class and source maps) in :class:`_MapSink` s, and the contact sheet's thumbnails."""

    def __init__(self, scratch: Path | None, cfg: LocalizeConfig, src_wh: tuple[int, int], map_wh: tuple[int, int]):
        self.cfg, self.src_wh, self.map_wh = cfg, src_wh, map_wh
        self.maps, self.class_maps = _MapSink(scratch, "maps"), _MapSink(scratch, "classmaps")
        self.records: list[FrameRecord] = []
        self.thumbs: list[np.ndarray] = []
        self.cls_probs: list[np.ndarray] = []
        self.cls_det: list[np.ndarray] = []
        self.src_maps: list[np.ndarray] = []
        self.src_meta: list[tuple[int, str, float]] = []  # (frame, label, score) of each grounded source's map
        self.has_sources = False

    def __enter__(self) -> _Collector:
        self.maps.__enter__()
        self.class_maps.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.maps.__exit__(*exc)
        self.class_maps.__exit__(*exc)

    def add(self, r: FrameResult, work: np.ndarray | None) -> None:
        rec = frame_record(r, self.cfg, self.src_wh)
        self.records.append(rec)
        self.maps.add(r.map)
        keep = self.cfg.save_heatmaps
        if r.classes is not None and keep:  # class-aware methods: one map per class and frame (zero unless detected)
            self.class_maps.add(r.classes.maps)
            self.cls_probs.append(r.classes.probabilities)
            self.cls_det.append(r.classes.detected)
        if keep and r.sources is not None:  # heard sources: each grounded one's own map
            self.has_sources = True
            for s in r.sources:
                if s.map is not None:
                    self.src_maps.append(np.asarray(s.map, np.float16))
                    self.src_meta.append((len(self.records) - 1, s.heard.label, float(s.heard.score)))
        if work is not None:
            self.thumbs.append(_thumb(work, r, rec, self.src_wh, self.cfg))

    def finish(self, a: VideoAnalysis) -> None:
        """Fill ``a``'s arrays from the sinks."""
        n, (w, h) = len(self.records), self.map_wh
        a.maps = self.maps.array((n, h, w))
        if len(self.cls_probs) == n:  # class-aware method: class_maps (n, C, H, W), probabilities, detected
            a.class_maps = self.class_maps.array((n, len(self.cls_probs[0]), h, w))
            a.class_probabilities = np.stack(self.cls_probs).astype(np.float32)
            a.class_detected = np.stack(self.cls_det)
        if self.has_sources:
            a.source_maps = np.stack(self.src_maps) if self.src_maps else np.zeros((0, h, w), np.float16)
            a.source_frames = np.asarray([m[0] for m in self.src_meta], np.int64)
            a.source_labels = np.asarray([m[1] for m in self.src_meta], dtype=str)
            a.source_scores = np.asarray([m[2] for m in self.src_meta], np.float32)


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


def _thumb(work: np.ndarray, r: FrameResult, rec: FrameRecord, src_wh: tuple[int, int], cfg: LocalizeConfig) -> np.ndarray:
    """The contact sheet's picture of one frame (class-aware methods: next to each detected class's own map)."""
    import cv2

    tw = cfg.sheet_thumb_width
    th = max(2, round(work.shape[0] * tw / work.shape[1]))
    small = cv2.resize(work, (tw, th), interpolation=cv2.INTER_AREA)
    thumb = draw_overlay(small, display_heat(r.map, heat_strength(rec)), rec, src_wh, cfg.overlay_alpha)
    if r.classes is not None and rec.classes is not None:
        panels = [
            draw_overlay(small, display_heat(r.classes.maps[c.index], 1.0), rec, src_wh, cfg.overlay_alpha,
                         banner=(f"class {c.index}  p={c.probability:.2f}", NEUTRAL_COLOUR), boxes=False)
            for c in rec.classes[:SHEET_CLASS_PANELS]
        ]
        thumb = side_by_side([thumb, *panels], 1 + SHEET_CLASS_PANELS)
    return thumb

