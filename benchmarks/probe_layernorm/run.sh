#!/usr/bin/env bash
# Build and run the LayerNorm-backward variant microbenchmark (compiles csrc/kernels/layernorm.cu in); stdout only.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="/usr/local/cuda/bin:$PATH"
exec 2>&1
nvcc --version | tail -1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.limit --format=csv || true
rm -f ./probe_ln_backward
nvcc -O3 -std=c++17 -arch=sm_90a --use_fast_math -o ./probe_ln_backward probe_ln_backward.cu
./probe_ln_backward "$@"
