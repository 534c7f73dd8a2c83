"""Windows/s of the torch YAMNet (``avloc.methods.avsemantic.yamnet``), batch 1 and 32, and of the TFLite file.

Usage::

    python bench/speed/yamnet.py --threads 1 [--device cpu|cuda] [--tflite PATH/yamnet.tflite]

prints a markdown table: the torch port with ``match_tflite=True`` (default: the TFLite's arithmetic)
and ``False`` (plain float), and, with ``--tflite``, the TFLite interpreter (batch 1, its fixed input).
"""

from __future__ import annotations

import argparse
import logging
import platform
from pathlib import Path

import numpy as np
import torch

from avloc.benchmarking import git_commit, rate_table, throughput
from avloc.methods.avsemantic.yamnet import WINDOW_SAMPLES, load_yamnet

log = logging.getLogger("speed_yamnet")
BATCHES = (1, 32)
#: white noise at this standard deviation as input (the speed does not depend on the content)
NOISE_STD = 0.1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch (and TFLite) CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=3.0, help="least time per measurement")
    ap.add_argument("--tflite", type=Path, default=None, help="also time this YAMNet .tflite (ai-edge-litert)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows: list[tuple[str, int, tuple[float, float]]] = []
    for match in (True, False):
        model = load_yamnet(args.device, match_tflite=match)
        for b in BATCHES:
            x = torch.from_numpy((rng.standard_normal((b, WINDOW_SAMPLES)) * NOISE_STD).astype(np.float32))
            x = x.to(args.device)

            def run(x: torch.Tensor = x, model: torch.nn.Module = model) -> None:
                with torch.inference_mode():
                    model(x)
                if x.is_cuda:
                    torch.cuda.synchronize()

            rows.append((f"torch YAMNet, match_tflite={match} ({args.device})", b, throughput(run, b, args.seconds)))
    if args.tflite is not None:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(args.tflite), num_threads=args.threads)
        it.allocate_tensors()
        idx = it.get_input_details()[0]["index"]
        w = (rng.standard_normal((1, WINDOW_SAMPLES)) * NOISE_STD).astype(np.float32)

        def run_tfl() -> None:
            it.set_tensor(idx, w)
            it.invoke()

        rows.append(("TFLite (ai-edge-litert, XNNPACK)", 1, throughput(run_tfl, 1, args.seconds)))
    log.info("%s", rate_table(rows, "windows/s"))
    log.info("threads %d, %s, %s, commit %s", args.threads, platform.processor() or platform.machine(),
             f"torch {torch.__version__}", git_commit())  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
