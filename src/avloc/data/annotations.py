"""Parsers for the published annotation formats (Flickr-SoundNet XML, VGG-SS json, MUSIC-style json, AVSOL).

The implementation is :mod:`avloc.metrics.groundtruth` (torch-free, so
``avloc eval`` stays fast); this module is the data-side name for it.
"""

from __future__ import annotations

from avloc.metrics.groundtruth import (
    AVSOL_FPS,
    FLICKR_FRAME,
    flickr_targets,
    load_avsol_json,
    load_flickr_dir,
    load_gt,
    load_music_json,
    load_vggss_json,
    manifest_targets,
    parse_flickr_xml,
    vggss_problems,
)

__all__ = [
    "AVSOL_FPS",
    "FLICKR_FRAME",
    "flickr_targets",
    "load_avsol_json",
    "load_flickr_dir",
    "load_gt",
    "load_music_json",
    "load_vggss_json",
    "manifest_targets",
    "parse_flickr_xml",
    "vggss_problems",
]
