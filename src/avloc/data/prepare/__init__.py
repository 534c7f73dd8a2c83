"""``prepare`` steps: datasets laid out as published -> validated jsonl manifests.

Each step walks a dataset folder, builds one manifest entry per sample
(media paths relative to the manifest, pixel boxes in the frame, labels) and
checks it with :func:`avloc.formats.manifest.entry_problems` plus media checks
(file present, frame size readable, boxes inside the frame, a non-empty box
list where the format needs one). Bad entries are never dropped silently:
they go to ``<manifest>.report.txt`` (one line each) and are counted in the
summary; only valid entries are written.

Layouts (``root`` is the dataset folder):

=========== =====================================================================
``flickr``  ``frames/<id>.jpg``, ``audio/<id>.wav|.mp3|.flac``, ``Annotations/<id>.xml``
``vggss``   ``frames/<file>.jpg`` (+ ``audio/<file>.wav``) or ``video/<file>.mp4``; ``vggss.json``
``music``   ``frames/<id>.jpg``, ``audio/<id>.wav``, ``music.json`` (MUSIC-style boxes)
``avsol``   ``videos/<vid>.mp4`` and ``avsol.json`` (AVSOL-style per-frame annotation)
``folder``  any ``*.mp4|*.mov|*.mkv|*.webm|*.avi`` below ``root`` (self-supervised training)
=========== =====================================================================

Training sets as downloaded (``vggsound``, ``flickr-train``, ``music-solo``, ``ave``,
with missing / unreadable / mismatched entries reported): :mod:`avloc.data.prepare.training`.
Optional pre-extraction (frames at the training size, audio at the model rate):
:mod:`avloc.data.prepare.extract`.
"""

from __future__ import annotations

from avloc.data.prepare.steps import STEPS, PrepareResult, prepare
from avloc.data.prepare.training import TRAINING_STEPS

STEPS.update(TRAINING_STEPS)

__all__ = ["STEPS", "PrepareResult", "prepare"]
