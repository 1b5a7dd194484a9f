#!/usr/bin/env bash
# Issue 29's GPU measurements, one device call per part (each fits the 600 s a call may run), results under $OUT.
#
#   bash benchmarks/gpu_issue29.sh tests      # GPU tests of the decode path and the capacity model (~200 s on an H100)
#   bash benchmarks/gpu_issue29.sh e2e        # 128K + 512 end to end: stock, CUDA graph, FROZEN_FUSED (~400 s)
#   bash benchmarks/gpu_issue29.sh serve      # 16 x 32K + 512 served at the largest batch, row prefill (~250 s)
#   bash benchmarks/gpu_issue29.sh capacity   # the decode section at 128K: capacity per recipe (an H200 for the target)
#
# With flash-attn-4 unpacked (DEVELOPERS.md), export PYTHONPATH first: the prefill then runs its window kernel.
# Each part prints the card; e2e, serve and capacity write $OUT/<part>.json (tests prints only). A part cut by its
# timeout still leaves what it printed, and the script exits with the part's status (124: timed out).
set -uo pipefail
part=${1:?"which part: tests, e2e, serve or capacity"}
out=$(realpath "${OUT:-.}")
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
date -u
case "$part" in
tests)
    timeout 560 python -m pytest -m gpu -q -p no:cacheprovider -rA tests/swaa_core/engine/test_gpu_decode.py \
        tests/swaa_core/models/test_capacity_gpu.py 2>&1 | grep -E "PASS|FAIL|ERROR|passed|failed"
    rc=${PIPESTATUS[0]} ;;
e2e)
    timeout 580 python benchmarks/gpu_decode.py --sections end_to_end --prompts 131072 --e2e-tokens 512 \
        --e2e-modes stock graph frozen --e2e-configs full "SWA decode" "1/2 FA layers + FA decode" \
        --e2e-requests 0 --json "$out/e2e.json" 2>&1 | grep -v Warning | tail -30
    rc=${PIPESTATUS[0]} ;;
serve)
    timeout 580 python benchmarks/gpu_capacity.py --sections batched --prefill row --contexts 32768 --requests 16 \
        --out "$out/serve.json" 2>&1 | grep -v Warning | tail -30
    rc=${PIPESTATUS[0]} ;;
capacity)
    timeout 580 python benchmarks/gpu_capacity.py --sections decode --contexts 131072 \
        --out "$out/capacity.json" 2>&1 | grep -v Warning | tail -30
    rc=${PIPESTATUS[0]} ;;
*)
    echo "unknown part $part: tests, e2e, serve or capacity" >&2
    exit 2 ;;
esac
date -u
exit "$rc"
