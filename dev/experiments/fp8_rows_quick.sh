#!/usr/bin/env bash
# The shortest FP8 GPU check: build (sm_90a), the GEMM-level FP8 tests, fp8_epilogue_probe.py and the per-GEMM
# table (block and per-row scales) under tight time limits. Usage: dev/experiments/fp8_rows_quick.sh OUT
set -uo pipefail
out=${1:?OUT}; mkdir -p "$out"
t0=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90a . \
  >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
echo "built at $(( $(date +%s) - t0 )) s"
t=tests/test_fp8_block.py
timeout 45 python3 -m pytest -q -p no:cacheprovider "$t::test_transposed_copy_is_the_quantized_transpose" \
  "$t::test_row_scaled_matmul_is_fp32_math_on_the_dequantized_operands" "$t::test_block_matmul_accumulates_and_adds_a_bias" \
  "$t::test_block_matmul_with_the_gelu_epilogue" "$t::test_block_matmul_is_fp32_math_on_the_dequantized_operands" \
  "$t::test_cuda_row_quantize_is_the_reference_bit_for_bit" "$t::test_row_quantize_round_trip_and_scales" \
  >"$out/tests.log" 2>&1
tail -2 "$out/tests.log"; grep -E "^(FAILED|ERROR)|^E  .*(Error|excess|assert)" "$out/tests.log" | head -12
timeout 25 python3 dev/experiments/fp8_epilogue_probe.py >"$out/probe.log" 2>&1; cat "$out/probe.log"
timeout 60 python3 dev/experiments/fp8_block_gemm.py --csv "$out/gemm.csv" >"$out/gemm.log" 2>&1
grep -vE " ms +[0-9.]* TFLOP/s" "$out/gemm.log" | head -30
echo "done at $(( $(date +%s) - t0 )) s"
