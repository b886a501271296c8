#!/usr/bin/env bash
# Speed of this tree against an earlier commit and llm.c in one lease on the GPU machine: builds llm.c (from
# .ref/llm.c and .ref/fe/include, as loss_parity.sh) while it builds the earlier tree (BASE, an unpacked
# `git archive` with its .deps), runs that tree's own bench_train and profile_step, then this tree's with llm.c,
# then torch.compile last (its compile time is the longest). Rows to OUT/train.csv, logs to OUT/*.log.
# Usage: LLMC_COMMIT=<this tree's commit> dev/experiments/speed_before_after.sh OUT BASE BASE_COMMIT [CONFIGS]
set -uo pipefail
out=${1:?OUT}; base=${2:?BASE}; base_commit=${3:?BASE_COMMIT}; configs=${4:-d12:64,d48:8}
mkdir -p "$out"; out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1
bin=/tmp/llm.c-bin
install() {  # DIR LOG
  (cd "$1" && python3 -m pip install --no-build-isolation --no-deps -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90a .) \
    >"$2" 2>&1 || { tail -30 "$2"; return 1; }
}
t0=$(date +%s)
if [ ! -x "$bin/train_gpt2cu" ]; then
  (rm -rf /tmp/llm.c-src && cp -r .ref/llm.c /tmp/llm.c-src &&
   bash benchmarks/build_llm_c.sh /tmp/llm.c-src .ref/fe/include "$bin" >"$out/llm_c_build.log" 2>&1) &
fi
install "$base" "$out/build_base.log" || exit 1
wait
echo "base and llm.c built at $(( $(date +%s) - t0 )) s"
(cd "$base/benchmarks" && LLMC_COMMIT=$base_commit python3 bench_train.py --configs "$configs" --providers llmc \
   --csv "$out/train.csv"; python3 profile_step.py --model d12 --batch 64) >"$out/bench_base.log" 2>&1
echo "base measured at $(( $(date +%s) - t0 )) s"
install . "$out/build_head.log" || exit 1
echo "head built at $(( $(date +%s) - t0 )) s"
llm_c=""; [ -x "$bin/train_gpt2cu" ] && llm_c=",llm.c" || tail -20 "$out/llm_c_build.log"
(cd benchmarks && python3 bench_train.py --configs "$configs" --providers "llmc$llm_c" --llm-c "$bin/train_gpt2cu" \
   --csv "$out/train.csv"; python3 profile_step.py --model d12 --batch 64) >"$out/bench_head.log" 2>&1
echo "head measured at $(( $(date +%s) - t0 )) s"
cat "$out/train.csv"; grep -h "enqueue" "$out"/bench_*.log
(cd benchmarks && python3 bench_train.py --configs "$configs" --providers torch.compile --csv "$out/train.csv") \
  >"$out/bench_torch.log" 2>&1
echo "torch.compile measured at $(( $(date +%s) - t0 )) s"
tail -3 "$out/train.csv"
