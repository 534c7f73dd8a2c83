"""Frozen-backbone feature cache: compute encoder features once, store them, reuse them.

Training a light head on a frozen encoder (e.g. EfficientNet-Lite0) spends most
CPU time re-encoding the same images every epoch; this cache stores each
image's feature map on disk and returns it on later epochs.

Layout::

    root/<namespace>/meta.json               what the namespace was computed with
    root/<namespace>/<h[:2]>/<h>.npy          one float16 array per item, h = sha256(item key)

Invalidation rule: the ``namespace`` is a hash of (cache format version,
encoder name, encoder kwargs, a fingerprint of the encoder weights (sha256 of
every state-dict tensor's name, dtype, shape and bytes), the preprocessing
config, stored dtype). Any change of encoder, weights or preprocessing
therefore yields a new namespace, and stale features are never reused; old
namespaces are simply never read again (delete ``root`` to reclaim the
space). The item key (e.g. ``"clip.mp4@12.300"`` or :func:`content_key` of
the image) must identify the image content: the caller is responsible for
it, as for any cache key.

Files are written atomically (temporary file + rename,
:func:`avloc.formats.atomic.atomic_path`), so a crash never leaves a half-written
entry under a final name. A file that cannot be read anyway (disk corruption,
manual edits) raises :class:`FeatureCacheError` naming the file and telling the
user to delete the cache directory; there is no silent recomputation.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from avloc.errors import AvlocError, ConfigError
from avloc.formats.atomic import atomic_path, write_text_atomic

#: Bump when the on-disk layout changes: old caches then live in other namespaces.
CACHE_FORMAT_VERSION = 1

_FINGERPRINTS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


class FeatureCacheError(AvlocError):
    """A cache file is unreadable or inconsistent."""


def weights_fingerprint(module: nn.Module, refresh: bool = False) -> str:
    """sha256 over the module's state dict (names, dtypes, shapes, bytes); memoised per module.

    The memo assumes frozen weights; pass ``refresh=True`` after changing them in place.
    """
    if not refresh and module in _FINGERPRINTS:
        return _FINGERPRINTS[module]
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    _FINGERPRINTS[module] = digest = h.hexdigest()
    return digest


def content_key(image: torch.Tensor) -> str:
    """A key from an image tensor's exact content (dtype, shape, bytes)."""
    t = image.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    """Config values -> JSON-stable values (dataclasses and tuples included)."""
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    raise ConfigError(
        f"feature cache: cannot key on a value of type {type(obj).__name__} ({obj!r}); use plain config values"
    )


class FeatureCache:
    """Disk cache of per-item feature tensors for one (encoder, weights, preprocessing) namespace.

    Args:
        root: cache directory (shared by all namespaces).
        encoder_name, encoder_kwargs: the registered encoder and its kwargs.
        weights_fingerprint: :func:`weights_fingerprint` of the encoder.
        preprocessing: everything that turns a raw image into the encoder input
            (e.g. ``dataclasses.asdict(ImageConfig)``, frame rate, decoder settings).
        dtype: stored precision (float16 by default, half the disk of float32).
        memory_items: size of an in-memory LRU layer in front of the disk (0 = none).
    """

    def __init__(
        self,
        root: str | Path,
        encoder_name: str,
        encoder_kwargs: dict[str, Any],
        weights_fingerprint: str,
        preprocessing: dict[str, Any],
        dtype: Literal["float16", "float32"] = "float16",
        memory_items: int = 0,
    ) -> None:
        if dtype not in ("float16", "float32"):
            raise ConfigError(f"feature cache dtype must be float16 or float32, got {dtype!r}")
        self.meta = {
            "format_version": CACHE_FORMAT_VERSION,
            "encoder": encoder_name,
            "encoder_kwargs": _jsonable(encoder_kwargs),
            "weights_sha256": weights_fingerprint,
            "preprocessing": _jsonable(preprocessing),
            "dtype": dtype,
        }
        blob = json.dumps(self.meta, sort_keys=True, separators=(",", ":"))
        self.namespace = hashlib.sha256(blob.encode()).hexdigest()[:20]
        self.root = Path(root)
        self.dir = self.root / self.namespace
        self.dtype = np.dtype(dtype)
        self.memory_items = memory_items
        self._lru: OrderedDict[str, torch.Tensor] = OrderedDict()
        meta_path = self.dir / "meta.json"
        if not meta_path.exists():
            write_text_atomic(meta_path, json.dumps(self.meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def for_encoder(
        cls,
        root: str | Path,
        encoder_name: str,
        encoder_kwargs: dict[str, Any],
        encoder: nn.Module,
        preprocessing: dict[str, Any],
        **kw: Any,
    ) -> FeatureCache:
        """Build the cache of ``encoder`` (fingerprinting its weights)."""
        return cls(root, encoder_name, encoder_kwargs, weights_fingerprint(encoder), preprocessing, **kw)

    def path(self, key: str) -> Path:
        """File of item ``key`` (sharded by the first two hex digits of its hash)."""
        h = hashlib.sha256(key.encode()).hexdigest()
        return self.dir / h[:2] / f"{h}.npy"

    def _remember(self, key: str, t: torch.Tensor) -> None:
        if self.memory_items > 0:
            self._lru[key] = t.clone()  # no view into a larger batch tensor
            self._lru.move_to_end(key)
            while len(self._lru) > self.memory_items:
                self._lru.popitem(last=False)

    def _read(self, path: Path) -> torch.Tensor:
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise FeatureCacheError(
                f"feature cache file {path} is unreadable ({type(e).__name__}: {e}); "
                f"delete the cache directory {self.dir} (or all of {self.root}) and run again"
            ) from e
        if arr.dtype != self.dtype:
            raise FeatureCacheError(
                f"feature cache file {path} has dtype {arr.dtype}, expected {self.dtype}; delete {self.dir}"
            )
        return torch.from_numpy(arr)

    def lookup(self, keys: Sequence[str]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """-> (found (N,) bool, per-key float32 features or None)."""
        found = torch.zeros(len(keys), dtype=torch.bool)
        out: list[torch.Tensor | None] = []
        for i, key in enumerate(keys):
            t = self._lru.get(key)
            if t is None:
                p = self.path(key)
                if p.is_file():
                    t = self._read(p).float()
                    self._remember(key, t)
            else:
                self._lru.move_to_end(key)
            found[i] = t is not None
            out.append(t)
        return found, out

    def store(self, keys: Sequence[str], feats: torch.Tensor) -> torch.Tensor:
        """Store ``feats`` (N, ...) under ``keys`` (N), overwriting atomically; returns them as stored (float32)."""
        if len(keys) != feats.shape[0]:
            raise ConfigError(f"feature cache: {len(keys)} keys for {feats.shape[0]} feature rows")
        f32 = feats.detach().cpu().float().numpy()  # (N, ...)
        limit = float(np.finfo(self.dtype).max)
        if not np.isfinite(f32).all() or (f32.size and np.abs(f32).max() > limit):
            raise FeatureCacheError(
                f"features are NaN/inf or beyond the {self.dtype} range {limit:g}: check the encoder or use dtype='float32'"
            )
        arr = f32.astype(self.dtype)
        stored = torch.from_numpy(arr).float()  # (N, ...) rounded to the stored precision
        for key, a, t in zip(keys, arr, stored):
            with atomic_path(self.path(key)) as tmp:
                np.save(tmp, a, allow_pickle=False)
            self._remember(key, t)
        return stored

    def get_or_compute(self, keys: Sequence[str], compute: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        """Features (N, ...) for ``keys``; ``compute(missing_indices)`` encodes only the misses.

        ``compute`` receives the indices (into ``keys``) of the items not cached and
        returns their features in that order; they are stored before being returned.
        Returned features are float32 holding the stored precision (float16 by default)
        for hits and misses alike, so a run gives the same numbers cold or warm.
        """
        found, feats = self.lookup(keys)
        missing = [i for i in range(len(keys)) if not found[i]]
        if missing:
            new = compute(missing)
            if new.shape[0] != len(missing):
                raise ConfigError(
                    f"feature cache: compute() returned {new.shape[0]} rows for {len(missing)} missing items"
                )
            for i, t in zip(missing, self.store([keys[i] for i in missing], new)):
                feats[i] = t
        shapes = {tuple(t.shape) for t in feats if t is not None}
        if len(shapes) > 1:
            raise FeatureCacheError(
                f"cached features in {self.dir} have different shapes {sorted(shapes)}; delete {self.dir}"
            )
        return torch.stack([t for t in feats if t is not None])  # (N, ...)

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("*/*.npy"))


class FeatureBank:
    """In-memory features per image key (the training engine's frozen-feature cache): ``bank[row[key]]`` is one
    sample's features. Built once per run by :func:`encode_dataset`; ``lookup`` gathers a batch."""

    def __init__(self, keys: Sequence[Any], bank: torch.Tensor) -> None:
        self.row = {k: i for i, k in enumerate(keys)}
        self.bank = bank  # (K, C, h, w) or (K, T, C, h, w)

    def rows(self, keys: Sequence[Any], device: torch.device | None = None) -> torch.Tensor:
        """Row indices of ``keys`` (a :class:`KeyError` names an unknown key)."""
        return torch.tensor([self.row[k] for k in keys], dtype=torch.long, device=device)

    def lookup(self, keys: Sequence[Any]) -> torch.Tensor:
        return self.bank[self.rows(keys, self.bank.device)]

    def to(self, device: torch.device) -> FeatureBank:
        out = FeatureBank([], self.bank.to(device))
        out.row = self.row
        return out


def encode_dataset(
    encode: Callable[[torch.Tensor], torch.Tensor],
    dataset: Any,
    keys: Sequence[Any],
    *,
    batch_size: int,
    num_workers: int = 0,
    disk: FeatureCache | None = None,
    progress: bool = False,
) -> FeatureBank:
    """Encode every distinct key's image once (the first sample carrying it) -> :class:`FeatureBank`.

    ``encode``: (b, 3, H, W) images -> (b, ...) features on the CPU; ``disk``: also read / write each image's
    features in a :class:`FeatureCache` (keyed by :func:`content_key`), so later runs skip the encoder.
    """
    import sys

    from torch.utils.data import Subset
    from tqdm import tqdm

    from avloc.data.collate import collate_samples, expand_compact
    from avloc.data.loader import Loader

    first: dict[Any, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    uniq = list(first)
    loader = Loader(Subset(dataset, [first[k] for k in uniq]), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_samples)
    feats: list[torch.Tensor] = []
    with torch.no_grad():
        for batch in tqdm(loader, desc="caching visual features", unit="batch", disable=not progress, file=sys.stderr):
            images = expand_compact(batch)["image"]  # (b, 3, H, W) float (compact sets: the same values)
            if disk is None:
                feats.append(encode(images))
            else:

                def missing(idx: list[int], im: torch.Tensor = images) -> torch.Tensor:
                    return encode(im[idx])  # (m, ...)

                feats.append(disk.get_or_compute([content_key(im) for im in images], missing))
    return FeatureBank(uniq, torch.cat(feats))
