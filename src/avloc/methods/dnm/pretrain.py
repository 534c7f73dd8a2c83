"""A pretrained audio backbone for DNM on DigitScenes (the paper's frozen VGGish stand-in, Nishikawa et al. Sec. 5.1).

:func:`pretrain_audio_backbone` trains the DNM audio encoder to name the spoken FSDD digit
of the DigitScenes *train* speakers under ESC-10 ambient sound; DNMConfig
``audio_pretrain_steps`` runs it inside training, ``audio_init_from`` loads a saved result
(:func:`avloc.methods.dnm.method.load_audio_backbone`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from avloc.encoders import AudioEncoder, create_encoder
from avloc.errors import ConfigError, DataError
from avloc.frontends.audio import AudioFrontend

if TYPE_CHECKING:
    from avloc.methods.dnm.method import DNMConfig


def pretrain_audio_backbone(
    raw: Any, cfg: DNMConfig, steps: int = 300, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
    log: Any = None,
) -> tuple[dict[str, torch.Tensor], float]:
    """Train ``cfg.audio_encoder`` on FSDD digit classification; return its state dict and the last accuracy.

    The paper freezes an audio backbone pretrained on labelled audio (VGGish, AudioSet;
    Sec. 5.1). No such weights exist here, so the stand-in is the same small CNN trained,
    before DNM, to name the spoken digit of a ``window_seconds`` log-mel window: FSDD
    utterances of the DigitScenes *train* speakers only, placed at a random offset, at a
    random speech level, under ESC-10 ambient sound of the train folds (probability 0.5,
    SNR 0-15 dB) as in the ``video`` mixes; a time-averaged linear head, Adam, cross-entropy.
    ``raw``: a :class:`avloc.data.sources.RawSources` or its directory.
    """
    import numpy as np

    from avloc.data.digitscenes.config import SplitConfig
    from avloc.data.sources import RawSources

    src = raw if isinstance(raw, RawSources) else RawSources(raw)
    split = SplitConfig()
    utts = [u for u in src.fsdd if u.speaker in split.speakers["train"]]
    ambients = [c for c in src.esc10 if c.fold in split.esc_folds["train"]]
    if not utts:
        raise DataError("no FSDD utterances of the train speakers: cannot pretrain the audio backbone")
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):  # seeded by ``seed`` alone; the caller's torch RNG is left as it was
        torch.manual_seed(seed)
        return _pretrain_loop(src, cfg, utts, ambients, rng, steps, batch_size, lr, log)


def _pretrain_loop(
    src: Any, cfg: DNMConfig, utts: list[Any], ambients: list[Any], rng: Any, steps: int, batch_size: int, lr: float,
    log: Any,
) -> tuple[dict[str, torch.Tensor], float]:
    """The body of :func:`pretrain_audio_backbone` (torch RNG already seeded)."""
    import numpy as np

    from avloc.data.digitscenes.mixing import ambient_segment, at_level, mix

    sr, n = cfg.audio.sample_rate, cfg.audio.num_samples
    enc = create_encoder(cfg.audio_encoder, **cfg.audio_encoder_kwargs)
    if not isinstance(enc, AudioEncoder):
        raise ConfigError(f"audio_encoder {cfg.audio_encoder!r} is not an audio encoder")
    frontend = AudioFrontend(cfg.audio)
    head = nn.Linear(enc.out_channels, 10)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=lr)

    def example() -> tuple[np.ndarray, int]:
        u = utts[int(rng.integers(len(utts)))]
        wav = at_level(src.audio(u.path, sr), float(rng.uniform(-26.0, -18.0)))
        if wav.size > n:  # a long utterance: a random n-sample crop
            o = int(rng.integers(wav.size - n + 1))
            wav, start = wav[o : o + n], 0
        else:
            start = int(rng.integers(n - wav.size + 1))
        amb = None
        if ambients and rng.random() < 0.5:
            c = ambients[int(rng.integers(len(ambients)))]
            amb = ambient_segment(src.audio(c.path, sr), n, rng)
        return mix(n, [(wav, start)], amb, float(rng.uniform(0.0, 15.0)), None, 0.99), u.digit

    enc.train()
    acc = 0.0
    for step in range(1, steps + 1):
        xs, ys = zip(*(example() for _ in range(batch_size)))
        x = torch.from_numpy(np.stack(xs))
        y = torch.tensor(ys)
        logits = head(enc.forward_time(frontend(x)).mean(dim=-1))  # (B, 10)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc = float((logits.argmax(1) == y).float().mean())
        if log is not None and (step % 25 == 0 or step == steps):
            log(f"audio pretraining step {step}/{steps}: loss {float(loss.detach()):.3f} accuracy {acc:.3f}")
    enc.eval()
    return {k: v.detach().clone() for k, v in enc.state_dict().items()}, acc
