"""Paper recipes (src/avloc/configs/*.json with a method_name) and the options they use.

Every recipe runs ``avloc train --config NAME --dry-run``: its model, a tiny generated
set in the recipe's real layout through the recipe's prepare step, its optimiser, two
steps on CPU (batch 2, said in the dry-run report). ResNet-18 at 224 takes 20-60 s per
recipe on two cores, so the parametrised run is marked slow; the fast test runs one
recipe with its image size overridden to 64 (test only).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from avloc.cli.main import main
from avloc.config import CONFIGS_DIR, list_configs, read_config_file
from avloc.engine.train import OptimConfig, TrainConfig, lr_at, resolve_precision
from avloc.errors import CheckpointError, ConfigError

#: paper recipes: the named configs that carry ``notes`` (where each setting came from); the DigitScenes
#: experiment configs (``dnm-table2-*``, ...) name their method too but are not paper recipes
RECIPES = [n for n in list_configs() if "notes" in json.loads((CONFIGS_DIR / f"{n}.json").read_text())]


def test_recipes_are_described_and_parse() -> None:
    assert len(RECIPES) >= 9
    from avloc import methods  # noqa: F401
    from avloc.config import config_from_dict
    from avloc.engine.train import DataConfig
    from avloc.metrics.protocols import create_protocol
    from avloc.registry import METHODS

    for name in RECIPES:
        raw = json.loads((CONFIGS_DIR / f"{name}.json").read_text())
        assert f"protocol {raw['train']['val_protocol']}" in raw["description"].replace("protocol: ", "protocol "), name  # what it is scored with
        assert "not reproduced" in raw["description"].lower(), name
        assert raw["notes"], name
        cfg = read_config_file(name, sections=("method_name", "method", "train", "data"))
        config_from_dict(METHODS.get(cfg["method_name"]).config_class, cfg["method"])
        t = config_from_dict(TrainConfig, cfg["train"])
        d = config_from_dict(DataConfig, cfg["data"])
        create_protocol(t.val_protocol)
        assert d.prepare in ("vggsound", "flickr-train", "music-solo", "ave"), name


def test_fast_dry_run_of_a_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    # test only: image size 64 instead of the recipe's 224, so ResNet-18 runs in a second
    rc = main(["train", "--config", "ezvsl-vggsound144k", "--dry-run", 'method.image={"size": 64, "resize": 64, "mode": "squash"}'])
    assert rc == 0
    out = capsys.readouterr().out
    assert "batch 2 instead of the recipe's 128" in out and "vggsound-layout clips" in out and "2 steps of ezvsl-vggsound144k" in out


@pytest.mark.slow  # 20-60 s each: the recipe's own ResNet-18s at the paper's image size, 2 steps at batch 2
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_dry_run(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", name, "--dry-run"]) == 0
    assert f"2 steps of {name} finished" in capsys.readouterr().out


def test_optim_validation_and_schedules() -> None:
    for bad in ({"lr": 0}, {"weight_decay": -1}, {"betas": (0.9, 1.0)}, {"schedule": "step"}, {"milestones": (5,)},
                {"schedule": "step", "milestones": (5, 3)}, {"schedule": "step", "milestone_fractions": (0.5, 1.2)},
                {"gamma": 0}, {"nesterov": True}, {"schedule": "step", "milestones": (2,), "milestone_fractions": (0.5,)}):
        with pytest.raises(ConfigError):
            OptimConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
    c = OptimConfig(lr=1.0, schedule="step", milestone_fractions=(0.5, 0.75), gamma=0.1)
    assert [lr_at(s, 8, c) for s in range(8)] == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    c = OptimConfig(lr=1.0, schedule="step", milestones=(2,), warmup_steps=2)
    assert [lr_at(s, 4, c) for s in range(4)] == pytest.approx([0.5, 1.0, 0.1, 0.1])
    from avloc.engine.train import build_optimizer

    p = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(build_optimizer(p, OptimConfig(name="sgd", momentum=0.9, nesterov=True)), torch.optim.SGD)
    assert isinstance(build_optimizer(p, OptimConfig(name="adamw", weight_decay=0.05)), torch.optim.AdamW)


def test_amp_is_reported_not_silently_dropped_on_cpu() -> None:
    cpu = torch.device("cpu")
    p = resolve_precision(TrainConfig(amp=True, amp_dtype="bfloat16"), cpu)
    assert p.used == "fp32" and "CUDA only" in p.why and not p.scaled
    assert resolve_precision(TrainConfig(amp=False), cpu).why == "train.amp=false"
    with pytest.raises(ConfigError, match="amp_dtype"):
        TrainConfig(amp_dtype="int8")  # type: ignore[arg-type]


def test_resnet18_loads_torchvision_layout_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from avloc.encoders.resnet import IMAGENET_FILE, resnet18

    src = resnet18()
    state = {k: v for k, v in src.trunk.state_dict().items() if not k.endswith("num_batches_tracked")}  # as torchvision's 2017 file
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / IMAGENET_FILE)
    monkeypatch.setenv("AVLOC_WEIGHTS", str(tmp_path))
    enc = resnet18(weights="imagenet")
    assert enc.pretrained
    x = torch.rand(1, 3, 64, 64)
    src.eval(), enc.eval()
    torch.testing.assert_close(enc(x), src(x))
    bad = dict(state)
    bad.pop("layer1.0.conv1.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="missing"):
        resnet18(weights=str(tmp_path / "bad.pth"))
    monkeypatch.setenv("AVLOC_WEIGHTS", str(tmp_path / "nowhere"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match="not found"):
        resnet18(weights="imagenet")


def test_manifest_classes_become_labels(tmp_path: Path) -> None:
    from avloc.data.datasets import ManifestDataset
    from avloc.data.prepare import prepare
    from avloc.data.prepare.fixtures import write_layout_fixture

    write_layout_fixture("music-solo", tmp_path / "m", n=4, seconds=1.0)
    prepare("music-solo", tmp_path / "m", tmp_path / "m.jsonl")
    ds = ManifestDataset(tmp_path / "m.jsonl", classes="sorted")
    assert ds.classes == sorted(ds.classes) and len(ds.classes) == 4
    assert sorted(e["labels"][0] for e in ds.entries) == [0, 1, 2, 3]
    from avloc.errors import DataError

    with pytest.raises(DataError, match="not one of"):
        ManifestDataset(tmp_path / "m.jsonl", classes=["violin"])
