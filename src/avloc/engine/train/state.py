"""The resumable state of a run, written without pickle: weights, optimiser, progress and every rank's RNG.

:func:`save_train_state` flattens a nested dict into one safetensors file (tensors as tensors, everything
else as a JSON skeleton in the header), atomically; :func:`load_train_state` reads it back. ``resume``
continues exactly: the same weights as an uninterrupted run, provided the dataset's ``__getitem__`` is
deterministic per index.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avloc.engine.train.distributed import Dist
from avloc.errors import DataError

#: the safetensors header key holding the JSON skeleton of a training state
STATE_META_KEY = "avloc_train_state"
#: what to do about a damaged run file (the end of every "cannot resume" error)
REPAIR = "restore it from a copy, or start a new run (--force overwrites this one)"


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


class _Damaged(ValueError):
    """A skeleton node that :func:`save_train_state` cannot have written (reported as a damaged file)."""


def _join_tensors(obj: Any, tensors: Mapping[str, Any], where: str = "$") -> Any:
    """Invert :func:`_split_tensors`; a node it cannot have written raises :class:`_Damaged` naming where."""
    if isinstance(obj, dict):
        if len(obj) != 1 or next(iter(obj)) not in ("__tensor__", "__dict__", "__list__", "__tuple__"):
            raise _Damaged(f"{where}: an object that is not a tensor, dict, list or tuple node")
        (kind, val), = obj.items()
        if kind == "__tensor__":
            if not isinstance(val, str) or val not in tensors:
                raise _Damaged(f"{where}: refers to no stored tensor ({val!r})")
            return tensors[val]
        if not isinstance(val, list):
            raise _Damaged(f"{where}: {kind} holds no list")
        if kind == "__dict__":
            if not all(isinstance(kv, list) and len(kv) == 2 and isinstance(kv[0], (str, int)) for kv in val):
                raise _Damaged(f"{where}: __dict__ is not a list of [key, value] pairs")
            return {k: _join_tensors(v, tensors, f"{where}.{k}") for k, v in val}
        items = [_join_tensors(v, tensors, f"{where}[{i}]") for i, v in enumerate(val)]
        return items if kind == "__list__" else tuple(items)
    if isinstance(obj, list):
        raise _Damaged(f"{where}: a bare list (lists are stored as __list__ nodes)")
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


def _read_state(path: Path, tensors: Callable[[Path, set[str]], Mapping[str, Any]]) -> dict[str, Any]:
    """Open a training state and decode its skeleton over ``tensors(path, names)``; damage is a :class:`DataError`."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise DataError(f"cannot resume: {path} not found (the run never reached a checkpoint); {REPAIR}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, names = f.metadata() or {}, set(f.keys())
        if STATE_META_KEY not in meta:
            raise DataError(f"cannot resume: {path} is not an avloc training state; {REPAIR}")
        out = _join_tensors(json.loads(meta[STATE_META_KEY]), tensors(path, names))
    except (SafetensorError, OSError, ValueError, RecursionError) as e:  # JSONDecodeError and _Damaged too
        detail = str(e) if isinstance(e, _Damaged) else f"{type(e).__name__}: {e}"
        raise DataError(f"cannot resume: {path} is damaged ({detail}); {REPAIR}") from None
    if not isinstance(out, dict):
        raise DataError(f"cannot resume: {path} is damaged (its header holds no dict); {REPAIR}")
    return out


def load_train_state(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_train_state`; a damaged or foreign file is a :class:`DataError` naming it."""
    from safetensors.torch import load_file

    return _read_state(Path(path), lambda p, _: load_file(str(p)))


def check_state_file(path: Path) -> None:
    """What a resume can check without reading tensors: the file opens, its skeleton decodes (every reference
    names a stored tensor) and holds every key of :data:`STATE_KEYS`; else a :class:`DataError` naming it."""
    st = _read_state(path, lambda _, names: dict.fromkeys(names))
    missing = [k for k in STATE_KEYS if k not in st]
    if missing:
        raise DataError(f"cannot resume: {path} is damaged (no {', '.join(missing)}); {REPAIR}")


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


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _state_problem(st: dict[str, Any], model: torch.nn.Module) -> str | None:
    """What in a decoded run state (:data:`STATE_KEYS`) the loop could not continue from, or None."""
    missing = [k for k in STATE_KEYS if k not in st]
    if missing:
        return f"no {', '.join(missing)}"
    bad = [k for k in ("step", "epoch", "batch_in_epoch") if not _count(st[k])]
    if bad:
        return f"{', '.join(bad)}: not a whole number >= 0"
    if st.get("best") is not None and (isinstance(st["best"], bool) or not isinstance(st["best"], (int, float))):
        return "best must be a number or null"
    weights, own = st["model"], model.state_dict()
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return "model is not a mapping of tensors"
    if set(weights) != set(own):
        diff = sorted(set(weights) ^ set(own))
        return f"model weights do not match the run's model ({len(diff)} names differ, e.g. {diff[0]!r})"
    odd = [k for k, v in weights.items() if v.shape != own[k].shape or v.dtype != own[k].dtype]
    if odd:
        got, want = weights[odd[0]], own[odd[0]]
        return (f"model weight {odd[0]!r} is {tuple(got.shape)} {got.dtype}, the model's is "
                f"{tuple(want.shape)} {want.dtype}")
    optim, rngs = st["optim"], st["rng"]
    if not isinstance(optim, dict) or not isinstance(optim.get("state"), dict) or not isinstance(optim.get("param_groups"), list):
        return "optim is not an optimizer state (state, param_groups)"
    if not isinstance(rngs, list) or not rngs or not all(
            isinstance(r, dict) and isinstance(r.get("torch"), torch.Tensor) and isinstance(r.get("python"), str)
            and isinstance(r.get("numpy"), list) and len(r["numpy"]) == 5 and isinstance(r["numpy"][1], torch.Tensor)
            for r in rngs):
        return "rng is not a list of RNG states (torch, numpy, python)"
    return None


def _load_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any]) -> str | None:
    """Load ``state`` into ``opt``; what does not fit its parameters, or None."""
    try:
        opt.load_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as e:  # torch's own checks of the layout
        return f"optim does not fit the run's model ({type(e).__name__}: {e})"
    for p, per in opt.state.items():
        for name, v in per.items():
            if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape != p.shape:
                return f"optim state {name!r} has shape {tuple(v.shape)} for a parameter of shape {tuple(p.shape)}"
    return None


def restore(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device, d: Dist) -> tuple[Progress, float | None]:
    """Load the resumable state: weights, optimizer, RNG (this rank's); returns the progress and the best score.

    Every part is checked against the run's model before it is used: a damaged state is a :class:`DataError`
    naming the file and what is wrong, never a half-restored run.
    """
    st = load_train_state(path)
    problem = _state_problem(st, model) or _load_optimizer(opt, st["optim"])
    if problem is None:
        rngs = st["rng"]
        try:
            _set_rng_state(rngs[d.rank] if d.rank < len(rngs) else rngs[0])
        except (ValueError, TypeError, IndexError, RuntimeError) as e:  # the RNGs' own checks of a state
            problem = f"rng is not a valid RNG state ({type(e).__name__}: {e})"
    if problem is not None:
        raise DataError(f"cannot resume: {path} is damaged ({problem}); {REPAIR}")
    model.load_state_dict({k: v.to(device) for k, v in st["model"].items()})
    return Progress(st["step"], st["epoch"], st["batch_in_epoch"]), st.get("best")
