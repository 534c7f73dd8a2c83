"""Training-free audio-visual semantic localization: what YAMNet hears -> what to look for in the frame.

:mod:`avloc.methods.avsemantic.mapping` holds the sound map (``sound_map.json``:
every AudioSet class as an ImageNet-1k object, a human face/body, or nothing
visible) and its loader; ``imagenet_classes.txt`` the ImageNet-1k class names.
"""

from __future__ import annotations

from avloc.methods.avsemantic.mapping import DEFAULT_CLASS_MAP, DEFAULT_SOUND_MAP, KINDS, SoundMap, load_sound_map

__all__ = ["DEFAULT_CLASS_MAP", "DEFAULT_SOUND_MAP", "KINDS", "SoundMap", "load_sound_map"]
