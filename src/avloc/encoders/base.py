"""The encoder contract shared by every method (after timm's ``FeatureInfo``).

* A :class:`VisualEncoder` maps images ``(B, 3, H, W)`` with values in [0, 1]
  to a spatial feature map ``(B, C, H/stride, W/stride)``; it applies its own
  input normalisation (e.g. ImageNet mean/std), so callers never do.
* An :class:`AudioEncoder` maps a spectrogram ``(B, 1, F, T)`` to an embedding
  ``(B, C)`` (``forward``) or per-time embeddings ``(B, C, T')``
  (``forward_time``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from avloc.config import check_range

#: widest layer a config may ask for (channels, units): 2x the 4096-unit layers of VGG, the widest
#: network of the field; beyond it a typo (a checkpoint header with a 2^40-wide layer is refused, not allocated)
MAX_WIDTH = 8192


def check_widths(low: int = 1, /, **widths: int) -> None:
    """Each of ``widths`` (setting name -> value) lies in ``[low, MAX_WIDTH]`` (``low=0``: optional hidden layers)."""
    for name, value in widths.items():
        check_range(name, value, low, MAX_WIDTH)


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and stride (input pixels per feature cell) of a feature map."""

    channels: int
    stride: int


class VisualEncoder(nn.Module):
    """Images in [0, 1] -> spatial feature map."""

    feature_info: FeatureInfo
    #: True when weights come from a pretrained source and the encoder is meant frozen.
    pretrained: bool = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, h, w)
        raise NotImplementedError


class AudioEncoder(nn.Module):
    """Spectrogram -> pooled embedding or per-time embeddings."""

    out_channels: int

    def forward_time(self, spec: torch.Tensor) -> torch.Tensor:  # (B, 1, F, T) -> (B, C, T')
        raise NotImplementedError

    def forward(self, spec: torch.Tensor) -> torch.Tensor:  # (B, 1, F, T) -> (B, C)
        return self.forward_time(spec).amax(dim=-1)


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode with gradients off (frozen backbone)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
