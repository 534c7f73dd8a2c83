"""Active speaker on side-by-side pairs of real speech segments (development benchmark, issue 26 item 3).

    python bench/paper/avsemantic/speaker_pairs.py [--data DIR] [--framing shot head] [--seconds 5] [--per-pair]
    python bench/paper/avsemantic/speaker_pairs.py --framing shot head --fit-confidence   # fit SpeakerConfig's calibration

Two speech segments tiled left | right at a common height, with the audio of one tile, each tile as shot or
cropped to head and shoulders (``--framing head``: a square ``--head`` face widths wide around the segment's
face, as a split-screen interview frames its speakers; as shot, the TEDx and webinar faces are 7-9 px wide in
the 288-px model input); kinds:

* ``different``: segments of two different clips (each clip's first segment), both layouts, the audio of either;
* ``same``: one clip at two start times (the same face twice, both talking), the audio of either.

Each pair is written as an MP4 into a temporary folder (deleted at the end; nothing is written into the
repository) and run through ``avloc.localize`` with the default model at ``--fps``. A frame is *correct* when
its JSON ``speaker`` box has its centre in the sounding tile; **accuracy** counts every analysed frame (no
speaker = wrong), **chosen** is the fraction with a speaker, **precision** the accuracy where one is chosen.

``--fit-confidence`` fits ``SpeakerConfig``'s calibration. It runs every face as in sync
(``speaker.min_sync=-1``), adds each clip alone with its own audio (the face speaks) and with another clip's
speech (it does not), and reads the best face's synchrony and margin from the human source's ``detail``:

* ``min_sync``: a logistic ``P(own audio | sync)`` on the single faces (own vs other audio, as many of each),
  ``min_sync = -bias / slope`` (the synchrony from which a lone face is more likely than not the speaker);
* ``confidence_slope``, ``confidence_bias``: ``P(correct | margin)`` on every construction
  (:func:`avloc.methods.avsemantic.faces.speaker.fit_confidence`).

Both are cross-validated leave-one-clip-out (every construction using the held-out clip is held out): it prints
the CV balanced accuracy of ``in_sync``, the CV log loss and ECE of the confidence, the accuracy the fitted
``min_sync`` gives (applied to the same runs: exact, the best face is the one chosen) and the values to put in
``SpeakerConfig``. The official two-speaker construction benchmark is built elsewhere (issue 26 item 1); this
one is for development on the dev set alone.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

#: speech segments: clip (relative to the data folder) -> start times (s) of its segments
SEGMENTS: dict[str, tuple[float, ...]] = {
    "realclips_dev/speech_tedx_talk.mp4": (0.0, 5.0, 10.0),
    "realclips_dev/speech_makeup_vlog.mp4": (0.0, 1.6),
    "realclips_dev/singer_guitar_home.mp4": (0.0, 5.0),
    "realclips_dev/speech_webinar_inset.mp4": (0.0, 5.0, 10.0, 15.0),
}
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Segment:
    clip: str
    start: float


@dataclass(frozen=True)
class Pair:
    """``left`` | ``right`` with the audio of ``tiles[sounding]``; ``alone``: one tile only (calibration)."""

    kind: str
    tiles: tuple[Segment, ...]
    sounding: int
    audio_from: Segment | None = None  # another segment's audio (a face that does not speak); None = the sounding tile's
    framing: str = "shot"  # "shot": tiles as shot; "head": head-and-shoulders crops (:func:`head_crop`)

    @property
    def name(self) -> str:
        t = " | ".join(f"{Path(s.clip).stem}@{s.start:g}" for s in self.tiles)
        a = f", audio {Path(self.audio_from.clip).stem}@{self.audio_from.start:g}" if self.audio_from else f", audio {self.sounding}"
        return f"{self.kind} ({self.framing}): {t}{a}"

    def clips(self) -> set[str]:
        return {s.clip for s in self.tiles} | ({self.audio_from.clip} if self.audio_from else set())


def pairs(clips: list[str], framing: str) -> list[Pair]:
    """The side-by-side constructions (module doc)."""
    out = []
    for a, b in itertools.combinations(clips, 2):
        sa, sb = Segment(a, SEGMENTS[a][0]), Segment(b, SEGMENTS[b][0])
        for tiles in ((sa, sb), (sb, sa)):
            out += [Pair("different", tiles, 0, framing=framing), Pair("different", tiles, 1, framing=framing)]
    for c in clips:
        for s, t in itertools.combinations(SEGMENTS[c], 2):
            tiles = (Segment(c, s), Segment(c, t))
            out += [Pair("same", tiles, 0, framing=framing), Pair("same", tiles, 1, framing=framing)]
    return out


def singles(clips: list[str], framing: str) -> list[Pair]:
    """Each clip alone with its own audio (label: speaking) and with the next clip's speech (not speaking)."""
    out = []
    for i, c in enumerate(clips):
        other = clips[(i + 1) % len(clips)]
        for s in SEGMENTS[c]:
            out.append(Pair("alone", (Segment(c, s),), 0, framing=framing))
            out.append(Pair("alone, other audio", (Segment(c, s),), 0, Segment(other, SEGMENTS[other][0]), framing))
    return out


def head_crop(frames: np.ndarray, faces_per_side: float) -> tuple[int, int, int, int]:
    """A fixed square ``(x1, y1, x2, y2)`` around the segment's most seen face: ``faces_per_side`` face widths on a
    side, centred half a face height below the face centre (head and shoulders), inside the frame."""
    from avloc.methods.avsemantic.faces import FaceDetector, track_faces

    step = max(1, len(frames) // 25)
    tracks = track_faces(FaceDetector().detect_frames(list(frames[::step])))
    if not tracks:
        raise SystemExit("head framing: no face found in a segment")
    main = max(tracks, key=lambda tr: int(tr.seen.sum()))
    x, y, w, h = np.median(np.stack([r[:4] for r in main.rows if r is not None]), axis=0)
    H, W = frames.shape[1:3]
    side = int(min(faces_per_side * w, H, W))
    cx, cy = x + w / 2, y + h
    x1 = int(np.clip(cx - side / 2, 0, W - side))
    y1 = int(np.clip(cy - side / 2, 0, H - side))
    return x1, y1, x1 + side, y1 + side


def tile_frames(data: Path, seg: Segment, seconds: float, fps: float, height: int, head: float | None) -> np.ndarray:
    """(T, height, w, 3) uint8 frames of ``seg`` at ``fps``, resized to ``height`` (aspect kept, even width);
    ``head``: cropped to a head-and-shoulders square ``head`` face widths wide first (:func:`head_crop`)."""
    from avloc.io.media import iter_frames

    frames = np.stack([f.image for f in iter_frames(data / seg.clip, fps=fps, start=seg.start, end=seg.start + seconds)])
    if head is not None:
        x1, y1, x2, y2 = head_crop(frames, head)
        frames = frames[:, y1:y2, x1:x2]
    h, w = frames[0].shape[:2]
    wn = 2 * round(w * height / h / 2)
    return np.stack([cv2.resize(f, (wn, height), interpolation=cv2.INTER_AREA) for f in frames])


def segment_audio(data: Path, seg: Segment, seconds: float) -> np.ndarray:
    from avloc.io.media import decode_audio

    wav, _ = decode_audio(data / seg.clip, SAMPLE_RATE)
    a = wav[round(seg.start * SAMPLE_RATE) : round((seg.start + seconds) * SAMPLE_RATE)]
    return np.pad(a, (0, max(0, round(seconds * SAMPLE_RATE) - a.size)))


def build(data: Path, pair: Pair, args: argparse.Namespace, out: Path) -> tuple[Path, tuple[int, int]]:
    """Write the pair's MP4 to ``out``; returns it and the sounding tile's x range in its pixels."""
    from avloc.io.media import write_video

    seconds, fps = args.seconds, args.video_fps
    head = args.head if pair.framing == "head" else None
    tiles = [tile_frames(data, s, seconds, fps, args.tile_height, head) for s in pair.tiles]
    n = min(len(t) for t in tiles)
    frames = np.concatenate([t[:n] for t in tiles], axis=2)  # (T, H, sum w, 3)
    audio = segment_audio(data, pair.audio_from or pair.tiles[pair.sounding], seconds)
    x0 = sum(t.shape[2] for t in tiles[: pair.sounding])
    write_video(out, iter(frames), fps, audio, SAMPLE_RATE)
    if pair.audio_from is not None:  # no tile speaks: a chosen face is never correct
        return out, (0, 0)
    return out, (x0, x0 + tiles[pair.sounding].shape[2])


def score(result: Any, tile: tuple[int, int]) -> dict[str, Any]:
    """Per frame: chosen, correct (speaker box centre in ``tile``), and the chosen face's synchrony margin."""
    rows = []
    for f in result.frames:
        sp = f.speaker
        human = [s for s in (f.sources or ()) if s.kind == "human"]
        det = human[0].detail if human else {}
        cx = None if sp is None else (sp.box.x1 + sp.box.x2) / 2
        rows.append({
            "chosen": sp is not None,
            "correct": cx is not None and tile[0] <= cx < tile[1],
            "sync": det.get("synchrony"),
            "margin": det.get("margin"),
            "confidence": None if sp is None else sp.confidence,
        })
    return {"frames": rows}


def summarise(results: list[tuple[Pair, dict[str, Any]]], per_pair: bool) -> None:
    kinds = sorted({(p.framing, p.kind) for p, _ in results})
    print("| framing | kind | pairs | frames | accuracy | chosen | precision |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for f, k in kinds:
        fr = [r for p, s in results if (p.framing, p.kind) == (f, k) for r in s["frames"]]
        n, ch, ok = len(fr), sum(r["chosen"] for r in fr), sum(r["correct"] for r in fr)
        npairs = sum((p.framing, p.kind) == (f, k) for p, _ in results)
        print(f"| {f} | {k} | {npairs} | {n} | {ok / max(n, 1):.3f} | {ch / max(n, 1):.3f} | {ok / max(ch, 1):.3f} |")
    if per_pair:
        print()
        for p, s in results:
            fr = s["frames"]
            print(f"  {p.name:80s} acc {np.mean([r['correct'] for r in fr]):.2f}  chosen {np.mean([r['chosen'] for r in fr]):.2f}")


def run(data: Path, todo: list[Pair], args: argparse.Namespace) -> list[tuple[Pair, dict[str, Any]]]:
    import avloc
    from avloc.config import apply_overrides
    from avloc.methods import create_method
    from avloc.registry import METHODS

    overrides = list(args.set) + (["speaker.min_sync=-1"] if args.fit_confidence else [])
    model = create_method("avsemantic", apply_overrides(METHODS.get("avsemantic").config_class(), overrides)).eval()
    results = []
    with tempfile.TemporaryDirectory(prefix="avloc-speaker-pairs-") as tmp:
        for i, pair in enumerate(todo):
            path, tile = build(data, pair, args, Path(tmp) / f"pair{i}.mp4")
            res = avloc.localize(path, model, fps=args.fps)
            results.append((pair, score(res, tile)))
            logging.info("%s: accuracy %.2f", pair.name, np.mean([r["correct"] for r in results[-1][1]["frames"]]))
    return results


def _leave_one_clip_out(groups: list[set[str]], fit: Any, predict: Any) -> np.ndarray:
    """Predictions for every example from a model fitted without the examples that use its clips (a construction
    using two clips is predicted by the last fold that holds it out)."""
    out = np.full(len(groups), np.nan)
    for clip in sorted(set().union(*groups)):
        held = np.array([clip in g for g in groups])
        out[held] = predict(fit(~held), held)
    return out


def fit(results: list[tuple[Pair, dict[str, Any]]]) -> None:
    """The two calibration fits of the module doc, leave-one-clip-out."""
    from avloc.methods.avsemantic.faces.speaker import confidence_of, fit_confidence
    from avloc.metrics.realworld import balanced_accuracy, expected_calibration_error

    alone = [(r["sync"], p.audio_from is None, p.clips()) for p, s in results if p.kind.startswith("alone")
             for r in s["frames"] if r["sync"] is not None]
    sy = np.array([v for v, _, _ in alone])
    own = np.array([o for _, o, _ in alone])
    ga = [g for _, _, g in alone]
    p_own = _leave_one_clip_out(ga, lambda tr: fit_confidence(sy[tr], own[tr]),
                                lambda ab, te: confidence_of(sy[te], *ab))
    a_sync, b_sync = fit_confidence(sy, own)
    min_sync = -b_sync / a_sync
    print(f"\nin_sync on {len(own)} single-face frames ({int(own.sum())} own audio): leave-one-clip-out balanced accuracy "
          f"{balanced_accuracy(p_own >= 0.5, own):.3f}; fit on all: min_sync = {min_sync:.4f}")

    rows = [(r["margin"], r["correct"], r["sync"], p) for p, s in results for r in s["frames"] if r["margin"] is not None]
    x = np.array([m for m, _, _, _ in rows])
    y = np.array([c for _, c, _, _ in rows], bool)
    groups = [p.clips() for _, _, _, p in rows]
    p_cv = _leave_one_clip_out(groups, lambda tr: fit_confidence(x[tr], y[tr]), lambda ab, te: confidence_of(x[te], *ab))
    eps = 1e-6
    nll = -np.mean(y * np.log(np.clip(p_cv, eps, 1)) + (~y) * np.log(np.clip(1 - p_cv, eps, 1)))
    slope, bias = fit_confidence(x, y)
    print(f"confidence on {len(y)} frames ({int(y.sum())} correct): leave-one-clip-out log loss {nll:.3f} "
          f"(base rate {-np.mean(y * np.log(y.mean()) + (~y) * np.log(1 - y.mean())):.3f}), ECE "
          f"{expected_calibration_error(p_cv, y):.3f}; fit on all: confidence_slope = {slope:.3f}, confidence_bias = {bias:.3f}")
    print(f"\nwith min_sync = {min_sync:.4f} (the best face chosen only when in sync):")
    chosen: dict[tuple[str, str], list[tuple[bool, bool]]] = {}
    for p, s in results:
        for r in s["frames"]:
            ok = r["sync"] is not None and r["sync"] >= min_sync
            chosen.setdefault((p.framing, p.kind), []).append((ok, ok and r["correct"]))
    print("| framing | kind | frames | accuracy | chosen | precision |")
    print("|---|---|---:|---:|---:|---:|")
    for (f, k), v in sorted(chosen.items()):
        a = np.array(v, bool).reshape(-1, 2)
        print(f"| {f} | {k} | {len(a)} | {a[:, 1].mean():.3f} | {a[:, 0].mean():.3f} | {a[:, 1].sum() / max(1, a[:, 0].sum()):.3f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--data", type=Path, default=None, help="the shared data folder (default $AVLOC_DATA)")
    ap.add_argument("--seconds", type=float, default=5.0, help="segment length")
    ap.add_argument("--fps", type=float, default=5.0, help="analysed frames per second")
    ap.add_argument("--video-fps", type=float, default=25.0, help="frame rate of the written pairs")
    ap.add_argument("--tile-height", type=int, default=360)
    ap.add_argument("--framing", nargs="+", choices=["shot", "head"], default=["shot"],
                    help="tiles as shot, and/or cropped to head and shoulders (a split-screen interview's framing)")
    ap.add_argument("--head", type=float, default=4.0, help="--framing head: the crop's side in face widths")
    ap.add_argument("--kinds", nargs="+", default=["different", "same"], choices=["different", "same"])
    ap.add_argument("--per-pair", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="avsemantic config overrides (speaker.window_s=6)")
    ap.add_argument("--fit-confidence", action="store_true", help="also run single clips and fit the confidence map")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.data is None:
        if "AVLOC_DATA" not in os.environ:
            ap.error("no data folder: pass --data DIR or set AVLOC_DATA")
        args.data = Path(os.environ["AVLOC_DATA"])
    clips = [c for c in SEGMENTS if (args.data / c).is_file()]
    if len(clips) < 2:
        raise SystemExit(f"need at least two of {list(SEGMENTS)} under {args.data} (set AVLOC_DATA or --data)")
    todo = [p for f in args.framing for p in pairs(clips, f) if p.kind in args.kinds]
    if args.fit_confidence:
        todo += [p for f in args.framing for p in singles(clips, f)]
    results = run(args.data, todo, args)
    summarise(results, args.per_pair)
    if args.fit_confidence:
        fit(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
