"""DNM (Nishikawa et al., "Dual Normalization Multitasking for Audio-Visual Sounding Object Localization").

* :mod:`avloc.methods.dnm.method`: the model (Sec. 4), its loss and config, registered as ``dnm``;
* :mod:`avloc.methods.dnm.pretrain`: the audio backbone pre-training on FSDD digits (the paper's
  frozen VGGish stand-in, Sec. 5.1) that ``audio_pretrain_steps`` runs inside training.
"""

from avloc.methods.dnm.method import (
    DNM,
    AudioSubNet,
    DNMConfig,
    DNMLoss,
    DynamicFusion,
    SegmentMethod,
    VisualSubNet,
    derangement,
    dynamic_map,
    event_targets,
    load_audio_backbone,
    static_map,
)
from avloc.methods.dnm.pretrain import pretrain_audio_backbone

__all__ = [
    "DNM",
    "AudioSubNet",
    "DNMConfig",
    "DNMLoss",
    "DynamicFusion",
    "SegmentMethod",
    "VisualSubNet",
    "derangement",
    "dynamic_map",
    "event_targets",
    "load_audio_backbone",
    "pretrain_audio_backbone",
    "static_map",
]
