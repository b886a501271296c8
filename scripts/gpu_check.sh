#!/usr/bin/env bash
# On the GPU machine: build and install llmc, run the whole test suite, then the benchmarks.
# Usage: scripts/gpu_check.sh OUTDIR [pytest args...]. Logs and CSVs land in OUTDIR.
# BENCHES="gelu layernorm ..." picks benchmarks (default: every benchmarks/bench_*.py except bench_train; "none"
# runs none). TESTS=0 skips the tests. The build is skipped when this machine already installed the same sources
# (a stamp of csrc/, CMakeLists.txt and pyproject.toml in /tmp), so later calls on a warm machine go straight on.
# The commit recorded in CSV rows is LLMC_COMMIT when set, else the tree's git HEAD; the GPU machine's copy of the
# tree may carry a stale HEAD, so pass LLMC_COMMIT=<your HEAD> in the command that runs this.
set -uo pipefail
out=${1:?usage: gpu_check.sh OUTDIR}; shift
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee -a "$out/gpu.txt"
stamp=/tmp/llmc-built-$(cat CMakeLists.txt pyproject.toml $(find csrc -type f | sort) | sha1sum | cut -c1-16)
if [ -e "$stamp" ] && python3 -c "import llmc._llmc" 2>/dev/null; then
  echo "llmc already built from these sources on this machine ($stamp)"
else
  # cudnn-frontend headers travel in .deps/include (git-ignored) where the wheel is not installed.
  start=$(date +%s)
  python3 -m pip install --no-build-isolation --no-deps -v . >"$out/build.log" 2>&1 \
    || { tail -60 "$out/build.log"; echo "BUILD FAILED"; exit 1; }
  echo "build took $(( $(date +%s) - start )) s"
  touch "$stamp"
fi
grep -E "llmc:|warning|error" "$out/build.log" 2>/dev/null | head -20
python3 -c "import llmc.ops as o; print(o.build_info())"
if [ "${TESTS:-1}" != 0 ]; then
  python3 -m pytest -q -rs -p no:cacheprovider "$@" 2>&1 | tee "$out/tests.log"
  tail -1 "$out/tests.log"
fi
benches=${BENCHES:-$(ls benchmarks/bench_*.py | sed 's#.*/bench_##; s#\.py##' | grep -v '^train$')}
[ "$benches" = none ] && benches=""
for b in $benches; do
  echo "== bench_$b"
  timeout 300 python3 benchmarks/bench_$b.py --csv "$out/kernels.csv" 2>&1 | tee -a "$out/bench.log"
done
