"""The training engine: run directory, exact resume, overwrite guard, feature cache, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from avloc.engine.train import (
    OptimConfig,
    TrainConfig,
    load_train_state,
    lr_at,
    save_train_state,
    train,
)
from avloc.errors import OutputExistsError
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig
from avloc.methods import create_method
from avloc.methods.base import LocalizationMethod
from avloc.methods.lvs import LVSConfig
from avloc.methods.zoo import load_model

SR = 8000
SIZE = 32


class TinyAV(Dataset):
    """Two coloured squares on black; the sounding one's colour sets the tone pitch.

    Deterministic per index; ``scene_index`` repeats over ``n_scenes`` images
    (like DigitScenes pool mode) so the feature cache has stable keys.
    """

    def __init__(self, n: int = 32, n_scenes: int = 8, seed: int = 0) -> None:
        self.n, self.n_scenes, self.seed = n, n_scenes, seed

    def __len__(self) -> int:
        return self.n

    def feature_cache_keys(self) -> list[int]:
        return [i % self.n_scenes for i in range(self.n)]

    def __getitem__(self, i: int) -> dict[str, Any]:
        scene = i % self.n_scenes
        rng = np.random.default_rng(self.seed * 1000 + scene)
        img = torch.zeros(3, SIZE, SIZE)
        boxes = []
        for c in range(2):
            x, y = rng.integers(0, SIZE - 10, size=2)
            img[c, y : y + 10, x : x + 10] = 1.0
            boxes.append([x / SIZE, y / SIZE, (x + 10) / SIZE, (y + 10) / SIZE])
        which = int(np.random.default_rng(self.seed * 7919 + i).integers(0, 2))
        t = np.arange(SR // 2) / SR
        wav = (0.5 * np.sin(2 * np.pi * (500 if which == 0 else 2500) * t)).astype(np.float32)
        return {
            "id": f"s{i}",
            "scene_index": scene,
            "image": img,
            "audio": torch.from_numpy(wav),
            "boxes": torch.tensor([boxes[which]], dtype=torch.float32),
            "box_labels": torch.tensor([which]),
            "box_annotator": torch.zeros(1, dtype=torch.long),
            "silent_boxes": torch.tensor([boxes[1 - which]], dtype=torch.float32),
            "labels": [which],
            "onscreen": True,
            "audible": True,
        }


def tiny_lvs_config(**kw: Any) -> LVSConfig:
    kw.setdefault("freeze_visual", False)
    return LVSConfig(
        audio=AudioFrontendConfig(sample_rate=SR, window_seconds=0.5),
        image=ImageConfig(size=SIZE, resize=SIZE),
        visual_encoder="small_cnn",
        visual_encoder_kwargs={"channels": [8, 16], "out_stride": 4},
        audio_encoder="small_cnn_audio",
        audio_encoder_kwargs={"channels": [8, 16], "time_stride": 2},
        embed_dim=8,
        visual_proj_hidden=8,
        **kw,
    )


def tiny_train_config(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "steps": 4,
        "batch_size": 4,
        "optim": OptimConfig(lr=1e-3, warmup_steps=2),
        "val_every": 0,
        "ckpt_every": 2,
        "log_every": 1,
        "progress": False,
        "device": "cpu",
    }
    base.update(kw)
    return TrainConfig(**base)


def _weights(model: LocalizationMethod) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lr_schedule_warmup_and_cosine() -> None:
    c = OptimConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_at(s, 10, c) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(10, 10, c) == pytest.approx(0.1)
    assert lr_at(7, 10, c) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5)))


def test_train_state_roundtrip_without_pickle(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    p = save_train_state(tmp_path / "s.safetensors", {"optim": opt.state_dict(), "step": 7, "best": None})
    back = load_train_state(p)
    assert back["step"] == 7 and back["best"] is None
    ref = opt.state_dict()
    assert back["optim"]["param_groups"] == ref["param_groups"]
    for pid, st in ref["state"].items():
        for k, v in st.items():
            torch.testing.assert_close(back["optim"]["state"][pid][k], v)
    assert p.read_bytes()[:2] != b"\x80\x04"  # not a pickle


def test_train_writes_run_dir_resumes_exactly_and_reloads(tmp_path: Path) -> None:
    data = TinyAV()
    full = tmp_path / "full"
    torch.manual_seed(0)
    m_full = create_method("lvs", tiny_lvs_config())
    res = train(m_full, data, full, tiny_train_config())
    assert res.step == 4 and not res.feature_cache
    for name in ("config.json", "metrics.jsonl", "curves.png", "last.safetensors", "train_state.safetensors"):
        assert (full / name).is_file(), name
    cfg = json.loads((full / "config.json").read_text())
    assert cfg["method"] == "lvs" and cfg["train"]["steps"] == 4 and cfg["feature_cache"]["used"] is False
    recs = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["split"] == "train"] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and "samples_per_s" in r for r in recs)
    assert (full / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # interrupted after 2 steps, then resumed to 4: identical weights
    part = tmp_path / "part"
    torch.manual_seed(0)
    train(create_method("lvs", tiny_lvs_config()), data, part, tiny_train_config(steps=2))
    torch.manual_seed(123)  # resuming must not depend on the caller's RNG
    m_res = create_method("lvs", tiny_lvs_config())
    train(m_res, data, part, tiny_train_config(steps=4), resume=True)
    w_full, w_res = _weights(m_full), _weights(m_res)
    assert w_full.keys() == w_res.keys()
    for k in w_full:
        assert torch.equal(w_full[k], w_res[k]), k
    steps = [json.loads(line)["step"] for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]

    # load_model rebuilds the trained localiser from last.safetensors
    loaded = load_model(full / "last.safetensors")
    m_full.eval()
    batch = torch.utils.data.default_collate([data[i] for i in range(3)])
    torch.testing.assert_close(loaded.localize(batch["image"], batch["audio"]), m_full.localize(batch["image"], batch["audio"]))


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    data = TinyAV(n=8)
    out = tmp_path / "run"
    train(create_method("lvs", tiny_lvs_config()), data, out, tiny_train_config(steps=1))
    with pytest.raises(OutputExistsError, match="--force"):
        train(create_method("lvs", tiny_lvs_config()), data, out, tiny_train_config(steps=1))
    train(create_method("lvs", tiny_lvs_config()), data, out, tiny_train_config(steps=1), force=True)


def test_feature_cache_is_transparent(tmp_path: Path) -> None:
    """Frozen + pretrained visual encoder: cached features give the same training as end to end."""
    data = TinyAV(n=16, n_scenes=4)
    results = {}
    for use in (False, True):
        torch.manual_seed(0)
        m = create_method("lvs", tiny_lvs_config(freeze_visual=True))
        m.visual_encoder.pretrained = True  # stand-in for an ImageNet encoder (small and fast)
        res = train(m, data, tmp_path / f"cache{use}", tiny_train_config(feature_cache=use))
        assert res.feature_cache is use
        assert json.loads((tmp_path / f"cache{use}" / "config.json").read_text())["feature_cache"]["used"] is use
        results[use] = _weights(m)
    for k in results[False]:
        torch.testing.assert_close(results[True][k], results[False][k], rtol=1e-4, atol=1e-5)
    # frozen pretrained encoder weights are not saved in checkpoints
    from avloc.checkpoint import load_checkpoint

    ck = load_checkpoint(tmp_path / "cacheTrue" / "last.safetensors")
    assert not any(k.startswith("visual_encoder.") for k in ck.state_dict)


def test_cli_train_parses_and_routes_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from avloc.engine.train import DataConfig, split_overrides

    m, t, d = split_overrides(["eps_p=0.7", "optim.lr=1e-3", "steps=3", "data.train_kwargs={}"], tiny_lvs_config(), TrainConfig(), DataConfig())
    assert m == ["eps_p=0.7"] and t == ["optim.lr=1e-3", "steps=3"] and d == ["train_kwargs={}"]
    from avloc.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown key"):
        split_overrides(["nope=1"], tiny_lvs_config(), TrainConfig(), DataConfig())


DDP_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_engine import TinyAV, tiny_lvs_config, tiny_train_config
from avloc.engine.train import train
from avloc.methods import create_method
from safetensors.torch import save_file
import torch.distributed as dist
torch.manual_seed(0)
m = create_method("lvs", tiny_lvs_config())
train(m, TinyAV(n=16), {out!r}, tiny_train_config(steps=2, ckpt_every=0))
save_file({{k: v.contiguous() for k, v in m.state_dict().items()}}, {out!r} + f"/rank{{dist.get_rank()}}.safetensors")
dist.destroy_process_group()
"""


@pytest.mark.slow  # ~25 s: two torchrun processes import torch and train
def test_ddp_two_cpu_processes_agree(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    out = tmp_path / "ddp"
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(script)],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    from safetensors.torch import load_file

    w0, w1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    init = create_method("lvs", tiny_lvs_config())
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2
    assert any(not torch.equal(w0[k], v) for k, v in init.state_dict().items() if v.is_floating_point())


def test_train_end_is_the_mean_of_the_last_logged_steps(tmp_path: Path) -> None:
    """train_end (the memorisation check): hand-worked means over the last steps, the curve at quarters, errors."""
    from avloc.engine.train import METRICS_FILE, read_metrics, train_end
    from avloc.errors import DataError

    rows = [{"step": s, "split": "train", "lr": 1e-3, "loss": 10.0 - s, "acc": s / 10, "samples_per_s": 5.0}
            for s in range(1, 9)]
    rows.insert(4, {"step": 4, "split": "val", "auc": 0.5})
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    end = train_end(tmp_path, last=3)  # steps 6, 7, 8
    assert end["steps"] == "6-8" and end["logged"] == 3
    assert end["loss"] == pytest.approx((4 + 3 + 2) / 3) and end["acc"] == pytest.approx(0.7)
    assert set(end) == {"steps", "logged", "loss", "acc", "loss_at"}  # lr and samples_per_s are not terms
    assert end["loss_at"] == {"2": 8.0, "4": 6.0, "6": 4.0, "8": 2.0}
    assert set(train_end(tmp_path, last=100, keys=["acc"])) == {"steps", "logged", "acc", "loss_at"}
    assert train_end(tmp_path, last=100)["steps"] == "1-8"
    assert [r["step"] for r in read_metrics(tmp_path, "val")] == [4]
    with pytest.raises(DataError, match="not a training run directory"):
        train_end(tmp_path / "nowhere")
    (tmp_path / METRICS_FILE).write_text('{"step": 1, "split": "train"\n')
    with pytest.raises(DataError, match="malformed line 1"):
        train_end(tmp_path)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: OptimConfig(lr=float("inf")), "optim.lr must be a finite number"),
        (lambda: OptimConfig(lr=float("nan")), "optim.lr must be a finite number"),
        (lambda: OptimConfig(lr=0.0), r"optim.lr must be > 0"),
        (lambda: OptimConfig(weight_decay=-1e-4), r"optim.weight_decay must be >= 0"),
        (lambda: OptimConfig(weight_decay=float("inf")), "optim.weight_decay must be a finite number"),
        (lambda: OptimConfig(name="adamw", lr=0.5, weight_decay=2.0), r"lr x optim.weight_decay must be < 1"),
        (lambda: OptimConfig(betas=(0.9, float("nan"))), "optim.betas must be a finite number"),
        (lambda: TrainConfig(batch_size=0), r"train.batch_size must be >= 1"),
        (lambda: TrainConfig(epochs=0), r"train.epochs must be >= 1"),
        (lambda: TrainConfig(steps=2.5), "train.steps must be a whole number"),
        (lambda: TrainConfig(batch_size=True), "train.batch_size must be a whole number"),
        (lambda: TrainConfig(val_metric=""), "train.val_protocol and train.val_metric"),
    ],
)
def test_training_configs_check_their_ranges(make: Any, match: str) -> None:
    from avloc.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        make()


def _damage(run: Path, which: str) -> str:
    """Damage one file of a finished run the way a crash or a full disk would; returns the file's name."""
    if which == "config":
        (run / "config.json").write_text('{"method": "lvs", "method_con')
        return "config.json"
    if which == "state-truncated":
        data = (run / "train_state.safetensors").read_bytes()
        (run / "train_state.safetensors").write_bytes(data[: len(data) // 2])
        return "train_state.safetensors"
    if which == "state-missing":
        (run / "train_state.safetensors").unlink()
        return "train_state.safetensors"
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "split": "tr\n')
    return "metrics.jsonl"


def test_resume_of_a_damaged_run_names_the_file_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avloc.cli.main import main
    from avloc.engine.train import RunDir

    good = tmp_path / "good"
    train(create_method("lvs", tiny_lvs_config()), TinyAV(n=8), good, tiny_train_config(steps=2))
    RunDir.check_resumable(good)  # a complete run passes
    capsys.readouterr()
    for which in ("config", "state-truncated", "state-missing", "metrics"):
        run = tmp_path / which
        shutil.copytree(good, run)
        name = _damage(run, which)
        rc = main(["train", "--resume", "--out", str(run), "steps=4"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, (which, lines)
        assert str(run / name) in lines[0] and "cannot resume" in lines[0] and "--force" in lines[0], lines[0]
