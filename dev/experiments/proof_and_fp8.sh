#!/usr/bin/env bash
# One GPU call for two questions, most needed first: block-scaled FP8 on this tree (its tests, the per-GEMM
# benchmark, bench_train llmc and llmc-fp8blocks), then an earlier tree (BASE, an unpacked `git archive` with its
# .deps) against this one in bf16 (bench_train llmc d12/B=64 and d48/B=8, profile_step's host time,
# fixed_run.py --device cuda bit for bit). Both trees build as wheels (sm_90a): this one first, then the base while
# the FP8 tests run; each is installed in turn. Rows to OUT/train.csv, logs to OUT/.
# Usage: LLMC_COMMIT=<this tree's commit> dev/experiments/proof_and_fp8.sh OUT BASE BASE_COMMIT
set -uo pipefail
out=${1:?OUT}; base=${2:?BASE}; base_commit=${3:?BASE_COMMIT}
mkdir -p "$out"; out=$(cd "$out" && pwd)
here=$(pwd)
export PYTHONUNBUFFERED=1
t0=$(date +%s)
stamp() { echo "$1 at $(( $(date +%s) - t0 )) s"; }
wheel() {  # DIR WHEELDIR LOG
  (cd "$1" && python3 -m pip wheel --no-build-isolation --no-deps -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90a \
     -w "$2" .) >"$3" 2>&1 || { tail -30 "$3"; return 1; }
}
fixed_run() {  # NAME
  (cd /tmp && python3 "$here/dev/experiments/fixed_run.py" --device cuda --model d12 -b 8 -t 1024) \
    >"$out/fixed_$1.txt" 2>"$out/fixed_$1.log" || tail -20 "$out/fixed_$1.log"
}
rm -rf /tmp/whl-base /tmp/whl-head
wheel . /tmp/whl-head "$out/build_head.log" || exit 1
stamp "head built"
python3 -m pip install -q --no-deps --force-reinstall /tmp/whl-head/*.whl || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
wheel "$base" /tmp/whl-base "$out/build_base.log" & pb=$!  # the CPU builds the base while the GPU tests run
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_fp8_block.py --maxfail=15 >"$out/tests_fp8_block.log" 2>&1
tail -3 "$out/tests_fp8_block.log"; grep -E "^(FAILED|ERROR)|^E " "$out/tests_fp8_block.log" | head -20
stamp "fp8 tests"
wait $pb || exit 1
stamp "base built"
python3 dev/experiments/fp8_block_gemm.py --csv "$out/fp8_block_gemm.csv" >"$out/fp8_block_gemm.log" 2>&1
grep -vE "^(d12|d48) +(qkv|attproj|fc|fcproj) " "$out/fp8_block_gemm.log" | tail -12
stamp "fp8 gemm benchmark"
(cd benchmarks && python3 bench_train.py --configs d12:64,d48:8 --providers llmc,llmc-fp8blocks --csv "$out/train.csv") \
  >"$out/bench_head.log" 2>&1
cat "$out/train.csv"; grep -iE "error|Traceback" "$out/bench_head.log" | head -5
stamp "head bench_train"
(cd benchmarks && python3 profile_step.py --model d12 --batch 64) >"$out/profile_head.log" 2>&1
fixed_run head
stamp "head profile and fixed run"
python3 -m pip install -q --no-deps --force-reinstall /tmp/whl-base/*.whl || exit 1
(cd "$base/benchmarks" && LLMC_COMMIT=$base_commit python3 bench_train.py --configs d12:64,d48:8 --providers llmc \
   --csv "$out/train.csv") >"$out/bench_base.log" 2>&1
tail -2 "$out/train.csv"
fixed_run base
if cmp -s "$out/fixed_base.txt" "$out/fixed_head.txt"; then echo "fixed run: identical ($(wc -l <"$out/fixed_head.txt") lines)"
else echo "fixed run: DIFFERENT"; diff "$out/fixed_base.txt" "$out/fixed_head.txt" | head; fi
stamp "base bench_train and fixed run"
(cd "$base/benchmarks" && python3 profile_step.py --model d12 --batch 64) >"$out/profile_base.log" 2>&1
grep -h "enqueue" "$out"/profile_*.log
stamp "base profile"
