"""DigitScenes: sound source localization scenes composed from real recordings.

Spoken digits (FSDD) are heard; handwritten digits (MNIST), coloured and
scaled, are seen on CIFAR-10 photo backgrounds, with ESC-10 ambient sound at
a set SNR. Ground truth is exact (the ink box of the digit that speaks).
Variants: ``single``, ``multi``, ``offscreen``, ``video``, ``openset``; see
docs/digitscenes.md.

* :class:`DigitScenes` / the registered ``digitscenes`` factory: on-the-fly
  torch dataset (fresh scene per draw, or a ``pool`` of fixed images).
* :func:`generate`: media files + jsonl manifest (``avloc data make digitscenes``).
"""

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
