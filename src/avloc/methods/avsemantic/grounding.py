"""Grounding one heard class in one frame: where it is, on which visible instances, and how visible it is.

Each heard AudioSet class ``c`` is grounded by its kind (:mod:`.mapping`):

* **object**: its visual sets are its own ImageNet and COCO classes and those of every descendant in the
  AudioSet hierarchy (:mod:`.hierarchy`: "Music" grounds on the visible guitar and piano, "Vehicle" on the
  boat). Instances are the detector's boxes of its COCO categories (one box per instance); without a
  detected instance, each *visible* ImageNet subset (the class itself, or each descendant whose own
  counterparts are visible) gives the support of its class activation map (Zhou et al., CVPR 2016) as one
  instance. Evidence: ``visible`` (:func:`visible_mass`) and ``detected`` (best instance score).
* **human**: faces (YuNet). The instance is the chosen speaker's head, else, with one face, that face's
  head, else every face's head; evidence ``face``, ``sync`` (the speaker's audio-mouth synchrony
  confidence) and ``person`` (the detector's best person).
* **none**: no instance; the map is the clip's fallback cue (synchrony x objectness) and the evidence is
  ``motion``, the peak of the local motion-audio synchrony.

Each source's map is built from its instances (a box of its score, or its CAM support), centred so that what
does not stand out is exactly zero. The on-screen model (:mod:`.onscreen`) reads the evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from avloc.methods.base import HeardSource, Instance

#: map-centring floor: a source map whose peak does not exceed its mean by this is empty
MAP_EPS = 1e-6
#: SLICO iterations (the OpenCV default is 10; 3 moves few labels on a 288 px picture at a third of the cost)
SLIC_ITERATIONS = 3


def visible_mass(probs: np.ndarray, indices: Sequence[int]) -> float:
    """How visible a set of ImageNet classes is: its softmax mass above what a uniform guess gives it,
    ``max(0, P(I) - |I| / C) / (1 - |I| / C)`` -- 0 for a picture that says nothing about the set (a flat
    grey frame gives "every vehicle" its chance share), comparable between one class and a union of hundreds."""
    if not len(indices):
        return 0.0
    prior = len(indices) / probs.shape[-1]
    return max(0.0, float(probs[list(indices)].sum()) - prior) / max(1.0 - prior, 1e-6)


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


def box_map(boxes: Sequence[tuple[float, float, float, float]], scores: Sequence[float], out_hw: tuple[int, int],
            side: int) -> torch.Tensor:
    """Instances as a map (h, w): each box (model-input pixels of a ``side`` x ``side`` input) filled with its
    score (the cells whose centres it covers, at least one cell), the maximum where boxes overlap."""
    h, w = out_hw
    out = torch.zeros(out_hw)
    for (x1, y1, x2, y2), s in zip(boxes, scores, strict=True):
        c1, c2 = int(np.floor(x1 / side * w)), max(int(np.ceil(x2 / side * w)), int(np.floor(x1 / side * w)) + 1)
        r1, r2 = int(np.floor(y1 / side * h)), max(int(np.ceil(y2 / side * h)), int(np.floor(y1 / side * h)) + 1)
        c1, r1 = min(max(c1, 0), w - 1), min(max(r1, 0), h - 1)
        out[r1 : max(r2, r1 + 1), c1 : max(c2, c1 + 1)] = torch.clamp_min(
            out[r1 : max(r2, r1 + 1), c1 : max(c2, c1 + 1)], float(s))
    return out


def support_box(m: torch.Tensor, side: int, threshold: float,
                segments: np.ndarray | None = None) -> tuple[float, float, float, float] | None:
    """The box (model-input pixels) of the connected region around a map's peak whose cells reach
    ``threshold`` x the peak (8-connectivity), or ``None`` for an empty map.

    ``segments``: superpixel labels of the picture (``side`` x ``side``, :func:`superpixels`); the support is
    then snapped to them: a segment belongs to the object when the map's mean over it reaches the threshold,
    so the box follows the picture's edges rather than the map's coarse cells.
    """
    import cv2

    a = m.detach().float().cpu().numpy()
    peak = float(a.max())
    if not peak > MAP_EPS:
        return None
    if segments is not None:
        a = cv2.resize(a, (segments.shape[1], segments.shape[0]), interpolation=cv2.INTER_LINEAR)
        n = int(segments.max()) + 1
        mean = np.bincount(segments.ravel(), a.ravel(), n) / np.maximum(np.bincount(segments.ravel(), None, n), 1)
        a = mean[segments]  # each pixel takes its segment's mean
        peak = float(a.max())
    mask = (a >= threshold * peak).astype(np.uint8)
    _n, labels = cv2.connectedComponents(mask, connectivity=8)
    py, px = np.unravel_index(int(np.argmax(a)), a.shape)
    ys, xs = np.nonzero(labels == labels[py, px])
    sy, sx = side / a.shape[0], side / a.shape[1]
    return (float(xs.min() * sx), float(ys.min() * sy), float((xs.max() + 1) * sx), float((ys.max() + 1) * sy))


def superpixels(image: np.ndarray, region: int) -> np.ndarray:
    """SLICO superpixels (Achanta et al., TPAMI 2012) of an RGB uint8 picture (h, w, 3) -> labels (h, w) int32,
    about ``region`` pixels across each."""
    import cv2

    lab = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB)
    slic = cv2.ximgproc.createSuperpixelSLIC(lab, cv2.ximgproc.SLICO, region)
    slic.iterate(SLIC_ITERATIONS)
    return np.asarray(slic.getLabels(), np.int32)


@dataclass
class FrameInputs:
    """What grounding reads of one kept frame (model-input geometry, a ``side`` x ``side`` letterbox)."""

    probs: np.ndarray  # (1000,) ImageNet softmax
    cam: Any  # callable(indices) -> (h, w) CAM in [0, 1]
    detections: list[tuple[tuple[float, float, float, float], float, int]]  # (box, score, COCO label)
    faces: np.ndarray  # (K, 15) YuNet rows
    speaker: tuple[int, float, int] | None  # (face index, synchrony confidence, track) of the chosen speaker
    fallback: torch.Tensor  # (h, w) the clip's fallback cue, centred
    motion: float  # peak motion-audio synchrony in [0, 1]
    out_hw: tuple[int, int]
    side: int
    coco_names: Sequence[str] = field(default=())
    segments: Any = None  # callable() -> (side, side) superpixel labels, computed once when first asked
    pose_heads: Any = None  # callable() -> [(head box, score)] of the people BlazePose finds (faces missing)
    person_mask: Any = None  # callable() -> (side, side) person probability (selfie segmentation)


@dataclass(frozen=True)
class GroundingConfig:
    """The knobs of grounding (set from :class:`avloc.methods.avsemantic.method.AVSemanticConfig`)."""

    min_visible: float
    support: float
    min_detection: float
    max_instances: int
    box_support: float


def ground_object(f: FrameInputs, g: GroundingConfig, label: str, score: float, imagenet: Sequence[int],
                  parts: Sequence[tuple[str, Sequence[int]]], coco: Sequence[int]) -> HeardSource:
    """An object class (module doc). ``imagenet``: the union of its and its descendants' ImageNet classes;
    ``parts``: (name, ImageNet classes) of itself and each descendant, the candidates of CAM instances;
    ``coco``: the union of its and its descendants' COCO labels."""
    visible = visible_mass(f.probs, imagenet)
    dets = sorted(((b, s, c) for b, s, c in f.detections if c in set(coco) and s >= g.min_detection),
                  key=lambda d: -d[1])[: g.max_instances]
    detected = max((s for _b, s, _c in dets), default=0.0)
    evidence = {"visible": round(visible, 4), "detected": round(detected, 4)}
    if dets:
        inst = [Instance(b, s, f"coco:{f.coco_names[c]}" if f.coco_names else f"coco:{c}") for b, s, c in dets]
        m = box_map([i.box for i in inst], [i.score for i in inst], f.out_hw, f.side)
        return HeardSource(label, score, "object", inst[0].name, m, evidence, inst)
    if visible < g.min_visible:
        return HeardSource(label, score, "object", "not visible", None, evidence)
    seen = sorted(((visible_mass(f.probs, idx), name, idx) for name, idx in parts if idx), key=lambda t: -t[0])
    seen = [t for t in seen if t[0] >= g.min_visible][: g.max_instances] or [(visible, label, imagenet)]
    maps, inst = [], []
    for v, _name, idx in seen:
        m = centre_map(f.cam(idx), g.support)
        box = support_box(m, f.side, g.box_support, None if f.segments is None else f.segments())
        if box is not None:
            top = int(np.asarray(idx)[np.argmax(f.probs[list(idx)])])
            inst.append(Instance(box, min(1.0, v), f"imagenet:{top}"))
            maps.append(m * min(1.0, v))
    if not maps:
        return HeardSource(label, score, "object", "not visible", None, evidence)
    m = torch.stack(maps).amax(0)
    return HeardSource(label, score, "object", inst[0].name, m / m.max().clamp_min(MAP_EPS), evidence, inst)


def ground_human(f: FrameInputs, g: GroundingConfig, label: str, score: float, region: str | None,
                 person_map: Any, head_box: Any, person_label: int | None) -> HeardSource:
    """A human sound (module doc). ``region``: ``"face"`` (vocal: the head) or ``"body"`` (hands, feet: the
    person). ``person_map(rows, weights)`` -> (h, w) and ``head_box(row)`` -> box are the face geometry
    (:mod:`.faces`); ``person_label``: the detector's label of a person (``None``: no detector)."""
    rows = f.faces
    persons = sorted(((b, s) for b, s, c in f.detections if c == person_label and s >= g.min_detection),
                     key=lambda d: -d[1])[: g.max_instances]
    face = float(rows[:, 14].max()) if len(rows) else 0.0
    sync = float(f.speaker[1]) if f.speaker is not None else 0.0
    evidence = {"face": round(face, 4), "sync": round(sync, 4), "person": round(max((s for _, s in persons), default=0.0), 4)}
    if region == "body" and persons:
        return _ground_people(f, label, score, persons, evidence)
    if not len(rows):
        heads = f.pose_heads() if f.pose_heads is not None else []
        if not heads:
            return HeardSource(label, score, "human", "no face", None, evidence)
        inst = [Instance(b, s, "pose head") for b, s in heads[: g.max_instances]]
        m = box_map([i.box for i in inst], [i.score for i in inst], f.out_hw, f.side)
        return HeardSource(label, score, "human", "pose head", m, evidence, inst)
    if f.speaker is not None:
        who = [f.speaker[0]]
        grounding = f"face {f.speaker[2]}"
    else:
        who = list(range(len(rows))) if len(rows) > 1 else [0]
        grounding = "all faces" if len(rows) > 1 else "face"
    weights = np.zeros(len(rows))
    weights[who] = rows[who, 14]
    m = centre_map(torch.as_tensor(np.asarray(person_map(rows, weights), np.float32)), g.support)
    inst = [Instance(head_box(rows[i]), float(rows[i, 14]), grounding if len(who) == 1 else f"face {i}") for i in who]
    return HeardSource(label, score, "human", grounding, m, evidence, inst)


def _ground_people(f: FrameInputs, label: str, score: float, persons: list[tuple[Any, float]],
                   evidence: dict[str, float]) -> HeardSource:
    """A body sound (clapping, footsteps) on the detected people, each box tightened to the person's mask."""
    from avloc.vision.segmentation import person_extent

    mask = f.person_mask() if f.person_mask is not None else None
    inst = []
    for b, s in persons:
        tight = person_extent(mask, b) if mask is not None else None
        inst.append(Instance(tuple(float(v) for v in (tight.tolist() if tight is not None else b)), s, "person"))  # type: ignore[arg-type]
    m = box_map([i.box for i in inst], [i.score for i in inst], f.out_hw, f.side)
    return HeardSource(label, score, "human", "person", m, evidence, inst)


def ground_none(f: FrameInputs, label: str, score: float) -> HeardSource:
    """A sound with no visual counterpart (module doc): the fallback cue as its map, motion as its evidence."""
    has_map = float(f.fallback.max()) > MAP_EPS
    return HeardSource(label, score, "none", "no visual counterpart", f.fallback if has_map else None,
                       {"motion": round(f.motion, 4)})
