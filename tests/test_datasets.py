"""Manifest datasets (image and video entries), data specs, and model save/load through the zoo."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from avloc.data.datasets import ManifestDataset, dataset_from_spec
from avloc.errors import CheckpointError, DataError
from avloc.formats.manifest import read_manifest, write_manifest
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig
from avloc.methods import create_method, register_method
from avloc.methods.base import LocalizationMethod, MethodConfig
from avloc.methods.zoo import load_model, save_model
from clips import RAMP_STEP, write_clip


def _fixture(tmp_path: Path) -> Path:
    img = np.zeros((100, 200, 3), np.uint8)
    img[20:60, 120:180] = 255  # the sounding object
    Image.fromarray(img).save(tmp_path / "f.png")
    sr = 8000
    wav = np.zeros(sr * 4, np.float32)
    wav[sr * 2 - 100 : sr * 2 + 100] = 0.5  # a click in the middle
    sf.write(tmp_path / "a.wav", wav, sr)
    write_clip(tmp_path / "v.mp4", seconds=2.0, fps=5, size=(80, 60), picture="ramp", audio="tone")
    entries = [
        {"id": "img", "image": "f.png", "audio": "a.wav", "size": [200, 100], "boxes": [[120, 20, 180, 60]], "labels": [3]},
        {"id": "vid", "video": "v.mp4", "time": 1.0, "size": [80, 60], "boxes": [[0, 0, 40, 30]], "silent_boxes": [[40, 30, 80, 60]]},
    ]
    write_manifest(tmp_path / "m.jsonl", entries)
    return tmp_path / "m.jsonl"


def test_manifest_dataset_samples(tmp_path) -> None:
    ds = ManifestDataset(_fixture(tmp_path), ImageConfig(size=64, mode="squash"), AudioFrontendConfig(sample_rate=16000, window_seconds=1.0))
    s = ds[0]
    assert s["image"].shape == (3, 64, 64) and 0 <= s["image"].min() and s["image"].max() <= 1
    assert s["audio"].shape == (16000,)
    assert torch.allclose(s["boxes"], torch.tensor([[0.6, 0.2, 0.9, 0.6]]))
    assert s["labels"] == [3] and s["onscreen"] is True
    assert s["audio"].abs().max() > 0.3  # the click sits in the centre of the window
    v = ds[1]
    assert v["image"].shape == (3, 64, 64) and v["silent_boxes"].shape == (1, 4)
    assert abs(float(v["image"].mean()) - 5 * RAMP_STEP / 255) < 0.05  # frame 5 of 10 at t=1.0 s


def test_manifest_errors(tmp_path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_manifest(tmp_path / "empty.jsonl")
    write_manifest(tmp_path / "bad.jsonl", [{"id": "x", "image": "a.png", "size": [10, 10], "boxes": [[5, 5, 20, 8]]}])
    with pytest.raises(DataError, match="outside the 10x10 frame"):
        read_manifest(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="--raw"):
        dataset_from_spec("digitscenes:single:test")


@dataclass
class ToyConfig(MethodConfig):
    dim: int = 4
    extra: list[int] = field(default_factory=lambda: [1, 2])


@register_method("test-toy")
class Toy(LocalizationMethod):
    config_class = ToyConfig

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__(cfg)
        self.frozen = torch.nn.Linear(3, cfg.dim)
        self.head = torch.nn.Linear(cfg.dim, 1)

    def checkpoint_exclude_prefixes(self) -> list[str]:
        return ["frozen."]

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        x = self.head(self.frozen(images.permute(0, 2, 3, 1)))  # (B, H, W, 1)
        return x[..., 0] * audio.mean(dim=1)[:, None, None]


def test_save_load_model_roundtrip(tmp_path) -> None:
    torch.manual_seed(0)
    m = create_method("test-toy", {"dim": 6})
    path = save_model(m, tmp_path / "toy.safetensors", meta={"trained_on": "nothing"})
    from avloc.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    assert set(ck.state_dict) == {"head.weight", "head.bias"}  # frozen encoder excluded
    assert ck.config["dim"] == 6 and ck.config["audio"]["sample_rate"] == 16000
    torch.manual_seed(0)  # frozen part is rebuilt by the method (here: same seed)
    back = load_model(path)
    assert isinstance(back, Toy) and back.cfg.dim == 6 and back.checkpoint_meta["trained_on"] == "nothing"
    x, a = torch.rand(1, 3, 5, 5), torch.rand(1, 100)
    assert torch.allclose(back.localize(x, a), m.localize(x, a))
    with pytest.raises(CheckpointError, match="needs trained weights"):
        load_model("test-toy")
    with pytest.raises(CheckpointError, match="unknown model"):
        load_model("no-such-model")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(str(tmp_path / "missing.safetensors"))


def test_info_lists_registries(capsys) -> None:
    from avloc.cli.main import main

    assert main(["info", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"methods", "encoders", "datasets", "protocols", "checkpoint_families", "vision_models"}
    assert {"nanodet", "blazepose", "selfie-segmentation"} <= set(out["vision_models"])
    assert {"lvs", "ezvsl", "slavc", "sslalign", "fnac"} <= set(out["checkpoint_families"])
    assert "efficientnet_lite0" in out["encoders"] and "manifest" in out["datasets"]
