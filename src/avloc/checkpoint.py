"""Checkpoints as data, never code.

A checkpoint is one safetensors file: the weights as tensors plus a JSON
header (under the metadata key ``avloc``) holding the method name, its config
dict, the preprocessing it needs and the library versions that wrote it. So a
checkpoint alone rebuilds a working model, and loading one never unpickles
anything: a pickled ``.pt`` file (which can run arbitrary code when loaded) is
refused with a clear error.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from avloc.errors import CheckpointError
from avloc.formats.atomic import atomic_path

FORMAT_VERSION = 1
_META_KEY = "avloc"


@dataclass
class Checkpoint:
    """What a checkpoint holds: method name, config, weights and metadata."""

    method: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def _versions() -> dict[str, str]:
    from avloc import __version__

    return {"avloc": __version__, "torch": torch.__version__, "python": platform.python_version()}


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically as safetensors (:func:`write_safetensors`); returns the path."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in ckpt.state_dict.items():
        tensors[f"model/{k}"] = v.detach().cpu().contiguous()
    for k, v in ckpt.extra_tensors.items():
        tensors[f"extra/{k}"] = v.detach().cpu().contiguous()
    header = {
        "format_version": FORMAT_VERSION,
        "method": ckpt.method,
        "config": ckpt.config,
        "meta": {**ckpt.meta, "versions": _versions()},
    }
    try:
        text = json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint config/meta must be plain JSON data with finite numbers: {e}") from None
    _dedupe_shared(tensors)
    return write_safetensors(path, tensors, {_META_KEY: text})


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """The one safetensors writer: atomic, so a failed write (a full disk) leaves the previous complete file.

    safetensors reports I/O failures as ``SafetensorError`` (not an ``OSError``); they are raised as the
    :class:`OSError` they are (errno, file name), which the CLI turns into one line with what to do.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_path(path, suffix=".safetensors") as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as e:
            raise _os_error(e, Path(path)) from None
    return Path(path)


def _os_error(e: Exception, path: Path) -> Exception:
    """The :class:`OSError` inside a safetensors I/O error (``... (os error 28)``), else ``e`` itself (a bug)."""
    import os
    import re

    m = re.search(r"os error (\d+)", str(e))
    if m is None:
        return e
    code = int(m.group(1))
    return OSError(code, os.strerror(code), str(path))


def _dedupe_shared(tensors: dict[str, torch.Tensor]) -> None:
    """safetensors refuses tensors sharing memory: give each its own storage."""
    seen: set[int] = set()
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        if ptr in seen:
            tensors[k] = v.clone()
        elif ptr != -1:
            seen.add(ptr)


def _is_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(10)
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n < 100_000_000 and head[8:9] == b"{"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` for a missing file, a pickle or zip file
    (refused: loading those can execute code), or a corrupt header.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: empty file (0 bytes), not a checkpoint; write or download it again")
    if not _is_safetensors(p):
        raise CheckpointError(
            f"{p} is not an avloc (safetensors) checkpoint; pickled checkpoints (.pt/.pth) are refused "
            "because loading them can run arbitrary code"
        )
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(p), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{p}: corrupt or truncated checkpoint ({e})") from None
    if _META_KEY not in meta:
        raise CheckpointError(f"{p}: safetensors file without an avloc header (not written by avloc)")
    try:
        header = json.loads(meta[_META_KEY])
    except (ValueError, RecursionError) as e:  # not JSON, an integer over the digit limit, nested too deeply
        raise CheckpointError(f"{p}: corrupt avloc header ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{p}: the avloc header must be a JSON object, got {type(header).__name__}")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{p}: checkpoint format {header.get('format_version')} is not supported (expected {FORMAT_VERSION})")
    problems = header_problems(header)
    if problems:
        raise CheckpointError(problems_message(p, problems))
    state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    extra = {k[len("extra/") :]: v for k, v in tensors.items() if k.startswith("extra/")}
    return Checkpoint(method=header["method"], config=header["config"], state_dict=state, meta=header.get("meta") or {},
                      extra_tensors=extra)


#: the most problems listed, one line each, in a :class:`CheckpointError`
MAX_LISTED_PROBLEMS = 12


def problems_message(path: str | Path, problems: list[str]) -> str:
    """A one-line summary naming the file and what to do, then one indented line per problem."""
    n = len(problems)
    lines = [f"{path}: checkpoint refused, {n} problem{'s' if n > 1 else ''}; "
             "re-save it with `avloc train` (or pass another --model):"]
    lines += [f"  - {q}" for q in problems[:MAX_LISTED_PROBLEMS]]
    if n > MAX_LISTED_PROBLEMS:
        lines.append(f"  - ... and {n - MAX_LISTED_PROBLEMS} more")
    return "\n".join(lines)


def header_problems(header: dict[str, Any]) -> list[str]:
    """Problems with the header's fields: ``method`` (a non-empty string), ``config`` and ``meta`` (objects)."""
    out = []
    m = header.get("method")
    if not isinstance(m, str) or not m:
        out.append("header: 'method' is missing or not a method name" if m is None else f"header: 'method' {m!r} is not a method name")
    if not isinstance(header.get("config"), dict):
        out.append("header: 'config' is missing or not an object")
    if "meta" in header and not isinstance(header["meta"], dict):
        out.append("header: 'meta' is not an object")
    return out


#: the modules whose running statistics :func:`batchnorm_problems` checks
_NORMS_WITH_STATS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def batchnorm_problems(model: torch.nn.Module) -> list[tuple[str, str]]:
    """BatchNorm running statistics no trained model has, as ``(state-dict key, why)``.

    A negative or non-finite variance, or a non-finite mean, turns the normalisation
    ``(x - mean) / sqrt(var + eps)`` into NaN for every input: such a checkpoint is refused, not run. A
    variance of exactly 0 is a dead channel (constant input), harmless thanks to ``eps``, and real: the
    ImageNet EfficientNet-Lite0 weights hold four in their first BatchNorm.
    """
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, _NORMS_WITH_STATS) or m.running_var is None or m.running_mean is None:
            continue
        prefix = f"{name}." if name else ""
        var, mean = m.running_var, m.running_mean  # (C,) each
        bad = int((~torch.isfinite(var) | (var < 0)).sum())
        if bad:
            out.append((f"{prefix}running_var", f"{bad} of {var.numel()} variances are negative, NaN or infinite"))
        bad = int((~torch.isfinite(mean)).sum())
        if bad:
            out.append((f"{prefix}running_mean", f"{bad} of {mean.numel()} means are NaN or infinite"))
    return out


def tensor_problems(
    found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], optional_prefixes: tuple[str, ...] = ()
) -> list[str]:
    """Names, shapes, dtypes of ``found`` against the model's ``expected`` state dict, and finite values.

    A tensor the freshly built model itself holds non-finite (a NaN "not calibrated yet" buffer) may stay so.

    Tensors under ``optional_prefixes`` (frozen encoders rebuilt from their own source) may be absent.
    """
    out = []
    for k in expected:
        if k not in found and not (optional_prefixes and k.startswith(optional_prefixes)):
            out.append(f"tensor {k!r}: missing")
    for k, v in found.items():
        e = expected.get(k)
        if e is None:
            out.append(f"tensor {k!r}: not a tensor of this model (unexpected)")
            continue
        if tuple(v.shape) != tuple(e.shape):
            out.append(f"tensor {k!r}: shape {tuple(v.shape)}, the config's model needs {tuple(e.shape)}")
        elif v.dtype != e.dtype:
            out.append(f"tensor {k!r}: dtype {v.dtype}, the config's model needs {e.dtype}")
        elif (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()) \
                and bool(torch.isfinite(e).all()):  # a model's own non-finite initial value is a sentinel ("unset")
            bad = int((~torch.isfinite(v)).sum())
            out.append(f"tensor {k!r}: {bad} of {v.numel()} values are NaN or infinite")
    return out
