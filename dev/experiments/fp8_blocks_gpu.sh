#!/usr/bin/env bash
# Block- and row-scaled FP8 on the GPU machine in one call: build (sm_90a), the FP8 tests, the per-GEMM benchmark and
# bench_train for bf16 against fp8="blocks" and "rows", then (LOSS_SEEDS, default "1 2") d12 loss curves of
# LOSS_STEPS steps (300) for LOSS_PROVIDERS on the headers corpus (mkdata_headers.py); TESTS picks the test files
# (TESTS="" skips them), CONFIGS "" skips bench_train.
# Usage: dev/experiments/fp8_blocks_gpu.sh OUT [CONFIGS] [PROVIDERS]
set -uo pipefail
out=${1:?OUT}; configs=${2-d12:64,d48:8}; providers=${3:-llmc,llmc-fp8blocks,llmc-fp8rows}
mkdir -p "$out"; out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1
t0=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90a . \
  >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "built at $(( $(date +%s) - t0 )) s"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
tests=${TESTS-tests/test_fp8_block.py tests/test_fp8.py}
if [ -n "$tests" ]; then
  timeout 240 python3 -m pytest -q -p no:cacheprovider $tests >"$out/tests.log" 2>&1
  tail -5 "$out/tests.log"; grep -E "^(FAILED|ERROR)|Error" "$out/tests.log" | head -20
  echo "tests at $(( $(date +%s) - t0 )) s"
fi
python3 dev/experiments/fp8_epilogue_probe.py >"$out/fp8_epilogue_probe.log" 2>&1; cat "$out/fp8_epilogue_probe.log"
python3 dev/experiments/fp8_block_gemm.py --csv "$out/fp8_block_gemm.csv" >"$out/fp8_block_gemm.log" 2>&1
grep -vE "^(d12|d48) +(qkv|attproj|fc|fcproj) " "$out/fp8_block_gemm.log" | tail -12
grep -E "rows" "$out/fp8_block_gemm.log" | grep -E "^d48" | head -24
echo "gemm bench at $(( $(date +%s) - t0 )) s"
if [ -n "$configs" ]; then
  (cd benchmarks && python3 bench_train.py --configs "$configs" --providers "$providers" --csv "$out/train.csv") \
    >"$out/bench_train.log" 2>&1
  cat "$out/train.csv"; grep -iE "error|Traceback" "$out/bench_train.log" | head
  echo "bench_train at $(( $(date +%s) - t0 )) s"
fi
data=/tmp/llmc-data
mkdir -p "$data"
seeds=${LOSS_SEEDS-1 2}
[ -z "$seeds" ] || [ -e "$data/hdr_val_000000.bin" ] || python3 dev/experiments/mkdata_headers.py "$data" --max-tokens $(( ${LOSS_STEPS:-300} * 16384 + 4000000 )) >"$out/mkdata.log" 2>&1
for seed in $seeds; do
  python3 dev/experiments/fp8_loss_curve.py -i "$data/hdr_train_*.bin" -j "$data/hdr_val_*.bin" --model d12 \
    --batch 16 --steps "${LOSS_STEPS:-300}" --providers "${LOSS_PROVIDERS:-llmc,llmc-fp8blocks,llmc-fp8rows}" --seed "$seed" \
    --csv "$out/fp8_loss_curve.csv" \
    2>&1 | tail -3
  echo "loss curves (seed $seed) at $(( $(date +%s) - t0 )) s"
done
