"""Audio-visual synchrony: correlation over time of per-pixel motion energy with audio energy.

After Hershey & Movellan, "Audio Vision: Using Audio-Visual Synchrony to Locate
Sounds", NeurIPS 1999 (Sec. 2: per-pixel Gaussian mutual information between a
pixel's temporal signal and the audio energy, ``I = -1/2 log(1 - rho^2)``), and
Kidron, Schechner & Elad, "Pixels that Sound", CVPR 2005 (pixels' temporal
differences as the visual signal). Training-free, and it needs *video*: a single
frame carries no synchrony.

For frames ``I_0 .. I_{T-1}`` at times ``t_0 < .. < t_{T-1}`` (seconds from the start
of ``audio``):

* motion energy of difference ``k = 1 .. T-1``: ``m_k(x) = avgpool_s(mean_c |I_k - I_{k-1}|)(x)``
  on a grid of ``stride``-pixel cells;
* audio energy around the same interval: ``e_k = sqrt(mean_n a[n]^2)`` (RMS) over a window
  centred on ``(t_{k-1} + t_k) / 2`` lasting ``audio_span`` frame intervals (2: the audio of
  both frames whose difference is ``m_k``);
* for frame ``i``, over the differences ``K_i`` whose interval midpoint lies within
  ``window_seconds / 2`` of ``t_i`` (all of them when ``window_seconds <= 0``), the
  Pearson correlation per cell::

      rho_i(x) = sum_k (m_k(x) - mean m(x)) (e_k - mean e) / sqrt(sum_k (m_k(x) - mean m(x))^2 sum_k (e_k - mean e)^2 + eps)

* heatmap = ``rho_i`` (``score="correlation"``: pixels that move *more* when the sound is
  louder) or Hershey & Movellan's ``-1/2 log(1 - rho_i^2)`` (``"mutual_information"``,
  sign-blind), optionally Gaussian-smoothed over ``smooth_sigma`` cells.

Input paths (the choice made for the single-frame contract):

* :meth:`Synchrony.localize_track` ``(frames (T, 3, H, W), audio (N,), times (T,)) -> (T, h, w)``
  is the video path.
* :meth:`Synchrony.localize` accepts a frame *stack* ``(B, T, 3, H, W)`` with audio
  ``(B, N)``, takes the ``T`` frames as evenly spaced over the audio window
  (``t_k = (k + 1/2) N / (T sr)``) and returns the map of the middle frame ``T // 2``
  ``(B, h, w)``. A single frame per sample ``(B, 3, H, W)`` raises a
  :class:`~avloc.errors.ConfigError` naming ``localize_track`` — there is no silent
  fallback to an audio-blind map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from avloc.config import check_positive, check_range
from avloc.errors import ConfigError
from avloc.frontends.image import MAX_SIDE, to_float_image
from avloc.methods import register_method
from avloc.methods.base import MethodConfig
from avloc.methods.blocks import TrainingFreeMethod

# ----------------------------------------------------------------------------- building blocks


def motion_energy(frames: torch.Tensor, stride: int) -> torch.Tensor:
    """Frames (T, 3, H, W) in [0, 1] -> per-cell mean absolute frame difference (T-1, H/stride, W/stride)."""
    gray = frames.mean(dim=1)  # (T, H, W)
    diff = (gray[1:] - gray[:-1]).abs()  # (T-1, H, W)
    return F.avg_pool2d(diff[:, None], stride)[:, 0]  # (T-1, h, w)


def audio_energy(audio: torch.Tensor, times: torch.Tensor, sample_rate: int, span: float) -> torch.Tensor:
    """RMS of ``audio`` (N,) around each frame interval ``[t_{k-1}, t_k]`` -> (T-1,).

    The RMS window is centred on the interval midpoint and lasts ``span`` intervals
    (``span = 2``: from half an interval before ``t_{k-1}`` to half an interval after
    ``t_k``, the audio of both frames whose difference is the motion); it is cut
    to the audio's extent.
    """
    t = times.double()
    if bool((t[1:] <= t[:-1]).any()):
        raise ConfigError("frame times must be strictly increasing")
    mid, dt = (t[1:] + t[:-1]) / 2, t[1:] - t[:-1]
    n = audio.shape[0]
    out = []
    for c, d in zip(mid.tolist(), dt.tolist()):
        a = max(0, round((c - span * d / 2) * sample_rate))
        b = min(n, round((c + span * d / 2) * sample_rate))
        if b <= a:
            raise ConfigError(
                f"frame interval around {c:.3f} s lies outside the audio ({n / sample_rate:.3f} s): "
                "times are seconds from the start of the audio"
            )
        out.append(audio[a:b].float().square().mean().sqrt())
    return torch.stack(out)


def windowed_correlation(motion: torch.Tensor, energy: torch.Tensor, weights: torch.Tensor, eps: float) -> torch.Tensor:
    """Pearson correlation per cell over selected differences.

    ``motion`` (K, h, w), ``energy`` (K,), ``weights`` (T, K) 0/1 selecting the differences of each
    output frame -> (T, h, w).
    """
    n = weights.sum(dim=1)  # (T,)
    m_mean = torch.einsum("tk,khw->thw", weights, motion) / n[:, None, None]  # (T, h, w)
    e_mean = weights @ energy / n  # (T,)
    mc = motion[None] - m_mean[:, None]  # (T, K, h, w)
    ec = (energy[None] - e_mean[:, None]) * weights  # (T, K), zero outside the window
    cov = torch.einsum("tk,tkhw->thw", ec, mc)  # (T, h, w)
    var_m = torch.einsum("tk,tkhw->thw", weights, mc.square())  # (T, h, w)
    var_e = ec.square().sum(dim=1)  # (T,)
    return cov / torch.sqrt(var_m * var_e[:, None, None] + eps)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (T, h, w) maps, ``sigma`` in cells, kernel radius ``ceil(3 sigma)``."""
    r = math.ceil(3 * sigma)
    x = torch.arange(-r, r + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-x.square() / (2 * sigma**2))
    k = k / k.sum()
    y = F.conv2d(F.pad(maps[:, None], (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y[:, 0]


# ----------------------------------------------------------------------------- model


class Synchrony(TrainingFreeMethod):
    """Pixels whose motion energy correlates with the audio energy (see module doc)."""

    cfg: SynchronyConfig
    frame_stacks = True  # localize() takes (B, T, 3, H, W); a whole clip goes through localize_track

    def __init__(self, cfg: SynchronyConfig) -> None:
        super().__init__(cfg)

    def localize_track(self, frames: torch.Tensor, audio: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """Video path: frames (T, 3, H, W) in [0, 1] (or uint8, or (T, H, W, 3)), audio (N,) at
        ``cfg.audio.sample_rate`` starting at time 0, frame times (T,) in seconds -> (T, h, w)."""
        cfg = self.cfg
        x = to_float_image(frames)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ConfigError(f"frames must be (T, 3, H, W), got shape {tuple(frames.shape)}")
        if audio.dim() != 1:
            raise ConfigError(f"audio must be a mono waveform (N,), got shape {tuple(audio.shape)}")
        times = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
        if times.shape[0] != x.shape[0]:
            raise ConfigError(f"{x.shape[0]} frames but {times.shape[0]} times")
        if x.shape[0] < cfg.min_differences + 1:
            raise ConfigError(f"synchrony needs at least {cfg.min_differences + 1} frames, got {x.shape[0]}")
        motion = motion_energy(x, cfg.stride)  # (T-1, h, w)
        energy = audio_energy(audio, times, cfg.audio.sample_rate, cfg.audio_span).to(motion.dtype)  # (T-1,)
        mid = (times[1:] + times[:-1]) / 2  # (T-1,) interval midpoints
        if cfg.window_seconds > 0:
            weights = ((mid[None, :] - times[:, None]).abs() <= cfg.window_seconds / 2).to(motion.dtype)  # (T, T-1)
        else:
            weights = torch.ones(times.shape[0], mid.shape[0], dtype=motion.dtype)
        short = (weights.sum(dim=1) < cfg.min_differences).nonzero().flatten().tolist()
        if short:
            raise ConfigError(
                f"frames {short[:5]} have fewer than {cfg.min_differences} frame differences within "
                f"window_seconds={cfg.window_seconds}: use a longer window or more frames per second"
            )
        rho = windowed_correlation(motion, energy, weights, cfg.eps)  # (T, h, w)
        out = rho if cfg.score == "correlation" else -0.5 * torch.log1p(-rho.square().clamp(max=1 - cfg.eps))
        if cfg.smooth_sigma > 0:
            out = gaussian_blur(out, cfg.smooth_sigma)
        return out

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Frame stacks (B, T, 3, H, W), audio (B, N) -> middle-frame maps (B, h, w) (module doc)."""
        if images.dim() == 4:
            raise ConfigError(
                "synchrony needs video: a single frame per sample (B, 3, H, W) carries no audio-visual synchrony. "
                "Call Synchrony.localize_track(frames (T, 3, H, W), audio (N,), times (T,)) or pass a frame stack "
                "(B, T, 3, H, W) to localize()"
            )
        if images.dim() != 5 or audio.dim() != 2 or audio.shape[0] != images.shape[0]:
            raise ConfigError(
                f"expected frame stacks (B, T, 3, H, W) and audio (B, N); got {tuple(images.shape)}, {tuple(audio.shape)}"
            )
        t = images.shape[1]
        dur = audio.shape[1] / self.cfg.audio.sample_rate
        times = (torch.arange(t, dtype=torch.float64) + 0.5) * dur / t  # (T,)
        return torch.stack([self.localize_track(f, a, times)[t // 2] for f, a in zip(images, audio)])


# ----------------------------------------------------------------------------- config


@dataclass
class SynchronyConfig(MethodConfig):
    """Synchrony settings (``audio.sample_rate`` gives the rate of the waveform).

    ``stride``: pixels per map cell (motion energy is averaged over each cell).
    ``audio_span``: length of the audio RMS window, in frame intervals (centred on each difference).
    ``window_seconds``: temporal window of the correlation around each frame (<= 0: whole clip).
    ``min_differences``: fewest frame differences a window may hold (else an error).
    ``score``: ``correlation`` (signed rho) or ``mutual_information`` (Hershey & Movellan).
    ``smooth_sigma``: Gaussian smoothing of the map, in cells (0: none).
    ``eps``: added under the square root of the correlation's denominator (static pixels -> 0).
    """

    stride: int = 8
    audio_span: float = 2.0
    window_seconds: float = 3.0
    min_differences: int = 5
    score: Literal["correlation", "mutual_information"] = "correlation"
    smooth_sigma: float = 1.0
    eps: float = 1e-10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("stride", self.stride, 1, MAX_SIDE)
        check_range("min_differences", self.min_differences, 2)  # a correlation needs 2 points
        check_positive(audio_span=self.audio_span, eps=self.eps)
        check_range("smooth_sigma", self.smooth_sigma, 0)


# ----------------------------------------------------------------------------- registration

Synchrony.config_class = SynchronyConfig
register_method("synchrony")(Synchrony)
