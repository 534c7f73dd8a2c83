"""Max abs difference of the 521 scores: torch YAMNet vs the TFLite file, on real clips, silence and noise.

Usage::

    python bench/paper/avsemantic/compare_yamnet.py --data ../shared/data [--step 1.0]

Windows: every ``--step`` seconds of each ``realclips_dev/*.mp4`` (decoded with
``avloc.io.media.decode_audio``, resampled to 16 kHz), plus one of silence and two
of white noise. References: the TFLite interpreter's default CPU path (XNNPACK, what
``YamnetTagger`` runs) and, for scale, the same file on TFLite's reference kernels.
Prints a markdown table of the per-window max abs differences (max, median, share
of windows under 1e-4) and the top-1 agreement.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from avloc.io.audio import resample, windows_at
from avloc.io.media import decode_audio
from avloc.methods.avsemantic.yamnet import SAMPLE_RATE, WINDOW_SAMPLES, load_yamnet

log = logging.getLogger("compare_yamnet")
NOISE_STD = 0.1
EXACT = 1e-4


def _tflite_scores(path: Path, wins: np.ndarray, reference_kernels: bool) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES} if reference_kernels else {}
    it = Interpreter(model_path=str(path), **kw)
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    out = next(o["index"] for o in it.get_output_details() if int(o["shape"][-1]) == 521)
    res = []
    for w in wins:
        it.set_tensor(inp, w[None])
        it.invoke()
        res.append(it.get_tensor(out).reshape(-1, 521).mean(axis=0))
    return np.stack(res)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="shared data dir (yamnet/, realclips_dev/)")
    ap.add_argument("--step", type=float, default=1.0, help="seconds between window centres")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    wins = []
    clips = sorted((args.data / "realclips_dev").glob("*.mp4"))
    for p in clips:
        wav, sr = decode_audio(p)
        w16 = resample(wav, sr, SAMPLE_RATE)
        wins.append(windows_at(w16, SAMPLE_RATE, list(np.arange(0.0, w16.size / SAMPLE_RATE, args.step)), WINDOW_SAMPLES / SAMPLE_RATE))
    rng = np.random.default_rng(0)
    wins.append(np.zeros((1, WINDOW_SAMPLES), np.float32))
    wins.append((rng.standard_normal((2, WINDOW_SAMPLES)) * NOISE_STD).astype(np.float32))
    x = np.concatenate(wins).astype(np.float32)
    tfl = args.data / "yamnet" / "yamnet.tflite"
    ref = _tflite_scores(tfl, x, reference_kernels=False)
    rows = []
    for match in (True, False):
        with torch.inference_mode():
            ours = load_yamnet(match_tflite=match)(torch.from_numpy(x)).numpy()
        rows.append((f"torch, match_tflite={match}", ours))
    rows.append(("TFLite reference kernels", _tflite_scores(tfl, x, reference_kernels=True)))
    lines = ["| vs TFLite (XNNPACK) | windows | max | median | share < 1e-4 | top-1 agrees |", "|---|---:|---:|---:|---:|---:|"]
    for name, s in rows:
        d = np.abs(s - ref).max(axis=1)
        top1 = float((s.argmax(1) == ref.argmax(1)).mean())
        lines.append(f"| {name} | {len(d)} | {d.max():.4f} | {np.median(d):.4f} | {(d < EXACT).mean():.0%} | {top1:.0%} |")
    log.info("%s", "\n".join(lines))
    log.info("%d clips of %s, a window every %.2f s, + silence + 2 noise", len(clips), args.data / "realclips_dev", args.step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
