"""Audio reading, resampling and windowing.

``load_audio`` returns mono float32 at a requested rate from any file that
soundfile (WAV/OGG/FLAC) or PyAV (mp4, mkv, webm, avi, mp3, ...) opens.
Resampling is polyphase (``scipy.signal.resample_poly``), which is exact for
rational rate ratios such as 8 kHz -> 16 kHz or 44.1 kHz -> 16 kHz.

Window padding policy (:func:`window_at`): a window of ``n`` samples centred
at ``t`` is cut from the signal; parts falling before the start or after the
end are filled with zeros (``pad="zero"``, default: silence is what is
there), or by wrapping the signal around (``pad="wrap"``, LVS-style tiling of
short clips). The centre sample is ``round(t * sr)``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np

from avloc.errors import MediaError

_SOUNDFILE_EXT = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif"}


def resample(wav: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Polyphase resampling of a 1-D (or (..., N)) float signal."""
    if orig_sr <= 0 or new_sr <= 0:
        raise MediaError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return wav.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    frac = Fraction(new_sr, orig_sr).limit_denominator(10_000)
    return resample_poly(wav, frac.numerator, frac.denominator, axis=-1).astype(np.float32)


def load_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode ``path`` to mono float32 in [-1, 1]; resample to ``sample_rate`` if given.

    Returns ``(samples (N,), rate)``. Raises :class:`MediaError` for a missing
    file, a file without audio, or one that cannot be decoded.
    """
    p = Path(path)
    if not p.is_file():
        raise MediaError(f"file not found: {p}")
    if p.suffix.lower() in _SOUNDFILE_EXT:
        import soundfile as sf

        try:
            data, sr = sf.read(str(p), dtype="float32", always_2d=True)
        except (RuntimeError, sf.LibsndfileError) as e:
            raise MediaError(f"{p}: cannot decode audio ({e})") from None
        wav = data.mean(axis=1)
    else:
        from avloc.io.media import decode_audio

        wav, sr = decode_audio(p)
    if wav.size == 0:
        raise MediaError(f"{p}: audio stream has no samples")
    if sample_rate is not None:
        wav = resample(wav, sr, sample_rate)
        sr = sample_rate
    return np.ascontiguousarray(wav, dtype=np.float32), int(sr)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write ``audio`` (N,) or (N, C) as a WAV file, atomically.

    The file is encoded in memory, then written by :func:`avloc.formats.atomic.write_bytes_atomic`: a failed
    write (a full disk) raises the :class:`OSError` it is and leaves no partial file (libsndfile writing
    to the disk itself reports only "system error", and leaves half a file behind).
    """
    import io

    import soundfile as sf

    from avloc.formats.atomic import write_bytes_atomic

    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, subtype=subtype, format="WAV")
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def window_at(
    wav: np.ndarray, sr: int, center: float, seconds: float, pad: Literal["zero", "wrap"] = "zero"
) -> np.ndarray:
    """The ``seconds``-long window of ``wav`` centred at time ``center`` (see module doc)."""
    n = round(seconds * sr)
    if n <= 0:
        raise MediaError(f"window length must be positive, got {seconds} s")
    start = round(center * sr) - n // 2
    if pad == "wrap":
        if wav.size == 0:
            raise MediaError("cannot wrap an empty signal")
        idx = np.arange(start, start + n) % wav.size
        return wav[idx].astype(np.float32, copy=False)
    out = np.zeros(n, dtype=np.float32)
    lo, hi = max(start, 0), min(start + n, wav.size)
    if hi > lo:
        out[lo - start : hi - start] = wav[lo:hi]
    return out


def windows_at(
    wav: np.ndarray, sr: int, centers: np.ndarray | list[float], seconds: float, pad: Literal["zero", "wrap"] = "zero"
) -> np.ndarray:
    """Stack of :func:`window_at` for several centres: (len(centers), n)."""
    return np.stack([window_at(wav, sr, float(c), seconds, pad) for c in centers]) if len(centers) else np.zeros(
        (0, round(seconds * sr)), np.float32
    )


def rms_db(wav: np.ndarray) -> float:
    """Root-mean-square level in dBFS (-inf for digital silence)."""
    r = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if wav.size else 0.0
    return 20 * math.log10(r) if r > 0 else -math.inf
