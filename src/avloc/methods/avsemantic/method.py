"""``avsemantic``: training-free grounding of *what is heard* in *what is seen* (issue 16).

Per analysed frame ``t`` with its 0.975 s audio window:

1. **Audio events**: YAMNet (Plakal & Ellis 2020, torch port :mod:`.yamnet`) -> 521 AudioSet scores ``s``;
   the heard classes are the top ``top_k`` with ``s_c >= min_score``.
2. **Grounding** by the kind of each heard class (:mod:`.mapping`, ``sound_map.json``):

   * *object* (dog, piano, hammer, boat ...): its ImageNet-1k counterparts ``I_c``; visible when their
     probability mass ``v_c = sum_{i in I_c} p_i`` (EfficientNet-Lite0 softmax) reaches ``min_visible``;
     map = multi-scale CAM of ``I_c`` (:mod:`.cam`). Generic parents without an ImageNet set of their own
     (``borrow``: "Music" -> the instruments of "Musical instrument") use another class's set.
   * *human* (speech, singing, laughter, crying ...): faces (YuNet, :mod:`.faces`) spread to the head (and
     upper body, ``body_weight``); with several faces the speaker is the face whose mouth region moves with
     the audio envelope (Hershey & Movellan 1999 synchrony restricted to mouths), reported per frame.
   * *none* (music with no instrument in view, wind, rain, hum, narration ...) and anything not visible:
     no map of its own.

   Every source map is centred on its mean and ReLU'd (exact zeros where nothing stands out) and scaled to
   a peak of 1. The frame's map is the score-weighted mean ``sum_c w_c M_c / sum_c w_c``, ``w_c = s_c``
   (objects) or ``s_c * face score`` (humans). When nothing heard is grounded the map falls back to the
   default method's cue, synchrony x objectness (:mod:`avloc.methods.avsync_prior`), and the frame is an
   off-screen candidate.
3. **On/off-screen**: a logistic model of the evidence (:mod:`.onscreen`), calibrated on real footage.

The pipeline calls :meth:`AVSemantic.analyse_clip` (declared by ``Capability.SOURCES``) with runs of
consecutive frames plus ``clip_context_seconds`` of context each side (synchrony and speaker choice need
time); ``localize`` (single frames) runs the same analysis on a one-frame clip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avloc.errors import ConfigError
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig
from avloc.methods import register_method
from avloc.methods.avsemantic import onscreen as onscreen_model
from avloc.methods.avsync_prior import frame_envelope, synchrony_maps
from avloc.methods.base import Capability, ClipAnalysis, HeardSource, LocalizationMethod, MethodConfig

log = logging.getLogger(__name__)

#: YAMNet's fixed input: 0.975 s at 16 kHz (Plakal & Ellis 2020)
YAMNET_WINDOW_SECONDS = 0.975
YAMNET_RATE = 16000
YAMNET_SAMPLES = 15600
#: map-centring floor: a source map whose peak does not exceed its mean by this is empty
MAP_EPS = 1e-6


# --------------------------------------------------------------------------- building blocks
def fit_window(audio: torch.Tensor, n: int) -> torch.Tensor:
    """Centred windows (T, N) -> (T, n): the central ``n`` samples, zero-padded equally when shorter."""
    have = audio.shape[-1]
    if have >= n:
        lo = (have - n) // 2
        return audio[..., lo : lo + n]
    left = (n - have) // 2
    return F.pad(audio, (left, n - have - left))


def visible_mass(probs: np.ndarray, indices: list[int]) -> float:
    """How visible a set of ImageNet classes is: its softmax mass above what a uniform guess gives it,
    ``max(0, P(I) - |I| / C) / (1 - |I| / C)`` -- 0 for a picture that says nothing about the set (a flat
    grey frame gives "every vehicle" its chance share), comparable between one class and a union of hundreds."""
    prior = len(indices) / probs.shape[-1]
    return max(0.0, float(probs[indices].sum()) - prior) / max(1.0 - prior, 1e-6)


def centre_map(m: torch.Tensor, support: float = 0.0) -> torch.Tensor:
    """The part of a map that stands out, peak 1, exact zeros elsewhere; (h, w).

    ``c = relu(m - mean(m))``, then cells below ``support`` x its peak are zeroed (the rest keeps its value):
    a tight support matters for median binarisation (VGG-SS protocol), which predicts every non-zero cell of a
    map that is zero on more than half the frame.
    """
    c = F.relu(m - m.mean())
    peak = c.max()
    if not float(peak) > MAP_EPS:
        return torch.zeros_like(m)
    c = c / peak
    return torch.where(c >= support, c, torch.zeros_like(c)) if support > 0 else c


@dataclass
class _Faces:
    """Faces of one frame in model-input pixels: rows ``[x, y, w, h, 10 landmarks, score]``."""

    rows: np.ndarray  # (K, 15)


# --------------------------------------------------------------------------- the model
@dataclass
class AVSemanticConfig(MethodConfig):
    """Audio-event grounding (module doc). Defaults: docs/localize.md, fitted values in docs/RESULTS.md."""

    audio: AudioFrontendConfig = field(
        default_factory=lambda: AudioFrontendConfig(sample_rate=YAMNET_RATE, window_seconds=YAMNET_WINDOW_SECONDS)
    )
    #: letterbox: the whole frame, undistorted (faces keep their shape); 288 (median success 0.387 vs 0.258
    #: at 384 on realclips_dev, docs/RESULTS.md) at 0.56x the backbone's cost
    image: ImageConfig = field(default_factory=lambda: ImageConfig(size=288, mode="pad"))
    #: heard classes: the top ``top_k`` AudioSet classes scoring at least ``min_score``
    top_k: int = 10
    min_score: float = 0.05
    #: an object class is visible when its ImageNet counterparts' mass above chance reaches this
    min_visible: float = 0.05
    #: CAM strides (16: atrous head, finer; 32: the classifier's own grid)
    cam_strides: tuple[int, ...] = (16, 32)
    #: sound map: "v2" (every AudioSet class, sound_map.json) or "legacy" (the old 42 object groups)
    mapping: str = "v2"
    #: generic classes grounded through another class's ImageNet set
    borrow: dict[str, str] = field(default_factory=lambda: {"Music": "Musical instrument"})
    #: human sounds -> faces (YuNet); ``False``: human sounds are not grounded (ablation)
    use_faces: bool = True
    #: weight of the upper body next to the head in a person's map (the sound comes from the head)
    body_weight: float = 0.3
    #: each source map keeps only cells >= this fraction of its peak (a tight support, :func:`centre_map`)
    support: float = 0.3
    #: several faces: pick the speaker by mouth-region synchrony with the audio
    choose_speaker: bool = True
    #: fallback when nothing heard is grounded: synchrony x objectness (``False``: objectness alone, ablation)
    use_synchrony: bool = True
    context_seconds: float = 2.0
    sync_grid: int = 56
    sync_blur: int = 3
    sync_spread: int = 13
    sync_w_motion: float = 0.5
    sync_floor: float = 0.1
    #: on-screen logistic model over (object, human, speaker, unseen, narration), see :mod:`.onscreen`
    #: fitted on the 39 labelled frames of realclips_dev (5 off-screen), class-balanced IRLS, 2026-12-02:
    #: ``python bench/paper/avsemantic/realclips.py --fit-onscreen`` (leave-one-clip-out balanced accuracy 0.650, docs/RESULTS.md)
    onscreen_weights: tuple[float, ...] = (0.672, 0.086, -0.248, 0.635, 0.056)
    onscreen_bias: float = 4.125

    def validate(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"avsemantic top_k must be >= 1, got {self.top_k}")
        if not 0 <= self.min_score < 1 or not 0 <= self.min_visible < 1:
            raise ConfigError("avsemantic min_score and min_visible must be in [0, 1)")
        if self.mapping not in ("v2", "legacy"):
            raise ConfigError(f"avsemantic mapping must be v2 or legacy, got {self.mapping!r}")
        if len(self.onscreen_weights) != len(onscreen_model.FEATURES):
            raise ConfigError(f"onscreen_weights needs {len(onscreen_model.FEATURES)} values")


@register_method("avsemantic")
class AVSemantic(LocalizationMethod):
    """Training-free audio-event grounding (module doc)."""

    config_class = AVSemanticConfig
    training_free = True
    capabilities = frozenset({Capability.CLIP, Capability.SOURCES, Capability.ONSCREEN})

    def __init__(self, cfg: AVSemanticConfig) -> None:
        super().__init__(cfg)
        cfg.validate()
        self.cfg: AVSemanticConfig = cfg
        self._parts: dict[str, Any] = {}  # built on first use: tagger, sound map, evidence net, face detector
        self._face_cache: dict[tuple[float, int], np.ndarray] = {}

    # -- parts ---------------------------------------------------------------------------
    def checkpoint_exclude_prefixes(self) -> list[str]:
        return ["_evidence.", "_tagger."]

    def _build(self, device: torch.device) -> None:
        if self._parts:
            return
        from avloc.methods.avsemantic.cam import ImageNetEvidence
        from avloc.methods.avsemantic.mapping import LEGACY_MAPPING_FILE, SoundMap, load_sound_map
        from avloc.methods.avsemantic.yamnet import load_yamnet, yamnet_class_names

        # float arithmetic (not the bit-level emulation of TFLite's int8 kernels the port is tested with)
        self._tagger = load_yamnet(device, match_tflite=False)
        names = yamnet_class_names()
        smap = load_sound_map(class_names=names)
        if self.cfg.mapping == "legacy":  # ablation: the 42 object groups of the old --audio-tagger mode
            smap = SoundMap.from_legacy_groups(LEGACY_MAPPING_FILE, class_names=names)
        self._evidence = ImageNetEvidence(self.cfg.cam_strides).to(device).eval()
        sets: list[list[int]] = [list(smap.imagenet[i]) for i in range(len(names))]
        for child, parent in self.cfg.borrow.items():
            if child not in names or parent not in names:
                raise ConfigError(f"avsemantic borrow: {child!r} -> {parent!r}: not an AudioSet class of YAMNet")
            sets[names.index(child)] = list(smap.imagenet[names.index(parent)])
        kinds = [str(k) for k in smap.kind_names]
        for child in self.cfg.borrow:
            if sets[names.index(child)]:
                kinds[names.index(child)] = "object"
        self._parts = {"names": names, "map": smap, "sets": sets, "kinds": kinds}
        if self.cfg.use_faces:
            from avloc.methods.avsemantic.faces import FaceConfig, FaceDetector

            self._parts["faces"] = FaceDetector(FaceConfig())

    # -- the contract --------------------------------------------------------------------
    @property
    def clip_context_seconds(self) -> float:
        return self.cfg.context_seconds

    def localize(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Single frames (B, 3, S, S), windows (B, N) -> (B, h, w): each frame analysed on its own (no synchrony)."""
        maps = [self.analyse_clip(images[b : b + 1], audio[b : b + 1], torch.zeros(1)).maps[0] for b in range(len(images))]
        return torch.stack(maps)

    def localize_clip(
        self, frames: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, keep: slice | None = None
    ) -> torch.Tensor:
        return self.analyse_clip(frames, audio, times, keep).maps

    def onscreen(self, images: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [self.analyse_clip(images[b : b + 1], audio[b : b + 1], torch.zeros(1)).onscreen[0] for b in range(len(images))]
        )

    # -- analysis --------------------------------------------------------------------------
    @torch.no_grad()
    def analyse_clip(
        self, frames: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, keep: slice | None = None
    ) -> ClipAnalysis:
        """Frames (T, 3, S, S) in [0, 1], centred windows (T, N) at 16 kHz, times (T,) s -> analysis of ``frames[keep]``."""
        keep = keep if keep is not None else slice(None)
        device = frames.device
        self._build(device)
        names, sets, kinds = self._parts["names"], self._parts["sets"], self._parts["kinds"]
        smap = self._parts["map"]
        cfg = self.cfg
        idx = list(range(frames.shape[0]))[keep]
        kf, ka = frames[keep], audio[keep]
        scores = self._tagger(fit_window(ka.float(), YAMNET_SAMPLES)).cpu().numpy()  # (T', 521)
        ev = self._evidence(kf)
        probs = ev.probs.cpu().numpy()  # (T', 1000)
        s_img = frames.shape[-1]
        out_hw = (s_img // 8, s_img // 8)  # stride-8 output grid (finer than either CAM)
        fallback = self._fallback(frames, audio, times, keep, ev.objectness, out_hw)  # (T', h, w)
        heard_all = [[int(c) for c in np.argsort(-s)[: cfg.top_k] if s[c] >= cfg.min_score] for s in scores]
        hears_people = any(kinds[c] == "human" for h in heard_all for c in h)
        # faces only where a human sound is heard (YuNet also fires on animal faces, and costs time)
        faces, speaker = self._faces_and_speaker(frames, audio, times, idx) if cfg.use_faces and hears_people else ({}, {})
        maps, onscreen, sources, details = [], [], [], []
        for k, j in enumerate(idx):
            s = scores[k]
            heard = heard_all[k]
            frame_sources: list[HeardSource] = []
            weighted: list[tuple[float, torch.Tensor]] = []
            feats = {"object": 0.0, "human": 0.0, "speaker": 0.0, "unseen": 0.0, "narration": 0.0}
            rows = faces.get(j, np.zeros((0, 15), np.float32))
            person: torch.Tensor | None = None
            for c in heard:
                kind, sc = kinds[c], float(s[c])
                if bool(smap.offscreen_prior[c]):
                    feats["narration"] = max(feats["narration"], sc)
                if kind == "object" and sets[c]:
                    v = visible_mass(probs[k], sets[c])
                    feats["object"] = max(feats["object"], sc * v)
                    if v >= cfg.min_visible:
                        m = centre_map(self._evidence.cam(ev, k, sets[c], out_hw), cfg.support)
                        top = int(np.asarray(sets[c])[np.argmax(probs[k, sets[c]])])
                        frame_sources.append(HeardSource(names[c], sc, kind, f"imagenet:{top}", m, {"visible": round(v, 4)}))
                        weighted.append((sc, m))
                        continue
                    frame_sources.append(HeardSource(names[c], sc, kind, "not visible", None, {"visible": round(v, 4)}))
                elif kind == "human" and cfg.use_faces:
                    if len(rows):
                        face_score = float(rows[:, 14].max())
                        feats["human"] = max(feats["human"], sc * face_score)
                        who = speaker.get(j)
                        feats["speaker"] = max(feats["speaker"], float(who[1]) if who is not None else 0.0)
                        if person is None:
                            person = self._person_map(rows, None if who is None else who[0], out_hw, s_img)
                        face_id = "all faces" if who is None else f"face {who[0]}"
                        frame_sources.append(
                            HeardSource(names[c], sc, kind, face_id, person, {"faces": len(rows), "face_score": round(face_score, 4)})
                        )
                        weighted.append((sc * face_score, person))
                        continue
                    frame_sources.append(HeardSource(names[c], sc, kind, "no face", None, {}))
                elif kind == "human":  # faces switched off (ablation)
                    frame_sources.append(HeardSource(names[c], sc, kind, "faces off", None, {}))
                else:
                    feats["unseen"] = max(feats["unseen"], sc)
                    frame_sources.append(HeardSource(names[c], sc, kind, "no visual counterpart", None, {}))
            if weighted:
                wts = torch.tensor([w for w, _ in weighted], dtype=torch.float32, device=device)
                m = torch.einsum("k,khw->hw", wts / wts.sum(), torch.stack([mm.to(device) for _, mm in weighted]))
            else:
                m = fallback[k]
            p = onscreen_model.onscreen_probability(feats, cfg.onscreen_weights, cfg.onscreen_bias)
            maps.append(m)
            onscreen.append(p)
            sources.append(frame_sources)
            details.append({
                "onscreen_features": {a: round(b, 5) for a, b in feats.items()},
                "grounded": bool(weighted),
                "faces": len(rows),
                "speaker": None if speaker.get(j) is None else int(speaker[j][0]),
            })
        return ClipAnalysis(torch.stack(maps), torch.tensor(onscreen, dtype=torch.float32), sources, details)

    def _fallback(
        self, frames: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, keep: slice, objectness: torch.Tensor,
        out_hw: tuple[int, int],
    ) -> torch.Tensor:
        """Synchrony x objectness (the default method's cue) for ``frames[keep]``, centred: (T', h, w)."""
        obj = F.interpolate(objectness[:, None], size=out_hw, mode="bilinear", align_corners=False)[:, 0]
        if self.cfg.use_synchrony and frames.shape[0] > 2:
            env = frame_envelope(audio, times, self.cfg.audio.sample_rate)
            dt = float(torch.median(times[1:] - times[:-1]).clamp_min(1e-3))
            half = max(1, round(self.cfg.context_seconds / dt))
            sync = synchrony_maps(frames, env, half, self.cfg.sync_grid, self.cfg.sync_w_motion, self.cfg.sync_blur,
                                  self.cfg.sync_spread)[keep]
            sync = F.interpolate(sync[:, None], size=out_hw, mode="bilinear", align_corners=False)[:, 0]
            obj = obj * (self.cfg.sync_floor + sync)
        return torch.stack([centre_map(m, self.cfg.support) for m in obj])

    def _person_map(self, rows: np.ndarray, who: int | None, out_hw: tuple[int, int], s_img: int) -> torch.Tensor:
        from avloc.methods.avsemantic.faces import person_map

        weights = rows[:, 14].astype(np.float64)
        if who is not None:
            weights = np.zeros(len(rows))
            weights[who] = 1.0
        m = person_map(rows, weights, (out_hw[1], out_hw[0]), (s_img, s_img), body_weight=self.cfg.body_weight)
        return centre_map(torch.as_tensor(np.asarray(m, np.float32)), self.cfg.support)

    def _faces_and_speaker(
        self, frames: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, idx: list[int]
    ) -> tuple[dict[int, np.ndarray], dict[int, tuple[int, float]]]:
        """Faces on every frame of the buffer (cached by time), and per kept frame (face index, synchrony) of the
        speaker when a face's mouth moves with the audio (:func:`.faces.choose_speaker`)."""
        from avloc.methods.avsemantic.faces import choose_speaker, speaker_scores, track_faces

        det = self._parts["faces"]
        ts = [round(float(t), 4) for t in times]
        # cache key: the time and a fingerprint of the picture (the same model serves many videos)
        keys = [(t, hash(frames[j, :, ::16, ::16].cpu().numpy().tobytes())) for j, t in enumerate(ts)]
        imgs = None
        rows: list[np.ndarray] = []
        for j, key in enumerate(keys):
            if key not in self._face_cache:
                if imgs is None:
                    imgs = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                self._face_cache[key] = det.detect(imgs[j])
            rows.append(self._face_cache[key])
        if len(self._face_cache) > 4 * len(ts) + 64:  # keep only this buffer's frames
            self._face_cache = {k: self._face_cache[k] for k in keys}
        faces = {j: rows[j] for j in idx}
        speaker: dict[int, tuple[int, float]] = {}
        if not self.cfg.choose_speaker or max((len(r) for r in rows), default=0) == 0 or len(ts) < 3:
            return faces, speaker
        tracks = track_faces(rows)
        grey = (frames * torch.tensor([0.299, 0.587, 0.114], device=frames.device).view(1, 3, 1, 1)).sum(1)
        env = frame_envelope(audio, times, self.cfg.audio.sample_rate).cpu().numpy()
        sc = np.asarray(speaker_scores(grey.cpu().numpy(), np.asarray(ts), tracks, env))
        best = choose_speaker(sc)
        for j in idx:
            if best is None:
                continue
            box = tracks[best].rows[j] if j < tracks[best].n_frames else None
            if box is None or not len(rows[j]):
                continue
            # the speaker's face in frame j: the detection nearest the track's box
            centres = rows[j][:, :2] + rows[j][:, 2:4] / 2
            bc = np.asarray(box[:2]) + np.asarray(box[2:4]) / 2
            speaker[j] = (int(np.argmin(((centres - bc) ** 2).sum(1))), float(sc[best]))
        return faces, speaker
