"""Multi-node DDP through torchrun on CPU (gloo): two local processes as two "nodes".

The model here has a per-sample loss and no BatchNorm, so a data-parallel step
over 2 x B samples must equal one process's step over the same 2B samples (the
DistributedSampler shards are the interleaved halves of the same permutation, and
DDP averages the gradients): the checkpoints agree to float tolerance, the logged
(all-reduced) losses too, and a run stopped after 2 steps and resumed under
torchrun ends with the same weights as the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from avloc.engine.train import OptimConfig, TrainConfig, train
from avloc.methods.base import LocalizationMethod, MethodConfig

N, B = 16, 2  # samples; per-process batch (global batch 2B under two processes)


class PerSampleSet(Dataset):
    """Deterministic per index: a random image and waveform, and a regression target."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        return {"image": torch.rand(3, 8, 8, generator=g), "audio": torch.randn(64, generator=g), "id": str(i)}


@dataclass
class PerSampleConfig(MethodConfig):
    hidden: int = 8


class PerSampleMethod(LocalizationMethod):
    """Conv map + audio vector, a per-pixel score; no BatchNorm, no in-batch negatives."""

    config_class = PerSampleConfig
    name = "ddp-test-per-sample"

    def __init__(self, cfg: PerSampleConfig) -> None:
        super().__init__(cfg)
        self.conv = nn.Conv2d(3, cfg.hidden, 3, padding=1)
        self.aud = nn.Linear(64, cfg.hidden)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.conv(batch["image"])  # (B, H, 8, 8)
        a = self.aud(batch["audio"])  # (B, H)
        return {"map": torch.einsum("bchw,bc->bhw", v, a)}  # (B, 8, 8)

    def build_criterion(self) -> nn.Module:
        return PerSampleLoss()

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return self.forward({"image": images, "audio": audio})["map"]


class PerSampleLoss(nn.Module):
    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        target = batch["image"].mean(1)  # (B, 8, 8)
        per = ((outputs["map"] - target) ** 2).mean((1, 2))  # (B,)
        return {"loss": per.mean(), "max_term": per.max()}


def make_model() -> PerSampleMethod:
    torch.manual_seed(0)
    return PerSampleMethod(PerSampleConfig())


def train_config(steps: int, batch: int, ckpt_every: int = 0) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch, optim=OptimConfig(lr=1e-2), val_every=0, ckpt_every=ckpt_every,
                       log_every=1, progress=False, feature_cache=False, device="cpu", seed=3)


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import torch.distributed as dist
from test_ddp import PerSampleSet, make_model, train_config
from avloc.engine.train import train
steps, ckpt, resume = {steps}, {ckpt}, {resume}
train(make_model(), PerSampleSet(), {out!r}, train_config(steps, {batch}, ckpt), resume=resume, force=not resume)
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def _two_nodes(tmp: Path, out: Path, steps: int, ckpt: int = 0, resume: bool = False) -> None:
    """Launch two torchrun agents (``--nnodes 2 --nproc-per-node 1``) meeting at one c10d rendezvous."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    script = tmp / f"ddp_{out.name}_{steps}_{int(resume)}.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(Path(__file__).parent), out=str(out), steps=steps, ckpt=ckpt,
                                                    resume=resume, batch=B)))
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
             "--rdzv-id", f"avloc-test-{port}", "--node-rank", str(rank), "--max-restarts", "0", str(script)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        for rank in (0, 1)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(x[-3000:] for x in logs)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    from avloc.engine.train import STATE_FILE, load_train_state

    return load_train_state(run / STATE_FILE)["model"]


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # ~60 s: three pairs of torchrun agents, each process importing torch
def test_two_node_ddp_equals_one_process_and_resumes(tmp_path: Path) -> None:
    steps = 4
    single = tmp_path / "single"
    train(make_model(), PerSampleSet(), single, train_config(steps, 2 * B))  # one process, the same global batch
    ddp = tmp_path / "ddp"
    _two_nodes(tmp_path, ddp, steps)
    cfg = json.loads((ddp / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["precision"]["used"] == "fp32"
    w1, w2 = _final_weights(single), _final_weights(ddp)
    assert w1.keys() == w2.keys()
    init = make_model().state_dict()
    assert any(not torch.equal(w2[k], init[k]) for k in init)  # it trained
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)
    # rank 0 logs the mean over ranks: the global batch's loss
    assert len(_losses(ddp)) == steps
    torch.testing.assert_close(torch.tensor(_losses(ddp)), torch.tensor(_losses(single)), rtol=1e-5, atol=1e-7)

    # stopped after 2 steps (a checkpoint), resumed to 4 under torchrun: the uninterrupted run's weights
    part = tmp_path / "part"
    _two_nodes(tmp_path, part, 2, ckpt=2)
    _two_nodes(tmp_path, part, steps, ckpt=2, resume=True)
    w3 = _final_weights(part)
    for k in w2:
        torch.testing.assert_close(w3[k], w2[k], rtol=0, atol=0)
    assert [json.loads(line)["step"] for line in (part / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
