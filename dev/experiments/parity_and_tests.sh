#!/usr/bin/env bash
# One GPU lease: build llmc and llm.c, then at once the loss curves on the headers corpus (llmc and llm.c, 3 seeds
# each, as two jobs) and the whole test suite, all sharing the GPU (the curves are not timed; the tests not either).
# Usage: LLMC_COMMIT=<commit> dev/experiments/parity_and_tests.sh OUT
set -uo pipefail
out=${1:?OUT}; mkdir -p "$out"; out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1
d=/tmp/llmc-data
C="--train '$d/hdr_train_*.bin' --val '$d/hdr_val_*.bin' --init $d/init_d12_seed7.bin --corpus headers --seeds 1 2 3"
LLMC_CORPUS=headers bash dev/experiments/loss_parity.sh "$out" "$C --order shuffled" \
  "$C --order shuffled --llm-c /tmp/llm.c-bin/train_gpt2cu --no-llmc" &
parity=$!
# the suite starts once llmc is installed (loss_parity.sh installs it first)
until python3 -c "import llmc._llmc" 2>/dev/null; do sleep 5; done
python3 -m pytest -q -p no:cacheprovider tests >"$out/gpu_tests.log" 2>&1
echo "tests: $(tail -1 "$out/gpu_tests.log")"
wait $parity
for f in main.log metrics.jsonl; do cp /tmp/curves/headers/shuffled/llmc-base/seed1/$f "$out/seed1_$f" 2>/dev/null; done
ls /tmp/curves/headers/shuffled/*/ 2>/dev/null | head
