"""``avsemantic``: training-free grounding of *what is heard* in *what is seen* (issues 16, 26, 27).

Per analysed frame ``t`` with its 0.975 s audio window:

1. **Audio events**: YAMNet (Plakal & Ellis 2020, torch port :mod:`.yamnet`) -> 521 AudioSet scores ``a``;
   the heard classes are the top ``top_k`` with ``a_c >= min_score``.
2. **Grounding** of each heard class by its kind (:mod:`.grounding`, :mod:`.mapping`, ``sound_map.json``):
   *objects* on the detector's instances of their COCO categories (Lin et al., ECCV 2014) or the class
   activation maps (Zhou et al., CVPR 2016) of their ImageNet classes, each with its descendants in the
   AudioSet hierarchy (:mod:`.hierarchy`: "Music" grounds on the visible instruments); *human* sounds on
   faces (YuNet, :mod:`.faces`), the speaker chosen by audio-mouth synchrony (Hershey & Movellan 1999);
   sounds with *no visual counterpart* on the synchrony x objectness fallback cue.
3. **On/off-screen** (:mod:`.onscreen`): each source's own P(visible) from the evidence for it (monotone:
   more evidence never lowers it), and the frame's as their noisy-OR by relative audibility.
4. **The frame's map**: the sources' maps weighted by ``a_s * P(s visible)``; the fallback cue when no heard
   source is grounded.

The pipeline calls :meth:`AVSemantic.analyse_clip` (declared by ``Capability.SOURCES``) with runs of
consecutive frames plus ``clip_context_seconds`` of context each side (synchrony and speaker choice need
time); ``localize`` (single frames) runs the same analysis on a one-frame clip.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avloc.config import ConfigValueError, check_range
from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig
from avloc.methods import register_method
from avloc.methods.avsemantic import onscreen as onscreen_model
from avloc.methods.avsemantic.grounding import (
    FrameInputs,
    GroundingConfig,
    centre_map,
    ground_human,
    ground_none,
    ground_object,
)
from avloc.methods.avsemantic.mapping import COCO_NAMES
from avloc.methods.avsync_prior import frame_envelope, synchrony_maps
from avloc.methods.base import (
    Capability,
    ClipAnalysis,
    FrameDetails,
    HeardSource,
    LocalizationMethod,
    MethodConfig,
    SpeakerChoice,
)

log = logging.getLogger(__name__)

#: YAMNet's fixed input: 0.975 s at 16 kHz (Plakal & Ellis 2020)
YAMNET_WINDOW_SECONDS = 0.975
YAMNET_RATE = 16000
YAMNET_SAMPLES = 15600


# --------------------------------------------------------------------------- building blocks
def fit_window(audio: torch.Tensor, n: int) -> torch.Tensor:
    """Centred windows (T, N) -> (T, n): the central ``n`` samples, zero-padded equally when shorter."""
    have = audio.shape[-1]
    if have >= n:
        lo = (have - n) // 2
        return audio[..., lo : lo + n]
    left = (n - have) // 2
    return F.pad(audio, (left, n - have - left))


# --------------------------------------------------------------------------- the model
#: on-screen model fitted by ``python -m avloc.methods.avsemantic.fit_onscreen`` (docs/RESULTS.md, "On/off-screen")
DEFAULT_ONSCREEN_BIAS: dict[str, float] = {"object": -4.0, "human": -2.0, "narration": -4.0, "none": -3.0}
DEFAULT_ONSCREEN_WEIGHTS: dict[str, tuple[float, ...]] = {
    "object": (12.0, 8.0), "human": (3.0, 4.0, 2.0), "narration": (2.0, 6.0, 1.0), "none": (2.0,),
}


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
    #: generic classes ground on their descendants' visible instances (AudioSet hierarchy); ``False``: ablation
    use_hierarchy: bool = True
    #: object instances: at most this many per heard class; a CAM instance's box is its map's connected
    #: support above ``box_support`` x its peak
    max_instances: int = 4
    box_support: float = 0.5
    #: a CAM instance's support snapped to SLICO superpixels about ``segment_px`` across (model-input pixels)
    snap_segments: bool = True
    segment_px: int = 16
    #: COCO instances of heard objects and people: this detector (``avloc.registry.VISION``) at this input size
    #: and score threshold (NanoDet-g 416 letterboxed: docs/localize.md, "Detector"); ``None``: no detector
    detector: str | None = "nanodet"
    detector_size: int = 416
    detector_threshold: float = 0.3
    #: human sounds -> faces (YuNet); ``False``: human sounds are not grounded (ablation)
    use_faces: bool = True
    #: a vocal sound with no face found: the head of the people BlazePose finds (MediaPipe, :mod:`avloc.vision.pose`)
    use_pose: bool = True
    #: a body sound (clapping, footsteps): the detected people tightened to their mask (selfie segmentation)
    use_masks: bool = True
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
    #: the on-screen model (:mod:`.onscreen`): per evidence group a bias and non-negative weights
    onscreen_bias: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ONSCREEN_BIAS))
    onscreen_weights: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(DEFAULT_ONSCREEN_WEIGHTS))

    def __post_init__(self) -> None:
        super().__post_init__()
        for k in ("top_k", "max_instances", "sync_grid", "sync_blur", "sync_spread", "segment_px"):
            check_range(k, getattr(self, k), 1)
        for k in ("min_score", "min_visible", "support", "box_support", "sync_floor", "sync_w_motion",
                  "detector_threshold"):
            check_range(k, getattr(self, k), 0, 1)
        check_range("context_seconds", self.context_seconds, 0)
        if self.mapping not in ("v2", "legacy"):
            raise ConfigValueError("mapping", f"must be v2 or legacy, got {self.mapping!r}")
        self.onscreen_model()  # checks the groups, and the weights' signs

    def onscreen_model(self) -> onscreen_model.OnscreenModel:
        return onscreen_model.OnscreenModel(self.onscreen_bias, self.onscreen_weights)


@register_method("avsemantic")
class AVSemantic(LocalizationMethod):
    """Training-free audio-event grounding (module doc)."""

    config_class = AVSemanticConfig
    training_free = True
    capabilities = frozenset({Capability.CLIP, Capability.SOURCES, Capability.ONSCREEN})

    def __init__(self, cfg: AVSemanticConfig) -> None:
        super().__init__(cfg)
        self.cfg: AVSemanticConfig = cfg
        self._parts: dict[str, Any] = {}  # built on first use: tagger, sound map, evidence net, face detector
        self._face_cache: dict[tuple[float, int], np.ndarray] = {}

    # -- parts ---------------------------------------------------------------------------
    def checkpoint_exclude_prefixes(self) -> list[str]:
        return ["_evidence.", "_tagger.", "_detector."]

    def _build(self, device: torch.device) -> None:
        if self._parts:
            return
        from avloc.methods.avsemantic.cam import ImageNetEvidence
        from avloc.methods.avsemantic.yamnet import load_yamnet, yamnet_class_names

        # float arithmetic (not the bit-level emulation of TFLite's int8 kernels the port is tested with)
        self._tagger = load_yamnet(device, match_tflite=False)
        self._evidence = ImageNetEvidence(self.cfg.cam_strides).to(device).eval()
        self._parts = {"classes": _visual_sets(yamnet_class_names(), self.cfg)}
        if self.cfg.detector is not None:
            from avloc.vision import create_vision_model

            self._detector = create_vision_model(self.cfg.detector, device=device, input_size=self.cfg.detector_size,
                                                 score_threshold=self.cfg.detector_threshold)
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
        self._build(frames.device)
        cfg, classes = self.cfg, self._parts["classes"]
        idx = list(range(frames.shape[0]))[keep]
        scores = self._tagger(fit_window(audio[keep].float(), YAMNET_SAMPLES)).cpu().numpy()  # (T', 521)
        heard_all = [[int(c) for c in np.argsort(-s)[: cfg.top_k] if s[c] >= cfg.min_score] for s in scores]
        ev = self._evidence(frames[keep])
        s_img = frames.shape[-1]
        out_hw = (s_img // 8, s_img // 8)  # stride-8 output grid (finer than either CAM)
        fallback, motion = self._fallback(frames, audio, times, keep, ev.objectness, out_hw)  # (T', h, w), (T',)
        hears_people = any(classes.kinds[c] == "human" for h in heard_all for c in h)
        # faces only where a human sound is heard (YuNet also fires on animal faces, and costs time)
        faces, speaker = self._faces_and_speaker(frames, audio, times, idx) if cfg.use_faces and hears_people else ({}, {})
        probs = ev.probs.cpu().numpy()  # (T', 1000)
        dets = self._detect(frames[keep], heard_all)
        model = cfg.onscreen_model()
        maps, onscreen, sources, details = [], [], [], []
        for k, j in enumerate(idx):
            f = FrameInputs(
                probs=probs[k], cam=functools.partial(self._cam, ev, k, out_hw), detections=dets[k],
                faces=faces.get(j, np.zeros((0, 15), np.float32)), speaker=speaker.get(j), fallback=fallback[k],
                motion=float(motion[k]), out_hw=out_hw, side=s_img, coco_names=COCO_NAMES,
                segments=functools.cache(functools.partial(_segments, frames[keep][k], cfg.segment_px))
                if cfg.snap_segments else None,
                pose_heads=functools.cache(functools.partial(self._pose_heads, frames[keep][k])) if cfg.use_pose else None,
                person_mask=functools.cache(functools.partial(self._person_mask, frames[keep][k])) if cfg.use_masks else None,
            )
            srcs = [self._ground(f, int(c), float(scores[k, c])) for c in heard_all[k]]
            for h in srcs:
                h.onscreen = model.source_probability(_evidence_of(h, classes))
            p = model.frame_probability([_evidence_of(h, classes) for h in srcs], float(motion[k]))
            maps.append(_frame_map(srcs, fallback[k]))
            onscreen.append(p)
            sources.append(srcs)
            details.append(_details(srcs, f, s_img))
        return ClipAnalysis(torch.stack(maps).to(frames.device), torch.tensor(onscreen, dtype=torch.float32), sources,
                            details)

    def _detect(self, frames: torch.Tensor, heard: list[list[int]]) -> list[list[tuple[Any, float, int]]]:
        """COCO instances (box in model-input pixels, score, label) of the frames whose heard classes name a COCO
        category (objects, and people for human sounds); none without a detector."""
        cls = self._parts["classes"]
        need = [any(cls.coco[c] or cls.kinds[c] == "human" for c in h) for h in heard]
        out: list[list[tuple[Any, float, int]]] = [[] for _ in heard]
        if self.cfg.detector is None or not any(need):
            return out
        idx = [k for k, n in enumerate(need) if n]
        for k, d in zip(idx, self._detector.detect(frames[idx]), strict=True):
            out[k] = [(tuple(float(v) for v in b), float(s), int(c))
                      for b, s, c in zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist(), strict=True)]
        return out

    def _pose_heads(self, frame: torch.Tensor) -> list[tuple[tuple[float, float, float, float], float]]:
        """Head boxes (model-input pixels) and scores of the people BlazePose finds in one frame (3, S, S)."""
        from avloc.vision import create_vision_model
        from avloc.vision.pose import head_box

        if "pose" not in self._parts:
            self._parts["pose"] = create_vision_model("blazepose", device=frame.device)
        out = []
        for person in self._parts["pose"]([frame])[0]:
            b = head_box(person)
            if b is not None:
                out.append((tuple(float(v) for v in b.tolist()), float(person.score)))
        return out  # type: ignore[return-value]

    def _person_mask(self, frame: torch.Tensor) -> torch.Tensor:
        """Person probability (S, S) of one frame (selfie segmentation, :mod:`avloc.vision.segmentation`)."""
        from avloc.vision import create_vision_model

        if "segmenter" not in self._parts:
            self._parts["segmenter"] = create_vision_model("selfie-segmentation", device=frame.device)
        return self._parts["segmenter"].segment(frame[None])[0].cpu()

    def _cam(self, ev: Any, k: int, out_hw: tuple[int, int], indices: list[int]) -> torch.Tensor:
        return self._evidence.cam(ev, k, indices, out_hw).cpu()

    def _ground(self, f: FrameInputs, c: int, score: float) -> HeardSource:
        """One heard class in one frame, by its kind (:mod:`.grounding`)."""
        from avloc.methods.avsemantic.faces import head_box

        cls, cfg = self._parts["classes"], self.cfg
        name, kind = cls.names[c], cls.kinds[c]
        g = GroundingConfig(cfg.min_visible, cfg.support, cfg.detector_threshold, cfg.max_instances, cfg.box_support)
        if kind == "object":
            return ground_object(f, g, name, score, cls.imagenet[c], cls.parts[c], cls.coco[c])
        if kind == "human":
            if not cfg.use_faces:
                return HeardSource(name, score, "human", "faces off", None, {})
            return ground_human(f, g, name, score, cls.regions[c],
                                functools.partial(self._person_weights, out_hw=f.out_hw, s_img=f.side),
                                lambda row: head_box(row, (f.side, f.side)), COCO_NAMES.index("person"))
        return ground_none(f, name, score)

    def _fallback(
        self, frames: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, keep: slice, objectness: torch.Tensor,
        out_hw: tuple[int, int],
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Synchrony x objectness (the default method's cue) for ``frames[keep]``, centred: (T', h, w); and the
        motion evidence of each kept frame: the peak of its motion-audio synchrony map (T',) in [0, 1]."""
        obj = F.interpolate(objectness[:, None], size=out_hw, mode="bilinear", align_corners=False)[:, 0]
        motion = np.zeros(obj.shape[0])
        if self.cfg.use_synchrony and frames.shape[0] > 2:
            env = frame_envelope(audio, times, self.cfg.audio.sample_rate)
            dt = float(torch.median(times[1:] - times[:-1]).clamp_min(1e-3))
            half = max(1, round(self.cfg.context_seconds / dt))
            sync = synchrony_maps(frames, env, half, self.cfg.sync_grid, self.cfg.sync_w_motion, self.cfg.sync_blur,
                                  self.cfg.sync_spread)[keep]
            motion = sync.flatten(1).amax(1).clamp(0, 1).cpu().numpy()
            sync = F.interpolate(sync[:, None], size=out_hw, mode="bilinear", align_corners=False)[:, 0]
            obj = obj * (self.cfg.sync_floor + sync)
        return torch.stack([centre_map(m, self.cfg.support) for m in obj]).cpu(), motion

    def _person_weights(self, rows: np.ndarray, weights: np.ndarray, out_hw: tuple[int, int], s_img: int) -> np.ndarray:
        """Soft person map (h, w) of faces ``rows`` weighted by ``weights`` (:func:`.faces.person_map`)."""
        from avloc.methods.avsemantic.faces import person_map

        return person_map(rows, weights, (out_hw[1], out_hw[0]), (s_img, s_img), body_weight=self.cfg.body_weight)

    def _faces_and_speaker(
        self, frames: torch.Tensor, audio: torch.Tensor, times: torch.Tensor, idx: list[int]
    ) -> tuple[dict[int, np.ndarray], dict[int, tuple[int, float, int]]]:
        """Faces on every frame of the buffer (cached by time), and per kept frame (face index, synchrony, track) of
        the speaker when a face's mouth moves with the audio (:func:`.faces.choose_speaker`)."""
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
        speaker: dict[int, tuple[int, float, int]] = {}
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
            speaker[j] = (int(np.argmin(((centres - bc) ** 2).sum(1))), float(sc[best]), int(best))
        return faces, speaker



# --------------------------------------------------------------------------- helpers of the analysis
@dataclass(frozen=True)
class _ClassSets:
    """Per YAMNet class: name, kind, and the visual sets grounding uses (module doc of :mod:`.grounding`)."""

    names: list[str]
    kinds: list[str]
    regions: list[str | None]  # human classes: "face" (vocal) or "body"
    narration: list[bool]
    imagenet: list[list[int]]  # its own ImageNet classes and its descendants'
    coco: list[list[int]]  # its own COCO labels and its descendants'
    parts: list[list[tuple[str, list[int]]]]  # CAM instance candidates: itself and its descendants with their sets


def _visual_sets(names: list[str], cfg: AVSemanticConfig) -> _ClassSets:
    """The sound map (``cfg.mapping``) widened by the AudioSet hierarchy (``cfg.use_hierarchy``)."""
    from avloc.methods.avsemantic.hierarchy import AudioSetHierarchy
    from avloc.methods.avsemantic.mapping import SoundMap, load_sound_map

    smap = load_sound_map(class_names=names)
    if cfg.mapping == "legacy":  # ablation: the 42 object groups of the old --audio-tagger mode
        from avloc.methods.avsemantic.mapping import LEGACY_MAPPING_FILE

        smap = SoundMap.from_legacy_groups(LEGACY_MAPPING_FILE, class_names=names)
    kinds = [str(k) for k in smap.kind_names]
    own_in = [list(smap.imagenet[i]) for i in range(len(names))]
    own_co = [list(smap.coco[i]) if kinds[i] == "object" else [] for i in range(len(names))]
    below = [[] for _ in names] if not cfg.use_hierarchy else [
        [j for j in AudioSetHierarchy.load(names).descendant_indices(n) if kinds[j] == "object"] for n in names]
    imagenet = [sorted(set(own_in[i]).union(*(own_in[j] for j in below[i]))) for i in range(len(names))]
    coco = [sorted(set(own_co[i]).union(*(own_co[j] for j in below[i]))) for i in range(len(names))]
    parts = []
    for i, n in enumerate(names):
        cand = [(n, own_in[i])] + [(names[j], own_in[j]) for j in below[i]]
        seen: set[tuple[int, ...]] = set()
        parts.append([(nm, s) for nm, s in cand if s and not (tuple(s) in seen or seen.add(tuple(s)))])  # type: ignore[func-returns-value]
    for i in range(len(names)):  # a generic class with visible descendants is an object class
        if kinds[i] == "none" and (imagenet[i] or coco[i]):
            kinds[i] = "object"
    return _ClassSets(names, kinds, list(smap.region), [bool(v) for v in smap.offscreen_prior], imagenet, coco, parts)


def _evidence_of(h: HeardSource, classes: _ClassSets) -> onscreen_model.HeardEvidence:
    """A grounded source as the on-screen model reads it (its group: narration for offscreen-prior classes)."""
    group = h.kind
    if h.kind == "human" and classes.narration[classes.names.index(h.label)]:
        group = "narration"
    ev = {k: float(v) for k, v in h.detail.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    cause = onscreen_model.cause_key(h.kind, h.grounding, h.label, h.map is not None and h.kind != "none")
    return onscreen_model.HeardEvidence(group, h.score, ev, cause)


def _segments(frame: torch.Tensor, region: int) -> np.ndarray:
    """Superpixels of a model-input frame (3, S, S) in [0, 1] (:func:`.grounding.superpixels`)."""
    from avloc.methods.avsemantic.grounding import superpixels

    rgb = (frame.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return superpixels(rgb, region)


def _frame_map(srcs: list[HeardSource], fallback: torch.Tensor) -> torch.Tensor:
    """The sources' maps weighted by ``score * P(visible)`` (module doc, step 4); the fallback when none is grounded."""
    weighted = [(h.score * (h.onscreen if h.onscreen is not None else 1.0), h.map) for h in srcs
                if h.map is not None and h.kind != "none"]
    total = sum(w for w, _ in weighted)
    if not weighted or total <= 0:
        return fallback
    return sum((w / total) * m for w, m in weighted)  # type: ignore[return-value]


def _details(srcs: list[HeardSource], f: FrameInputs, s_img: int) -> FrameDetails:
    """The frame's per-group evidence summary, faces and chosen speaker."""
    from avloc.methods.avsemantic.faces import head_box

    feats: dict[str, float] = {"motion": round(f.motion, 5)}
    for h in srcs:
        for k, v in h.detail.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                feats[f"{h.kind}.{k}"] = max(feats.get(f"{h.kind}.{k}", 0.0), round(float(v), 5))
    chosen = None
    if f.speaker is not None:
        chosen = SpeakerChoice(f.speaker[2], head_box(f.faces[f.speaker[0]], (s_img, s_img)), float(f.speaker[1]))
    grounded = any(h.map is not None and h.kind != "none" for h in srcs)
    return FrameDetails(feats, grounded, len(f.faces), chosen)
