"""Localization from an audio-visual classification model (Senocak, Ryu, Kim, Kweon,
"Less Can Be More: Sound Source Localization With a Classification Model", WACV 2022).

In the paper's order, and the order of this module:

* Sec. 3.2, backbones that keep time. A video network ``f_V`` -- mixed convolutions
  (MCx, Tran et al. 2018): 3-D convolutions first, then 2-D ones -- maps ``T``
  frames to the last conv map ``V_t in R^{D x h x w}`` and, by spatial average
  pooling, ``z^V in R^{T x D}`` (:class:`MCVideoNet`). An audio network on the
  log-mel spectrogram of ``10 T`` mel frames (2-D convolutions) gives
  ``z^A in R^{T x D}`` aligned in time with the video (:class:`LogMelAudioNet`):
  one audio step per video frame, no tiling.
* Modality heads (Eq. 1): ``z_av = (1/T) sum_t concat(z^V_t, z^A_t)``; the vision
  head uses zeros for the audio half, the audio head zeros for the visual half
  (:func:`modality_features`).
* Eq. 2: ``O_i = FC_i(z_i)``, ``i in {vision, audio, av}``, one linear classifier
  per head (:class:`ModalityHeads`); Eq. 3: ``L_multi = L_visual + L_audio + L_av``,
  cross-entropies with equal weights (:class:`ClassifLoss`).
  Table 2 ablation (``heads``): ``"single"`` = the audio-visual head alone with one
  loss; ``"shared"`` = the three heads and losses through one shared FC;
  ``"individual"`` = the method.
* Sec. 3.4, Eq. 4: ``alpha_t = V_t . z^A_t`` (dot product over D at every cell),
  averaged over ``K = [t - d/2, t + d/2]``, ``d`` = 3 s of steps
  (:func:`attention_maps`, :func:`window_average`).
* Sec. 5.1, informative moments: ``S_av[t] = z^V_t . z^A_t`` (:meth:`Classif.moment_scores`);
  top-k selection and the reusable sampler live in :mod:`avloc.data.moments`,
  pseudo boxes (Sec. 5.2) in :mod:`avloc.applications.pseudo_boxes`.

Inputs. Training batches are whole clips -- ``image`` ``(B, T, 3, H, W)`` (or the
cached frozen features ``vfeat`` ``(B, T, C, h, w)``) with the clip's audio
``(B, N)`` -- or still images ``(B, 3, H, W)`` / ``vfeat`` ``(B, C, h, w)``, which
are fixed-frame videos (the paper's Fig. 5): the frame is repeated over the
``T = round(N / sample_rate * fps)`` steps its audio spans. ``labels`` are the
clip's classes; a clip with several classes gets the uniform distribution over
them as its cross-entropy target (one class = the paper's single-label loss).
``localize(images, audio)`` treats a still with its audio window as such a
fixed-frame clip and returns Eq. 4 over the window centred on it; it depends on
nothing but that sample.

CPU deviations (documented, each a config field): the paper's MC3-18 from scratch
on 112 x 112 frames at 10 fps with D = 512 becomes a frozen ImageNet
EfficientNet-Lite0 (stride 16: 7 x 7 at 112 px, features cached by the engine)
followed by a small trainable MC head (1x1 reduction, ``video_3d_layers``
3x3x3 conv-BN-ReLU, then ``video_2d_layers`` 3x3 conv-BN-ReLU per frame) with
D = 128, at 4 fps; the audio network is a 4-block VGG-style conv-BN-ReLU stack
(the paper's supplementary network is not available to us) on 80-band log-mel at
100 Hz, pooled to the T video steps by adaptive average pooling; SGD lr 1e-2
with plateau decay becomes the engine's Adam.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from avloc.config import ConfigValueError
from avloc.encoders import VisualEncoder, create_encoder, freeze
from avloc.errors import ConfigError, DataError
from avloc.frontends.audio import AudioFrontend, AudioFrontendConfig
from avloc.frontends.image import ImageConfig
from avloc.methods import register_method
from avloc.methods.base import LocalizationMethod, MethodConfig, check_widths
from avloc.methods.blocks import labels_to_multihot

HEADS = ("vision", "audio", "av")

# ---------------------------------------------------------------------------------------------
# building blocks


class MCVideoNet(nn.Module):
    """Mixed-convolution video head (MCx): 3-D convs, then 2-D convs per frame.

    Frozen per-frame features ``(B, T, C, h, w)`` -> ``V`` ``(B, T, D, h, w)`` (last conv
    map, after ReLU) and ``z^V`` ``(B, T, D)`` (spatial average of ``V_t``).
    """

    def __init__(self, in_ch: int, reduce: int, dim: int, n3d: int, n2d: int, kt: int) -> None:
        super().__init__()
        if kt % 2 != 1 or n3d < 1 or n2d < 1:
            raise ConfigError(f"classif video net needs an odd temporal kernel and >= 1 3-D and 2-D layers, got kt={kt}, {n3d}, {n2d}")
        self.reduce = nn.Sequential(nn.Conv3d(in_ch, reduce, 1, bias=False), nn.BatchNorm3d(reduce), nn.ReLU(inplace=True))
        self.conv3d = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv3d(reduce, reduce, (kt, 3, 3), padding=(kt // 2, 1, 1), bias=False),
                    nn.BatchNorm3d(reduce),
                    nn.ReLU(inplace=True),
                )
                for _ in range(n3d)
            ]
        )
        ins = [reduce] + [dim] * (n2d - 1)
        self.conv2d = nn.Sequential(
            *[nn.Sequential(nn.Conv2d(i, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)) for i in ins]
        )

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = feats.shape[:2]
        x = self.conv3d(self.reduce(feats.transpose(1, 2)))  # (B, r, T, h, w)
        x = x.transpose(1, 2).flatten(0, 1)  # (B*T, r, h, w)
        v = self.conv2d(x)  # (B*T, D, h, w)
        v = v.view(b, t, *v.shape[1:])  # (B, T, D, h, w)
        return v, v.mean(dim=(-2, -1))  # (B, T, D, h, w), (B, T, D)


class LogMelAudioNet(nn.Module):
    """Log-mel ``(B, 1, F, T_mel)`` -> ``z^A`` ``(B, T, D)``, one step per video frame.

    Input BatchNorm over the log-mel values, ``len(channels)`` conv-BN-ReLU blocks each
    followed by 2x2 average pooling (frequency and time), a last conv-BN-ReLU to D,
    mean over frequency, then adaptive average pooling of time to exactly ``T`` steps,
    so step ``t`` summarises the audio of video frame ``t``.
    """

    def __init__(self, channels: Sequence[int], dim: int) -> None:
        super().__init__()
        if not channels or min(channels) < 1:
            raise ConfigError(f"classif audio_channels must be positive ints, got {list(channels)}")
        self.bn0 = nn.BatchNorm2d(1)
        blocks: list[nn.Module] = []
        prev = 1
        for c in channels:
            blocks += [nn.Conv2d(prev, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AvgPool2d(2, ceil_mode=True)]
            prev = c
        blocks += [nn.Conv2d(prev, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, spec: torch.Tensor, steps: int) -> torch.Tensor:
        x = self.blocks(self.bn0(spec)).mean(dim=2)  # (B, D, T_mel')
        if x.shape[-1] < steps:
            raise ConfigError(f"audio gives {x.shape[-1]} time cells after pooling, fewer than the {steps} video steps; use a lower fps")
        return F.adaptive_avg_pool1d(x, steps).transpose(1, 2)  # (B, T, D)


def modality_features(zv: torch.Tensor, za: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eq. 1 for the three heads: ``z^V``, ``z^A`` ``(B, T, D)`` -> ``z_i`` ``(B, 2D)``.

    ``av`` = time average of ``concat(z^V_t, z^A_t)``; ``vision`` puts zeros in the
    audio half, ``audio`` zeros in the visual half.
    """
    mv, ma = zv.mean(dim=1), za.mean(dim=1)  # (B, D), (B, D)
    return {
        "av": torch.cat([mv, ma], dim=1),
        "vision": torch.cat([mv, torch.zeros_like(ma)], dim=1),
        "audio": torch.cat([torch.zeros_like(mv), ma], dim=1),
    }


class ModalityHeads(nn.Module):
    """Eq. 2: ``O_i = FC_i(z_i)``: individual FCs, one shared FC, or the AV head alone (Table 2)."""

    def __init__(self, in_dim: int, num_classes: int, mode: str) -> None:
        super().__init__()
        if mode not in ("individual", "shared", "single"):
            raise ConfigError(f"classif heads must be individual, shared or single, got {mode!r}")
        self.mode = mode
        names = HEADS if mode == "individual" else ("av",)
        self.fc = nn.ModuleDict({n: nn.Linear(in_dim, num_classes) for n in names})

    @property
    def active(self) -> tuple[str, ...]:
        return ("av",) if self.mode == "single" else HEADS

    def forward(self, z: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:  # z_i (B, 2D) -> O_i (B, C)
        return {n: self.fc[n if self.mode == "individual" else "av"](z[n]) for n in self.active}


def attention_maps(vmap: torch.Tensor, za: torch.Tensor) -> torch.Tensor:
    """``alpha_t = V_t . z^A_t`` (Sec. 3.4): ``(B, T, D, h, w)``, ``(B, T, D)`` -> ``(B, T, h, w)``."""
    return torch.einsum("btdhw,btd->bthw", vmap, za)


def window_steps(center: int, d: int, steps: int) -> tuple[int, int]:
    """Eq. 4's ``K = [t - d/2, t + d/2]`` as ``(start, stop)`` step indices.

    Near the ends of a clip the window is shifted (not shortened) so that it keeps ``d``
    steps when the clip has them; a clip shorter than ``d`` uses all its steps.
    """
    if not 0 <= center < steps:
        raise DataError(f"reference step {center} outside a clip of {steps} steps")
    lo = max(0, center - d // 2)
    hi = min(steps, lo + max(1, d))
    lo = max(0, min(lo, hi - max(1, d)))
    return lo, hi


def window_average(alpha: torch.Tensor, center: int, d: int) -> torch.Tensor:
    """Eq. 4: ``alpha_final = (1/|K|) sum_{i in K} alpha_i``: ``(B, T, h, w)`` -> ``(B, h, w)``."""
    lo, hi = window_steps(center, d, alpha.shape[1])
    return alpha[:, lo:hi].mean(dim=1)


def labels_to_targets(labels: Any, num_classes: int, device: torch.device) -> torch.Tensor:
    """Batch ``labels`` (see :func:`avloc.methods.blocks.labels_to_multihot`) -> target distributions (B, C).

    Several classes in one clip share the probability mass equally (one class = one-hot).
    """
    hot = labels_to_multihot(labels, num_classes, device)  # (B, C)
    n = hot.sum(dim=1, keepdim=True)  # (B, 1)
    if bool((n == 0).any()):
        i = int((n[:, 0] == 0).nonzero()[0])
        raise DataError(f"sample {i} of the batch has no class label; classif trains on labelled clips only")
    return hot / n


# ---------------------------------------------------------------------------------------------
# the model


class Classif(LocalizationMethod):
    """Audio-visual video classifier whose features localize sounds (Fig. 2)."""

    cfg: ClassifConfig

    def __init__(self, cfg: ClassifConfig) -> None:
        super().__init__(cfg)
        venc = create_encoder(cfg.visual_encoder, **cfg.visual_encoder_kwargs)
        if not isinstance(venc, VisualEncoder):
            raise ConfigError(f"classif visual_encoder {cfg.visual_encoder!r} is not a visual encoder")
        self.visual_encoder = freeze(venc) if cfg.freeze_visual else venc
        self.video_net = MCVideoNet(
            venc.feature_info.channels, cfg.video_reduce, cfg.embed_dim, cfg.video_3d_layers, cfg.video_2d_layers, cfg.temporal_kernel
        )
        self.audio_frontend = AudioFrontend(cfg.audio)
        self.audio_net = LogMelAudioNet(cfg.audio_channels, cfg.embed_dim)
        self.heads = ModalityHeads(2 * cfg.embed_dim, cfg.num_classes, cfg.heads)

    # -- inputs
    def steps_for(self, num_samples: int) -> int:
        """Video steps T spanned by ``num_samples`` of audio at ``cfg.fps`` (:meth:`ClassifConfig.steps_for`)."""
        return self.cfg.steps_for(num_samples)

    def frame_features(self, feats: torch.Tensor, steps: int) -> torch.Tensor:
        """Encoder features of a clip ``(B, T, C, h, w)`` or a still ``(B, C, h, w)`` (repeated) -> ``(B, T, C, h, w)``."""
        if feats.dim() == 4:
            return feats[:, None].expand(-1, steps, -1, -1, -1)
        if feats.dim() != 5 or feats.shape[1] != steps:
            raise DataError(f"clip features {tuple(feats.shape)} do not have the {steps} steps its audio spans at {self.cfg.fps} fps")
        return feats

    # -- backbones
    def audio_embedding(self, wav: torch.Tensor, steps: int) -> torch.Tensor:
        """Waveform ``(B, N)`` -> ``z^A`` ``(B, T, D)``."""
        if wav.dim() != 2:
            raise DataError(f"audio must be a waveform batch (B, N), got {tuple(wav.shape)}")
        return self.audio_net(self.audio_frontend(wav), steps)  # (B, T, D)

    def encode(self, feats: torch.Tensor, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder features + waveform -> ``V`` ``(B, T, D, h, w)``, ``z^V`` ``(B, T, D)``, ``z^A`` ``(B, T, D)``."""
        steps = self.steps_for(wav.shape[-1])
        vmap, zv = self.video_net(self.frame_features(feats, steps))
        return vmap, zv, self.audio_embedding(wav, steps)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        _, zv, za = self.encode(self.visual_features(batch), batch["audio"])
        logits = self.heads(modality_features(zv, za))  # {head: (B, C)}
        return {f"logits_{k}": v for k, v in logits.items()}

    def head_logits(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logits of all three heads ``{vision, audio, av}: (B, C)``, whatever ``cfg.heads`` is.

        ``individual``: each head's own FC (= :meth:`forward`); ``shared``: the shared FC;
        ``single``: the vision and audio inputs (zero-masked halves, Eq. 1) go through
        the one audio-visual FC, which was never trained on them -- a probe of how much
        each half alone carries, for the Table 2 accuracy columns.
        """
        _, zv, za = self.encode(self.visual_features(batch), batch["audio"])
        z = modality_features(zv, za)
        fc = self.heads.fc
        return {n: fc[n if self.heads.mode == "individual" else "av"](z[n]) for n in HEADS}

    def build_criterion(self) -> nn.Module:
        return ClassifLoss(self.cfg, self.heads.active)

    # -- localization and moments
    def window_len(self) -> int:
        """``d`` of Eq. 4 in steps (``loc_window_seconds * fps``)."""
        return max(1, round(self.cfg.loc_window_seconds * self.cfg.fps))

    def clip_attention(self, frames: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A clip ``(B, T, 3, H, W)`` (or ``(B, 3, H, W)`` still) + its audio -> ``alpha`` ``(B, T, h, w)``, ``S_av`` ``(B, T)``."""
        vmap, zv, za = self.encode(self.encode_images(frames), audio)
        return attention_maps(vmap, za), (zv * za).sum(dim=-1)

    def moment_scores(self, frames: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Sec. 5.1: ``S_av[t] = z^V_t . z^A_t`` ``(B, T)``."""
        return self.clip_attention(frames, audio)[1]

    def localize_at(self, alpha: torch.Tensor, center: int) -> torch.Tensor:
        """Eq. 4 around step ``center`` of ``alpha`` ``(B, T, h, w)`` -> ``(B, h, w)``."""
        return window_average(alpha, center, self.window_len())

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Still ``(B, 3, H, W)`` + its audio window -> Eq. 4 centred on the window ``(B, h, w)``."""
        alpha, _ = self.clip_attention(images, audio)  # (B, T, h, w)
        return self.localize_at(alpha, alpha.shape[1] // 2)


# ---------------------------------------------------------------------------------------------
# its loss


class ClassifLoss(nn.Module):
    """Eq. 3: ``L_multi = L_visual + L_audio + L_av`` (equal weights); ``heads="single"``: ``L_av`` only."""

    def __init__(self, cfg: ClassifConfig, heads: Sequence[str]) -> None:
        super().__init__()
        self.cfg = cfg
        self.heads = tuple(heads)

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if "labels" not in batch:
            raise DataError("classif trains on class labels: the batch has no 'labels'")
        first = outputs[f"logits_{self.heads[0]}"]
        y = labels_to_targets(batch["labels"], self.cfg.num_classes, first.device)  # (B, C)
        if y.shape[0] != first.shape[0]:
            raise DataError(f"labels for {y.shape[0]} samples in a batch of {first.shape[0]}")
        terms = {h: F.cross_entropy(outputs[f"logits_{h}"], y) for h in self.heads}
        out: dict[str, torch.Tensor] = {"loss": torch.stack(list(terms.values())).sum()}
        for h, v in terms.items():
            out[f"ce_{h}"] = v.detach()
            out[f"acc_{h}"] = (outputs[f"logits_{h}"].argmax(dim=1) == y.argmax(dim=1)).float().mean().detach()
        return out


# ---------------------------------------------------------------------------------------------
# its config


def paper_audio(window_seconds: float = 3.0) -> AudioFrontendConfig:
    """Sec. 4.2: 16 kHz log-mel, 80 bands at 100 Hz (hop 160), 25 ms windows (n_fft 512, win 400)."""
    return AudioFrontendConfig(
        sample_rate=16000, window_seconds=window_seconds, kind="logmel", n_fft=512, win_length=400, hop_length=160, n_mels=80
    )


@dataclass
class ClassifConfig(MethodConfig):
    """Hyper-parameters of the classification model (paper values in brackets; CPU deviations in the module doc).

    * ``fps`` [10]: video steps per second; ``T = window * fps`` steps per clip (Sec. 4.2: T = 100 for 10 s).
    * ``embed_dim`` D [512, MC3-18]: channels of ``V_t``, ``z^V_t`` and ``z^A_t``.
    * ``video_reduce``, ``video_3d_layers``, ``video_2d_layers``, ``temporal_kernel``: the MC head
      (3-D convs first, then 2-D; MCx, Tran et al. 2018).
    * ``audio_channels``: conv blocks of the log-mel network (before the last conv to D).
    * ``heads`` [individual]: Table 2 -- ``single`` multi-modal head, ``shared`` FC, ``individual`` FCs (Eqs. 2-3).
    * ``loc_window_seconds`` [3]: ``d`` of Eq. 4 in seconds.
    * ``audio``: the paper's 80-band log-mel by default (:func:`paper_audio`); the audio network takes any
      ``(B, 1, F, T)`` front-end output with enough time frames for ``T`` steps.
    * ``num_classes``: C (VGGSound 309; DigitScenes 10 digits).
    """

    audio: AudioFrontendConfig = field(default_factory=paper_audio)
    image: ImageConfig = field(default_factory=lambda: ImageConfig(size=112, resize=112))
    visual_encoder: str = "efficientnet_lite0"
    visual_encoder_kwargs: dict[str, Any] = field(default_factory=lambda: {"out_stride": 16})
    freeze_visual: bool = True
    num_classes: int = 10
    fps: float = 4.0
    embed_dim: int = 128
    video_reduce: int = 48
    video_3d_layers: int = 1
    video_2d_layers: int = 1
    temporal_kernel: int = 3
    audio_channels: tuple[int, ...] = (16, 32, 64, 64)
    heads: Literal["individual", "shared", "single"] = "individual"
    loc_window_seconds: float = 3.0

    def steps_for(self, num_samples: int) -> int:
        """Video steps T spanned by ``num_samples`` of audio at ``fps`` (no model needed: decoding workers)."""
        t = round(num_samples / self.audio.sample_rate * self.fps)
        if t < 1:
            raise DataError(f"{num_samples} audio samples span no video frame at {self.fps} fps")
        return t

    def __post_init__(self) -> None:
        super().__post_init__()
        check_widths(embed_dim=self.embed_dim, video_reduce=self.video_reduce, num_classes=self.num_classes,
                     temporal_kernel=self.temporal_kernel, **{f"audio_channels[{i}]": c for i, c in enumerate(self.audio_channels)})
        check_widths(0, video_3d_layers=self.video_3d_layers, video_2d_layers=self.video_2d_layers)
        if self.fps <= 0 or self.loc_window_seconds <= 0:
            raise ConfigError(f"classif fps and loc_window_seconds must be > 0, got {self.fps}, {self.loc_window_seconds}")
        if self.num_classes < 2:
            raise ConfigValueError("num_classes", f"must be >= 2 (a classifier), got {self.num_classes}")
        if self.heads not in ("individual", "shared", "single"):
            raise ConfigError(f"classif heads must be individual, shared or single, got {self.heads!r}")


# ---------------------------------------------------------------------------------------------
# registration

Classif.config_class = ClassifConfig
register_method("classif")(Classif)
