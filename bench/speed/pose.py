"""Milliseconds per 720p frame of the MediaPipe ports (``avloc.vision``): segmenter, pose detector, landmarks.

Usage::

    python bench/speed/pose.py --threads 2 [--device cpu|cuda] [--video CLIP --at SECONDS] [--wheel mediapipe.whl]

The frame is ``--video`` at ``--at`` s (default: ``realclips_dev/speech_tedx_talk.mp4`` of ``$AVLOC_DATA``,
one person) resized to 1280 x 720, else a generated image. Rows: each stage as the pipeline runs it
(pre-processing included: the warp from 720p, the resize of the mask back to 720p), and the whole
:class:`~avloc.vision.pose.PoseEstimator` with and without the person masks. With ``--wheel``, the TFLite
interpreter (ai-edge-litert, XNNPACK) on each network alone, for reference.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from avloc.benchmarking import git_commit, throughput
from avloc.vision.pose import PoseConfig, load_pose
from avloc.vision.segmentation import VARIANTS, SegmenterConfig, load_segmenter

log = logging.getLogger("speed_pose")
#: 720p
FRAME_WH = (1280, 720)
DEFAULT_CLIP, DEFAULT_AT = "realclips_dev/speech_tedx_talk.mp4", 3.92
#: the originals of the ports in the mediapipe wheel (tools/convert_mediapipe.py)
WHEEL_PATHS = (
    "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
    "mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite",
    "mediapipe/modules/pose_detection/pose_detection.tflite",
    "mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
)


def frame(video: Path | None, at: float) -> tuple[torch.Tensor, str]:
    """A (3, 720, 1280) float RGB frame and where it came from."""
    from avloc.io.media import iter_frames

    if video is None and os.environ.get("AVLOC_DATA"):
        video = Path(os.environ["AVLOC_DATA"]) / DEFAULT_CLIP
    if video is not None and video.is_file():
        fr = next(iter(iter_frames(video, fps=5.0, size=FRAME_WH, start=max(0.0, at - 0.1), end=at + 0.1)))
        return torch.from_numpy(fr.image).permute(2, 0, 1).float() / 255.0, f"{video.name} at {at} s"
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, FRAME_WH[1], FRAME_WH[0], generator=g), "generated noise (no person)"


def ms_table(rows: list[tuple[str, tuple[float, float]]]) -> str:
    lines = ["| what | ms per frame, best | ms, median |", "|---|---:|---:|"]
    lines += [f"| {what} | {1000 / best:,.1f} | {1000 / med:,.1f} |" for what, (best, med) in rows]
    return "\n".join(lines)


def torch_rows(img: torch.Tensor, device: str, seconds: float) -> list[tuple[str, tuple[float, float]]]:
    """Each stage of the torch ports on one frame."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    x = img.to(device)
    rows = []

    def timed(what: str, fn: Callable[[], object]) -> None:
        def run() -> None:
            with torch.inference_mode():
                fn()
            sync()

        rows.append((what, throughput(run, 1, seconds)))

    for variant in VARIANTS:
        seg = load_segmenter(device, SegmenterConfig(variant=variant))
        timed(f"selfie segmentation {variant} (to a 720p mask)", lambda seg=seg: seg.segment(x[None]))
    pose = load_pose(device)
    timed("pose detector (letterbox, network, decode, NMS)", lambda: pose.detect([x]))
    rois = pose.rois([x], pose.detect([x]))
    if len(rois[0]):
        crop = pose.landmark_input([x], [rois[0][:1]])
        timed("pose landmarks, one person (network only)", lambda: pose.landmarker(crop))
    timed("PoseEstimator, masks", lambda: pose([x]))
    no_masks = load_pose(device, PoseConfig(masks=False))
    timed("PoseEstimator, no masks", lambda: no_masks([x]))
    return rows


def tflite_rows(wheel: Path, threads: int, seconds: float) -> list[tuple[str, tuple[float, float]]]:
    """The TFLite interpreter on each network's input (random values: the speed does not depend on them)."""
    from ai_edge_litert.interpreter import Interpreter

    rows = []
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(wheel) as z:
        for path in WHEEL_PATHS:
            it = Interpreter(model_content=z.read(path), num_threads=threads)
            it.allocate_tensors()
            d = it.get_input_details()[0]
            x = rng.random(d["shape"]).astype(np.float32)

            def run(it: Interpreter = it, idx: int = d["index"], x: np.ndarray = x) -> None:
                it.set_tensor(idx, x)
                it.invoke()

            rows.append((f"TFLite {Path(path).stem} (network only)", throughput(run, 1, seconds)))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch (and TFLite) CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=3.0, help="least time per measurement")
    ap.add_argument("--video", type=Path, default=None, help="clip to take the frame from")
    ap.add_argument("--at", type=float, default=DEFAULT_AT, help="time of the frame in --video, s")
    ap.add_argument("--wheel", type=Path, default=None, help="mediapipe==0.10.21 wheel: also time the TFLite files")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    img, what = frame(args.video, args.at)
    rows = torch_rows(img, args.device, args.seconds)
    if args.wheel is not None:
        rows += tflite_rows(args.wheel, args.threads, args.seconds)
    log.info("%s", ms_table(rows))
    log.info("frame: %s, 1280 x 720; threads %d, %s, %s, torch %s, commit %s", what, args.threads, args.device,
             platform.processor() or platform.machine(), torch.__version__, git_commit())  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
