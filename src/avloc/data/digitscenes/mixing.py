"""Sound tracks of DigitScenes: utterances placed in a clip, ESC-10 ambient at a set SNR, peak-safe.

Levels: each utterance is scaled to an RMS level (dBFS, measured over the
utterance itself); the ambient is scaled so that
``SNR = speech level - ambient level`` (ambient RMS measured over the clip),
where the speech level of several utterances is their mean power. The final
mix is scaled down as a whole if its peak exceeds ``peak``.
"""

from __future__ import annotations

import math

import numpy as np


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def at_level(x: np.ndarray, level_db: float) -> np.ndarray:
    """``x`` scaled to RMS ``level_db`` dBFS (unchanged if silent)."""
    r = rms(x)
    return x if r <= 0 else (x * (10 ** (level_db / 20) / r)).astype(np.float32)


def ambient_segment(wav: np.ndarray, n: int, rng: np.random.Generator, candidates: int = 4) -> np.ndarray:
    """An ``n``-sample segment of an ambient clip (wrapping if shorter), the loudest of a few random starts.

    ESC-10 clips are often padded with digital silence; taking the loudest of
    ``candidates`` random segments keeps the ambient audible.
    """
    looped = np.tile(wav, -(-(n + wav.size) // wav.size))  # enough copies for any start + n
    segs = [looped[s : s + n] for s in rng.integers(0, wav.size, candidates).tolist()]
    energy = [float(np.dot(seg, seg)) for seg in segs]
    return segs[int(np.argmax(energy))].astype(np.float32)


def mix(
    n: int,
    speech: list[tuple[np.ndarray, int]],
    ambient: np.ndarray | None,
    snr_db: float | None,
    ambient_level_db: float | None,
    peak: float,
) -> np.ndarray:
    """Mix utterances (each ``(wav, start sample)``, already at level) and an ambient segment of ``n`` samples.

    With speech, the ambient is set ``snr_db`` below the speech level; without
    speech it is set to ``ambient_level_db``. Returns float32 (n,) with
    ``max |x| <= peak``.
    """
    out = np.zeros(n, dtype=np.float32)
    for wav, start in speech:
        end = min(start + wav.size, n)
        out[start:end] += wav[: end - start]
    if ambient is not None and rms(ambient) > 0:
        if speech:
            if snr_db is None:
                raise ValueError("snr_db is needed to mix ambient under speech")
            speech_db = 10 * math.log10(np.mean([rms(w) ** 2 for w, _ in speech]) + 1e-20)
            out += at_level(ambient, speech_db - snr_db)
        else:
            if ambient_level_db is None:
                raise ValueError("ambient_level_db is needed for ambient-only audio")
            out += at_level(ambient, ambient_level_db)
    m = float(np.abs(out).max()) if n else 0.0
    if m > peak:
        out *= peak / m
    return out
