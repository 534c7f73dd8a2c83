"""Zero-shot semantic mode (``--audio-tagger yamnet.tflite``): sound class -> object class -> CAM.

Per analysed frame:

1. **Audio tagging**: YAMNet (Plakal & Ellis, 2020; AudioSet ontology, Gemmeke et
   al., ICASSP 2017) run with ``ai_edge_litert`` on the 15,600 samples (0.975 s
   at 16 kHz, its fixed input) centred on the frame -> 521 AudioSet scores.
2. **Mapping**: the top ``TOP_K`` AudioSet classes scoring at least
   ``MIN_SCORE`` are looked up in ``audioset_to_imagenet.json`` (a documented data
   file). Classes with no visible ImageNet counterpart (speech, singing,
   helicopter...) map to nothing.
3. **Class activation** (CAM, Zhou et al., CVPR 2016, Eq. 1-2): the ImageNet
   classifier weights of the mapped classes applied to the EfficientNet-Lite0
   stride-32 feature map before pooling, ``M = sum_c w_c (W_c . F + b_c)``
   with ``w_c`` = the AudioSet score shared over the group's classes; ReLU.

When a frame has a mapped class, its semantic CAM *replaces* the model's map
(``semantic.used = true`` in the JSON); otherwise the frame keeps the model's
map and the JSON says ``used = false`` -- the mode never guesses an object for
a sound it cannot name.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avloc.errors import ConfigError, MediaError
from avloc.methods.avsemantic.mapping import LEGACY_MAPPING_FILE as MAPPING_FILE
from avloc.methods.avsemantic.mapping import load_legacy_mapping

#: YAMNet's fixed input: 15,600 samples at 16 kHz (0.975 s)
YAMNET_RATE = 16000
YAMNET_SAMPLES = 15600
#: AudioSet classes considered per frame, and the least score that counts
TOP_K = 5
MIN_SCORE = 0.1


class YamnetTagger:
    """YAMNet TFLite: waveform at 16 kHz -> 521 AudioSet scores per 0.975 s window."""

    def __init__(self, model_path: str | Path) -> None:
        p = Path(model_path)
        if not p.is_file():
            raise ConfigError(f"--audio-tagger: {p} not found (a YAMNet .tflite file, with yamnet_class_map.csv beside it)")
        cmap = p.with_name("yamnet_class_map.csv")
        if not cmap.is_file():
            raise ConfigError(f"--audio-tagger: {cmap} not found (YAMNet's class names must sit beside the model)")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise ConfigError("--audio-tagger needs ai-edge-litert: pip install 'avloc[tagger]'") from e
        try:
            self.interp = Interpreter(model_path=str(p))
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"--audio-tagger: {p} is not a loadable TFLite model ({e})") from None
        self.interp.allocate_tensors()
        inp = self.interp.get_input_details()[0]
        if tuple(inp["shape"]) not in ((YAMNET_SAMPLES,), (1, YAMNET_SAMPLES)):
            raise ConfigError(f"--audio-tagger: {p} expects input {tuple(inp['shape'])}, not YAMNet's {YAMNET_SAMPLES} samples")
        self.in_index = inp["index"]
        self.in_shape = tuple(inp["shape"])
        outs = self.interp.get_output_details()
        self.out_index = next(o["index"] for o in outs if int(o["shape"][-1]) == 521)
        with open(cmap, newline="") as f:
            self.class_names = [row["display_name"] for row in csv.DictReader(f)]
        self.path = p

    def scores(self, wav: np.ndarray) -> np.ndarray:
        """(15600,) float32 at 16 kHz -> (521,) scores (mean over YAMNet's patches)."""
        x = np.asarray(wav, np.float32).reshape(self.in_shape)
        self.interp.set_tensor(self.in_index, x)
        self.interp.invoke()
        return np.asarray(self.interp.get_tensor(self.out_index)).reshape(-1, 521).mean(axis=0)


class SemanticMapper:
    """``--audio-tagger``: tagger + mapping + EfficientNet-Lite0 CAM (module doc)."""

    def __init__(self, tagger_path: str | Path, mapping_path: str | Path = MAPPING_FILE, device: str = "cpu") -> None:
        self.tagger = YamnetTagger(tagger_path)
        self.mapping_path = Path(mapping_path)
        self.mapping, self.unmapped = load_legacy_mapping(self.mapping_path, self.tagger.class_names)
        from avloc.encoders.efficientnet_lite import EfficientNetLite0

        self.net = EfficientNetLite0(out_stride=32, pretrained=True).to(device).eval()
        self.wav16: np.ndarray | None = None

    def describe(self) -> dict[str, Any]:
        return {"kind": "yamnet", "path": str(self.tagger.path), "mapping": self.mapping_path.name,
                "top_k": TOP_K, "min_score": MIN_SCORE}

    def set_audio(self, wav: np.ndarray, sample_rate: int) -> None:
        from avloc.io.audio import resample

        self.wav16 = resample(wav, sample_rate, YAMNET_RATE)

    def wrap(self, source: Any) -> SemanticSource:
        return SemanticSource(source, self)

    def classes_at(self, t: float) -> tuple[list[dict[str, Any]], dict[int, tuple[str, float]]]:
        """Top AudioSet classes at time ``t`` and the ImageNet class weights they map to."""
        if self.wav16 is None:
            raise MediaError("semantic mode needs the audio track (set_audio was not called)")
        from avloc.io.audio import window_at

        s = self.tagger.scores(window_at(self.wav16, YAMNET_RATE, t, YAMNET_SAMPLES / YAMNET_RATE))
        top = [int(i) for i in np.argsort(-s)[:TOP_K] if s[i] >= MIN_SCORE]
        tags = [{"label": self.tagger.class_names[i], "score": round(float(s[i]), 4)} for i in top]
        weights: dict[int, tuple[str, float]] = {}
        for i in top:
            classes = self.mapping.get(self.tagger.class_names[i], [])
            for idx, label in classes:
                w = float(s[i]) / len(classes)
                weights[idx] = (label, weights.get(idx, (label, 0.0))[1] + w)
        return tags, weights

    @torch.no_grad()
    def cam(self, images: torch.Tensor, weights: dict[int, tuple[str, float]]) -> torch.Tensor:
        """Images (1, 3, S, S) in [0, 1] -> (h, w) CAM of the weighted ImageNet classes (ReLU)."""
        feat = self.net.forward_features_all(images)[32]  # (1, 1280, h, w)
        idx = torch.tensor(list(weights), dtype=torch.long)
        w = torch.tensor([v[1] for v in weights.values()], dtype=feat.dtype)  # (K,)
        fc_w, fc_b = self.net._fc.weight[idx], self.net._fc.bias[idx]  # (K, 1280), (K,)
        cams = torch.einsum("kc,bchw->bkhw", fc_w, feat) + fc_b.view(1, -1, 1, 1)  # (1, K, h, w)
        return F.relu((cams * w.view(1, -1, 1, 1)).sum(dim=1))[0]  # (h, w)


class SemanticSource:
    """A map source whose frames with a nameable sound get the semantic CAM instead (module doc)."""

    def __init__(self, base: Any, mapper: SemanticMapper) -> None:
        self.base, self.mapper = base, mapper
        self.model = base.model
        self.context_seconds = base.context_seconds

    def maps(self, images: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, keep: slice | None = None) -> Any:
        keep = keep if keep is not None else slice(None)
        out = self.base.maps(images, audio, times, keep)
        imgs, ts = images[keep], times[keep]
        maps = list(out.maps)
        for k in range(imgs.shape[0]):
            tags, weights = self.mapper.classes_at(float(ts[k]))
            used = False
            if weights:
                cam = self.mapper.cam(imgs[k : k + 1], weights)
                if float(cam.max()) > 0:
                    h, w = maps[k].shape
                    maps[k] = F.interpolate(cam[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
                    used = True
            groups: dict[str, dict[str, Any]] = {}  # one entry per mapped ImageNet range (label)
            for i, (lab, w) in weights.items():
                g = groups.setdefault(lab, {"label": lab, "indices": [], "weight": 0.0})
                g["indices"].append(i)
                g["weight"] += w
            for g in groups.values():
                g["weight"] = round(g["weight"], 4)
            out.semantic[k] = {
                "audioset": tags,
                "imagenet": sorted(groups.values(), key=lambda g: -g["weight"]),
                "used": used,
            }
        out.maps = np.stack(maps).astype(np.float32)
        return out
