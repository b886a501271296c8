#!/usr/bin/env bash
# Build and run the AdamW variant microbenchmark; everything goes to stdout.
# Arguments pass through to the binary: [n=400000000] [segments=2] [timed runs=20].
set -euo pipefail
cd "$(dirname "$0")"
export PATH="/usr/local/cuda/bin:$PATH"
exec 2>&1
nvcc --version | tail -1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.limit --format=csv || true
rm -f ./probe_adamw
nvcc -O3 -std=c++17 -arch=sm_90a --use_fast_math -o ./probe_adamw probe_adamw.cu
./probe_adamw "$@"
