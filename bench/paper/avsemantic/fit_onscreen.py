"""Fit avsemantic's on-screen model (:mod:`avloc.methods.avsemantic.onscreen`) on labelled real footage.

    python bench/paper/avsemantic/fit_onscreen.py --data DIR [DIR ...] [--cache FILE] [--plot PNG] [--out JSON]

Each ``--data`` folder holds clips and an ``annotations.json`` in the realclips format (the dev set
``$AVLOC_DATA/realclips_dev``, and the constructions ``avloc data make realclips-constructions`` builds from
it). Every clip runs through ``avloc localize`` with the current ``avsemantic`` (the evidence does not depend
on the on-screen weights, so one run serves every fit; ``--cache`` keeps the records), then:

1. **cross-validation by source clip**: each clip's frames (every construction made from it included) are
   predicted by a model fitted on the others; balanced accuracy, both recalls and the calibration error
   (ECE, 10 bins) of those held-out predictions are printed, overall and per data set;
2. **the shipped fit**: the model fitted on every frame, printed as the ``AVSemanticConfig`` values to ship
   (``DEFAULT_ONSCREEN_BIAS`` / ``DEFAULT_ONSCREEN_WEIGHTS`` in ``avsemantic/method.py``), and written to
   ``--out``; its signs are non-negative by construction (more evidence never lowers P(on-screen));
3. ``--plot``: the reliability diagram of the held-out predictions (docs/RESULTS.md shows it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("fit_onscreen")


@dataclass
class LabelledFrame:
    """One labelled frame: its data set, source clip, label and what the on-screen model reads."""

    dataset: str
    clip: str
    onscreen: bool
    sources: list[Any]  # HeardEvidence
    motion: float


def sound_sources(data: Path) -> dict[str, str]:
    """Clip file -> the recorded clip its sound comes from: a constructed clip's first sounding tile or its
    off-screen sound (``annotations.json`` of ``avloc data make realclips-constructions``), else the clip
    itself. Cross-validation holds out every frame whose sound comes from one recorded clip together."""
    doc = json.loads((data / "annotations.json").read_text())
    out = {}
    for c in doc["clips"]:
        source = c["file"]
        for f in c.get("frames", []):
            sounding = [t["file"] for t in f.get("tiles", []) if t.get("sounding")]
            sounding += [o["file"] for o in f.get("offscreen_sound", [])]
            if sounding:
                source = sounding[0]
                break
        out[c["file"]] = Path(source).stem
    return out


def collect(data: Path, cache: Path | None) -> list[LabelledFrame]:
    """Run avsemantic on the annotated clips of ``data`` (or read the cached records) -> labelled frames."""
    from avloc.applications.realworld import localize_clips
    from avloc.data.realclips import load_realclips
    from avloc.formats.localize import FrameRecord
    from avloc.inference import LocalizeConfig
    from avloc.methods import create_method

    clips = load_realclips(data)
    sources = sound_sources(data)
    key = f"{data.resolve()}"
    stored: dict[str, Any] = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    done: dict[str, Any] = stored.setdefault(key, {})
    todo = [c for c in clips if c.path.name not in done]
    model = create_method("avsemantic").eval() if todo else None
    for i, c in enumerate(todo, 1):  # one clip at a time, cached as it goes: a long fit survives an interrupt
        log.info("%s: %d/%d %s", data.name, i, len(todo), c.path.name)
        with tempfile.TemporaryDirectory(prefix="avloc-fit-onscreen-") as tmp:
            run = localize_clips([c], model, replace(LocalizeConfig(), fps=5.0), Path(tmp))  # records only: no scoring
        done[c.path.name] = {fid: r.to_dict() for fid, r in run.records.items()}
        if cache is not None:
            write_json_atomic(cache, stored)
    records = {fid: FrameRecord.from_dict(d) for recs in done.values() for fid, d in recs.items()}
    out = []
    for c in clips:
        for f in c.frames:
            rec = records.get(c.frame_id(f))
            if f.onscreen is None or rec is None or rec.silent:  # silent frames are off-screen by rule, not by the model
                continue
            out.append(LabelledFrame(data.name, sources[c.path.name], bool(f.onscreen), evidence_of(rec),
                                     float((rec.onscreen_features or {}).get("motion", 0.0))))
    return out


def write_json_atomic(path: Path, obj: Any) -> None:
    """``obj`` as JSON at ``path``, replaced atomically (an interrupt leaves the previous cache whole)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def evidence_of(rec: Any) -> list[Any]:
    """The heard sources of a record as the on-screen model reads them (group from kind and the sound map's
    off-screen prior; evidence from each source's ``detail``)."""
    from avloc.methods.avsemantic.mapping import load_sound_map
    from avloc.methods.avsemantic.onscreen import HeardEvidence, cause_key

    smap = _sound_map(load_sound_map)
    out = []
    for s in rec.sources or ():
        group = s.kind
        if s.kind == "human" and smap.offscreen_prior[smap.index(s.label)]:
            group = "narration"
        ev = {k: float(v) for k, v in s.detail.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        grounded = s.kind != "none" and s.peak is not None
        out.append(HeardEvidence(group, s.score, ev, cause_key(s.kind, s.grounding, s.label, grounded)))
    return out


_SMAP: list[Any] = []


def _sound_map(load: Any) -> Any:
    if not _SMAP:
        _SMAP.append(load())
    return _SMAP[0]


def cross_validate(frames: list[LabelledFrame], l2: float) -> np.ndarray:
    """Held-out P(on-screen) of every frame: a fit on the frames whose sound comes from another recorded clip."""
    from avloc.methods.avsemantic.onscreen import fit_onscreen_model

    p = np.zeros(len(frames))
    clips = sorted({f.clip for f in frames})
    for i, clip in enumerate(clips):
        train = [f for f in frames if f.clip != clip]
        labels = [f.onscreen for f in train]
        if all(labels) or not any(labels):
            raise SystemExit(f"cross-validation: without {clip!r} only one label is left; add labelled frames")
        m = fit_onscreen_model([f.sources for f in train], labels, [f.motion for f in train], l2=l2)
        for k, f in enumerate(frames):
            if f.clip == clip:
                p[k] = m.frame_probability(f.sources, f.motion)
        log.info("cross-validation %d/%d (%s)", i + 1, len(clips), clip)
    return p


def summary(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Balanced accuracy, the two recalls and ECE of ``p >= 0.5`` (:mod:`avloc.metrics.realworld`)."""
    from avloc.metrics.realworld import expected_calibration_error

    pred = p >= 0.5
    on = float(np.mean(pred[y])) if y.any() else float("nan")
    off = float(np.mean(~pred[~y])) if (~y).any() else float("nan")
    return {"balanced_accuracy": (on + off) / 2, "onscreen_recall": on, "offscreen_recall": off,
            "ece": expected_calibration_error(p, y), "frames": len(y), "offscreen_frames": int((~y).sum())}


def reliability_plot(p: np.ndarray, y: np.ndarray, path: Path, bins: int = 10) -> None:
    """Reliability diagram (observed on-screen rate per predicted-probability bin) and the bins' counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = np.minimum((p * bins).astype(int), bins - 1)
    centres = (np.arange(bins) + 0.5) / bins
    rate = np.array([y[idx == b].mean() if (idx == b).any() else np.nan for b in range(bins)])
    count = np.array([(idx == b).sum() for b in range(bins)])
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(4.5, 5.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    a1.plot([0, 1], [0, 1], "k:", lw=1, label="calibrated")
    a1.plot(centres[count > 0], rate[count > 0], "o-", label="held-out frames")
    a1.set_ylabel("observed on-screen rate")
    a1.set_title("avsemantic P(on-screen), cross-validated by clip")
    a1.legend(loc="upper left")
    a2.bar(centres, count, width=1 / bins * 0.9)
    a2.set_xlabel("predicted P(on-screen)")
    a2.set_ylabel("frames")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    default = Path(os.environ.get("AVLOC_DATA", Path(__file__).resolve().parents[3] / ".." / "shared" / "data"))
    ap.add_argument("--data", type=Path, nargs="+", default=[default / "realclips_dev"])
    ap.add_argument("--cache", type=Path, default=None, help="JSON file keeping the localize records between fits")
    # the likelihood is averaged over frames: 1e-2 outweighed the data (weights ~0.3, CV balanced accuracy 0.50
    # against 0.62 at 1e-4 on the dev set + constructions, 2026-12-08)
    ap.add_argument("--l2", type=float, default=1e-4, help="L2 penalty on the weights (biases are free)")
    ap.add_argument("--plot", type=Path, default=None, help="reliability diagram of the held-out predictions (PNG)")
    ap.add_argument("--out", type=Path, default=None, help="write the fitted model (bias, weights) as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from avloc.methods.avsemantic.onscreen import fit_onscreen_model

    frames = [f for d in args.data for f in collect(d, args.cache)]
    y = np.array([f.onscreen for f in frames])
    p = cross_validate(frames, args.l2)
    print("\n| data | frames | off-screen | balanced accuracy | on-screen recall | off-screen recall | ECE |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in [*sorted({f.dataset for f in frames}), "all"]:
        sel = np.array([name in ("all", f.dataset) for f in frames])
        s = summary(p[sel], y[sel])
        print(f"| {name} | {s['frames']} | {s['offscreen_frames']} | {s['balanced_accuracy']:.3f} | "
              f"{s['onscreen_recall']:.3f} | {s['offscreen_recall']:.3f} | {s['ece']:.3f} |")
    model = fit_onscreen_model([f.sources for f in frames], list(y), [f.motion for f in frames], l2=args.l2)
    print(f"\nDEFAULT_ONSCREEN_BIAS = {json.dumps({g: round(v, 3) for g, v in model.bias.items()})}")
    print("DEFAULT_ONSCREEN_WEIGHTS = " + json.dumps({g: [round(v, 3) for v in w] for g, w in model.weights.items()}))
    if args.out is not None:
        args.out.write_text(json.dumps({"bias": dict(model.bias), "weights": {g: list(w) for g, w in model.weights.items()}},
                                       indent=1) + "\n")
    if args.plot is not None:
        reliability_plot(p, y, args.plot)
        print(f"reliability diagram: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
