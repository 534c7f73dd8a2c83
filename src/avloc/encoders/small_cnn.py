"""Small conv-BN-ReLU encoders for fast CPU experiments (not from a paper: a plain VGG-style
stack, Simonyan & Zisserman 2015, with BatchNorm, Ioffe & Szegedy 2015).

* ``small_cnn`` (visual): ``len(channels)`` blocks of 3x3 conv-BN-ReLU; the first
  ``log2(out_stride)`` blocks have stride 2, so the default (4 blocks, stride 16)
  maps 224x224 to 14x14, like LVS's map. Inputs in [0, 1] are normalised inside
  with ``mean``/``std`` (ImageNet by default).
* ``small_cnn_audio``: a spectrogram ``(B, 1, F, T)``; every block halves the
  frequency axis, the first ``log2(time_stride)`` blocks also halve time;
  ``forward_time`` max-pools over frequency -> ``(B, C, T / time_stride)``;
  ``forward`` is the max over time (global max pool, as LVS's audio encoder).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from avloc.encoders.base import AudioEncoder, FeatureInfo, VisualEncoder, check_widths
from avloc.errors import ConfigError
from avloc.frontends.image import IMAGENET_MEAN, IMAGENET_STD, normalize
from avloc.registry import ENCODERS


def conv_bn_relu(in_ch: int, out_ch: int, stride: int | tuple[int, int]) -> nn.Sequential:
    """3x3 convolution (padding 1) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


def _num_halvings(stride: int, n_blocks: int, what: str) -> int:
    k = round(math.log2(stride)) if stride >= 1 else -1
    if k < 0 or 2**k != stride or k > n_blocks:
        raise ConfigError(f"{what} must be a power of two <= 2**len(channels) = {2**n_blocks}, got {stride}")
    return k


class SmallCNN(VisualEncoder):
    """Images in [0, 1] (B, 3, H, W) -> (B, channels[-1], H/out_stride, W/out_stride)."""

    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64, 128, 128),
        out_stride: int = 16,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        channels = tuple(channels)
        if not channels:
            raise ConfigError("small_cnn channels must be a non-empty list of positive ints, got []")
        check_widths(**{f"channels[{i}]": c for i, c in enumerate(channels)})
        k = _num_halvings(out_stride, len(channels), "small_cnn out_stride")
        self.mean, self.std = tuple(mean), tuple(std)
        ins = (3, *channels[:-1])
        self.blocks = nn.Sequential(
            *[conv_bn_relu(i, o, 2 if n < k else 1) for n, (i, o) in enumerate(zip(ins, channels))]
        )
        self.feature_info = FeatureInfo(channels[-1], out_stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, h, w)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"small_cnn expects images (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        return self.blocks(normalize(images, self.mean, self.std))


class SmallCNNAudio(AudioEncoder):
    """Spectrogram (B, 1, F, T) -> per-time (B, channels[-1], T / time_stride) or pooled (B, C)."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 128), time_stride: int = 4) -> None:
        super().__init__()
        channels = tuple(channels)
        if not channels:
            raise ConfigError("small_cnn_audio channels must be a non-empty list of positive ints, got []")
        check_widths(**{f"channels[{i}]": c for i, c in enumerate(channels)})
        k = _num_halvings(time_stride, len(channels), "small_cnn_audio time_stride")
        ins = (1, *channels[:-1])
        self.blocks = nn.Sequential(
            *[conv_bn_relu(i, o, (2, 2 if n < k else 1)) for n, (i, o) in enumerate(zip(ins, channels))]
        )
        self.out_channels = channels[-1]
        self.time_stride = time_stride

    def forward_time(self, spec: torch.Tensor) -> torch.Tensor:  # (B, 1, F, T) -> (B, C, T')
        if spec.dim() != 4 or spec.shape[1] != 1:
            raise ConfigError(f"small_cnn_audio expects a spectrogram (B, 1, F, T), got {tuple(spec.shape)}")
        return self.blocks(spec).amax(dim=2)  # (B, C, F', T') -> (B, C, T')


@ENCODERS.register("small_cnn")
def small_cnn(
    channels: tuple[int, ...] = (32, 64, 128, 128),
    out_stride: int = 16,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> SmallCNN:
    """Small visual CNN (see :class:`SmallCNN`)."""
    return SmallCNN(channels=channels, out_stride=out_stride, mean=mean, std=std)


@ENCODERS.register("small_cnn_audio")
def small_cnn_audio(channels: tuple[int, ...] = (32, 64, 128, 128), time_stride: int = 4) -> SmallCNNAudio:
    """Small audio CNN (see :class:`SmallCNNAudio`)."""
    return SmallCNNAudio(channels=channels, time_stride=time_stride)
