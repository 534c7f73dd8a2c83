"""Constructions from real annotated clips: does the sound, rather than the picture, choose the answer? (issue 26)

From any folder of clips with an ``annotations.json`` in the real-footage format (:mod:`avloc.data.realclips`)
and optional unannotated clips (silent distractor tiles only), :func:`build_constructions` writes a new folder
of clips (H.264/AAC MP4) with its own ``annotations.json`` in the same format, so the ``realclips`` protocol
and ``bench/paper/avsemantic/realclips.py --data`` score it unchanged. No new annotation: every label follows
from the source annotations and the construction. Kinds (:data:`KINDS`):

* ``mosaic-1x2-one`` / ``mosaic-2x2-one`` / ``mosaic-1x2-two`` / ``mosaic-2x2-two``: 1x2 or 2x2 tilings of time
  segments of different clips, with the sound of one tile or of two tiles mixed (the two-stage paper's 2x2
  MUSIC-Synthetic with one or two sounding, Qian et al. ECCV 2020 Sec. 4.1; the side-by-side layout of
  DSOL's duets, Hu et al. NeurIPS 2020). Every sounding tile's segment is centred (as far as the clip allows)
  on one of its annotated frames; that frame of the mosaic is labelled: ground truth = the sounding tiles'
  annotated boxes mapped into the mosaic (distractor tiles' objects are not ground truth), on-screen = true.
* ``swapped``: a clip's frames with another clip's sound of a class not present in it (SLAVC's non-sounding
  pairs, Mo & Morgado NeurIPS 2022): every frame on a 0.2 s grid is labelled off-screen.
* ``two-speakers`` / ``two-speakers-same``: two talking-head segments side by side (two speech clips, or the
  same clip at two disjoint times, where only lip synchrony can tell) with the sound of one: the speaking
  tile (``speaker_tile``) and its annotated head box.

Tiles keep each clip's aspect ratio (letterboxed into ``tile_size``); a box ``[x1, y1, x2, y2]`` of tile
``(row, col)`` maps to ``((col * W + ox + x1 * cw) / (cols * W), (row * H + oy + y1 * ch) / (rows * H), ...)``
with the picture ``cw x ch`` placed at ``(ox, oy)`` in its ``W x H`` tile. Two sounds are mixed at equal
loudness (each segment scaled to ``mix_rms_db``). Output frame ``i`` at ``i / fps`` shows each tile's source
frame nearest its segment start plus ``i / fps``; labelled times lie on the ``label_grid`` (the default
analysis rate of ``avloc localize``) so the analysis sees exactly the labelled frames.

Deterministic: the same inputs, seed and config give byte-identical ``annotations.json`` and manifests and the
same decoded frames; clip ``i`` of a kind depends only on (seed, kind, i), so a smaller ``per_kind`` builds a
prefix. The written clips are media derived from the inputs: never commit them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avloc.data.realclips import ANNOTATIONS, AnnotatedFrame, load_realclips
from avloc.errors import ConfigError, DataError, OutputExistsError
from avloc.registry import DATASETS

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = (
    "mosaic-1x2-one", "mosaic-2x2-one", "mosaic-1x2-two", "mosaic-2x2-two", "swapped", "two-speakers",
    "two-speakers-same",
)
#: mosaic kinds: (rows, cols, sounding tiles)
MOSAICS: dict[str, tuple[int, int, int]] = {
    "mosaic-1x2-one": (1, 2, 1), "mosaic-2x2-one": (2, 2, 1), "mosaic-1x2-two": (1, 2, 2), "mosaic-2x2-two": (2, 2, 2),
}
MANIFESTS = "manifests"  # OUT/manifests/{kind}.jsonl and all.jsonl: the registered data set's frames
ALL = "all"
_ROUND = 6  # decimals of normalised coordinates and times in the annotations (byte-stable JSON)

Rect = tuple[float, float, float, float]


@dataclass(frozen=True)
class ConstructionConfig:
    """How constructions are cut, laid out, mixed and encoded (module doc)."""

    #: length of every constructed clip (s): long enough for synchrony over a window of seconds, short enough
    #: that the same 6.6 s talking-head clip gives two disjoint segments (``two-speakers-same``)
    segment_seconds: float = 3.0
    #: output frame rate; labelled times lie on ``label_grid`` (1 / avloc localize's default 5 fps)
    fps: float = 25.0
    label_grid: float = 0.2
    #: tile size (W, H) in pixels of mosaics and side-by-side speakers (4:3; 16:9 clips are letterboxed)
    tile_size: tuple[int, int] = (320, 240)
    #: soundtrack rate: YAMNet's and most methods' front-end rate (16 kHz)
    sample_rate: int = 16000
    #: every sounding segment is scaled to this RMS (dBFS) before mixing; the gain is capped at max_gain_db
    mix_rms_db: float = -20.0
    max_gain_db: float = 30.0
    #: the mix is scaled down when its peak exceeds this
    peak_limit: float = 0.99
    #: a tile's AudioSet labels: every yamnet_top class at or above this score on its clip's on-screen frames
    label_min_score: float = 0.1
    #: clips of this category are talking heads (``two-speakers`` kinds)
    speech_category: str = "speech"
    #: ``two-speakers``: also label frames this far (s) from the annotated one (speaking tile known, no box)
    speaker_offsets: tuple[float, ...] = (-1.0, 1.0)
    #: x264 settings of the written clips; one thread, so the same inputs give the same file (threaded x264
    #: output varies with the machine's load)
    crf: int = 20
    preset: str = "veryfast"
    threads: int = 1

    def __post_init__(self) -> None:
        if not (self.segment_seconds > 0 and self.fps > 0 and self.label_grid > 0):
            raise ConfigError("constructions: segment_seconds, fps and label_grid must be positive")
        if abs(self.label_grid * self.fps - round(self.label_grid * self.fps)) > 1e-9:
            raise ConfigError(f"constructions: label_grid {self.label_grid} s is not a whole number of frames at {self.fps} fps")
        if min(self.tile_size) < 16 or any(v % 2 for v in self.tile_size):
            raise ConfigError(f"constructions: tile_size must be even and >= 16 px, got {self.tile_size}")
        if self.sample_rate < 8000 or not 0 < self.peak_limit <= 1 or not 0 <= self.label_min_score <= 1:
            raise ConfigError("constructions: sample_rate >= 8000, peak_limit in (0, 1], label_min_score in [0, 1]")

    @property
    def n_frames(self) -> int:
        return round(self.segment_seconds * self.fps)


# --------------------------------------------------------------------------- sources and plans
@dataclass(frozen=True)
class Source:
    """An input clip: annotated (``category``, ``frames``, the AudioSet ``labels`` of its visible sources) or
    an unannotated distractor (``category`` None: only ever a silent tile)."""

    path: Path
    folder: str  # "clips" or "videos"
    duration: float
    size: tuple[int, int]  # display (W, H)
    category: str | None = None
    frames: tuple[AnnotatedFrame, ...] = ()
    labels: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.path.name

    def distinct(self, other: Source) -> bool:
        """Sounds of different classes: another category and no shared label (unannotated: unknown, allowed)."""
        if self.category is None or other.category is None:
            return self.path != other.path
        return self.category != other.category and not (self.labels & other.labels)


@dataclass(frozen=True)
class TilePlan:
    source: Source
    start: float  # segment start in the source (s)
    sounding: bool
    frame: AnnotatedFrame | None = None  # the annotated frame shown at the label time (sounding tiles)


@dataclass(frozen=True)
class Label:
    """One labelled frame of a constructed clip."""

    t: float
    onscreen: bool | None
    scored: bool  # the sounding tiles' boxes are ground truth at t
    speaker: bool = False  # speaker_tile is known at t


@dataclass(frozen=True)
class ClipPlan:
    name: str
    kind: str
    grid: tuple[int, int]  # rows, cols
    tile_size: tuple[int, int]
    tiles: tuple[TilePlan, ...]
    audio: tuple[tuple[Source, float], ...]  # segments (source, start) mixed into the soundtrack
    labels: tuple[Label, ...]
    what: str


def _labels_of(frames: Sequence[AnnotatedFrame], min_score: float) -> frozenset[str]:
    return frozenset(lab for f in frames if f.onscreen for lab, s in f.yamnet_top if s >= min_score)


def load_sources(clips_dir: str | Path, videos_dir: str | Path | None, cfg: ConstructionConfig) -> list[Source]:
    """Annotated clips of ``clips_dir`` and unannotated ``*.mp4`` of ``videos_dir``, probed, in name order.

    Clips shorter than a segment are left out (logged)."""
    from avloc.io.media import probe

    out: list[Source] = []
    for c in sorted(load_realclips(clips_dir), key=lambda c: c.path.name):
        info = probe(c.path)
        out.append(Source(c.path, "clips", float(info.duration or 0.0), (int(info.width or 0), int(info.height or 0)),
                          c.category, c.frames, _labels_of(c.frames, cfg.label_min_score)))
    annotated = {s.path.resolve() for s in out}
    if videos_dir is not None:
        vdir = Path(videos_dir)
        if not vdir.is_dir():
            raise DataError(f"--videos {vdir}: not a folder")
        for p in sorted(vdir.glob("*.mp4")):
            if p.resolve() in annotated:
                continue
            info = probe(p)
            out.append(Source(p, "videos", float(info.duration or 0.0), (int(info.width or 0), int(info.height or 0))))
    short = [s.name for s in out if s.duration < cfg.segment_seconds]
    if short:
        log.info("constructions: %d clip(s) shorter than %.1f s left out: %s", len(short), cfg.segment_seconds, short)
    return [s for s in out if s.duration >= cfg.segment_seconds]


def _sounding_frames(sources: Sequence[Source]) -> list[tuple[Source, AnnotatedFrame]]:
    """Annotated frames whose visible sounding objects are boxed: scored, on-screen, with boxes."""
    return [(s, f) for s in sources for f in s.frames if f.scored and f.onscreen and f.boxes]


def _label_time(frames: Sequence[tuple[Source, AnnotatedFrame]], cfg: ConstructionConfig) -> float | None:
    """The label time ``tau`` (on the grid, nearest the segment's middle) at which every (source, frame) can
    show its annotated frame with its whole segment inside the source; ``None`` when there is none."""
    seg = cfg.segment_seconds
    lo = max([0.0] + [f.t + seg - s.duration for s, f in frames])
    hi = min([seg - 1.0 / cfg.fps] + [f.t for s, f in frames])
    g = cfg.label_grid
    k_lo, k_hi = math.ceil(lo / g - 1e-9), math.floor(hi / g + 1e-9)
    if k_lo > k_hi:
        return None
    return round(min(max(round(seg / 2 / g), k_lo), k_hi) * g, _ROUND)


def _centred_start(s: Source, t: float, cfg: ConstructionConfig) -> float:
    """Start of the segment of ``s`` centred on ``t``, moved inside the clip."""
    return round(min(max(t - cfg.segment_seconds / 2, 0.0), s.duration - cfg.segment_seconds), _ROUND)


def _rng(seed: int, kind: str, i: int | None = None) -> np.random.Generator:
    return np.random.default_rng([seed, KINDS.index(kind)] + ([] if i is None else [i]))


def _take(kind: str, candidates: list[Any], per_kind: int, seed: int) -> list[Any]:
    """The first ``per_kind`` candidates in a seeded order (all of them, logged, when there are fewer)."""
    if len(candidates) < per_kind:
        log.info("constructions: %s has %d distinct constructions (asked %d)", kind, len(candidates), per_kind)
    order = _rng(seed, kind).permutation(len(candidates))
    return [candidates[int(j)] for j in order[:per_kind]]


def _describe(s: Source, f: AnnotatedFrame | None) -> str:
    return f"{s.name} @ {f.t:.3f} s ({f.what})" if f is not None else s.name


# --------------------------------------------------------------------------- planning, one function per kind
def plan_mosaics(kind: str, sources: Sequence[Source], per_kind: int, seed: int, cfg: ConstructionConfig) -> list[ClipPlan]:
    """``per_kind`` mosaics of ``kind``: the sounding frames (or pairs of frames of distinct classes) in a seeded
    order, cycled; distractor tiles, their segments and the tile order drawn from (seed, kind, i)."""
    rows, cols, n_sound = MOSAICS[kind]
    singles = _sounding_frames(sources)
    if n_sound == 1:
        groups = [[sf] for sf in singles]
    else:
        groups = [[a, b] for i, a in enumerate(singles) for b in singles[i + 1:] if a[0].distinct(b[0])]
    groups = [g for g in groups if _label_time(g, cfg) is not None]
    if not groups:
        return []
    order = _rng(seed, kind).permutation(len(groups))
    plans = []
    for i in range(per_kind):
        group = groups[int(order[i % len(groups)])]
        rng = _rng(seed, kind, i)
        tau = _label_time(group, cfg)
        assert tau is not None
        pool = [s for s in sources if all(s.distinct(g[0]) for g in group)]
        if len(pool) < rows * cols - n_sound:
            raise DataError(f"constructions: {kind} needs {rows * cols - n_sound} distractor clips of other classes, "
                            f"only {len(pool)} available; add unannotated clips with --videos")
        picks = [pool[int(j)] for j in rng.choice(len(pool), rows * cols - n_sound, replace=False)]
        tiles = [TilePlan(s, round(f.t - tau, _ROUND), True, f) for s, f in group]
        tiles += [TilePlan(s, round(float(rng.uniform(0, s.duration - cfg.segment_seconds)), 3), False) for s in picks]
        slots = rng.permutation(rows * cols)
        placed = tuple(tiles[int(np.argwhere(slots == k)[0, 0])] for k in range(rows * cols))
        sound = " + ".join(_describe(s, f) for s, f in group)
        plans.append(ClipPlan(f"{kind}_{i:03d}", kind, (rows, cols), cfg.tile_size, placed,
                              tuple((t.source, t.start) for t in tiles[:n_sound]), (Label(tau, True, True),),
                              f"{rows}x{cols} mosaic, sound of {sound}"))
    return plans


def plan_swapped(sources: Sequence[Source], per_kind: int, seed: int, cfg: ConstructionConfig) -> list[ClipPlan]:
    """Frames of clip A (a segment centred on one of its annotated frames) with the sound of clip B of a distinct
    class (a segment centred on one of B's boxed sounding frames); every grid frame labelled off-screen."""
    annotated = [s for s in sources if s.category is not None]
    cands = [(a, fa, b, fb) for a in annotated for fa in a.frames for b, fb in _sounding_frames(annotated)
             if a.distinct(b)]
    times = [round(k * cfg.label_grid, _ROUND) for k in range(math.floor(cfg.segment_seconds / cfg.label_grid + 1e-9))
             if k * cfg.label_grid < cfg.segment_seconds - 1e-9]
    plans = []
    for i, (a, fa, b, fb) in enumerate(_take("swapped", cands, per_kind, seed)):
        tile = TilePlan(a, _centred_start(a, fa.t, cfg), False)
        size = (a.size[0] - a.size[0] % 2, a.size[1] - a.size[1] % 2)
        plans.append(ClipPlan(f"swapped_{i:03d}", "swapped", (1, 1), size, (tile,), ((b, _centred_start(b, fb.t, cfg)),),
                              tuple(Label(t, False, False) for t in times),
                              f"frames of {_describe(a, fa)} with the sound of {_describe(b, fb)}: off-screen"))
    return plans


def plan_speakers(kind: str, sources: Sequence[Source], per_kind: int, seed: int, cfg: ConstructionConfig) -> list[ClipPlan]:
    """Two talking-head segments side by side with the sound of one: other speech clips (``two-speakers``) or
    the same clip at a disjoint time (``two-speakers-same``); every annotated frame of the partner may be used."""
    speech = [s for s in sources if s.category == cfg.speech_category]
    same = kind == "two-speakers-same"
    seg = cfg.segment_seconds
    cands = []
    for s, f in _sounding_frames(speech):
        tau = _label_time([(s, f)], cfg)
        if tau is None:
            continue
        start = round(f.t - tau, _ROUND)
        for p in speech:
            if (p.path == s.path) != same:
                continue
            for fp in p.frames:
                p_start = _centred_start(p, fp.t, cfg)
                if same and abs(p_start - start) < seg:
                    continue
                cands += [(s, f, tau, start, p, fp, p_start, side) for side in (0, 1)]
    plans = []
    for i, (s, f, tau, start, p, fp, p_start, side) in enumerate(_take(kind, cands, per_kind, seed)):
        talk, other = TilePlan(s, start, True, f), TilePlan(p, p_start, False)
        tiles = (talk, other) if side == 0 else (other, talk)
        extra = [round(tau + d, _ROUND) for d in cfg.speaker_offsets if 0 <= tau + d < seg - 1e-9]
        labels = (Label(tau, True, True, True), *(Label(t, None, False, True) for t in extra))
        plans.append(ClipPlan(f"{kind}_{i:03d}", kind, (1, 2), cfg.tile_size, tiles, ((s, start),), labels,
                              f"{_describe(s, f)} speaking beside {_describe(p, fp)}, silent (its segment starts at {p_start:.3f} s)"))
    return plans


def plan_all(sources: Sequence[Source], per_kind: int, seed: int, cfg: ConstructionConfig,
             kinds: Sequence[str] = KINDS) -> list[ClipPlan]:
    """Plans of every kind in ``kinds``; a kind the sources cannot make is left out (logged)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ConfigError(f"unknown construction kinds {unknown}; valid: {list(KINDS)}")
    plans: list[ClipPlan] = []
    for kind in kinds:
        if kind in MOSAICS:
            made = plan_mosaics(kind, sources, per_kind, seed, cfg)
        elif kind == "swapped":
            made = plan_swapped(sources, per_kind, seed, cfg)
        else:
            made = plan_speakers(kind, sources, per_kind, seed, cfg)
        if not made:
            log.warning("constructions: the clips cannot make any %s (see avloc.data.constructions)", kind)
        plans += made
    return plans


# --------------------------------------------------------------------------- geometry and annotations
@dataclass(frozen=True)
class Placement:
    """Where a source's picture goes in its tile: tile ``(row, col)``, picture size ``(cw, ch)``, offset."""

    row: int
    col: int
    content: tuple[int, int]
    offset: tuple[int, int]


def placement(plan: ClipPlan, k: int) -> Placement:
    """Letterbox tile ``k`` (row-major) of ``plan``: aspect kept, centred (module doc)."""
    (w, h), (tw, th) = plan.tiles[k].source.size, plan.tile_size
    s = min(tw / w, th / h)
    cw, ch = min(tw, max(2, round(w * s))), min(th, max(2, round(h * s)))
    return Placement(k // plan.grid[1], k % plan.grid[1], (cw, ch), ((tw - cw) // 2, (th - ch) // 2))


def tile_rect(plan: ClipPlan, k: int) -> Rect:
    rows, cols = plan.grid
    pl = placement(plan, k)
    return (pl.col / cols, pl.row / rows, (pl.col + 1) / cols, (pl.row + 1) / rows)


def map_box(plan: ClipPlan, k: int, box: Sequence[float]) -> Rect:
    """A box normalised to tile ``k``'s source frame -> normalised to the whole constructed frame (module doc)."""
    rows, cols = plan.grid
    (tw, th), pl = plan.tile_size, placement(plan, k)
    (cw, ch), (ox, oy) = pl.content, pl.offset
    x1, y1, x2, y2 = box
    return (round((pl.col * tw + ox + x1 * cw) / (cols * tw), _ROUND), round((pl.row * th + oy + y1 * ch) / (rows * th), _ROUND),
            round((pl.col * tw + ox + x2 * cw) / (cols * tw), _ROUND), round((pl.row * th + oy + y2 * ch) / (rows * th), _ROUND))


def _tile_entry(plan: ClipPlan, k: int, label: Label) -> dict[str, Any]:
    """A tile of a labelled frame: where, what, whether it sounds, its mapped boxes (sounding tiles of scored
    frames) and the AudioSet labels of its sound (sounding tiles)."""
    t = plan.tiles[k]
    return {
        "rect": [round(v, _ROUND) for v in tile_rect(plan, k)], "file": t.source.name, "from": t.source.folder,
        "start": t.start, "sounding": t.sounding, "category": t.source.category,
        "boxes": [list(map_box(plan, k, b)) for b in t.frame.boxes] if t.sounding and label.scored and t.frame else [],
        "labels": sorted(t.source.labels) if t.sounding else [],
    }


def _frame_entry(plan: ClipPlan, label: Label) -> dict[str, Any]:
    tiles = [_tile_entry(plan, k, label) for k in range(len(plan.tiles))]
    sounding = [k for k, t in enumerate(plan.tiles) if t.sounding]
    d: dict[str, Any] = {
        "t": label.t, "boxes": [b for k in sounding for b in tiles[k]["boxes"]], "onscreen": label.onscreen,
        "scored": label.scored, "what": plan.what,
    }
    if label.scored and len(sounding) == 1 and plan.tiles[sounding[0]].frame is not None:
        frame = plan.tiles[sounding[0]].frame
        assert frame is not None
        d["yamnet_top"] = [f"{lab} ({s:.2f})" for lab, s in frame.yamnet_top]  # the same sound at the same time
    d.update(construction=plan.kind, tiles=tiles, sounding_tiles=sounding)
    if not sounding:  # the sound comes from another clip: what it is, for reference
        d["offscreen_sound"] = [{"file": s.name, "start": start, "category": s.category, "labels": sorted(s.labels)}
                                for s, start in plan.audio]
    if label.speaker:
        d["speaker_tile"] = sounding[0]
    return d


def annotation(plan: ClipPlan) -> dict[str, Any]:
    """The ``annotations.json`` entry of a planned clip (module doc; :mod:`avloc.data.realclips` format)."""
    srcs = sorted({f"{t.source.folder}/{t.source.name}" for t in plan.tiles} | {f"{s.folder}/{s.name}" for s, _ in plan.audio})
    return {"file": f"{plan.name}.mp4", "source": "avloc constructions from " + ", ".join(srcs), "category": plan.kind,
            "construction": plan.kind, "frames": [_frame_entry(plan, lab) for lab in plan.labels]}


def manifest_entries(plan: ClipPlan) -> Iterator[dict[str, Any]]:
    """Manifest entries (:mod:`avloc.formats.manifest`) of the frames with an on/off-screen label (pixel boxes)."""
    rows, cols = plan.grid
    w, h = cols * plan.tile_size[0], rows * plan.tile_size[1]
    for lab in plan.labels:
        if lab.onscreen is None:
            continue
        fr = _frame_entry(plan, lab)
        yield {"id": f"{plan.name}@{lab.t:.3f}", "video": f"../{plan.name}.mp4", "time": lab.t, "size": [w, h],
               "boxes": [[round(b[0] * w, 3), round(b[1] * h, 3), round(b[2] * w, 3), round(b[3] * h, 3)] for b in fr["boxes"]],
               "onscreen": lab.onscreen, "image_id": plan.name, "construction": plan.kind, "split": "test"}


# --------------------------------------------------------------------------- rendering
@dataclass
class AudioSegments:
    """Segments of the sources' soundtracks, mono at ``rate`` (each track decoded once)."""

    rate: int
    tracks: dict[Path, np.ndarray] = field(default_factory=dict)

    def segment(self, s: Source, start: float, seconds: float) -> np.ndarray:
        from avloc.io.media import decode_audio

        if s.path not in self.tracks:
            self.tracks[s.path] = decode_audio(s.path, self.rate)[0]
        wav = self.tracks[s.path]
        i, n = round(start * self.rate), round(seconds * self.rate)
        out = np.zeros(n, np.float32)
        part = wav[i : i + n]
        out[: part.size] = part
        return out


def mix(segments: Sequence[np.ndarray], cfg: ConstructionConfig) -> np.ndarray:
    """Each segment scaled to ``mix_rms_db`` (gain capped at ``max_gain_db``), summed, peak-limited -> (N,) float32."""
    out = np.zeros_like(segments[0], dtype=np.float64)
    for a in segments:
        rms = float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))
        level = 20 * math.log10(rms) if rms > 0 else -math.inf
        out += a * 10 ** (min(cfg.mix_rms_db - level, cfg.max_gain_db) / 20)
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    if peak > cfg.peak_limit:
        out *= cfg.peak_limit / peak
    return out.astype(np.float32)


def _tile_frames(plan: ClipPlan, k: int, cfg: ConstructionConfig) -> np.ndarray:
    """``(n, H, W, 3)`` uint8: tile ``k`` over the clip, each output frame the source frame nearest its time."""
    from avloc.io.media import iter_frames

    t, pl = plan.tiles[k], placement(plan, k)
    (cw, ch), (ox, oy), (tw, th) = pl.content, pl.offset, plan.tile_size
    margin = 1.0  # s decoded around the segment, so the nearest frame of each end is among them
    decoded = list(iter_frames(t.source.path, None, (cw, ch), max(0.0, t.start - margin),
                               t.start + cfg.segment_seconds + margin))
    if not decoded:
        raise DataError(f"{t.source.path}: no frames between {t.start:.3f} s and {t.start + cfg.segment_seconds:.3f} s")
    times = np.array([f.time for f in decoded])
    out = np.zeros((cfg.n_frames, th, tw, 3), np.uint8)
    for i in range(cfg.n_frames):
        j = int(np.argmin(np.abs(times - (t.start + i / cfg.fps))))
        out[i, oy : oy + ch, ox : ox + cw] = decoded[j].image
    return out


def render(plan: ClipPlan, path: Path, cfg: ConstructionConfig, audio: AudioSegments) -> None:
    """Write the planned clip (H.264/AAC MP4) atomically at ``path``."""
    from avloc.formats.atomic import atomic_path
    from avloc.io.media import write_video

    rows, cols = plan.grid
    tw, th = plan.tile_size
    canvas = np.zeros((cfg.n_frames, rows * th, cols * tw, 3), np.uint8)  # (n, H, W, 3)
    for k in range(len(plan.tiles)):
        pl = placement(plan, k)
        canvas[:, pl.row * th : (pl.row + 1) * th, pl.col * tw : (pl.col + 1) * tw] = _tile_frames(plan, k, cfg)
    sound = mix([audio.segment(s, start, cfg.segment_seconds) for s, start in plan.audio], cfg)
    with atomic_path(path) as tmp:
        write_video(tmp, iter(canvas), cfg.fps, sound, cfg.sample_rate, crf=cfg.crf, preset=cfg.preset,
                    threads=cfg.threads)


# --------------------------------------------------------------------------- the builder
def build_constructions(
    clips_dir: str | Path,
    out_dir: str | Path,
    videos_dir: str | Path | None = None,
    seed: int = 0,
    per_kind: int = 24,
    kinds: Sequence[str] = KINDS,
    cfg: ConstructionConfig | None = None,
    force: bool = False,
) -> Path:
    """Build the constructions of ``clips_dir`` (+ distractors of ``videos_dir``) into ``out_dir`` (module doc).

    Writes every clip, then ``manifests/{kind}.jsonl`` and ``manifests/all.jsonl``, then ``annotations.json``
    (last: its presence marks a complete set), each atomically. Returns the path of ``annotations.json``.
    Raises :class:`OutputExistsError` when ``out_dir`` holds a set and ``force`` is false.
    """
    from tqdm import tqdm

    from avloc.formats.atomic import write_text_atomic
    from avloc.formats.manifest import write_manifest

    cfg = cfg or ConstructionConfig()
    if per_kind < 1:
        raise ConfigError(f"--per-kind must be >= 1, got {per_kind}")
    out = Path(out_dir)
    if (out / ANNOTATIONS).exists() and not force:
        raise OutputExistsError(f"{out / ANNOTATIONS} exists; pass --force to rebuild the set")
    if Path(clips_dir).resolve() == out.resolve():
        raise DataError(f"--out {out} is the --clips folder; choose a new folder")
    plans = plan_all(load_sources(clips_dir, videos_dir, cfg), per_kind, seed, cfg, kinds)
    if not plans:
        raise DataError(f"{clips_dir}: no construction can be made from these clips (see avloc.data.constructions)")
    out.mkdir(parents=True, exist_ok=True)
    audio = AudioSegments(cfg.sample_rate)
    for plan in tqdm(plans, unit="clip", desc="constructions"):
        render(plan, out / f"{plan.name}.mp4", cfg, audio)
    made = sorted({p.kind for p in plans}, key=KINDS.index)
    for kind in made:
        write_manifest(out / MANIFESTS / f"{kind}.jsonl", (e for p in plans if p.kind == kind for e in manifest_entries(p)))
    write_manifest(out / MANIFESTS / f"{ALL}.jsonl", (e for p in plans for e in manifest_entries(p)))
    doc = {
        "_about": "avloc constructions (avloc.data.constructions; issue 26) from the annotated clips of "
        f"{Path(clips_dir).name!r}" + (f" and distractors of {Path(videos_dir).name!r}" if videos_dir else "")
        + f"; seed {seed}, {per_kind} per kind. Same format as the source set, plus 'construction', 'tiles', "
        "'sounding_tiles', 'speaker_tile'. Media derived from the sources: never commit them.",
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()},
        "seed": seed, "per_kind": per_kind, "kinds": made,
        "clips": [annotation(p) for p in plans],
    }
    path = out / ANNOTATIONS
    write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n")
    return path


# --------------------------------------------------------------------------- the registered data set
@DATASETS.register("realclips-constructions")
def realclips_constructions(raw: str | Path, variant: str = ALL, split: str = "test", image_cfg: Any = None,
                            audio_cfg: Any = None, **kwargs: Any) -> Any:
    """The frames of a built set (``raw`` = the ``--out`` of ``avloc data make realclips-constructions``) with an
    on/off-screen label, of one kind (``variant``) or ``all``, as a manifest data set (test split only)."""
    from avloc.data.datasets import ManifestDataset

    if split != "test":
        raise ConfigError(f"realclips-constructions is an evaluation set: split must be 'test', got {split!r}")
    path = Path(raw) / MANIFESTS / f"{variant}.jsonl"
    if not path.is_file():
        raise DataError(f"{path} not found: build the set with `avloc data make realclips-constructions --clips DIR "
                        f"--out {raw}` and pass --raw {raw}; kinds: {[ALL, *KINDS]}")
    return ManifestDataset(path, image_cfg, audio_cfg, **kwargs)
