"""The process group of a training run: torchrun ranks, device choice and the collective helpers the loop uses.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1) the run joins the process group (gloo on CPU, NCCL on CUDA);
otherwise every helper here is a no-op on one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from avloc.errors import ConfigError


@dataclass
class Dist:
    """This process's rank, the world size and the local rank (its GPU under torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    """Join the torchrun process group if launched by torchrun; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"train.device must be auto, cuda or cpu, got {device_pref!r}")
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but CUDA is not available")
    if world <= 1:
        return Dist(), torch.device("cuda" if use_cuda else "cpu")
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return Dist(rank, world, local), torch.device(f"cuda:{local}" if use_cuda else "cpu")


def barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_mean(values: dict[str, float], d: Dist, device: torch.device) -> dict[str, float]:
    """Mean over ranks of every logged scalar (one all-reduce), so rank 0 logs the global figures."""
    if d.world <= 1 or not values:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / d.world for k, v in zip(keys, t.tolist(), strict=True)}


def sync_buffers(model: nn.Module, d: Dist) -> None:
    """DDP keeps parameters equal; BatchNorm running statistics are per rank: take rank 0's."""
    if d.world > 1:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf.data, 0)
