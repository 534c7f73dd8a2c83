"""Every registered encoder: forward/backward on tiny inputs, shapes vs the contract, no NaN;
EfficientNet-Lite0's ImageNet weights on real photos; strict, safe weight loading."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from avloc.encoders import AudioEncoder, VisualEncoder, create_encoder, freeze, list_encoders
from avloc.encoders.efficientnet_lite import EfficientNetLite0
from avloc.encoders.resnet import ResNet18Audio
from avloc.errors import CheckpointError, ConfigError
from avloc.frontends.image import ImageConfig, preprocess_image
from avloc.registry import RegistryError

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("AVLOC_DATA", REPO.parent / "shared" / "data"))


# ImageNet-1k class index ranges (Simonyan & Zisserman / standard synset order).
DOG_CLASSES = set(range(151, 269))
BIRD_CLASSES = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    enc = create_encoder("efficientnet_lite0")
    assert isinstance(enc, EfficientNetLite0)
    return enc.eval()


def _check_visual(enc: VisualEncoder, batch: int, size: int = 64) -> None:
    torch.manual_seed(0)
    images = torch.rand(batch, 3, size, size)
    enc.eval()
    with torch.no_grad():
        out = enc(images)
    c, s = enc.feature_info.channels, enc.feature_info.stride
    assert out.shape == (batch, c, math.ceil(size / s), math.ceil(size / s))
    assert torch.isfinite(out).all()
    if batch > 1:  # eval-mode features of a sample do not depend on the rest of the batch
        with torch.no_grad():
            single = enc(images[:1])
        torch.testing.assert_close(single, out[:1], rtol=1e-4, atol=1e-4)


def _check_audio(enc: AudioEncoder, batch: int, freq: int = 128, time: int = 64) -> None:
    torch.manual_seed(0)
    spec = torch.randn(batch, 1, freq, time)
    enc.eval()
    with torch.no_grad():
        per_time = enc.forward_time(spec)
        pooled = enc(spec)
    assert per_time.dim() == 3 and per_time.shape[:2] == (batch, enc.out_channels)
    stride = getattr(enc, "time_stride", None)
    if stride is not None:
        assert per_time.shape[2] == math.ceil(time / stride)
    assert pooled.shape == (batch, enc.out_channels)
    assert torch.isfinite(per_time).all() and torch.isfinite(pooled).all()


@pytest.mark.parametrize("name", list_encoders())
@pytest.mark.parametrize("batch", [1, 2])
def test_every_encoder_forward(name: str, batch: int) -> None:
    enc = create_encoder(name)
    if isinstance(enc, VisualEncoder):
        _check_visual(enc, batch)
    else:
        _check_audio(enc, batch)


@pytest.mark.parametrize("name", list_encoders())
def test_every_encoder_backward(name: str) -> None:
    enc = create_encoder(name).train()
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64) if isinstance(enc, VisualEncoder) else torch.randn(2, 1, 128, 64)
    x.requires_grad_(True)
    out = enc(x)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert grads, f"{name}: no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    first = next(enc.parameters())  # the stem conv: every path goes through it
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list_encoders())
def test_freeze_stops_gradients(name: str) -> None:
    enc = freeze(create_encoder(name))
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())


@pytest.mark.parametrize(
    ("name", "kwargs", "channels", "stride"),
    [
        ("efficientnet_lite0", {}, 112, 16),
        ("efficientnet_lite0", {"out_stride": 32}, 1280, 32),
        ("resnet18", {}, 512, 32),
        ("resnet18", {"out_stride": 16}, 512, 16),
        ("resnet18", {"out_stride": 16, "dilate": True, "base_width": 8}, 64, 16),
        ("small_cnn", {}, 128, 16),
        ("small_cnn", {"channels": (8, 16, 16, 16, 24), "out_stride": 32}, 24, 32),
    ],
)
def test_visual_feature_info_at_224(name: str, kwargs: dict[str, Any], channels: int, stride: int) -> None:
    enc = (
        create_encoder(name, pretrained=False, **kwargs)
        if name == "efficientnet_lite0"
        else create_encoder(name, **kwargs)
    )
    assert isinstance(enc, VisualEncoder)
    assert (enc.feature_info.channels, enc.feature_info.stride) == (channels, stride)
    with torch.no_grad():
        out = enc.eval()(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, channels, 224 // stride, 224 // stride)


def test_audio_encoder_options() -> None:
    spec = torch.randn(2, 1, 257, 200)  # LVS spectrogram of 3 s at 16 kHz
    enc = create_encoder("resnet18_audio", base_width=16).eval()
    assert isinstance(enc, ResNet18Audio)
    with torch.no_grad():
        per_time, pooled = enc.forward_time(spec), enc(spec)
    assert per_time.shape == (2, 128, 7)
    # forward = global max over the whole map (LVS's AdaptiveMaxPool2d((1, 1)))
    with torch.no_grad():
        torch.testing.assert_close(pooled, enc.trunk(spec).amax(dim=(2, 3)))
    small = create_encoder("small_cnn_audio", channels=(8, 16), time_stride=2).eval()
    assert isinstance(small, AudioEncoder)
    with torch.no_grad():
        assert small.forward_time(spec).shape == (2, 16, 100)


def test_encoder_errors() -> None:
    with pytest.raises(RegistryError, match=r"valid names: .*efficientnet_lite0"):
        create_encoder("no_such_encoder")
    with pytest.raises(ConfigError, match="out_stride"):
        create_encoder("efficientnet_lite0", out_stride=8, pretrained=False)
    with pytest.raises(ConfigError, match="out_stride"):
        create_encoder("resnet18", out_stride=8)
    with pytest.raises(ConfigError, match="power of two"):
        create_encoder("small_cnn", channels=(8, 8), out_stride=16)
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\)"):
        create_encoder("small_cnn")(torch.rand(1, 1, 32, 32))
    with pytest.raises(ConfigError, match=r"\(B, 1, F, T\)"):
        audio = create_encoder("resnet18_audio", base_width=8)
        assert isinstance(audio, AudioEncoder)
        audio.forward_time(torch.rand(1, 128, 64))


def test_lite0_weights_strict(tmp_path: Path, lite0: EfficientNetLite0) -> None:
    sd = lite0.state_dict()
    missing = {k: v for k, v in sd.items() if k != "_fc.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing \['_fc.bias'\]"):
        EfficientNetLite0(weights_path=tmp_path / "missing.pth")
    extra = dict(sd, **{"_extra.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected"):
        EfficientNetLite0(weights_path=tmp_path / "extra.pth")
    wrong = dict(sd, **{"_fc.bias": torch.zeros(10)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        EfficientNetLite0(weights_path=tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="not found"):
        EfficientNetLite0(weights_path=tmp_path / "absent.pth")


class _Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned > /dev/null",))


def test_lite0_refuses_malicious_pickle(tmp_path: Path) -> None:
    bad = tmp_path / "evil.pth"
    with bad.open("wb") as f:
        pickle.dump({"_conv_stem.weight": _Exploit()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="not a loadable tensor state dict"):
        EfficientNetLite0(weights_path=bad)


def test_lite0_matches_reference_package(lite0: EfficientNetLite0) -> None:
    """Same logits as the ``efficientnet-lite-pytorch`` implementation (TF-SAME padding) at 224."""
    ref_mod = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="reference package efficientnet-lite-pytorch not installed"
    )
    ref = ref_mod.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(lite0.state_dict())
    ref.eval()
    torch.manual_seed(0)
    x = torch.rand(2, 3, 224, 224)
    from avloc.frontends.image import normalize

    with torch.no_grad():
        torch.testing.assert_close(lite0.classify(x), ref(normalize(x, lite0.mean, lite0.std)), rtol=1e-4, atol=1e-4)
        feats = lite0.forward_features_all(x)
        torch.testing.assert_close(feats[32], ref.extract_features(normalize(x, lite0.mean, lite0.std)))
        torch.testing.assert_close(feats[16], lite0(x))


def _photo(name: str) -> torch.Tensor:
    path = data_dir() / "pairs" / name
    if not path.is_file():
        pytest.skip(f"shared photo {path} not found: put ../shared/data beside the repo or set AVLOC_DATA")
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB")).copy()  # (H, W, 3) uint8
    return preprocess_image(torch.from_numpy(arr), ImageConfig(mode="crop", resize=256, size=224))[None]


@pytest.mark.parametrize(("photo", "classes"), [("dog_image.jpg", DOG_CLASSES), ("bird_image.jpg", BIRD_CLASSES)])
def test_lite0_imagenet_top5_on_real_photos(lite0: EfficientNetLite0, photo: str, classes: set[int]) -> None:
    x = _photo(photo)
    assert x.shape == (1, 3, 224, 224)
    with torch.no_grad():
        probs = lite0.classify(x).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert classes & set(top5), f"{photo}: top-5 {top5} has no expected class"
    assert int(probs.argmax()) in classes and probs.max() > 0.5, (
        f"{photo}: top-1 {int(probs.argmax())} p={probs.max():.2f}"
    )


def test_lite0_fold_batchnorm_same_outputs(lite0: EfficientNetLite0) -> None:
    """Folded BatchNorm (and channels-last) gives the unfolded heads at both strides; training is refused."""
    import copy

    torch.manual_seed(0)
    x = torch.rand(2, 3, 96, 128)
    with torch.inference_mode():
        ref = lite0.forward_heads(x, (16, 32))
        folded = copy.deepcopy(lite0).eval().fold_batchnorm()
        folded.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        got = folded.forward_heads(x.contiguous(memory_format=torch.channels_last), (16, 32))
        logits_ref, logits = lite0.classify(x), folded.classify(x)
    for s in (16, 32):
        torch.testing.assert_close(got[s], ref[s], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-4, atol=1e-4)
    assert folded.fold_batchnorm() is folded  # idempotent
    with pytest.raises(ConfigError, match="inference only"):
        folded.train()
    with pytest.raises(ConfigError, match="eval"):
        EfficientNetLite0(pretrained=False).fold_batchnorm()
