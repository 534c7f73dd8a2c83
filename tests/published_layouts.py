"""State dicts in the key layouts of the published checkpoints, and a plain re-derivation of their forward pass.

Written for the tests from the public model definitions' *facts* (which modules,
names and shapes each repository's model has), not from their code:

* torchvision ResNet-18 (EZ-VSL, SLAVC, FNAC: ``imgnet`` / ``audnet``; the audio
  ``conv1`` takes 1 channel; ``fc`` replaced by an identity, so no ``fc`` keys);
* LVS's own ResNet-18 (LVS, SSL-Alignment's LVS path): three stems ``conv1`` (3 ch),
  ``conv1_a`` (1 ch), ``conv1_flow`` (6 ch), ``layer4`` at stride 1, a 1000-way ``fc``.

The reference forward pass uses ``torch.nn.functional`` ops on the published
keys and ``scipy.signal.spectrogram`` for the audio, independent of avloc's modules.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import signal

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WIDTHS = (64, 128, 256, 512)

Shapes = dict[str, tuple[int, ...]]


def _bn(shapes: Shapes, p: str, c: int) -> None:
    for n in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{p}.{n}"] = (c,)
    shapes[f"{p}.num_batches_tracked"] = ()


def resnet18_shapes(prefix: str, stems: dict[str, int], layer4_stride: int, fc: bool) -> Shapes:
    """Key -> shape of a ResNet-18 under ``prefix`` with first convs ``stems`` (name -> input channels)."""
    s: Shapes = {}
    for name, cin in stems.items():
        s[f"{prefix}{name}.weight"] = (64, cin, 7, 7)
    _bn(s, f"{prefix}bn1", 64)
    inplanes = 64
    for i, (planes, stride) in enumerate(zip(WIDTHS, (1, 2, 2, layer4_stride)), start=1):
        for b in range(2):
            p = f"{prefix}layer{i}.{b}"
            cin = inplanes if b == 0 else planes
            s[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            _bn(s, f"{p}.bn1", planes)
            s[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            _bn(s, f"{p}.bn2", planes)
            if b == 0 and (stride != 1 or inplanes != planes):
                s[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                _bn(s, f"{p}.downsample.1", planes)
        inplanes = planes
    if fc:
        s[f"{prefix}fc.weight"], s[f"{prefix}fc.bias"] = (1000, 512), (1000,)
    return s


def lvs_shapes() -> Shapes:
    """LVS ``AVENet``: ``imgnet`` and ``audnet`` are both LVS ResNet-18s (all stems, layer4 stride 1, fc)."""
    stems = {"conv1_a": 1, "conv1": 3, "conv1_flow": 6}
    return {**resnet18_shapes("imgnet.", stems, 1, True), **resnet18_shapes("audnet.", stems, 1, True)}


def ezvsl_shapes(dim: int = 512) -> Shapes:
    """EZ-VSL / FNAC: torchvision ResNet-18s, ``img_proj`` 1x1 conv, ``aud_proj`` linear."""
    s = {**resnet18_shapes("imgnet.", {"conv1": 3}, 2, False), **resnet18_shapes("audnet.", {"conv1": 1}, 2, False)}
    s.update({"img_proj.weight": (dim, 512, 1, 1), "img_proj.bias": (dim,), "aud_proj.weight": (dim, 512), "aud_proj.bias": (dim,)})
    return s


def slavc_shapes(dim: int = 512) -> Shapes:
    """SLAVC: EZ-VSL encoders, two heads per modality, and momentum copies of all of it."""
    online = {**resnet18_shapes("imgnet.", {"conv1": 3}, 2, False), **resnet18_shapes("audnet.", {"conv1": 1}, 2, False)}
    for k in (1, 2):
        online.update({f"img_proj{k}.weight": (dim, 512, 1, 1), f"img_proj{k}.bias": (dim,),
                       f"aud_proj{k}.weight": (dim, 512), f"aud_proj{k}.bias": (dim,)})
    return {**online, **{f"momentum_{k}": v for k, v in online.items()}}


def random_state(shapes: Shapes, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values of a trained-looking scale (He-normal convs, BatchNorm statistics near 1)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(1000, dtype=torch.long)
        elif k.endswith("running_var") or (k.endswith(".weight") and len(shape) == 1):
            out[k] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) == 1:
            out[k] = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = int(np.prod(shape[1:]))
            out[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
    return out


# ----------------------------------------------------------------------------- reference forward


def _bn_apply(sd: dict[str, torch.Tensor], p: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-5)


def ref_resnet18(sd: dict[str, torch.Tensor], prefix: str, stem: str, layer4_stride: int, x: torch.Tensor) -> torch.Tensor:
    """The ResNet-18 forward pass (no pooling head) on published keys, eval-mode BatchNorm."""
    x = F.relu(_bn_apply(sd, f"{prefix}bn1", F.conv2d(x, sd[f"{prefix}{stem}.weight"], stride=2, padding=3)))
    x = F.max_pool2d(x, 3, 2, 1)
    for i, stride in enumerate((1, 2, 2, layer4_stride), start=1):
        for b in range(2):
            p, s = f"{prefix}layer{i}.{b}", stride if b == 0 else 1
            y = F.relu(_bn_apply(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"], stride=s, padding=1)))
            y = _bn_apply(sd, f"{p}.bn2", F.conv2d(y, sd[f"{p}.conv2.weight"], padding=1))
            down = f"{p}.downsample.0.weight"
            idt = _bn_apply(sd, f"{p}.downsample.1", F.conv2d(x, sd[down], stride=s)) if down in sd else x
            x = F.relu(y + idt)
    return x


def ref_spectrogram(wav: np.ndarray, sr: int, noverlap: int) -> torch.Tensor:
    """The repos' audio input: scipy spectrogram (nperseg 512), log(S + 1e-7), / 12 -> (1, 1, F, T)."""
    _, _, s = signal.spectrogram(wav.astype(np.float64), sr, nperseg=512, noverlap=noverlap)
    return torch.from_numpy((np.log(s + 1e-7) / 12.0).astype(np.float32))[None, None]


def ref_image(img: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1] -> ImageNet-normalised."""
    return (img - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def ref_map(family: str, sd: dict[str, torch.Tensor], img: torch.Tensor, wav: np.ndarray, sr: int) -> torch.Tensor:
    """Cosine map (h, w) of one image and waveform, as each repo's model computes it (up to its 1/tau scale)."""
    x = ref_image(img)
    if family in ("lvs", "sslalign"):
        spec = ref_spectrogram(wav, sr, 274 if family == "lvs" else 353)
        v = F.normalize(ref_resnet18(sd, "imgnet.", "conv1", 1, x), dim=1)
        a = F.normalize(ref_resnet18(sd, "audnet.", "conv1_a", 1, spec).amax(dim=(2, 3)), dim=1)
        return torch.einsum("nchw,nc->hw", v, a)
    pre = "momentum_" if family == "slavc-momentum" else ""
    heads = ("1", "2") if family.startswith("slavc") else ("",)
    f = ref_resnet18(sd, f"{pre}imgnet.", "conv1", 2, x)
    h = ref_resnet18(sd, f"{pre}audnet.", "conv1", 2, ref_spectrogram(wav, sr, 274)).amax(dim=(2, 3))
    maps = []
    for k in heads:
        v = F.normalize(F.conv2d(f, sd[f"{pre}img_proj{k}.weight"], sd[f"{pre}img_proj{k}.bias"]), dim=1)
        a = F.normalize(F.linear(h, sd[f"{pre}aud_proj{k}.weight"], sd[f"{pre}aud_proj{k}.bias"]), dim=1)
        maps.append(torch.einsum("nchw,nc->hw", v, a))
    return torch.stack(maps).mean(dim=0)


SHAPES = {"lvs": lvs_shapes, "sslalign": lvs_shapes, "ezvsl": ezvsl_shapes, "fnac": ezvsl_shapes,
          "slavc": slavc_shapes, "slavc-momentum": slavc_shapes}
#: how each repo saves its checkpoint: (container key, DataParallel / DDP ``module.`` prefix)
WRAPPING = {"lvs": ("model_state_dict", True), "sslalign": ("model_state_dict", False), "ezvsl": ("model", True),
            "fnac": ("model", True), "slavc": ("model", True), "slavc-momentum": ("model", True)}


def published_checkpoint(family: str, seed: int = 0) -> dict[str, object]:
    """What ``torch.save`` wrote in each repo: the state dict wrapped as that repo wraps it."""
    sd = random_state(SHAPES[family](), seed)
    key, parallel = WRAPPING[family]
    inner = {("module." + k if parallel else k): v for k, v in sd.items()}
    return {key: inner, "epoch": 20, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}}
