"""Who is speaking: per-pixel synchrony of each face's mouth region with the sound, over a window of seconds.

Hershey & Movellan ("Audio Vision: Using Audio-Visual Synchrony to Locate Sounds", NIPS 1999) locate a sound
by the mutual information between each pixel and the audio energy over time, which for jointly Gaussian
signals is ``I = -1/2 log(1 - rho^2)``, i.e. ``rho^2 / 2`` for small correlations. Here the pixels are each
face's mouth region and the time series are sampled at the analysed frames. For track ``i`` and analysed
frame ``k`` (frames ``k-1`` and ``k`` both with the face)::

    P_ik    = the grey mouth box (:func:`.geometry.mouth_box`) resampled to ``patch_wh``, its mean removed
              (the box follows the face, so head translation is compensated; a global brightness change
              is not motion; the patch does not depend on the face's size)
    x_ik    = [P_ik - P_i,k-1, |P_ik - P_i,k-1|]      per pixel: the change and its magnitude   (2 D,)
    e_k     = log RMS of the audio between frames k-1 and k                                     (scalar)
    r_ip(t) = Pearson(x_ikp, e_k) over the k with |t_k - t| <= window_s / 2 (>= min_pairs of them)
    s_i(t)  = mean_p r_ip(t)^2 - 1 / (n - 1)         n = the pairs in the window

``s`` is twice the mean per-pixel mutual information above what unrelated series give (``E[r^2] = 1/(n-1)``
for independent ones): about 0 for a still face or a face talking to other sound, positive for a mouth that
moves with the sound. At the frame, the speaker is the visible track with the highest ``s`` when that face
is *in sync* (``s >= SpeakerConfig.min_sync``); no face in sync, no speaker. Its confidence is a calibrated
probability that it is the face speaking: ``sigmoid(a * margin + b)`` with ``margin = s_best - max(0,
s_runner_up)`` (a face below chance is no rival), ``a >= 0`` so more margin never lowers it, ``a, b`` fitted
by ``bench/paper/avsemantic/speaker_pairs.py --fit-confidence`` (:func:`fit_confidence`).

Why per pixel and the change: at the default 5 analysed frames per second the 4-5 Hz syllables are aliased and
a face's mouth-region motion energy correlated with the loudness (one number per frame, the previous rule)
ranked the sounding face first on 36-41 % of the frames of side-by-side pairs of dev clips, the per-pixel
change and magnitude on 77-78 % (``speaker_pairs.py``, 5-s pairs; docs/localize.md, "Who is speaking").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from avloc.errors import ConfigError
from avloc.methods.avsemantic.faces.geometry import mouth_box
from avloc.methods.avsemantic.faces.tracks import FaceTrack

#: Floor of the audio RMS before the log (about -80 dBFS), as avloc.methods.avsync_prior: silence is flat, not -inf.
RMS_FLOOR = 1e-4
#: frame times are rounded (the pipeline's float32, 4 decimals): 0.4 s at 0.2-s spacing is 2 frames, not 1.9999
SPAN_TOLERANCE = 1e-3


@dataclass
class SpeakerConfig:
    """The active-speaker rule (formula in the module docstring)."""

    #: Length of the synchrony window centred on each frame (s). 4 s = the method's +-2 s of context; at 5 fps
    #: that is 20 frame differences, the fewest for which the face's own audio beat a distractor's on most
    #: frames of the dev clips (2-s windows did not, docs/localize.md).
    window_s: float = 4.0
    #: Fewest frame differences (both frames with the face) in a window for a synchrony; fewer -> none. 10 = half
    #: the default window at 5 fps (a video's first and last 2 s have cut windows): on the 5-s dev pairs 8 chose
    #: on more frames (precision 0.73), 12 on fewer (0.78), 15 on half of them.
    min_pairs: int = 10
    #: Time scale at high frame rates: both series box-averaged over the largest odd number of frames spanning
    #: at most smooth_s (1 = none at 5 fps, 9 at 25 fps). Raw 40-ms differences are mostly landmark jitter.
    smooth_s: float = 0.4
    #: Mouth patch size (w, h) in samples: the mouth box's aspect 1.6 : 1.4 at about 12 samples across
    #: (a talking-head mouth in a 288-px model input is 6-30 px wide).
    patch_wh: tuple[int, int] = (12, 11)
    #: A face is *in sync* from this synchrony on (no face in sync: no speaker). Fitted with the calibration
    #: below: the synchrony at which a face alone is as likely to be the speaker as not, ``-bias / slope``.
    min_sync: float = 0.0125
    #: Calibration ``P(speaker) = sigmoid(confidence_slope * margin + confidence_bias)``, fitted by
    #: ``python bench/paper/avsemantic/speaker_pairs.py --fit-confidence`` (docs/localize.md, "Who is speaking").
    confidence_slope: float = 40.0
    confidence_bias: float = -0.5

    def __post_init__(self) -> None:
        if self.window_s <= 0:
            raise ConfigError(f"SpeakerConfig.window_s must be > 0 seconds, got {self.window_s}")
        if self.min_pairs < 3:
            raise ConfigError(f"SpeakerConfig.min_pairs must be >= 3 (a correlation needs points), got {self.min_pairs}")
        if self.smooth_s < 0:
            raise ConfigError(f"SpeakerConfig.smooth_s must be >= 0, got {self.smooth_s}")
        if len(self.patch_wh) != 2 or min(self.patch_wh) < 2:
            raise ConfigError(f"SpeakerConfig.patch_wh must be (w, h) >= 2 samples each, got {self.patch_wh}")
        if not self.confidence_slope > 0:
            raise ConfigError(f"SpeakerConfig.confidence_slope must be > 0 (more synchrony never lowers the "
                              f"confidence), got {self.confidence_slope}")
        if not -1.0 <= self.min_sync <= 1.0:
            raise ConfigError(f"SpeakerConfig.min_sync must be in [-1, 1] (-1: every face with a synchrony is in sync), "
                              f"got {self.min_sync}")


@dataclass(frozen=True)
class SpeakerPick:
    """The speaker chosen among the faces of one frame (:func:`choose_speaker`)."""

    index: int  # into the frame's faces
    sync: float  # its synchrony s
    margin: float  # s - max(0, runner-up's s)
    confidence: float  # calibrated P(it is the face speaking)


# ----------------------------------------------------------------------------- inputs
def as_grey01(frame: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 / float in [0, 1] -> (H, W) float32 in [0, 1]."""
    f = np.asarray(frame)
    if f.ndim == 3 and f.shape[2] == 3:
        f = f.mean(axis=2) if f.dtype != np.uint8 else cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
    elif f.ndim != 2:
        raise ConfigError(f"a frame must be grey (H, W) or RGB (H, W, 3), got {f.shape}")
    f = f.astype(np.float32)
    return f / 255.0 if np.asarray(frame).dtype == np.uint8 else f


def mouth_patch(grey: np.ndarray, face_row: np.ndarray, patch_wh: tuple[int, int]) -> np.ndarray | None:
    """The mouth box of ``face_row`` in a grey (H, W) frame resampled to ``patch_wh``, mean removed -> (h, w);
    None when the box is empty."""
    H, W = grey.shape
    x1, y1, x2, y2 = mouth_box(face_row, (W, H))
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    pw, ph = patch_wh
    sx, sy = (x2 - x1) / pw, (y2 - y1) / ph
    # sub-pixel crop: an affine map from the patch grid onto the box (bilinear)
    m = np.array([[sx, 0, x1 + 0.5 * sx - 0.5], [0, sy, y1 + 0.5 * sy - 0.5]], np.float32)
    p = cv2.warpAffine(grey, m, (pw, ph), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    return p - p.mean()  # (h, w)


def patch_change(current: np.ndarray | None, previous: np.ndarray | None) -> np.ndarray | None:
    """``x`` of the module doc: the per-pixel change and its magnitude, (2 D,); None without both patches."""
    if current is None or previous is None:
        return None
    d = (current - previous).reshape(-1)
    return np.concatenate([d, np.abs(d)])


def interval_energy(windows: np.ndarray, sample_rate: int, interval_s: float) -> np.ndarray:
    """``e`` of the module doc from audio windows centred on the frames: the log RMS of the last ``interval_s``
    seconds before each window's centre (the sound between the previous analysed frame and this one); (T, N) -> (T,)."""
    w = np.asarray(windows, np.float64)
    if w.ndim != 2:
        raise ConfigError(f"interval_energy: windows must be (T, N), got {w.shape}")
    c = w.shape[1] // 2
    n = min(c, max(1, round(interval_s * sample_rate)))
    seg = w[:, c - n : c]  # (T, n)
    return np.log(np.maximum(np.sqrt((seg**2).mean(axis=1)), RMS_FLOOR))


def track_interval_energy(audio: np.ndarray, sample_rate: int, times: np.ndarray) -> np.ndarray:
    """``e`` at each of ``times`` (T,) from one mono track (N,): the log RMS over ``[t_{k-1}, t_k]`` (the first
    frame: over the median interval before it)."""
    a = np.asarray(audio, np.float64).reshape(-1)
    t = np.asarray(times, np.float64).reshape(-1)
    if t.size > 1 and np.any(np.diff(t) <= 0):
        raise ConfigError("track_interval_energy: times must be strictly increasing")
    dt = float(np.median(np.diff(t))) if t.size > 1 else 0.2
    starts = np.r_[t[0] - dt, t[:-1]]
    out = np.empty(t.size)
    for k, (t0, t1) in enumerate(zip(starts, t)):
        seg = a[max(0, round(t0 * sample_rate)) : max(0, min(a.size, round(t1 * sample_rate)))]
        out[k] = np.log(max(float(np.sqrt(np.mean(seg**2))) if seg.size else 0.0, RMS_FLOOR))
    return out


# ----------------------------------------------------------------------------- synchrony
def _nan_boxcar(x: np.ndarray, n: int) -> np.ndarray:
    """Centred running mean over ``n`` samples along axis 0 ignoring NaN (NaN stays NaN); (T, ...) -> (T, ...)."""
    if n <= 1:
        return x
    ok = np.isfinite(x)
    k = np.ones(n)
    num = np.apply_along_axis(lambda v: np.convolve(v, k, "same"), 0, np.where(ok, x, 0.0))
    den = np.apply_along_axis(lambda v: np.convolve(v, k, "same"), 0, ok.astype(np.float64))
    return np.where(ok, num / np.maximum(den, 1.0), np.nan)


def smoothing_frames(times: np.ndarray, smooth_s: float) -> int:
    """The largest odd number of frames spanning at most ``smooth_s`` at the median spacing of ``times`` (1 = none):
    1 at 5 fps and 0.4 s, 9 at 25 fps, 11 at 30 fps."""
    t = np.asarray(times, np.float64)
    if t.size < 3 or smooth_s <= 0:
        return 1
    dt = float(np.median(np.diff(t)))
    if dt <= 0:
        return 1
    span = int(np.floor(smooth_s / dt + SPAN_TOLERANCE))  # frames that fit in smooth_s
    return max(1, span if span % 2 else span - 1)


def excess_r2(x: np.ndarray, e: np.ndarray) -> float:
    """``mean_p Pearson(x_p, e)^2 - 1 / (n - 1)`` for x (n, P) and e (n,), n >= 3 (module doc).
    A constant column or a constant ``e`` correlates 0."""
    n = x.shape[0]
    xc = x - x.mean(axis=0)  # (n, P)
    ec = e - e.mean()  # (n,)
    den = np.sqrt((xc**2).sum(axis=0) * float((ec**2).sum()))  # (P,)
    r = np.divide(xc.T @ ec, den, out=np.zeros(x.shape[1]), where=den > 1e-12)  # (P,)
    return float((r**2).mean() - 1.0 / (n - 1))


def windowed_synchrony(
    changes: np.ndarray, energy: np.ndarray, times: np.ndarray, centres: Sequence[int], config: SpeakerConfig
) -> np.ndarray:
    """``s`` of one track at each frame of ``centres``: changes (T, 2D) (NaN rows where the track has no pair),
    energy (T,), times (T,) s -> (len(centres),), NaN where fewer than ``min_pairs`` pairs fall in the window."""
    x, e = np.asarray(changes, np.float64), np.asarray(energy, np.float64)
    t = np.asarray(times, np.float64)
    if x.ndim != 2 or x.shape[0] != e.size or e.size != t.size:
        raise ConfigError(f"windowed_synchrony: changes {x.shape}, energy {e.shape} and times {t.shape} must share T")
    n_smooth = smoothing_frames(t, config.smooth_s)
    ok = np.isfinite(x).all(axis=1) & np.isfinite(e)  # (T,)
    xs, es = _nan_boxcar(np.where(ok[:, None], x, np.nan), n_smooth), _nan_boxcar(np.where(ok, e, np.nan), n_smooth)
    out = np.full(len(centres), np.nan)
    half = config.window_s / 2
    for j, c in enumerate(centres):
        sel = ok & (np.abs(t - t[c]) <= half + 1e-9)
        if sel.sum() >= config.min_pairs:
            out[j] = excess_r2(xs[sel], es[sel])
    return out


def mouth_changes(frames: np.ndarray | Sequence[np.ndarray], tracks: Sequence[FaceTrack], config: SpeakerConfig) -> np.ndarray:
    """Per track and frame the patch change ``x`` (module doc): (n_tracks, T, 2 D), NaN where the face is
    missing in the frame or the one before."""
    T = len(frames)
    for tr in tracks:
        if tr.n_frames != T:
            raise ConfigError(f"mouth_changes: a track has {tr.n_frames} rows for {T} frames")
    pw, ph = config.patch_wh
    out = np.full((len(tracks), T, 2 * pw * ph), np.nan)
    prev: list[np.ndarray | None] = [None] * len(tracks)
    for k in range(T):
        g = as_grey01(frames[k])
        for i, tr in enumerate(tracks):
            row = tr.rows[k]
            cur = None if row is None else mouth_patch(g, row, config.patch_wh)
            ch = patch_change(cur, prev[i])
            if ch is not None:
                out[i, k] = ch
            prev[i] = cur
    return out


def speaker_scores(
    frames: np.ndarray | Sequence[np.ndarray],
    times: np.ndarray,
    tracks: Sequence[FaceTrack],
    energy: np.ndarray,
    config: SpeakerConfig | None = None,
) -> np.ndarray:
    """Each track's synchrony ``s`` over the whole clip (one window): frames (T, H, W[, 3]) uint8 or float in
    [0, 1] at strictly increasing ``times`` (T,) s, tracks with T rows each (:func:`.tracks.track_faces`),
    ``energy`` (T,) the audio between consecutive frames (:func:`track_interval_energy`) -> (n_tracks,), NaN
    for a track with fewer than ``min_pairs`` pairs."""
    cfg = config or SpeakerConfig()
    t = np.asarray(times, np.float64).reshape(-1)
    e = np.asarray(energy, np.float64).reshape(-1)
    if t.size != len(frames) or e.size != len(frames):
        raise ConfigError(f"speaker_scores: {len(frames)} frames, {t.size} times and {e.size} energy values must match")
    if t.size > 1 and np.any(np.diff(t) <= 0):
        raise ConfigError("speaker_scores: times must be strictly increasing")
    f0 = np.asarray(frames[0]) if len(frames) else np.zeros(0)
    if f0.dtype != np.uint8 and f0.size and float(np.nanmax(f0)) > 1.0 + 1e-3:
        raise ConfigError("speaker_scores: float frames must be in [0, 1] (or pass uint8 0-255)")
    if not tracks:
        return np.zeros(0)
    whole = replace(cfg, window_s=2 * float(t[-1] - t[0]) + 1.0)
    centre = [t.size // 2]
    return np.array([windowed_synchrony(x, e, t, centre, whole)[0] for x in mouth_changes(frames, tracks, cfg)])


# ----------------------------------------------------------------------------- the choice
def confidence_of(margin: np.ndarray | float, slope: float, bias: float) -> np.ndarray:
    """``sigmoid(slope * margin + bias)``: P(the chosen face is the one speaking) (module doc)."""
    z = slope * np.asarray(margin, np.float64) + bias
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


def choose_speaker(syncs: np.ndarray, config: SpeakerConfig | None = None) -> SpeakerPick | None:
    """The speaker among one frame's faces from their synchrony (K,) (NaN = unknown): the best face when it is
    in sync (``s >= config.min_sync``), else None (module doc)."""
    cfg = config or SpeakerConfig()
    s = np.asarray(syncs, np.float64).reshape(-1)
    known = np.flatnonzero(np.isfinite(s))
    if known.size == 0:
        return None
    order = known[np.argsort(-s[known], kind="stable")]
    best = float(s[order[0]])
    if best < cfg.min_sync:
        return None
    rival = max(0.0, float(s[order[1]])) if order.size > 1 else 0.0
    margin = best - rival
    return SpeakerPick(int(order[0]), best, margin, float(confidence_of(margin, cfg.confidence_slope, cfg.confidence_bias)))


def fit_confidence(margins: np.ndarray, correct: np.ndarray, l2: float = 1e-3) -> tuple[float, float]:
    """``(slope, bias)`` of ``P(correct) = sigmoid(slope * margin + bias)`` by L2 logistic regression (IRLS,
    :func:`avloc.metrics.logistic.fit_logistic`, unweighted: a calibrated probability, not a balanced rule).
    Raises when the fitted slope is not positive (the margin would not predict the speaker)."""
    from avloc.metrics.logistic import fit_logistic

    x = np.asarray(margins, np.float64).reshape(-1, 1)
    y = np.asarray(correct, bool)
    if y.all() or not y.any():
        raise ConfigError("fit_confidence needs both correct and wrong choices")
    w, b = fit_logistic(x, y, l2=l2, balanced=False, penalise_bias=False)
    if not w[0] > 0:
        raise ConfigError(f"fit_confidence: the fitted slope is {w[0]:.3g} <= 0: the synchrony margin does not predict "
                          "the speaker on these examples")
    return float(w[0]), float(b)
