"""Drawing DigitScenes samples: split pools, per-(seed, index) randomness, every variant.

Randomness: the image of scene ``j`` uses only
``default_rng([seed, variant, split, 0, j])``; everything else about draw
``i`` (which visible digit speaks, the utterance, its timing, the ambient)
uses ``default_rng([seed, variant, split, 1, i])``. The sounding digit is
chosen uniformly among the visible ones after the image is composed, so the
image alone never says which digit sounds; in ``pool`` mode the same images
are reused with fresh sounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from avloc.data.digitscenes.compose import Scene, make_background, paste_distractors, place_digits
from avloc.data.digitscenes.config import (
    SPLITS,
    VARIANTS,
    MultiConfig,
    OffscreenConfig,
    OpensetConfig,
    VariantConfig,
    VideoConfig,
)
from avloc.data.digitscenes.mixing import ambient_segment, at_level, mix
from avloc.data.sources import EscClip, RawSources, Utterance
from avloc.errors import ConfigError, DataError

_VARIANT_IDS = {name: i for i, name in enumerate(VARIANTS)}
_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}
OFFSCREEN_MODES = ("onscreen", "absent", "ambient", "silence")
#: video clips: draws of the utterances tried before a clip is declared impossible (``VideoConfig.n_utterances``)
FIT_TRIES = 100


class SplitPools:
    """The raw sources one split may use (disjoint across splits, see :class:`SplitConfig`)."""

    def __init__(self, raw: RawSources, split: str, cfg: VariantConfig) -> None:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        sc = cfg.splits
        self.split = split
        # FSDD: utterances of this split's speakers, per digit
        speakers = set(sc.speakers[split])
        utts = [u for u in raw.fsdd if u.speaker in speakers]
        self.utterances: list[list[Utterance]] = [[u for u in utts if u.digit == d] for d in range(10)]
        missing = [d for d in range(10) if not self.utterances[d]]
        if missing:
            raise DataError(f"FSDD in {raw.root} has no {split} utterances (speakers {sorted(speakers)}) of digits {missing}")
        # MNIST: a fixed permutation cut into train / val / test
        images, labels = raw.mnist
        perm = np.random.default_rng(sc.mnist_seed).permutation(images.shape[0])
        n_tr, n_va, n_te = sc.mnist_counts
        if n_tr + n_va + n_te > images.shape[0]:
            raise DataError(f"MNIST has {images.shape[0]} images, fewer than the split counts {sc.mnist_counts}")
        cut = {"train": perm[:n_tr], "val": perm[n_tr : n_tr + n_va], "test": perm[n_tr + n_va : n_tr + n_va + n_te]}
        self.mnist_images = images
        self.mnist_indices = np.sort(cut[split])
        self.mnist_by_class = [self.mnist_indices[labels[self.mnist_indices] == d] for d in range(10)]
        # ESC-10: this split's folds
        folds = set(sc.esc_folds[split])
        self.esc: list[EscClip] = [c for c in raw.esc10 if c.fold in folds]
        if not self.esc:
            raise DataError(f"ESC-10 in {raw.root} has no clips in folds {sorted(folds)} ({split})")
        # CIFAR-10: train photos for train; test photos alternately to val (even) and test (odd)
        cif = raw.cifar
        if split == "train":
            self.cifar_part, self.cifar_ids = "train", np.arange(cif.train_images.shape[0])
            self.cifar = cif.train_images
        else:
            ids = np.arange(cif.test_images.shape[0])
            self.cifar_part, self.cifar_ids = "test", ids[(ids % 2) == (0 if split == "val" else 1)]
            self.cifar = cif.test_images[self.cifar_ids]


@dataclass
class Sample:
    """One still sample (image + sound clip + annotations), before tensor conversion."""

    index: int
    scene_index: int
    image: np.ndarray  # (H, W, 3) uint8
    audio: np.ndarray  # (N,) float32
    sample_rate: int
    boxes: list[list[int]]  # sounding, pixel [x1, y1, x2, y2]
    box_labels: list[int]
    silent_boxes: list[list[int]]
    silent_labels: list[int]
    labels: list[int]  # spoken digit classes (also when not visible)
    onscreen: bool
    audible: bool
    speakers: list[str]
    meta: dict[str, Any] = field(default_factory=dict)  # sources, snr, mode, speech spans, heard
    scene: Scene | None = None


@dataclass
class Clip:
    """One video clip: a scene whose digits move, its sound track and utterance schedule."""

    index: int
    scene: Scene
    velocity: np.ndarray  # (n, 2) px/s per digit
    fps: int
    n_frames: int
    audio: np.ndarray  # (N,) float32, the whole clip
    sample_rate: int
    utterances: list[dict[str, Any]]  # digit (index in scene), label, start, end, uid, speaker
    speakers: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def shifts(self, t: float) -> np.ndarray:
        return np.rint(self.velocity * t).astype(np.int64)  # (n, 2)

    def frame(self, j: int) -> np.ndarray:
        """Video frame ``j`` as (H, W, 3) uint8."""
        return self.scene.render(self.shifts(j / self.fps))

    def annotation(self, j: int) -> dict[str, Any]:
        """AVSOL-E style annotation of frame ``j``: sounding / visible-silent boxes, out-of-view flag."""
        t = j / self.fps
        boxes = self.scene.boxes(self.shifts(t))
        speaking = sorted({u["digit"] for u in self.utterances if u["start"] <= t < u["end"]})
        digits = self.scene.digits
        sounding = [k for k in speaking if boxes[k] is not None]
        silent = [k for k in range(len(digits)) if k not in speaking and boxes[k] is not None]
        return {
            "time": round(t, 6),
            "boxes": [boxes[k] for k in sounding],
            "box_labels": [digits[k].label for k in sounding],
            "silent_boxes": [boxes[k] for k in silent],
            "silent_labels": [digits[k].label for k in silent],
            "labels": [digits[k].label for k in speaking],
            "onscreen": bool(sounding),
            "audible": bool(speaking) or bool(self.meta.get("ambient")),
            "out_of_view": len(sounding) < len(speaking),
        }


class DigitScenesSampler:
    """Deterministic DigitScenes draws for one (variant, split, seed)."""

    def __init__(self, raw: RawSources, variant: str, split: str, cfg: VariantConfig, seed: int = 0) -> None:
        if variant not in VARIANTS:
            raise ConfigError(f"unknown DigitScenes variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if not isinstance(cfg, VARIANTS[variant]):
            raise ConfigError(f"variant {variant!r} needs a {VARIANTS[variant].__name__}, got {type(cfg).__name__}")
        self.raw, self.variant, self.split, self.cfg, self.seed = raw, variant, split, cfg, int(seed)
        self.pools = SplitPools(raw, split, cfg)
        self.visible_classes = list(range(10))
        if isinstance(cfg, OpensetConfig) and split == "train":
            self.visible_classes = [c for c in range(10) if c not in set(cfg.unheard)]

    # -- randomness
    def _rng(self, stream: int, i: int, *more: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _VARIANT_IDS[self.variant], _SPLIT_IDS[self.split], stream, int(i), *map(int, more)])

    # -- image
    def scene(self, scene_index: int) -> Scene:
        """The composed image of scene ``scene_index`` (depends only on seed, variant, split, index)."""
        rng = self._rng(0, scene_index)
        sc, p = self.cfg.scene, self.pools
        bg_i = int(rng.integers(p.cifar.shape[0]))
        canvas = make_background(p.cifar[bg_i], sc.size, rng, sc)
        n_dis = int(rng.integers(sc.distractors[0], sc.distractors[1] + 1))
        dis_i = rng.integers(p.cifar.shape[0], size=n_dis)
        paste_distractors(canvas, p.cifar[dis_i], rng, sc)
        lo, hi = self.cfg.n_visible
        n = int(rng.integers(lo, min(hi, len(self.visible_classes)) + 1))
        labels = [int(c) for c in rng.choice(self.visible_classes, n, replace=False)]
        mnist = [int(p.mnist_by_class[c][rng.integers(p.mnist_by_class[c].size)]) for c in labels]
        smax = sc.digit_scale_max[min(n, len(sc.digit_scale_max)) - 1]
        scales = rng.uniform(sc.digit_scale_min, smax, n)
        digits = place_digits(canvas, [p.mnist_images[m] for m in mnist], labels, mnist, scales, rng, sc)
        cif = [f"{p.cifar_part}:{int(p.cifar_ids[i])}" for i in [bg_i, *dis_i.tolist()]]
        return Scene(canvas, digits, sc.ink_threshold, {"cifar": cif, "mnist": [d.mnist_index for d in digits]})

    # -- audio helpers
    def _utterance(self, digit: int, rng: np.random.Generator) -> tuple[Utterance, np.ndarray]:
        pool = self.pools.utterances[digit]
        u = pool[int(rng.integers(len(pool)))]
        wav = self.raw.audio(u.path, self.cfg.audio.sample_rate)
        return u, at_level(wav, float(rng.uniform(*self.cfg.audio.speech_rms_db)))

    def _ambient(self, n: int, rng: np.random.Generator) -> tuple[EscClip, np.ndarray]:
        clip = self.pools.esc[int(rng.integers(len(self.pools.esc)))]
        wav = self.raw.audio(clip.path, self.cfg.audio.sample_rate)
        return clip, ambient_segment(wav, n, rng)

    def _sound(
        self, spoken: list[int], rng: np.random.Generator, ambient: bool, n: int, gains_db: list[float] | None = None
    ) -> tuple[np.ndarray, dict[str, Any], list[str]]:
        """Mix the utterances of ``spoken`` classes at random offsets (+ ambient) into ``n`` samples."""
        a = self.cfg.audio
        speech, spans, uids, speakers = [], [], [], []
        for k, c in enumerate(spoken):
            u, wav = self._utterance(c, rng)
            wav = wav[:n]
            if gains_db:
                wav = wav * np.float32(10 ** (gains_db[k] / 20))
            start = int(rng.integers(0, n - wav.size + 1))
            speech.append((wav, start))
            spans.append([round(start / a.sample_rate, 6), round((start + wav.size) / a.sample_rate, 6)])
            uids.append(u.uid)
            speakers.append(u.speaker)
        meta: dict[str, Any] = {"fsdd": uids, "speech_spans": spans, "esc10": None, "snr_db": None}
        amb = None
        if ambient:
            clip, amb = self._ambient(n, rng)
            meta["esc10"], meta["ambient_category"] = clip.uid, clip.category
            if speech:
                meta["snr_db"] = round(float(rng.uniform(*self.cfg.snr_db)), 3)
        level = float(rng.uniform(*a.ambient_only_rms_db)) if ambient and not speech else None
        audio = mix(n, speech, amb, meta["snr_db"], level, a.peak)
        return audio, meta, speakers

    # -- stills
    def sample(self, index: int, scene_index: int | None = None) -> Sample:
        """Draw ``index`` of a still variant on scene ``scene_index`` (default: ``index``)."""
        if isinstance(self.cfg, VideoConfig):
            raise ConfigError("the video variant draws clips: use clip(index)")
        j = index if scene_index is None else scene_index
        scene = self.scene(j)
        rng = self._rng(1, index)
        cfg, a = self.cfg, self.cfg.audio
        n = round(a.clip_seconds * a.sample_rate)
        digits = scene.digits
        boxes = scene.boxes()
        mode = "onscreen"
        if isinstance(cfg, OffscreenConfig):
            w = np.array(cfg.weights(), dtype=np.float64)
            mode = OFFSCREEN_MODES[int(rng.choice(len(w), p=w / w.sum()))]
        n_sound = cfg.n_sounding if isinstance(cfg, MultiConfig) else 1
        sounding: list[int] = []
        spoken: list[int] = []
        if mode == "onscreen":
            sounding = sorted(int(k) for k in rng.choice(len(digits), n_sound, replace=False))
            spoken = [digits[k].label for k in sounding]
        elif mode == "absent":
            hidden = [c for c in range(10) if c not in {d.label for d in digits}]
            spoken = [int(hidden[int(rng.integers(len(hidden)))])]
        ambient = mode == "ambient" or (mode in ("onscreen", "absent") and rng.random() < cfg.ambient_prob)
        gains = None
        if isinstance(cfg, MultiConfig):
            gains = rng.uniform(-cfg.relative_gain_db / 2, cfg.relative_gain_db / 2, len(spoken)).tolist()
        meta: dict[str, Any]
        speakers: list[str]
        if mode == "silence":
            audio, speakers = np.zeros(n, np.float32), []
            meta = {"fsdd": [], "speech_spans": [], "esc10": None, "snr_db": None}
        else:
            audio, meta, speakers = self._sound(spoken, rng, ambient, n, gains)
        meta.update(scene.sources)
        meta["mode"] = mode
        if isinstance(cfg, OpensetConfig):
            meta["heard"] = all(c not in set(cfg.unheard) for c in spoken)
        silent = [k for k in range(len(digits)) if k not in sounding]
        return Sample(
            index=index,
            scene_index=j,
            image=scene.render(),
            audio=audio,
            sample_rate=a.sample_rate,
            boxes=[b for k in sounding if (b := boxes[k]) is not None],
            box_labels=[digits[k].label for k in sounding],
            silent_boxes=[b for k in silent if (b := boxes[k]) is not None],
            silent_labels=[digits[k].label for k in silent],
            labels=spoken,
            onscreen=bool(sounding),
            audible=mode != "silence",
            speakers=speakers,
            meta=meta,
            scene=scene,
        )

    # -- video
    def clip(self, index: int, audio_draw: int = 0) -> Clip:
        """Draw video clip ``index``: moving digits, utterances at random times, optional ambient.

        ``audio_draw`` k > 0 keeps the clip's pictures (scene and motion) and draws a new
        sound track (who speaks, when, which utterance, ambient) from its own random
        stream; k = 0 is the clip as always drawn.
        """
        cfg = self.cfg
        if not isinstance(cfg, VideoConfig):
            raise ConfigError(f"clip() is for the video variant, not {self.variant!r}")
        scene = self.scene(index)
        rng = self._rng(1, index)
        a = cfg.audio
        sr = a.sample_rate
        n = round(cfg.seconds * sr)
        side = cfg.scene.size
        nd = len(scene.digits)
        angle = rng.uniform(0, 2 * np.pi, nd)
        speed = rng.uniform(*cfg.speed, nd) * side
        velocity = np.stack([np.cos(angle), np.sin(angle)], axis=1) * speed[:, None]  # (n, 2) px/s
        if audio_draw:
            rng = self._rng(3, index, audio_draw)
        # utterances: who speaks, how long, then random silent gaps between them; a draw that does not fit
        # in the clip is re-drawn from the same stream (a clip whose first draw fits is unchanged)
        for _ in range(FIT_TRIES):
            n_utt = int(rng.integers(cfg.n_utterances[0], cfg.n_utterances[1] + 1))
            who = rng.integers(nd, size=n_utt)
            picked = [self._utterance(scene.digits[int(k)].label, rng) for k in who]
            durs = np.array([w.size / sr for _, w in picked])
            free = cfg.seconds - durs.sum() - cfg.min_gap_seconds * (n_utt - 1)
            if free >= 0:
                break
        else:
            raise ConfigError(
                f"clip {index}: no draw of {cfg.n_utterances[0]}-{cfg.n_utterances[1]} utterances fits in a "
                f"{cfg.seconds} s clip with {cfg.min_gap_seconds} s gaps in {FIT_TRIES} tries; "
                "use longer clips (seconds) or fewer utterances (n_utterances)"
            )
        gaps = np.diff(np.sort(rng.uniform(0, free, n_utt + 1)), prepend=0.0)[: n_utt]  # (n_utt,) >= 0
        starts = np.cumsum(gaps) + np.concatenate([[0.0], np.cumsum(durs[:-1] + cfg.min_gap_seconds)])
        speech, utterances, speakers = [], [], []
        for k, (u, wav), t0 in zip(who.tolist(), picked, starts.tolist()):
            s0 = round(t0 * sr)
            speech.append((wav, s0))
            utterances.append(
                {"digit": k, "label": scene.digits[k].label, "start": round(s0 / sr, 6), "end": round((s0 + wav.size) / sr, 6),
                 "fsdd": u.uid, "speaker": u.speaker}
            )
            speakers.append(u.speaker)
        meta: dict[str, Any] = {"esc10": None, "snr_db": None, "ambient": False}
        amb = None
        if rng.random() < cfg.ambient_prob:
            clip, amb = self._ambient(n, rng)
            meta.update(esc10=clip.uid, ambient_category=clip.category, ambient=True,
                        snr_db=round(float(rng.uniform(*cfg.snr_db)), 3))
        audio = mix(n, speech, amb, meta["snr_db"], None, a.peak)
        meta.update(scene.sources)
        if audio_draw:
            meta["audio_draw"] = int(audio_draw)
        return Clip(index, scene, velocity, cfg.fps, cfg.n_frames, audio, sr, utterances, speakers, meta)
