#!/usr/bin/env bash
# On the GPU machine: build and install llmc, run the whole test suite, then the benchmarks.
# Usage: scripts/gpu_check.sh OUTDIR [pytest args...]. Logs and CSVs land in OUTDIR.
# BENCHES="gelu layernorm ..." picks benchmarks (default: every benchmarks/bench_*.py except bench_train).
set -uo pipefail
out=${1:?usage: gpu_check.sh OUTDIR}; shift
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
# cudnn-frontend headers travel in .deps/include (git-ignored) where the wheel is not installed.
time python3 -m pip install --no-build-isolation --no-deps -v . >"$out/build.log" 2>&1 \
  || { tail -60 "$out/build.log"; echo "BUILD FAILED"; exit 1; }
grep -E "llmc:|warning|error" "$out/build.log" | head -20
python3 -c "import llmc.ops as o; print(o.build_info())"
python3 -m pytest -q -rs -p no:cacheprovider "$@" 2>&1 | tee "$out/tests.log"
tail -1 "$out/tests.log"
benches=${BENCHES:-$(ls benchmarks/bench_*.py | sed 's#.*/bench_##; s#\.py##' | grep -v '^train$')}
for b in $benches; do
  echo "== bench_$b"
  timeout 300 python3 benchmarks/bench_$b.py --csv "$out/kernels.csv" 2>&1 | tee -a "$out/bench.log"
done
