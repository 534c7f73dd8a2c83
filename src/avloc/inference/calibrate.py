"""Calibrate the on-screen statistic of ``avloc localize`` on generated clips.

``python -m avloc.inference.calibrate [--model NAME] [--clips N]``

On-screen examples: demo clips (:mod:`avloc.data.synthetic`) whose pulsing disc
makes the sound. Off-screen examples: the pictures of one demo clip with the
sound of another (different burst times), so the visible pulsing does not
match the audio -- the sound comes from something not in view. Each analysed
frame gives the features of :func:`avloc.inference.postprocess.onscreen_statistic`
(peak z-score of the smoothed map, audio RMS); a logistic regression (Newton /
IRLS, L2 1e-3) fits ``w_contrast``, ``w_db`` and ``bias``: :func:`calibrate` returns them and logs them
(logger ``avloc.inference.calibrate``); they are the defaults in :class:`avloc.inference.config.LocalizeConfig`.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from avloc.inference.postprocess import DB_FLOOR, peak_contrast

log = logging.getLogger(__name__)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 50) -> np.ndarray:
    """Unweighted L2 logistic regression, every weight penalised: x (N, D), y (N,) -> weights (D + 1,), bias last
    (:func:`avloc.metrics.logistic.fit_logistic`)."""
    from avloc.metrics.logistic import fit_logistic as irls

    w, b = irls(x, y, l2=l2, iters=iters, balanced=False, penalise_bias=True, ridge=0.0, clip=None, tol=1e-8)
    return np.append(w, b)


def features(model_name: str, n_clips: int, seconds: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    from avloc.data.synthetic import DemoClipConfig, make_demo_clip
    from avloc.inference import LocalizeConfig, localize_video
    from avloc.io.media import write_video
    from avloc.methods.zoo import load_model

    model = load_model(model_name)
    xs, ys = [], []
    with tempfile.TemporaryDirectory() as d:
        for i in range(n_clips):
            cfg = DemoClipConfig(seconds=seconds, width=160, height=120, seed=i)
            on = make_demo_clip(cfg)
            other = make_demo_clip(DemoClipConfig(seconds=seconds, width=160, height=120, seed=1000 + i))
            for label, audio in ((1, on.audio), (0, other.audio)):
                p = Path(d) / f"clip{i}_{label}.mp4"
                write_video(p, iter(on.frames), cfg.fps, audio, cfg.sample_rate)
                lcfg = LocalizeConfig(overlay=False, save_heatmaps=True)
                localize_video(p, model, lcfg, Path(d) / "out", model_name=model_name, progress=False)
                doc = json.loads((Path(d) / "out" / f"{p.stem}.avloc.json").read_text())
                with np.load(Path(d) / "out" / f"{p.stem}.heatmaps.npz") as z:
                    maps = z["maps"].astype(np.float32)
                for f, m in zip(doc["frames"], maps, strict=True):
                    if f["silent"]:
                        continue
                    db = f["audio_rms_db"] if f["audio_rms_db"] is not None else DB_FLOOR
                    xs.append([peak_contrast(m), (db + 30.0) / 10.0])
                    ys.append(label)
    return np.array(xs), np.array(ys, dtype=np.float64)


def calibrate(model_name: str, n_clips: int) -> dict[str, float]:
    """Fit the on-screen logistic model on ``n_clips`` generated clip pairs; log and return its weights."""
    x, y = features(model_name, n_clips)
    w = fit_logistic(x, y)
    p = 1 / (1 + np.exp(-(x @ w[:2] + w[2])))
    acc = float(((p >= 0.5) == (y == 1)).mean())
    log.info("%d frames (%d on-screen): accuracy %.3f, mean p on-screen %.3f, off-screen %.3f",
             len(y), int(y.sum()), acc, p[y == 1].mean(), p[y == 0].mean())
    out = {"onscreen_w_contrast": float(w[0]), "onscreen_w_db": float(w[1]), "onscreen_bias": float(w[2])}
    for k, v in out.items():
        log.info("%s = %.3f", k, v)
    return out


def main(argv: list[str] | None = None) -> int:
    from avloc.inference import DEFAULT_MODEL

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--clips", type=int, default=4)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    calibrate(args.model, args.clips)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
