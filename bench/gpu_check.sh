#!/usr/bin/env bash
# GPU check (issue 21): the CUDA tests, then training throughput of LVS and EZ-VSL
# (ResNet-18 at 224, batch 128, AMP off / fp16 / bf16) and `avloc localize` speed,
# printed as one summary table. Takes under 5 minutes on one recent GPU.
#
#   bench/gpu_check.sh                 # uses `python` (set PYTHON=... to choose another)
#   bench/gpu_check.sh --steps 20      # extra arguments go to bench/speed/gpu_throughput.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu_check: CUDA is not available on this machine")'

log="$(mktemp -t avloc-cuda-tests.XXXXXX)"
trap 'rm -f "$log"' EXIT
set +e
"$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
summary="$(grep -E '(passed|failed|error|skipped)' "$log" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//')"

"$PY" bench/speed/gpu_throughput.py --device cuda --tests "${summary:-no summary}" "$@"
exit "$status"
