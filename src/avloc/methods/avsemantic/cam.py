"""ImageNet evidence for heard objects: class activation maps at stride 16 and 32, class probabilities, objectness.

One EfficientNet-Lite0 pass per stride gives, for a batch of frames:

* ``probs`` ``(B, 1000)``: the ImageNet softmax of the globally pooled stride-32 head (the classifier as
  trained) -- *how visible* each ImageNet class is in the frame;
* ``cam(indices, weights)``: the class activation map of a set of ImageNet classes (CAM, Zhou et al.,
  CVPR 2016, Eq. 1-2: ``M_c = W_c . F + b_c`` per cell of the 1280-channel head ``F``), weighted within the
  set by each class's probability, centred on its frame mean and ReLU'd (what stands out, exactly zero
  elsewhere, so median binarisation keeps only the object), at stride 32 and at stride 16 (the head run atrously,
  :meth:`EfficientNetLite0.forward_head`), averaged after per-scale max normalisation: the stride-16 map
  resolves small objects, the stride-32 map keeps the classifier's own receptive field;
* ``objectness`` ``(B, h, w)``: EZ-VSL's class-agnostic prior (mean ``|F|``, Mo & Morgado 2022, Sec. 3.3),
  the fallback when nothing heard can be named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from avloc.encoders.efficientnet_lite import EfficientNetLite0
from avloc.errors import ConfigError

#: normalisation floor of a CAM's maximum (a class with no positive evidence gives an all-zero map)
CAM_EPS = 1e-6


@dataclass
class FrameEvidence:
    """The visual evidence of a batch of frames (see module doc)."""

    probs: torch.Tensor  # (B, 1000) ImageNet softmax
    heads: dict[int, torch.Tensor]  # stride -> (B, 1280, H/stride, W/stride)
    objectness: torch.Tensor  # (B, h32, w32) in [0, 1]


class ImageNetEvidence(torch.nn.Module):
    """EfficientNet-Lite0 with its ImageNet classifier: probabilities, multi-scale CAMs, objectness."""

    def __init__(self, strides: Sequence[int] = (16, 32)) -> None:
        super().__init__()
        bad = [s for s in strides if s not in (16, 32)]
        if bad or not strides:
            raise ConfigError(f"avsemantic cam_strides must be a non-empty subset of (16, 32), got {list(strides)}")
        self.strides = tuple(sorted(set(int(s) for s in strides)))
        # inference only: BatchNorm folded and channels-last activations (2.5x faster on the CPU, same outputs)
        self.net = EfficientNetLite0(out_stride=32, pretrained=True).eval().fold_batchnorm()
        self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> FrameEvidence:
        """Images (B, 3, S, S) in [0, 1] -> :class:`FrameEvidence`."""
        images = images.contiguous(memory_format=torch.channels_last)
        heads = self.net.forward_heads(images, tuple(set(self.strides) | {32}))  # {stride: (B, 1280, h, w)}
        f32 = heads[32]
        logits = self.net._fc(f32.mean(dim=(2, 3)))  # (B, 1000): the classifier exactly as trained
        obj = f32.abs().mean(dim=1)  # (B, h, w)
        lo = obj.flatten(1).amin(1).view(-1, 1, 1)
        hi = obj.flatten(1).amax(1).view(-1, 1, 1)
        obj = (obj - lo) / (hi - lo).clamp_min(CAM_EPS)
        return FrameEvidence(probs=logits.softmax(dim=1), heads={s: heads[s] for s in self.strides}, objectness=obj)

    @torch.no_grad()
    def cam(self, ev: FrameEvidence, b: int, indices: Sequence[int], out_hw: tuple[int, int]) -> torch.Tensor:
        """CAM of ImageNet classes ``indices`` in frame ``b`` -> (out_h, out_w) in [0, 1] (0 where no evidence).

        Classes are weighted by their share of the set's probability in that frame, so a set such as
        "every dog breed" follows the breed actually seen (Eq. 1-2 of Zhou et al. per class, summed).
        """
        if not len(indices):
            raise ConfigError("cam: no ImageNet classes given")
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=ev.probs.device)
        p = ev.probs[b, idx]  # (K,)
        w = p / p.sum().clamp_min(1e-12)  # (K,)
        # CAM is linear in the classifier: sum_k w_k (W_k . F + b_k) = (sum_k w_k W_k) . F + sum_k w_k b_k
        fc_w = w @ self.net._fc.weight[idx]  # (1280,)
        fc_b = w @ self.net._fc.bias[idx]  # ()
        out = torch.zeros(out_hw, dtype=ev.probs.dtype, device=ev.probs.device)
        for s in self.strides:
            m = torch.einsum("c,chw->hw", fc_w, ev.heads[s][b]) + fc_b  # (h, w)
            m = F.relu(m - m.mean())  # centred: evidence shared by the whole frame (and the bias) cancels
            m = m / m.max().clamp_min(CAM_EPS)
            out += F.interpolate(m[None, None], size=out_hw, mode="bilinear", align_corners=False)[0, 0]
        return out / len(self.strides)
