"""Import the checkpoints the authors of published methods released, as avloc checkpoints.

A *checkpoint family* (:class:`ImportFamily`, one registry entry per published
key layout, table in :mod:`avloc.importers.families`) says which avloc method
and config reproduce a public model and how its state-dict keys map onto that
method's: a list of ``(published prefix, avloc prefix)`` rules plus the
published prefixes that inference does not use (classifier heads, unused stems,
momentum copies). :func:`import_checkpoint` then

1. reads the file with ``torch.load(weights_only=True)`` only: a pickle holding
   anything but tensors and plain containers is refused, never executed;
2. unwraps the usual containers (``model_state_dict`` / ``state_dict`` /
   ``model`` entries, ``module.`` prefixes of ``DataParallel`` / DDP);
3. renames every tensor by the family's rules (an unknown key is an error, not
   dropped), builds the method from the family's config -- which carries the
   published preprocessing: image size and geometry, ImageNet normalisation,
   sample rate, spectrogram and audio window -- and checks names, shapes and
   finiteness against the built model;
4. writes an avloc checkpoint (:func:`avloc.methods.zoo.save_model`) whose
   metadata names the family, the source file and its SHA-256.

Every failure is a :class:`~avloc.errors.CheckpointError` with one line saying
what was wrong (wrong family -- with the family the keys do match --, missing
or unexpected keys, wrong shapes, non-tensor pickles) and what to do.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import struct
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from avloc.errors import CheckpointError
from avloc.methods.base import MethodConfig
from avloc.registry import IMPORTERS

log = logging.getLogger(__name__)

#: container entries a published checkpoint keeps its state dict under, tried in this order
WRAPPER_KEYS = ("model_state_dict", "state_dict", "model")
#: key prefix added by ``nn.DataParallel`` and ``DistributedDataParallel``
PARALLEL_PREFIX = "module."
#: the most keys named in one error line
MAX_NAMED = 4

StateDict = dict[str, torch.Tensor]
Rule = tuple[str, str]



def _swap_prefix(key: str, pairs: Sequence[tuple[str, str]]) -> str | None:
    """``key`` with its longest matching prefix ``a`` of ``pairs`` replaced by ``b`` (``None``: none matches)."""
    best: tuple[str, str] | None = None
    for a, b in pairs:
        if key.startswith(a) and (best is None or len(a) > len(best[0])):
            best = (a, b)
    return None if best is None else best[1] + key[len(best[0]) :]

@dataclass(frozen=True)
class ImportFamily:
    """One published checkpoint layout and the avloc method that reproduces it.

    ``rules``: ``(published prefix, avloc prefix)``; the longest matching prefix renames a key.
    ``ignored``: published prefixes inference does not use (dropped, counted in the report).
    ``signature``: keys every checkpoint of this layout holds (used to name the right family
    when a file is imported with the wrong ``--from``).
    ``build_config(state, sample_rate)``: the method config, with the published preprocessing;
    ``state`` (renamed to published keys, unwrapped) gives sizes such as the embedding width.
    """

    name: str
    method: str
    paper: str
    repo: str
    rules: tuple[Rule, ...]
    build_config: Callable[[StateDict, int], MethodConfig]
    signature: tuple[str, ...]
    ignored: tuple[str, ...] = ()
    #: the sample rate of the audio the published models were trained on (the repos read it from the files)
    sample_rate: int = 16000
    notes: str = ""

    def rename(self, key: str) -> str | None:
        """The avloc key for published ``key`` (``None``: no rule matches)."""
        return _swap_prefix(key, self.rules)

    def published_name(self, key: str) -> str:
        """The published key an avloc ``key`` comes from (inverse of :meth:`rename`; ``key`` if no rule)."""
        back = _swap_prefix(key, [(dst, src) for src, dst in self.rules])
        return key if back is None else back

    def is_ignored(self, key: str) -> bool:
        return key.startswith(self.ignored) if self.ignored else False

    def matches(self, state: StateDict) -> bool:
        """True when ``state`` holds every signature key of this layout."""
        return all(k in state for k in self.signature)


def register_family(family: ImportFamily, module: str) -> ImportFamily:
    """Register ``family`` under its name from ``module`` (the table of :data:`IMPORTERS` lists it there)."""
    return IMPORTERS.register(family.name, module=module)(family)  # type: ignore[no-any-return]


def get_family(name: str) -> ImportFamily:
    """The registered family ``name``; unknown names raise listing the valid ones."""
    fam = IMPORTERS.get(name)
    assert isinstance(fam, ImportFamily)
    return fam


def list_families() -> list[str]:
    """Sorted names of the registered checkpoint families."""
    return IMPORTERS.names()


# ----------------------------------------------------------------------------- reading a published file


def _names(keys: list[str]) -> str:
    return _listed([repr(k) for k in keys])


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_NAMED])
    return shown + (f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


def read_published(path: str | Path) -> StateDict:
    """The state dict of a published checkpoint: ``torch.load(weights_only=True)``, unwrapped, prefixes stripped.

    Zip-format files (``torch.save`` since PyTorch 1.6) are memory-mapped, so nothing is read into memory
    before :func:`layout_problems` has checked every tensor (dense, strided, on the CPU, a numeric dtype,
    within its storage): a 2^40-element tensor expanded from one value is refused, never allocated.
    """
    from avloc.checkpoint import _is_safetensors

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: empty file (0 bytes), not a checkpoint; download it again")
    if _is_safetensors(p):
        raise CheckpointError(f"{p} is a safetensors file, not a published PyTorch checkpoint (.pth): use it with --model directly")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(p))
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise CheckpointError(
                f"{p}: holds Python objects other than tensors and plain containers; refused (avloc loads published "
                "checkpoints with torch.load(weights_only=True) and never unpickles arbitrary objects)"
            ) from None
        raise CheckpointError(f"{p}: not a PyTorch checkpoint ({_first_line(e)})") from None
    except _LOAD_ERRORS as e:
        raise CheckpointError(f"{p}: corrupt or truncated PyTorch checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    state = unwrap_state_dict(obj, p)
    problems = layout_problems(state)
    if problems:
        n = len(problems)
        raise CheckpointError(f"{p}: {n} tensor{'s' if n > 1 else ''} cannot be weights: {_listed(problems)}; re-save "
                              "the checkpoint with torch.save(model.state_dict())")
    return state


#: what ``torch.load(weights_only=True)`` raises on a damaged or hostile file (a truncated zip, a bad pickle
#: stream, storages that do not fit their records, a tensor rebuilt with impossible sizes)
_LOAD_ERRORS = (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError, AttributeError,
                OverflowError, MemoryError, zipfile.BadZipFile, struct.error)

#: dtypes a published weight or buffer may have (BatchNorm's ``num_batches_tracked`` is int64)
WEIGHT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64, torch.int32})


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def _dense(t: torch.Tensor) -> bool:
    """True when ``t``'s elements each own one storage slot (no stride-0 expansion, no overlap, no gaps)."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride(), strict=True) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def layout_problems(state: StateDict) -> list[str]:
    """Tensors that cannot be weights, each ``'key' (why)``: checked on sizes and strides only, before any read.

    A weight is a dense strided CPU tensor (not sparse, quantized or on the meta device) of a
    :data:`WEIGHT_DTYPES` dtype, whose elements each own one slot of its storage and fit inside it
    (so its size is bounded by the file's).
    """
    out = []
    for k, v in state.items():
        why = None
        if v.layout != torch.strided:
            why = f"{v.layout} layout (sparse), not a dense tensor"
        elif v.is_meta or v.device.type != "cpu":
            why = "a meta tensor, without values" if v.is_meta else f"on {v.device}"
        elif v.is_quantized or v.dtype not in WEIGHT_DTYPES:
            why = f"dtype {v.dtype}"
        elif not _dense(v):
            why = f"size {tuple(v.shape)} with strides {v.stride()} (expanded or overlapping)"
        elif v.storage_offset() + v.numel() > v.untyped_storage().nbytes() // v.element_size():
            why = f"size {tuple(v.shape)} does not fit its storage"
        if why is not None:
            out.append(f"{k!r} ({why})")
    return out


def width_of(state: StateDict, key: str) -> int:
    """The output width (first dimension) of the weight ``state[key]``, checked before it sizes a model."""
    from avloc.encoders.base import MAX_WIDTH

    v = state.get(key)
    if v is None:
        raise CheckpointError(f"tensor {key!r} is missing (it gives the model's width)")
    if v.dim() < 1 or not 1 <= v.shape[0] <= MAX_WIDTH:
        raise CheckpointError(f"tensor {key!r} has shape {tuple(v.shape)}; a layer of 1 to {MAX_WIDTH} outputs was expected")
    return int(v.shape[0])


def unwrap_state_dict(obj: Any, where: str | Path = "checkpoint") -> StateDict:
    """``obj`` (what ``torch.load`` returned) -> a flat ``{key: tensor}`` without ``module.`` prefixes."""
    node = obj
    trail: list[str] = []
    for _ in range(len(WRAPPER_KEYS) + 1):
        if not isinstance(node, dict) or all(isinstance(v, torch.Tensor) for v in node.values()):
            break
        inner = next((k for k in WRAPPER_KEYS if isinstance(node.get(k), dict)), None)
        if inner is None:
            break
        trail.append(inner)
        node = node[inner]
    if not isinstance(node, dict) or not node:
        top = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{where}: no state dict found (expected a dict of tensors, or one under {'/'.join(WRAPPER_KEYS)}); got {top}"
        )
    bad = sorted(str(k) for k, v in node.items() if not isinstance(v, torch.Tensor))
    if bad:
        at = "".join(f"[{k!r}]" for k in trail)
        raise CheckpointError(f"{where}: the state dict{at} holds non-tensor values under {_names(bad)}")
    out: StateDict = {}
    for k, v in node.items():
        key = str(k).removeprefix(PARALLEL_PREFIX)
        if key in out:
            raise CheckpointError(f"{where}: key {key!r} appears with and without the {PARALLEL_PREFIX!r} prefix")
        out[key] = v
    return out


# ----------------------------------------------------------------------------- converting


@dataclass
class ImportReport:
    """What an import did: the family, the source, tensors mapped and dropped."""

    family: str
    method: str
    source: str
    sha256: str
    mapped: int
    dropped: list[str] = field(default_factory=list)

    def summary(self, out: Path) -> str:
        return (f"imported {self.source} ({self.family}, {self.mapped} tensors; {len(self.dropped)} unused by "
                f"inference dropped) as method {self.method!r} -> {out}")


def _wrong_family_hint(family: ImportFamily, state: StateDict) -> str:
    others = [n for n in list_families() if n != family.name and get_family(n).matches(state)]
    if not others:
        return ""
    return f"; its keys match the {' / '.join(others)} layout: pass --from {others[0]}"


def convert_state_dict(family: ImportFamily, state: StateDict, expected: StateDict, where: str | Path) -> tuple[StateDict, list[str]]:
    """Rename ``state`` (published keys) to the avloc model's keys; check against ``expected`` (its state dict).

    Returns the converted state dict (floating tensors cast to the model's dtype) and the dropped keys.
    """
    out: StateDict = {}
    origin: dict[str, str] = {}
    dropped, unexpected = [], []
    for k, v in state.items():
        if family.is_ignored(k):
            dropped.append(k)
            continue
        new = family.rename(k)
        if new is None or new not in expected:
            unexpected.append(k)
            continue
        out[new], origin[new] = v, k
    hint = _wrong_family_hint(family, state)
    missing = [k for k in expected if k not in out]
    if missing:
        names = [family.published_name(k) for k in missing]
        raise CheckpointError(f"{where}: not a {family.name} checkpoint: {len(missing)} tensors missing ({_names(names)}){hint}")
    if unexpected:
        raise CheckpointError(
            f"{where}: not a {family.name} checkpoint: {len(unexpected)} unexpected tensors ({_names(unexpected)}){hint}"
        )
    for k, v in out.items():
        e = expected[k]
        if tuple(v.shape) != tuple(e.shape):
            raise CheckpointError(
                f"{where}: tensor {origin[k]!r} has shape {tuple(v.shape)}, the {family.name} model needs {tuple(e.shape)}"
            )
        if v.is_floating_point() != e.is_floating_point():
            raise CheckpointError(f"{where}: tensor {origin[k]!r} has dtype {v.dtype}, the {family.name} model needs {e.dtype}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{where}: tensor {origin[k]!r} holds NaN or infinite values")
        out[k] = v.to(e.dtype)
    return out, dropped


def import_checkpoint(
    family_name: str, source: str | Path, out: str | Path, *, sample_rate: int | None = None, force: bool = False
) -> ImportReport:
    """Convert the published checkpoint ``source`` of ``family_name`` into the avloc checkpoint ``out``."""
    from avloc.checkpoint import batchnorm_problems
    from avloc.config import check_range
    from avloc.formats.atomic import check_writable
    from avloc.frontends.audio import MAX_SAMPLE_RATE
    from avloc.methods import create_method
    from avloc.methods.zoo import save_model

    family = get_family(family_name)
    out_p = Path(out)
    check_writable(out_p, force)
    rate = family.sample_rate if sample_rate is None else sample_rate
    check_range("--sample-rate", rate, 1, MAX_SAMPLE_RATE)
    state = read_published(source)
    if not family.matches(state):
        missing = [k for k in family.signature if k not in state]
        raise CheckpointError(
            f"{source}: not a {family.name} checkpoint (no {_names(missing)}){_wrong_family_hint(family, state)}"
        )
    try:
        cfg = family.build_config(state, rate)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: not a {family.name} checkpoint: {e}") from None
    model = create_method(family.method, cfg)
    converted, dropped = convert_state_dict(family, state, model.state_dict(), source)
    model.load_state_dict(converted, strict=True)
    bn = batchnorm_problems(model)
    if bn:
        shown = [f"{family.published_name(k)!r} ({why})" for k, why in bn]
        raise CheckpointError(f"{source}: implausible BatchNorm statistics (the model would output NaN): {_listed(shown)}")
    with Path(source).open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    report = ImportReport(family.name, family.method, Path(source).name, digest, len(converted), dropped)
    meta = {"imported": {"family": family.name, "source": report.source, "sha256": digest, "paper": family.paper,
                         "repo": family.repo, "dropped": len(dropped)}}
    save_model(model.eval(), out_p, meta=meta)
    log.info("%s", report.summary(out_p))
    return report


__all__ = [
    "ImportFamily",
    "ImportReport",
    "convert_state_dict",
    "get_family",
    "import_checkpoint",
    "list_families",
    "read_published",
    "register_family",
    "unwrap_state_dict",
]
