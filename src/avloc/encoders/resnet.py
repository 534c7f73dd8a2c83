"""ResNet-18 from scratch (He et al., CVPR 2016, "Deep Residual Learning", Sec. 3-4, Table 1),
as the visual and audio encoders of LVS (Chen et al., CVPR 2021, Sec. 3.3).

* ``resnet18`` (visual): 3-channel images in [0, 1], normalised inside the
  encoder with ``mean``/``std`` (ImageNet statistics by default). Output
  stride 32 (7x7 at 224) by default; ``out_stride=16`` sets the first block of
  ``layer4`` to stride 1, which gives LVS's 14x14 map at 224 (optionally with
  dilation 2 in ``layer4``, DeepLab-style, so its receptive field is kept).
* ``resnet18_audio``: a 1-channel spectrogram ``(B, 1, F, T)``. ``forward_time``
  max-pools over frequency only, giving ``(B, 8 * base_width, T')`` with
  ``T' = ceil(T / 32)``; ``forward`` is the max over time of that, i.e. a global
  max pool over the whole map, exactly LVS's ``AdaptiveMaxPool2d((1, 1))``.

``resnet18(weights=PATH)`` loads an ImageNet ResNet-18 state dict in torchvision's key
layout (``conv1``, ``bn1``, ``layer1``-``layer4``; ``fc`` is dropped), e.g. torchvision's
``resnet18-f37072fd.pth`` (read with ``torch.load(weights_only=True)``) or a safetensors
file of it; ``weights="imagenet"`` looks for that file in ``$AVLOC_WEIGHTS`` and then in
torch hub's cache (``~/.cache/torch/hub/checkpoints``). avloc ships and downloads no
ImageNet weights: a missing file raises with where it looked.

``base_width`` (64 in the paper) scales every stage (``w, 2w, 4w, 8w``) so CPU
experiments can shrink the network. Initialisation follows torchvision's
ResNet: Kaiming-normal (fan_out) convolutions, BatchNorm weight 1 and bias 0.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from avloc.encoders.base import AudioEncoder, FeatureInfo, VisualEncoder, check_widths
from avloc.errors import CheckpointError, ConfigError
from avloc.frontends.image import IMAGENET_MEAN, IMAGENET_STD, normalize
from avloc.registry import ENCODERS

#: ResNet-18: two BasicBlocks per stage (He et al. 2016, Table 1).
RESNET18_LAYERS = (2, 2, 2, 2)
#: torchvision's ImageNet ResNet-18 (IMAGENET1K_V1) file name, what ``weights="imagenet"`` looks for
IMAGENET_FILE = "resnet18-f37072fd.pth"


def imagenet_weights_path() -> Path:
    """Where ``weights="imagenet"`` is found: ``$AVLOC_WEIGHTS/{IMAGENET_FILE}``, else torch hub's cache."""
    places = []
    if os.environ.get("AVLOC_WEIGHTS"):
        places.append(Path(os.environ["AVLOC_WEIGHTS"]) / IMAGENET_FILE)
    places.append(Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE)
    for p in places:
        if p.is_file():
            return p
    raise CheckpointError(
        f"resnet18 weights='imagenet': {IMAGENET_FILE} not found in {[str(p) for p in places]}; download torchvision's "
        "ImageNet ResNet-18 there (or set AVLOC_WEIGHTS), pass weights=PATH, or weights=null to train from scratch"
    )


def load_torchvision_resnet18(trunk: nn.Module, path: str | Path) -> None:
    """Copy a torchvision-layout ResNet-18 state dict into ``trunk`` (strict: every trunk key, matching shapes)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"resnet18 weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # pickles with objects other than tensors are refused, not unpickled
            raise CheckpointError(f"{p}: not a plain state dict of tensors ({type(e).__name__}: {e})") from None
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    own = trunk.state_dict()
    for k in own:  # torchvision's 2017 file predates BatchNorm's num_batches_tracked
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = own[k]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{p}: not a torchvision ResNet-18 (missing {missing[:4]}, unexpected {unexpected[:4]})")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        raise CheckpointError(f"{p}: shape mismatch for {bad[:4]} (base_width must be 64 for ImageNet weights)")
    trunk.load_state_dict(state)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut (He et al. 2016, Fig. 2)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, Cout, H/s, W/s)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNetTrunk(nn.Module):
    """Stem (7x7/2 conv + 3x3/2 max pool) and four stages; no pooling head or classifier."""

    def __init__(self, in_channels: int, base_width: int = 64, last_stride: int = 2, last_dilation: int = 1) -> None:
        super().__init__()
        check_widths(base_width=base_width, last_width=8 * base_width)  # the last stage is 8x as wide
        w = base_width
        self.conv1 = nn.Conv2d(in_channels, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = (w, 2 * w, 4 * w, 8 * w)
        strides = (1, 2, 2, last_stride)
        dilations = (1, 1, 1, last_dilation)
        layers: list[nn.Sequential] = []
        in_ch = w
        for n, out_ch, s, d in zip(RESNET18_LAYERS, widths, strides, dilations):
            blocks = [BasicBlock(in_ch, out_ch, stride=s, dilation=d)]
            blocks += [BasicBlock(out_ch, out_ch, dilation=d) for _ in range(n - 1)]
            layers.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, Cin, H, W) -> (B, 8w, H/s, W/s)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, w, H/4, W/4)
        x = self.layer2(self.layer1(x))  # (B, 2w, H/8, W/8)
        return self.layer4(self.layer3(x))  # (B, 8w, H/32, W/32) or H/16 with last_stride=1


class ResNet18Visual(VisualEncoder):
    """ResNet-18 image encoder: images in [0, 1] -> (B, 8 * base_width, H/out_stride, W/out_stride).

    Args:
        out_stride: 32 (7x7 at 224, default) or 16 (LVS's 14x14: last stage stride removed).
        dilate: with ``out_stride=16``, use dilation 2 in ``layer4`` (keeps its receptive field).
        base_width: channels of the first stage (64 in the paper).
        mean, std: input normalisation applied inside the encoder (ImageNet by default).
        weights: ``None`` (from scratch), ``"imagenet"`` (:func:`imagenet_weights_path`) or a path
            to a torchvision-layout ResNet-18 state dict; the encoder is then ``pretrained``.
    """

    def __init__(
        self,
        out_stride: int = 32,
        dilate: bool = False,
        base_width: int = 64,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if out_stride not in (16, 32):
            raise ConfigError(f"resnet18 out_stride must be 16 or 32, got {out_stride}")
        if dilate and out_stride != 16:
            raise ConfigError("resnet18 dilate=True needs out_stride=16")
        self.mean, self.std = tuple(mean), tuple(std)
        self.trunk = ResNetTrunk(3, base_width, last_stride=out_stride // 16, last_dilation=2 if dilate else 1)
        self.feature_info = FeatureInfo(self.trunk.out_channels, out_stride)
        if weights is not None:
            load_torchvision_resnet18(self.trunk, imagenet_weights_path() if weights == "imagenet" else weights)
            self.pretrained = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, h, w)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"resnet18 expects images (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        return self.trunk(normalize(images, self.mean, self.std))


class ResNet18Audio(AudioEncoder):
    """ResNet-18 spectrogram encoder: (B, 1, F, T) -> (B, 8w, T') per time, or (B, 8w) pooled.

    ``forward_time`` max-pools over frequency; ``forward`` (inherited) takes the max over
    time, which equals LVS's global ``AdaptiveMaxPool2d((1, 1))`` over the whole map.

    Args:
        base_width: channels of the first stage (64 in the paper).
        out_stride: 32 (default) or 16 (``layer4`` at stride 1: LVS's published audio network).
    """

    def __init__(self, base_width: int = 64, out_stride: int = 32) -> None:
        super().__init__()
        if out_stride not in (16, 32):
            raise ConfigError(f"resnet18_audio out_stride must be 16 or 32, got {out_stride}")
        self.trunk = ResNetTrunk(1, base_width, last_stride=out_stride // 16)
        self.out_channels = self.trunk.out_channels
        #: time steps per output step (input frames): the trunk's overall stride.
        self.time_stride = out_stride

    def forward_time(self, spec: torch.Tensor) -> torch.Tensor:  # (B, 1, F, T) -> (B, C, T')
        if spec.dim() != 4 or spec.shape[1] != 1:
            raise ConfigError(f"resnet18_audio expects a spectrogram (B, 1, F, T), got {tuple(spec.shape)}")
        return self.trunk(spec).amax(dim=2)  # (B, C, F', T') -> (B, C, T')


@ENCODERS.register("resnet18")
def resnet18(
    out_stride: int = 32,
    dilate: bool = False,
    base_width: int = 64,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    weights: str | None = None,
) -> ResNet18Visual:
    """ResNet-18 visual encoder, from scratch or from ImageNet ``weights`` (see :class:`ResNet18Visual`)."""
    return ResNet18Visual(out_stride=out_stride, dilate=dilate, base_width=base_width, mean=mean, std=std, weights=weights)


@ENCODERS.register("resnet18_audio")
def resnet18_audio(base_width: int = 64, out_stride: int = 32) -> ResNet18Audio:
    """ResNet-18 audio encoder from scratch (see :class:`ResNet18Audio`)."""
    return ResNet18Audio(base_width=base_width, out_stride=out_stride)
