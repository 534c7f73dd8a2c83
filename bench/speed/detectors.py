"""ms per 720p frame of the COCO detectors and the pose model (``avloc.vision``), and what they find on real clips.

Usage::

    python bench/speed/detectors.py --threads 2 [--device cpu|cuda] [--centernet-weights DIR/centernet.safetensors]
                                    [--data ../shared/data] [--clips dog_pomeranian_bark.mp4 ...]

Speed: ``detect`` end to end (fit to the network's square, network, decoding, NMS, mapping back) and the
network alone, on a 1280 x 720 frame (a real frame scaled up when the data is there: the decoding's cost
depends on what is in the picture), batch 1 and 4. Quality: on the annotated frames of the given
``realclips_dev`` clips, every model's detections (class and score) and, over all annotated frames, the
fraction of hand-drawn sounding boxes that some detection overlaps with IoU >= 0.5 (any class; speech
boxes are heads, which no COCO class is, so this is a sanity number, not a benchmark). CenterNet runs
only with ``--centernet-weights`` (avloc does not ship its weights).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avloc.benchmarking import git_commit, rate_table, repo_root, throughput
from avloc.metrics.ops import box_iou
from avloc.vision import create_vision_model, list_vision_models
from avloc.vision.detector import Detector

log = logging.getLogger("speed_detectors")
BATCHES = (1, 4)
#: the frame size the localize pipeline's speed target is stated for (720p)
FRAME_HW = (720, 1280)
DEFAULT_CLIPS = ("dog_pomeranian_bark.mp4", "drums_drummer_kit.mp4", "band_tv_studio.mp4")
#: a detection "finds" a hand-drawn box at this IoU (the usual detection criterion)
HIT_IOU = 0.5
#: calls whose least CPU time is reported
CPU_CALLS = 5


def load_frame(path: Path, t: float) -> torch.Tensor:
    """The frame of ``path`` nearest ``t`` seconds as (3, H, W) float RGB in [0, 1]."""
    from avloc.io.media import iter_frames

    frame = next(iter_frames(path, start=t))
    return torch.from_numpy(np.ascontiguousarray(frame.image)).permute(2, 0, 1).float() / 255


def frame_720p(clips: Path | None) -> torch.Tensor:
    """A real frame scaled to 1280 x 720 if the data is there, else a smooth synthetic picture."""
    if clips is not None:
        img = load_frame(clips / DEFAULT_CLIPS[2], 5.0)
        return F.interpolate(img[None], size=FRAME_HW, mode="bilinear", align_corners=False)[0].clamp(0, 1)
    g = torch.Generator().manual_seed(0)
    return F.interpolate(torch.rand(1, 3, 45, 80, generator=g), size=FRAME_HW, mode="bilinear")[0]


Row = tuple[str, int, tuple[float, float]]


def least_cpu_seconds(fn: Callable[[], None], calls: int = CPU_CALLS) -> float:
    """The least process CPU time (all threads) of ``calls`` calls: less sensitive to other load than wall time."""
    fn()
    times = []
    for _ in range(calls):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def speed_rows(name: str, model: Detector, frame: torch.Tensor, seconds: float, cpu_rows: list[Row]) -> list[Row]:
    """Wall-clock ms/frame rows (least, median) of ``model``; appends its CPU-time rows to ``cpu_rows``."""
    rows = []
    device = next(model.parameters()).device

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for b in BATCHES:
        batch = frame[None].expand(b, -1, -1, -1).to(device)
        inputs = torch.stack([model.preprocess(im)[0] for im in batch])

        def run_detect(batch: torch.Tensor = batch) -> None:
            model.detect(batch)
            sync()

        def run_net(inputs: torch.Tensor = inputs) -> None:
            with torch.inference_mode():
                model(inputs)
            sync()

        for what, fn in (("detect (end to end)", run_detect), ("network only", run_net)):
            best, median = throughput(fn, b, seconds)
            rows.append((f"{name}, {what}", b, (1000 / best, 1000 / median)))
            cpu_rows.append((f"{name}, {what}", b, (1000 * least_cpu_seconds(fn) / b, 0.0)))
    return rows


def quality(models: dict[str, Detector], clips: Path, names: list[str]) -> None:
    """Log each model's detections on the annotated frames of ``names``; the hit rate over all clips."""
    ann = json.loads((clips / "annotations.json").read_text())["clips"]
    hits = {m: 0 for m in models}
    total = 0
    for clip in ann:
        for fr in clip["frames"]:
            img = load_frame(clips / clip["file"], fr["t"])
            h, w = img.shape[1:]
            gt = torch.tensor(fr["boxes"], dtype=torch.float32).reshape(-1, 4) * torch.tensor([w, h, w, h])
            total += len(gt)
            for name, model in models.items():
                det = model.detect(img[None].to(next(model.parameters()).device))[0]
                if len(det) and len(gt):
                    hits[name] += int((box_iou(gt, det.boxes.cpu()) >= HIT_IOU).any(1).sum())
                if clip["file"] in names:
                    found = ", ".join(f"{c} {s:.2f}" for c, s in zip(det.names(), det.scores.tolist()))
                    log.info("%s t=%.2f %s: %s", clip["file"], fr["t"], name, found or "(nothing)")
    for name in models:
        log.info("%s: %d of %d hand-drawn sounding boxes overlapped (IoU >= %.1f) by a detection", name, hits[name],
                 total, HIT_IOU)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=3.0, help="least time per measurement")
    ap.add_argument("--models", nargs="+", default=list_vision_models(), choices=list_vision_models())
    ap.add_argument("--centernet-weights", type=Path, help="centernet.safetensors from tools/convert_human_models.py")
    default_data = Path(os.environ.get("AVLOC_DATA", repo_root().parent / "shared" / "data"))
    ap.add_argument("--data", type=Path, default=default_data, help="shared data folder (realclips_dev inside)")
    ap.add_argument("--clips", nargs="+", default=list(DEFAULT_CLIPS), help="clips whose detections are listed")
    ap.add_argument("--no-quality", action="store_true", help="only time")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    clips = args.data / "realclips_dev"
    clips_or_none = clips if (clips / "annotations.json").is_file() else None
    models: dict[str, Detector] = {}
    for name in args.models:
        if name == "centernet" and args.centernet_weights is None:
            log.info("centernet skipped: pass --centernet-weights (its weights are not shipped)")
            continue
        extra = {"weights": str(args.centernet_weights)} if name == "centernet" else {}
        models[name] = create_vision_model(name, device=args.device, **extra)
    frame = frame_720p(clips_or_none)
    cpu_rows: list[Row] = []
    rows = [r for name, model in models.items() for r in speed_rows(name, model, frame, args.seconds, cpu_rows)]
    log.info("wall clock\n%s", rate_table(rows, "ms/frame").replace("ms/frame, best", "ms/frame, least"))
    cpu_table = rate_table(cpu_rows, "CPU ms/frame").replace("CPU ms/frame, best", "CPU ms/frame (all threads), least")
    log.info("process CPU time\n%s", "\n".join(line.rsplit("|", 2)[0] + "|" for line in cpu_table.splitlines()))
    log.info("threads %d, %s, %s, torch %s, commit %s; frame %s", args.threads, args.device,
             platform.processor() or platform.machine(), torch.__version__, git_commit(),
             "a real frame scaled to 720p" if clips_or_none else "synthetic 720p")  # fmt: skip
    if not args.no_quality:
        if clips_or_none is None:
            log.info("quality skipped: %s not found", clips)
        else:
            quality(models, clips_or_none, args.clips)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
