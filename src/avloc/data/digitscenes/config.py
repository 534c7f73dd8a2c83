"""Typed configuration of DigitScenes: scene geometry, audio mixing, splits and variants.

One dataclass per variant (:class:`SingleConfig`, :class:`MultiConfig`,
:class:`OffscreenConfig`, :class:`VideoConfig`, :class:`OpensetConfig`), all
sharing :class:`VariantConfig` (scene look, audio mix, number of visible
digits, ambient sound). ``variant_config(name, **overrides)`` builds one and
rejects unknown fields. Design notes and defaults: docs/digitscenes.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from avloc.config import config_from_dict
from avloc.errors import ConfigError

SPLITS = ("train", "val", "test")


@dataclass
class SplitConfig:
    """Disjoint source partitions per split (see docs/digitscenes.md, "Splits")."""

    # FSDD speakers (6 in total): 4 train / 1 val / 1 test
    speakers: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "train": ("george", "jackson", "lucas", "nicolas"),
            "val": ("theo",),
            "test": ("yweweler",),
        }
    )
    # MNIST t10k: a fixed permutation (independent of the sample seed) cut 8000 / 1000 / 1000
    mnist_seed: int = 0
    mnist_counts: tuple[int, int, int] = (8000, 1000, 1000)
    # ESC-10 folds
    esc_folds: dict[str, tuple[int, ...]] = field(
        default_factory=lambda: {"train": (1, 2, 3), "val": (4,), "test": (5,)}
    )
    # CIFAR-10: train photos for train; test photos alternately to val (even index) and test (odd)


@dataclass
class SceneConfig:
    """Look of a composed frame (square, ``size`` px)."""

    size: int = 224  # frame side; LVS / EZ-VSL model input side
    # side of the 28-px MNIST cell as a fraction of the frame side, per number of visible digits
    # (1, 2, 3, 4+): large targets for sparse scenes, because with median binarisation a target
    # under a quarter of the frame can never reach cIoU 0.5
    digit_scale_min: float = 0.28
    digit_scale_max: tuple[float, float, float, float] = (0.95, 0.8, 0.62, 0.52)
    ink_threshold: float = 0.5  # digit alpha above this is "ink": the box is the ink's tight bbox
    min_gap: int = 2  # px kept free between the ink boxes of two digits
    placement_tries: int = 48  # candidate positions drawn at once per digit
    shrink: float = 0.85  # cell shrink factor when no free position was found
    min_contrast: float = 0.3  # luminance contrast of a digit against its local background
    colour_tries: int = 16
    bg_blur_sigma: tuple[float, float] = (0.0, 1.5)
    bg_brightness: tuple[float, float] = (0.75, 1.25)
    bg_contrast: tuple[float, float] = (0.7, 1.3)
    bg_saturation: tuple[float, float] = (0.5, 1.5)
    distractors: tuple[int, int] = (0, 2)  # CIFAR patches pasted under the digits
    distractor_scale: tuple[float, float] = (0.15, 0.35)

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ConfigError(f"scene size must be >= 32 px, got {self.size}")
        if not 0 < self.digit_scale_min <= min(self.digit_scale_max):
            raise ConfigError(f"digit_scale_min {self.digit_scale_min} must be in (0, min(digit_scale_max)]")
        if not 0 < self.ink_threshold < 1:
            raise ConfigError(f"ink_threshold must be in (0, 1), got {self.ink_threshold}")


@dataclass
class AudioMixConfig:
    """Sound track of a scene: rate, clip length, levels."""

    sample_rate: int = 16000
    clip_seconds: float = 3.0  # LVS / EZ-VSL audio window
    speech_rms_db: tuple[float, float] = (-26.0, -18.0)  # level of each utterance (dBFS RMS)
    ambient_only_rms_db: tuple[float, float] = (-30.0, -20.0)  # ambient level when nothing speaks
    peak: float = 0.99  # the mix is scaled down if it would exceed this

    def __post_init__(self) -> None:
        if self.sample_rate < 8000:
            raise ConfigError(f"sample_rate must be >= 8000 Hz (FSDD is 8 kHz), got {self.sample_rate}")
        if self.clip_seconds < 2.5:
            raise ConfigError(f"clip_seconds must be >= 2.5 s to hold the longest FSDD utterance, got {self.clip_seconds}")


@dataclass
class VariantConfig:
    """Settings shared by every variant."""

    scene: SceneConfig = field(default_factory=SceneConfig)
    audio: AudioMixConfig = field(default_factory=AudioMixConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    n_visible: tuple[int, int] = (2, 4)  # visible digits per scene (inclusive), distinct classes
    ambient_prob: float = 0.5  # chance of ESC-10 ambient sound under the speech
    snr_db: tuple[float, float] = (5.0, 20.0)  # speech-to-ambient ratio

    def __post_init__(self) -> None:
        lo, hi = self.n_visible
        if not 1 <= lo <= hi <= 10:
            raise ConfigError(f"n_visible must satisfy 1 <= min <= max <= 10, got {self.n_visible}")
        if not 0 <= self.ambient_prob <= 1:
            raise ConfigError(f"ambient_prob must be in [0, 1], got {self.ambient_prob}")
        if self.snr_db[0] > self.snr_db[1]:
            raise ConfigError(f"snr_db range is reversed: {self.snr_db}")


@dataclass
class SingleConfig(VariantConfig):
    """``single``: one spoken digit; it and 1-3 other digits are visible."""


@dataclass
class MultiConfig(VariantConfig):
    """``multi``: two spoken digits mixed, both visible among four (MUSIC-Synthetic protocol)."""

    n_visible: tuple[int, int] = (4, 4)
    n_sounding: int = 2
    ambient_prob: float = 0.3
    snr_db: tuple[float, float] = (10.0, 25.0)
    relative_gain_db: float = 3.0  # the two utterances differ by at most this much

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.n_sounding <= self.n_visible[0]:
            raise ConfigError(f"n_sounding {self.n_sounding} must be in [1, min visible {self.n_visible[0]}]")


@dataclass
class OffscreenConfig(VariantConfig):
    """``offscreen``: on-screen speech mixed with off-screen cases (relative weights below)."""

    onscreen_weight: float = 0.4  # as ``single``: the spoken digit is visible
    absent_weight: float = 0.3  # a digit speaks that is not visible
    ambient_weight: float = 0.15  # only ESC-10 ambient sound
    silence_weight: float = 0.15  # digital silence

    def weights(self) -> list[float]:
        return [self.onscreen_weight, self.absent_weight, self.ambient_weight, self.silence_weight]

    def __post_init__(self) -> None:
        super().__post_init__()
        w = self.weights()
        if min(w) < 0 or sum(w) <= 0:
            raise ConfigError(f"offscreen weights must be >= 0 with a positive sum, got {w}")
        if self.absent_weight > 0 and self.n_visible[1] > 9:
            raise ConfigError("offscreen 'absent' needs at most 9 visible digits")


@dataclass
class OpensetConfig(VariantConfig):
    """``openset``: ``unheard`` classes never appear in train; test marks ``heard``."""

    unheard: tuple[int, ...] = (7, 8, 9)

    def __post_init__(self) -> None:
        super().__post_init__()
        heard = 10 - len(set(self.unheard))
        if not set(self.unheard) <= set(range(10)) or heard < self.n_visible[1]:
            raise ConfigError(f"unheard classes {self.unheard} must be digits and leave >= {self.n_visible[1]} heard ones")


@dataclass
class VideoConfig(VariantConfig):
    """``video``: clips with moving digits, utterances at random times (AVSOL-E style)."""

    n_visible: tuple[int, int] = (2, 3)
    seconds: float = 6.0
    fps: int = 8
    annot_fps: int = 2  # annotated (and analysed) frames per second; must divide fps
    n_utterances: tuple[int, int] = (1, 3)
    min_gap_seconds: float = 0.4  # silence kept between two utterances
    speed: tuple[float, float] = (0.05, 0.25)  # digit speed, frame sides per second
    ambient_prob: float = 0.6
    snr_db: tuple[float, float] = (0.0, 15.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fps < 4:
            raise ConfigError(f"video fps must be >= 4, got {self.fps}")
        if self.annot_fps <= 0 or self.fps % self.annot_fps:
            raise ConfigError(f"annot_fps {self.annot_fps} must divide fps {self.fps}")
        if self.seconds < 3:
            raise ConfigError(f"video clips must last >= 3 s, got {self.seconds}")

    @property
    def n_frames(self) -> int:
        return round(self.seconds * self.fps)

    def annotated_frames(self) -> list[int]:
        """Video frame indices that are annotated: the middle frame of each 1/annot_fps step."""
        step = self.fps // self.annot_fps
        return list(range(step // 2, self.n_frames, step))


VARIANTS: dict[str, type[VariantConfig]] = {
    "single": SingleConfig,
    "multi": MultiConfig,
    "offscreen": OffscreenConfig,
    "video": VideoConfig,
    "openset": OpensetConfig,
}


def variant_config(variant: str, **overrides: Any) -> VariantConfig:
    """Config of ``variant`` with field ``overrides``; unknown variants/fields raise :class:`ConfigError`."""
    cls = VARIANTS.get(variant)
    if cls is None:
        raise ConfigError(f"unknown DigitScenes variant {variant!r}; valid: {', '.join(VARIANTS)}")
    return config_from_dict(cls, overrides, where=f"digitscenes {variant}")
