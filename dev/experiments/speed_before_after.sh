#!/usr/bin/env bash
# Speed of this tree against an earlier commit and llm.c in one lease on the GPU machine: builds llm.c (from
# .ref/llm.c and .ref/fe/include, as loss_parity.sh) while it builds the earlier tree (BASE, an unpacked
# `git archive` with its .deps), runs that tree's own bench_train and profile_step, then this tree's with llm.c,
# then torch.compile last (its compile time is the longest). Rows to OUT/train.csv, logs to OUT/*.log.
# Usage: LLMC_COMMIT=<this tree's commit> dev/experiments/speed_before_after.sh OUT BASE BASE_COMMIT [CONFIGS]
# Environment: BASELINES (default "llm.c torch.compile"; empty skips both), HEAD_ARCH (default 90a; "default" builds
# this tree with CMake's default architectures), FIXED_RUN=1 (also runs fixed_run.py --device cuda on both trees).
set -uo pipefail
out=${1:?OUT}; base=${2:?BASE}; base_commit=${3:?BASE_COMMIT}; configs=${4:-d12:64,d48:8}
mkdir -p "$out"; out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1
bin=/tmp/llm.c-bin
baselines=${BASELINES-llm.c torch.compile}
here=$(pwd)
install() {  # DIR LOG [ARCH]
  local arch=${3:-90a} flags=()
  [ "$arch" = default ] || flags=(-C "cmake.define.CMAKE_CUDA_ARCHITECTURES=$arch")
  (cd "$1" && python3 -m pip install --no-build-isolation --no-deps "${flags[@]}" .) \
    >"$2" 2>&1 || { tail -30 "$2"; return 1; }
}
fixed_run() {  # NAME
  [ "${FIXED_RUN:-0}" = 1 ] || return 0
  (cd /tmp && python3 "$here/dev/experiments/fixed_run.py" --device cuda --model d12 -b 8 -t 1024) \
    >"$out/fixed_$1.txt" 2>"$out/fixed_$1.log" || tail -20 "$out/fixed_$1.log"
}
t0=$(date +%s)
if [[ " $baselines " == *" llm.c "* && ! -x "$bin/train_gpt2cu" ]]; then
  (rm -rf /tmp/llm.c-src && cp -r .ref/llm.c /tmp/llm.c-src &&
   bash benchmarks/build_llm_c.sh /tmp/llm.c-src .ref/fe/include "$bin" >"$out/llm_c_build.log" 2>&1) &
fi
install "$base" "$out/build_base.log" || exit 1
wait
echo "base and llm.c built at $(( $(date +%s) - t0 )) s"
(cd "$base/benchmarks" && LLMC_COMMIT=$base_commit python3 bench_train.py --configs "$configs" --providers llmc \
   --csv "$out/train.csv"; python3 profile_step.py --model d12 --batch 64) >"$out/bench_base.log" 2>&1
fixed_run base
echo "base measured at $(( $(date +%s) - t0 )) s"
install . "$out/build_head.log" "${HEAD_ARCH:-90a}" || exit 1
python3 -c "import llmc, json; print(json.dumps(llmc.build_info()))" | tee "$out/build_info.json"
echo "head built at $(( $(date +%s) - t0 )) s"
llm_c=""
if [[ " $baselines " == *" llm.c "* ]]; then [ -x "$bin/train_gpt2cu" ] && llm_c=",llm.c" || tail -20 "$out/llm_c_build.log"; fi
(cd benchmarks && python3 bench_train.py --configs "$configs" --providers "llmc$llm_c" --llm-c "$bin/train_gpt2cu" \
   --csv "$out/train.csv"; python3 profile_step.py --model d12 --batch 64) >"$out/bench_head.log" 2>&1
fixed_run head
echo "head measured at $(( $(date +%s) - t0 )) s"
cat "$out/train.csv"; grep -h "enqueue" "$out"/bench_*.log
if [ "${FIXED_RUN:-0}" = 1 ]; then
  if cmp -s "$out/fixed_base.txt" "$out/fixed_head.txt"; then echo "fixed run: identical ($(wc -l <"$out/fixed_head.txt") lines)"
  else echo "fixed run: DIFFERENT"; diff "$out/fixed_base.txt" "$out/fixed_head.txt" | head; fi
fi
[[ " $baselines " == *" torch.compile "* ]] || exit 0
(cd benchmarks && python3 bench_train.py --configs "$configs" --providers torch.compile --csv "$out/train.csv") \
  >"$out/bench_torch.log" 2>&1
echo "torch.compile measured at $(( $(date +%s) - t0 )) s"
tail -3 "$out/train.csv"
