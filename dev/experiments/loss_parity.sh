#!/usr/bin/env bash
# Loss parity with llm.c on the GPU machine: builds llmc and llm.c, makes the CPython corpus and a d12 init, then
# runs benchmarks/curves.py jobs given as arguments ("shuffled SEEDS... -- VARIANTS" style is left to curves.py:
# each argument is one quoted curves.py argument list, run in parallel with the others).
# Usage: [LLMC_CORPUS=headers] dev/experiments/loss_parity.sh OUT 'ARGS1' ['ARGS2' ...]
#   the corpus: cpython (default: .ref/mkdata_cpython.py, py_*.bin) or headers (mkdata_headers.py, hdr_*.bin)
#   needs, git-ignored and carried: .ref/llm.c (an llm.c checkout), .ref/fe/include (cudnn-frontend headers),
#   .ref/mkdata_cpython.py (the corpus script of the reference runs), .deps/include (cudnn-frontend for llmc's build).
set -uo pipefail
out=${1:?usage: loss_parity.sh OUT ARGS...}; shift
mkdir -p "$out"
export PYTHONUNBUFFERED=1
data=/tmp/llmc-data; bin=/tmp/llm.c-bin
t0=$(date +%s)
if [ ! -x "$bin/train_gpt2cu" ]; then
  (rm -rf /tmp/llm.c-src && cp -r .ref/llm.c /tmp/llm.c-src &&
   bash benchmarks/build_llm_c.sh /tmp/llm.c-src .ref/fe/include "$bin" >"$out/llm_c_build.log" 2>&1) &
fi
if ! python3 -c "import llmc._llmc" 2>/dev/null; then
  python3 -m pip install --no-build-isolation --no-deps -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90a . \
    >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
fi
echo "llmc built at $(( $(date +%s) - t0 )) s"
corpus=${LLMC_CORPUS:-cpython}
if [ "$corpus" = headers ] && [ ! -e "$data/hdr_val_000000.bin" ]; then
  python3 dev/experiments/mkdata_headers.py "$data"
fi
if [ ! -e "$data/py_val_000000.bin" ]; then
  mkdir -p "$data"
  python3 .ref/mkdata_cpython.py "$data"
  python3 -c "
from llmc.checkpoint import write_model_file
from llmc.model import GPT, GPTConfig
for seed in (7, 11):
    write_model_file('$data/init_d12_seed%d.bin' % seed, GPT(GPTConfig.from_preset('d12'), device='cuda', seed=seed))
"
fi
wait
[ -x "$bin/train_gpt2cu" ] || { tail -30 "$out/llm_c_build.log"; echo "llm.c build failed"; }
echo "ready at $(( $(date +%s) - t0 )) s"
i=0
for job in "$@"; do
  i=$((i + 1))
  eval "python3 benchmarks/curves.py --csv $out/curves_$i.csv --work-dir /tmp/curves $job" >"$out/job_$i.log" 2>&1 &
done
wait
echo "done at $(( $(date +%s) - t0 )) s"
tail -n 30 "$out"/job_*.log
