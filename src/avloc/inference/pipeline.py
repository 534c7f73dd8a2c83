"""``avloc localize`` as four stages (one module each), re-exported here as the pipeline's public names.

1. **decode** (:mod:`avloc.inference.decode`): probe, check, and decode frames at the analysis rate, each with
   the audio window centred on it (streamed; memory independent of the video's length);
2. **analyse** (:mod:`avloc.inference.analyse`): the model over batches or context chunks -> maps over the
   whole frame, smoothed over time;
3. **records** (:mod:`avloc.inference.records`): each analysed frame -> its typed
   :class:`avloc.formats.localize.FrameRecord` (on-screen decision, labelled boxes, heard sources, speaker);
4. **write** (:mod:`avloc.inference.write`): overlay video, heatmaps, contact sheet and ``NAME.avloc.json``,
   all or none.
"""

from __future__ import annotations

from avloc.formats.localize import OUTPUT_SUFFIXES
from avloc.inference.analyse import SHEET_CLASS_PANELS, VideoAnalysis, analyse_video, make_source
from avloc.inference.decode import (
    MIN_VIDEO_SIDE,
    DecodedVideo,
    RawFrame,
    check_video,
    decode_video,
    iter_raw_frames,
    working_size,
)
from avloc.inference.write import (
    LocalizeResult,
    localize_video,
    output_paths,
    wanted_outputs,
    write_heatmaps,
    write_into,
    write_json,
    write_outputs,
    write_overlay_video,
    write_sheet,
)

__all__ = [
    "MIN_VIDEO_SIDE",
    "OUTPUT_SUFFIXES",
    "SHEET_CLASS_PANELS",
    "DecodedVideo",
    "LocalizeResult",
    "RawFrame",
    "VideoAnalysis",
    "analyse_video",
    "check_video",
    "decode_video",
    "iter_raw_frames",
    "localize_video",
    "make_source",
    "output_paths",
    "wanted_outputs",
    "working_size",
    "write_heatmaps",
    "write_into",
    "write_json",
    "write_outputs",
    "write_overlay_video",
    "write_sheet",
]
