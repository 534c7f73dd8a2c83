"""Configuration of the ``avloc localize`` pipeline (one typed dataclass, saved in every JSON output)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from avloc.config import ConfigValueError, check_range
from avloc.formats.localize import SCHEMA_VERSION  # noqa: F401  (the JSON layout's version, owned by formats)

#: bounds of the settings (beyond them a run cannot be meant: a typo, or an input that would exhaust memory)
MAX_ANALYSIS_FPS = 240.0
MAX_WINDOW_SECONDS = 60.0
MAX_BATCH = 4096
MAX_MAP_SIDE = 4096
MAX_MEDIAN_FRAMES = 99
MAX_BOXES = 100
MAX_OVERLAY_SIDE = 8192
MAX_SHEET_FRAMES = 1000

#: libx264's presets, fastest first
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass
class LocalizeConfig:
    """Everything that changes what ``localize_video`` computes or writes (see docs/localize.md)."""

    #: analysis rate (frames per second of video that get a heatmap)
    fps: float = 5.0
    #: audio window centred on each analysed frame (s); ``None``: the model's ``cfg.audio.window_seconds``
    window_seconds: float | None = None
    #: frames per model call (per-frame methods) / per synchrony chunk (clip methods, plus context)
    batch_size: int = 8
    #: long side (cells) of the stored heatmaps; each covers the whole frame with its aspect ratio
    map_long_side: int = 64
    #: temporal smoothing of heatmaps and on-screen confidence: EMA (causal) or centred median
    smoothing: Literal["ema", "median", "none"] = "ema"
    #: EMA weight of the newest frame: s_t = a * x_t + (1 - a) * s_{t-1}
    ema_alpha: float = 0.6
    #: frames in the centred median window (odd)
    median_frames: int = 3
    #: boxes: connected components of the map above ``box_threshold`` x its peak (after min subtraction)
    box_threshold: float = 0.5
    #: boxes smaller than this fraction of the frame are dropped
    min_box_area: float = 0.002
    max_boxes: int = 3
    #: a window whose RMS is below this (dBFS) is silent: off-screen, confidence 0, no boxes.
    #: -60 dBFS is ~ 16-bit dither plus room noise; the generated clips' noise floor sits at -50 dBFS.
    silence_db: float = -60.0
    #: on-screen statistic p = sigmoid(w_contrast * z_peak + w_db * (rms_db + 30) / 10 + bias), with
    #: z_peak = (max - mean) / std of the map. Calibrated on generated on/off-screen clips with
    #: ``python -m avloc.inference.calibrate`` for the default model (docs/localize.md).
    #: (2026-11-22, --clips 3: 240 frames, accuracy 0.72; mean p 0.67 on-screen vs 0.33 off-screen)
    onscreen_w_contrast: float = 5.371
    onscreen_w_db: float = 0.400
    onscreen_bias: float = -16.062
    onscreen_threshold: float = 0.5
    #: ``--visual-only``: the object prior alone (no audio needed)
    visual_only: bool = False
    #: ``--combine synchrony``: learned map (min-max) x (floor + synchrony), see docs/localize.md
    combine: Literal["none", "synchrony"] = "none"
    #: overlay video at the source's average frame rate, long side at most ``overlay_max_side``
    overlay: bool = True
    overlay_max_side: int = 1280
    overlay_alpha: float = 0.5
    #: x264 preset of the overlay video: "superfast" encodes 720p ~1.4x faster than "veryfast" at the same crf
    #: (larger files), docs/BENCHMARKS.md
    overlay_preset: str = "superfast"
    #: contact sheet: this many analysed frames, thumbnails this wide, this many columns
    sheet_frames: int = 12
    sheet_thumb_width: int = 320
    sheet_columns: int = 4
    save_heatmaps: bool = False
    force: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        """Every setting checked once, when the config is made (``dataclasses.replace`` makes a new one)."""
        if self.overlay_preset not in X264_PRESETS:
            raise ConfigValueError("overlay_preset", f"must be one of {', '.join(X264_PRESETS)}, got {self.overlay_preset!r}")
        check_range("fps", self.fps, 0, MAX_ANALYSIS_FPS, low_open=True)
        if self.window_seconds is not None:
            check_range("window_seconds", self.window_seconds, 0, MAX_WINDOW_SECONDS, low_open=True)
        check_range("batch_size", self.batch_size, 1, MAX_BATCH)
        check_range("map_long_side", self.map_long_side, 4, MAX_MAP_SIDE)
        check_range("ema_alpha", self.ema_alpha, 0, 1, low_open=True)
        check_range("median_frames", self.median_frames, 1, MAX_MEDIAN_FRAMES)
        if self.median_frames % 2 == 0:
            raise ConfigValueError("median_frames", f"must be odd, got {self.median_frames}")
        check_range("box_threshold", self.box_threshold, 0, 1, low_open=True)
        check_range("min_box_area", self.min_box_area, 0, 1)
        check_range("max_boxes", self.max_boxes, 0, MAX_BOXES)
        check_range("silence_db", self.silence_db, -200, 0)
        for k in ("onscreen_w_contrast", "onscreen_w_db", "onscreen_bias"):
            check_range(k, getattr(self, k))
        check_range("onscreen_threshold", self.onscreen_threshold, 0, 1)
        check_range("overlay_max_side", self.overlay_max_side, 16, MAX_OVERLAY_SIDE)
        check_range("overlay_alpha", self.overlay_alpha, 0, 1)
        check_range("sheet_frames", self.sheet_frames, 1, MAX_SHEET_FRAMES)
        check_range("sheet_thumb_width", self.sheet_thumb_width, 16, MAX_OVERLAY_SIDE)
        check_range("sheet_columns", self.sheet_columns, 1, MAX_SHEET_FRAMES)
        if self.smoothing not in ("ema", "median", "none"):
            raise ConfigValueError("smoothing", f"must be ema, median or none, got {self.smoothing!r}")
        if self.combine not in ("none", "synchrony"):
            raise ConfigValueError("combine", f"must be none or synchrony, got {self.combine!r}")
