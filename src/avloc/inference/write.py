"""Stage 4 of ``avloc localize``: write one video's outputs, all or none (overlay, heatmaps, sheet, JSON).

* **Overlay** (unless ``cfg.overlay`` is false): the file is decoded again at its average frame rate
  (variable-rate sources are resampled to constant rate by :func:`avloc.io.media.iter_frames`, which keeps them
  in sync with the audio), each frame gets the *nearest analysed* heatmap, boxes and banner, and is encoded on
  the fly with the original audio by :func:`avloc.io.media.write_video`.
* **JSON**: :func:`avloc.formats.localize.write_document`, written last (the set's completion marker).

Outputs are transactional (:class:`avloc.io.outputs.OutputTransaction`): every file is written into a
temporary folder beside them and the set is moved into place only when all succeeded, replacing the whole
previous set; an existing set is refused without ``cfg.force``; a lock per input stem stops two runs writing
the same set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avloc.formats.localize import OUTPUT_SUFFIXES, FrameRecord, write_document
from avloc.inference.analyse import SHEET_CLASS_PANELS, VideoAnalysis, analyse_video, heat_strength
from avloc.inference.config import LocalizeConfig
from avloc.inference.decode import audio_chunks, check_video, frames_of
from avloc.inference.render import contact_sheet, display_heat, draw_overlay, heat_layer
from avloc.io.media import fit_size
from avloc.io.outputs import OutputTransaction
from avloc.methods.base import LocalizationMethod


@dataclass
class LocalizeResult:
    """What :func:`localize_video` wrote and a summary of what it found."""

    input: Path
    outputs: dict[str, Path]
    frames: int
    duration: float
    seconds: float  # wall-clock processing time
    onscreen_fraction: float | None
    records: list[FrameRecord] = field(repr=False, default_factory=list)

    @property
    def realtime_factor(self) -> float:
        return self.duration / self.seconds if self.seconds > 0 else math.inf


def output_paths(path: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Every output of the input ``path`` in ``out_dir``, by kind."""
    from avloc.formats.localize import output_paths as paths

    return paths(Path(path).stem, out_dir)


def wanted_outputs(path: str | Path, out_dir: str | Path, cfg: LocalizeConfig) -> dict[str, Path]:
    """The outputs ``cfg`` asks for (JSON and sheet always; overlay video, heatmaps) and their paths."""
    wanted = {"json", "sheet"} | ({"video"} if cfg.overlay else set()) | ({"heatmaps"} if cfg.save_heatmaps else set())
    return {k: v for k, v in output_paths(path, out_dir).items() if k in wanted}


def write_overlay_video(analysis: VideoAnalysis, tmp: Path, progress: bool = False) -> None:
    """Pass 2 (module doc): the source decoded again, each frame with the nearest analysed heatmap, boxes and
    banner, encoded with the original audio into ``tmp``."""
    from tqdm import tqdm

    from avloc.io.media import write_video

    a, cfg, info, path = analysis, analysis.cfg, analysis.info, analysis.input
    media = a.media if a.media is not None else path
    src_wh = a.src_wh
    ov_wh = fit_size(*src_wh, max_side=cfg.overlay_max_side)
    out_fps = float(info.fps or cfg.fps)
    n, times, records = len(a.records), a.times, a.records

    def overlay_frames() -> Iterator[np.ndarray]:
        j, layer_j = 0, -1
        layer, heat = None, np.zeros((1, 1), np.float32)
        with tqdm(total=info.frames, unit="frame", desc=f"{path.name}: overlay", disable=not progress, leave=False) as bar:
            for fr in frames_of(media, out_fps, ov_wh, start=0.5 / out_fps):
                t = fr.time - 0.5 / out_fps  # the output frame's own time
                while j + 1 < n and abs(times[j + 1] - t) <= abs(times[j] - t):
                    j += 1
                rec = records[j]
                if layer_j != j:  # the heat and its coloured layer change only with the analysed frame
                    heat = display_heat(np.asarray(a.maps[j], np.float32), heat_strength(rec))
                    h_, w_ = fr.image.shape[:2]
                    layer, layer_j = heat_layer(heat, (w_, h_), cfg.overlay_alpha), j
                bar.update(1)
                yield draw_overlay(fr.image, heat, rec, src_wh, cfg.overlay_alpha, layer=layer)

    audio = audio_chunks(media) if info.has_audio else None  # streamed, encoded alongside the frames
    write_video(tmp, overlay_frames(), out_fps, audio, info.audio_sample_rate, preset=cfg.overlay_preset)


def write_heatmaps(analysis: VideoAnalysis, tmp: Path) -> None:
    """``NAME.heatmaps.npz``: ``times``, ``maps``; for class-aware methods ``class_maps`` /
    ``class_probabilities`` / ``class_detected``; for methods grounding several heard sources ``source_maps``
    (K, H, W), ``source_frames`` (K,) index into ``maps``, ``source_labels``, ``source_scores``."""
    arrays: dict[str, np.ndarray] = {"times": analysis.times, "maps": analysis.maps}
    if analysis.class_maps is not None:
        assert analysis.class_probabilities is not None and analysis.class_detected is not None
        arrays["class_maps"] = analysis.class_maps
        arrays["class_probabilities"] = analysis.class_probabilities
        arrays["class_detected"] = analysis.class_detected
    if analysis.source_maps is not None:
        assert analysis.source_frames is not None and analysis.source_labels is not None
        assert analysis.source_scores is not None
        arrays["source_maps"] = analysis.source_maps
        arrays["source_frames"] = analysis.source_frames
        arrays["source_labels"] = analysis.source_labels
        arrays["source_scores"] = analysis.source_scores
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]


def write_sheet(analysis: VideoAnalysis, tmp: Path) -> None:
    """``NAME.sheet.png``: the contact sheet of evenly spaced analysed frames."""
    from PIL import Image

    cfg, thumbs = analysis.cfg, analysis.thumbs
    per_row = 1 + SHEET_CLASS_PANELS if thumbs and thumbs[0].shape[1] > cfg.sheet_thumb_width else 1
    Image.fromarray(contact_sheet(thumbs, max(1, cfg.sheet_columns // per_row))).save(tmp, format="PNG")


def write_json(analysis: VideoAnalysis, tmp: Path, outputs: dict[str, Path]) -> None:
    """``NAME.avloc.json``; its summary's processing time runs until now."""
    write_document(analysis.document(outputs), tmp)


def write_into(tx: OutputTransaction, analysis: VideoAnalysis, outs: dict[str, Path], progress: bool = False) -> None:
    """Write the outputs ``outs`` (kind -> final path) of ``analysis`` into the begun transaction ``tx``."""
    if "video" in outs:
        with tx.writing("video") as tmp:
            write_overlay_video(analysis, tmp, progress)
    if "heatmaps" in outs:
        with tx.writing("heatmaps") as tmp:
            write_heatmaps(analysis, tmp)
    with tx.writing("sheet") as tmp:
        write_sheet(analysis, tmp)
    with tx.writing("json") as tmp:  # last: its summary holds the whole processing time
        write_json(analysis, tmp, outs)


def _transaction(stem: str, outs: dict[str, Path], out_dir: str | Path, force: bool) -> OutputTransaction:
    """The output set's transaction, checked before any work (a writable folder, no previous set unless
    ``force``); ``with`` it: lock, temporary folder, then commit (the JSON last) or abort."""
    tx = OutputTransaction(out_dir, stem, OUTPUT_SUFFIXES, outs, force=force)
    tx.check()
    return tx


def write_outputs(analysis: VideoAnalysis, out_dir: str | Path, force: bool | None = None,
                  progress: bool = False) -> LocalizeResult:
    """Write the outputs ``analysis.cfg`` asks for into ``out_dir``, all or none (module doc)."""
    outs = wanted_outputs(analysis.input, out_dir, analysis.cfg)
    with _transaction(analysis.input.stem, outs, out_dir, analysis.cfg.force if force is None else force) as tx:
        write_into(tx, analysis, outs, progress)
    return _result(analysis, outs)


def _result(analysis: VideoAnalysis, outs: dict[str, Path]) -> LocalizeResult:
    return LocalizeResult(analysis.input, outs, len(analysis.records), analysis.duration,
                          time.perf_counter() - analysis.started, analysis.onscreen_fraction, analysis.records)


def localize_video(
    path: str | Path,
    model: LocalizationMethod | None,
    cfg: LocalizeConfig,
    out_dir: str | Path,
    model_name: str | None = None,
    tagger: Any = None,
    progress: bool = True,
) -> LocalizeResult:
    """Localize the sounding objects of one video; write its outputs into ``out_dir`` (module doc).

    :func:`analyse_video` then the writers of :func:`write_outputs`, in one transaction checked before any
    work (the maps spool into its temporary folder). ``model`` is any :class:`LocalizationMethod` (``None``
    only with ``cfg.visual_only``); ``tagger`` an optional :class:`avloc.inference.semantic.SemanticMapper`
    (zero-shot semantic mode). Raises :class:`avloc.errors.MediaError` for unreadable inputs or a missing
    audio track (unless ``cfg.visual_only``), :class:`OutputExistsError` when an output exists and
    ``cfg.force`` is false.
    """
    path = Path(path)
    info = check_video(path, model, cfg, tagger)  # probed once, passed on to analyse_video
    outs = wanted_outputs(path, out_dir, cfg)
    with _transaction(path.stem, outs, out_dir, cfg.force) as tx:
        analysis = analyse_video(
            path, model, cfg, model_name=model_name, tagger=tagger, progress=progress, scratch=tx.dir, info=info
        )
        write_into(tx, analysis, outs, progress)
    return _result(analysis, outs)
