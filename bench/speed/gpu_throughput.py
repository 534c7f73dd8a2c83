"""GPU training throughput of LVS, EZ-VSL, FNAC, SLAVC and SSL-Alignment (ResNet-18 at 224, paper batch) with AMP
off/fp16/bf16, and localize speed.

Usage: python bench/speed/gpu_throughput.py [--device cuda] [--steps 10] [--batch-size 128] [--amp off,fp16,bf16]
       [--image-size 224] [--audio-seconds 3] [--clip-seconds 10] [--tests "PYTEST SUMMARY LINE"]

Synthetic inputs (uniform images, Gaussian waveforms); the step loop is built
from public library calls only -- ``create_method`` from a config, the method's
criterion, Adam, ``torch.autocast``, ``GradScaler`` and the method's
``after_optimizer_step`` (SLAVC's momentum update) -- not the training
engine. Each method trains as its paper recipe does: FNAC with its three
false-negative-aware terms, SLAVC with two heads, 0.9 visual dropout and
momentum encoders, SSL-Alignment with two augmented views per image (no
semantic views: they need a mined data set). Throughput = samples / s over ``--steps`` timed steps after
``--warmup`` steps (CUDA synchronised). Localize speed: ``avloc localize`` on a
generated clip with a ResNet-18 EZ-VSL checkpoint at 224 (the imported-checkpoint
architecture), as clip seconds per wall second. Prints one markdown table.
``bench/gpu_check.sh`` runs this after the CUDA tests; ``--device cpu --steps 2``
checks the logic without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.augment import AugmentConfig
from avloc.frontends.image import ImageConfig
from avloc.methods import create_method
from avloc.methods.base import MethodConfig
from avloc.methods.lvs import LVSConfig
from avloc.registry import METHODS

log = logging.getLogger("gpu_throughput")

#: the papers' set-up: batch 128 (LVS Sec. 4.2; EZ-VSL Sec. 4.1), Adam 1e-4, 16 kHz, 3 s
PAPER_BATCH, PAPER_LR, SAMPLE_RATE = 128, 1e-4, 16000
AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}
#: the methods timed by default: LVS and the EZ-VSL family (each built from its own config class)
DEFAULT_METHODS = "lvs,ezvsl,fnac,slavc,sslalign"
#: EZ-VSL, SLAVC and FNAC train on a 224 crop of the image resized to 1.1 x 224, flipped half the time
EZVSL_AUGMENT = AugmentConfig(crop_scale=(1 / 1.1**2, 1 / 1.1**2), hflip=0.5)


def paper_config(method: str, image_size: int, audio_seconds: float) -> MethodConfig:
    """LVS or an EZ-VSL-family method (its own config class, paper defaults) with ResNet-18 image (trained,
    ImageNet-normalised) and audio (from scratch) encoders, c = 512."""
    audio = AudioFrontendConfig(sample_rate=SAMPLE_RATE, window_seconds=audio_seconds, kind="lvs")
    image = ImageConfig(size=image_size, resize=image_size)
    if method == "lvs":
        return LVSConfig(audio=audio, image=image, visual_encoder="resnet18", visual_encoder_kwargs={"out_stride": 16},
                         freeze_visual=False, audio_encoder="resnet18_audio", audio_encoder_kwargs={},
                         embed_dim=512, visual_proj="none")
    cls = METHODS.get(method).config_class
    extra = {} if method == "sslalign" else {"augment": EZVSL_AUGMENT}  # SSL-Alignment: its own view augmentation
    return cls(audio=audio, image=image, visual_encoder="resnet18", visual_encoder_kwargs={}, freeze_visual=False,
               audio_encoder="resnet18_audio", audio_encoder_kwargs={}, embed_dim=512, **extra)


@dataclass
class Row:
    what: str
    batch: int
    amp: str
    value: float
    unit: str


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[object]:
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def train_throughput(method: str, amp: str, args: argparse.Namespace, device: torch.device) -> float:
    """Samples / s of the optimiser step loop of ``method`` under ``amp``."""
    torch.manual_seed(0)
    model = create_method(method, paper_config(method, args.image_size, args.audio_seconds)).to(device).train()
    crit = model.build_criterion()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=PAPER_LR)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    b, n = args.batch_size, round(args.audio_seconds * SAMPLE_RATE)
    batch = {"image": torch.rand(b, 3, args.image_size, args.image_size, device=device),
             "audio": 0.1 * torch.randn(b, n, device=device)}
    done = 0

    def step() -> None:
        nonlocal done
        with _autocast(device, amp):
            loss = crit(model(batch), batch)["loss"]
        if not torch.isfinite(loss):
            raise RuntimeError(f"{method} amp={amp}: non-finite loss {float(loss)}")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        done += 1
        with torch.no_grad():
            model.after_optimizer_step(done)  # SLAVC: momentum encoders

    for _ in range(args.warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    return b * args.steps / (time.perf_counter() - t0)


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="avloc-gpu-check-") as d:
        yield Path(d)


def localize_speed(args: argparse.Namespace, device: torch.device) -> float:
    """Clip seconds per wall second of ``avloc localize`` (ResNet-18 EZ-VSL at 224) on a generated clip."""
    from avloc.cli.main import main as avloc_main
    from avloc.data.synthetic import DemoClipConfig, write_demo_clip
    from avloc.methods.zoo import save_model

    with _workdir() as d:
        clip = d / "clip.mp4"
        write_demo_clip(clip, DemoClipConfig(seconds=args.clip_seconds, fps=25, width=640, height=360))
        model = create_method("ezvsl", paper_config("ezvsl", args.image_size, args.audio_seconds))
        save_model(model.eval(), d / "ezvsl-resnet18.safetensors")
        argv = ["localize", str(clip), "--model", str(d / "ezvsl-resnet18.safetensors"), "--out", str(d / "out"),
                "--device", device.type, "--no-overlay", "--quiet", "--fps", str(args.localize_fps)]
        t0 = time.perf_counter()
        rc = avloc_main(argv)
        wall = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"avloc localize exited with {rc}")
    return args.clip_seconds / wall


def table(rows: list[Row], tests: str | None, device: str) -> str:
    lines = [f"GPU check on {device}" + (f" -- CUDA tests: {tests}" if tests else ""), "",
             "| what | batch | AMP | value | unit |", "|---|---:|---|---:|---|"]
    lines += [f"| {r.what} | {r.batch} | {r.amp} | {r.value:,.1f} | {r.unit} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--methods", default=DEFAULT_METHODS)
    ap.add_argument("--amp", default="off,fp16,bf16", help="comma-separated subset of off, fp16, bf16")
    ap.add_argument("--batch-size", type=int, default=PAPER_BATCH)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--audio-seconds", type=float, default=3.0)
    ap.add_argument("--clip-seconds", type=float, default=10.0, help="generated clip for the localize timing (0: skip)")
    ap.add_argument("--localize-fps", type=float, default=5.0)
    ap.add_argument("--tests", default=None, help="the CUDA tests' pytest summary line, shown above the table")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available: run on a GPU, or pass --device cpu to check the logic")
    amps = [a.strip() for a in args.amp.split(",") if a.strip()]
    unknown = sorted(set(amps) - set(AMP_DTYPES))
    if unknown:
        raise SystemExit(f"unknown --amp {unknown}; valid: {', '.join(AMP_DTYPES)}")
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        for amp in amps:
            sps = train_throughput(method, amp, args, device)
            log.info("%s amp=%s: %.1f samples/s", method, amp, sps)
            rows.append(Row(f"train {method} (ResNet-18, {args.image_size}px)", args.batch_size, amp, sps, "samples/s"))
    if args.clip_seconds > 0:
        rows.append(Row(f"avloc localize, {args.localize_fps:g} fps analysed", 1, "off", localize_speed(args, device),
                        "x real time"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    text = table(rows, args.tests, name)
    print(text)
    return text


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
