"""The resumable state of a run, written without pickle: weights, optimiser, progress and every rank's RNG.

:func:`save_train_state` flattens a nested dict into one safetensors file (tensors as tensors, everything
else as a JSON skeleton in the header), atomically; :func:`load_train_state` reads it back. ``resume``
continues exactly: the same weights as an uninterrupted run, provided the dataset's ``__getitem__`` is
deterministic per index.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avloc.engine.train.distributed import Dist
from avloc.errors import DataError

#: the safetensors header key holding the JSON skeleton of a training state
STATE_META_KEY = "avloc_train_state"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)  # noqa: NPY002


def _split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested dict/list by references; collect them in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _split_tensors(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        kind = "__tuple__" if isinstance(obj, tuple) else "__list__"
        return {kind: [_split_tensors(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a training state")


def _join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _join_tensors(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            return [_join_tensors(v, tensors) for v in obj["__list__"]]
        if "__tuple__" in obj:
            return tuple(_join_tensors(v, tensors) for v in obj["__tuple__"])
    return obj


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002  (the legacy global RNG is what datasets may use)
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), *map(_py, np_state[2:])],  # type: ignore[index]
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _py(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"].to(torch.uint8))
    name, keys, pos, has_gauss, gauss = st["numpy"]
    np_state = (name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss))
    np.random.set_state(np_state)  # noqa: NPY002
    v = json.loads(st["python"])
    random.setstate((v[0], tuple(v[1]), v[2]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.to(torch.uint8) for t in st["cuda"]])


def save_train_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a nested dict of tensors and JSON scalars as one safetensors file, atomically."""
    from avloc.checkpoint import write_safetensors

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split_tensors(state, "s", tensors)
    return write_safetensors(path, tensors, metadata={STATE_META_KEY: json.dumps(skeleton)})


#: the keys a run's training state holds (written by the loop's ``save_state``, read by :func:`restore`)
STATE_KEYS = ("model", "optim", "step", "epoch", "batch_in_epoch", "rng")


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_train_state`; a damaged or foreign file is a :class:`DataError` naming it."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise DataError(f"cannot resume: no training state {p} (the run never reached a checkpoint)")
    damaged = f"cannot resume: {p} is damaged"
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        if STATE_META_KEY not in meta:
            raise DataError(f"cannot resume: {p} is not an avloc training state")
        skeleton = json.loads(meta[STATE_META_KEY])
        out = _join_tensors(skeleton, load_file(str(p)))
    except (SafetensorError, OSError, ValueError, KeyError) as e:  # ValueError: JSONDecodeError too
        raise DataError(f"{damaged} ({type(e).__name__}: {e}); restore it or start a new run with --force") from None
    if not isinstance(out, dict):
        raise DataError(f"{damaged} (its header holds no dict); restore it or start a new run with --force")
    return out


@dataclass
class Progress:
    """Where the loop is: what the resumable state holds besides weights, optimizer and RNG."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def gather_rng(d: Dist) -> list[Any]:
    """Every rank's RNG states (rank order), for the resumable state."""
    rng = _rng_state()
    if d.world <= 1:
        return [rng]
    import torch.distributed as dist

    gathered: list[Any] = [None] * d.world
    dist.all_gather_object(gathered, {"torch": rng["torch"].tolist(), "py": rng["python"], "np": [rng["numpy"][0], rng["numpy"][1].tolist(), *rng["numpy"][2:]]})
    return [
        {"torch": torch.tensor(g["torch"], dtype=torch.uint8), "python": g["py"],
         "numpy": [g["np"][0], torch.tensor(g["np"][1], dtype=torch.int64), *g["np"][2:]]}
        for g in gathered
    ]


def restore(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device, d: Dist) -> tuple[Progress, float | None]:
    """Load the resumable state: weights, optimizer, RNG (this rank's); returns the progress and the best score."""
    st = load_train_state(path)
    missing = [k for k in STATE_KEYS if k not in st]
    if missing:
        raise DataError(f"cannot resume: {path} is damaged (no {', '.join(missing)}); restore it or start a new run")
    model.load_state_dict({k: v.to(device) for k, v in st["model"].items()})
    opt.load_state_dict(st["optim"])
    rngs = st["rng"]
    _set_rng_state(rngs[d.rank] if isinstance(rngs, list) and d.rank < len(rngs) else rngs[0])
    return Progress(int(st["step"]), int(st["epoch"]), int(st["batch_in_epoch"])), st.get("best")
