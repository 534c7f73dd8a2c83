"""The ``avloc localize`` pipeline as library code (see docs/localize.md).

``localize_video(path, model, LocalizeConfig(...), out_dir)`` writes, per
video, ``NAME.avloc.mp4`` (overlay), ``NAME.avloc.json`` (``schema.json``),
``NAME.sheet.png`` and optionally ``NAME.heatmaps.npz``.
"""

from __future__ import annotations

from avloc.inference.config import SCHEMA_VERSION, LocalizeConfig
from avloc.inference.pipeline import LocalizeResult, localize_video, output_paths

#: The model ``avloc localize`` uses when ``--model`` is not given: the training-free audio-event
#: grounding (``avloc.methods.avsemantic``), which beats the earlier default (``avsync-objectness``) and
#: ``--visual-only`` on the real-footage dev set (docs/RESULTS.md, "Real footage"; docs/localize.md).
DEFAULT_MODEL = "avsemantic"

__all__ = ["DEFAULT_MODEL", "SCHEMA_VERSION", "LocalizeConfig", "LocalizeResult", "localize_video", "output_paths"]
