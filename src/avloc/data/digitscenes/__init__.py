"""DigitScenes: sound source localization scenes composed from real recordings.

Spoken digits (FSDD) are heard; handwritten digits (MNIST), coloured and
scaled, are seen on CIFAR-10 photo backgrounds, with ESC-10 ambient sound at
a set SNR. Ground truth is exact (the ink box of the digit that speaks).
Variants: ``single``, ``multi``, ``offscreen``, ``video``, ``openset``; see
docs/digitscenes.md.

* :class:`DigitScenes` / the registered ``digitscenes`` factory: on-the-fly
  torch dataset (fresh scene per draw, or a ``pool`` of fixed images).
* :func:`generate`: media files + jsonl manifest (``avloc data make digitscenes``).

Names are imported from their modules on first use (PEP 562): importing this
package loads neither torch nor OpenCV, and registers nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ("VARIANTS", "AudioMixConfig", "MultiConfig", "OffscreenConfig", "OpensetConfig", "SceneConfig",
         "SingleConfig", "SplitConfig", "VariantConfig", "VideoConfig", "variant_config"),
        "avloc.data.digitscenes.config",
    ),
    **dict.fromkeys(("DigitScenes", "digitscenes"), "avloc.data.digitscenes.dataset"),
    **dict.fromkeys(("Clip", "DigitScenesSampler", "Sample"), "avloc.data.digitscenes.sampler"),
}

if TYPE_CHECKING:
    from avloc.data.digitscenes.config import (
        VARIANTS,
        AudioMixConfig,
        MultiConfig,
        OffscreenConfig,
        OpensetConfig,
        SceneConfig,
        SingleConfig,
        SplitConfig,
        VariantConfig,
        VideoConfig,
        variant_config,
    )
    from avloc.data.digitscenes.dataset import DigitScenes, digitscenes
    from avloc.data.digitscenes.sampler import Clip, DigitScenesSampler, Sample


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "VARIANTS",
    "AudioMixConfig",
    "Clip",
    "DigitScenes",
    "DigitScenesSampler",
    "MultiConfig",
    "OffscreenConfig",
    "OpensetConfig",
    "Sample",
    "SceneConfig",
    "SingleConfig",
    "SplitConfig",
    "VariantConfig",
    "VideoConfig",
    "digitscenes",
    "variant_config",
]
