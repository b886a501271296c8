#!/usr/bin/env bash
# Builds one standalone CUDA probe (dev/cuda/NAME.cu) for sm_90a on a GPU machine and runs it; all output to stdout.
# Usage: dev/cuda/run.sh dev/cuda/NAME.cu [arguments for the binary...]
set -euo pipefail
src=$(realpath "$1"); shift
cd "$(dirname "$src")"
export PATH="/usr/local/cuda/bin:$PATH"
exec 2>&1
nvcc --version | tail -1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.limit --format=csv || true
bin="./$(basename "$src" .cu)"
rm -f "$bin"
nvcc -O3 -std=c++17 -arch=sm_90a --use_fast_math -o "$bin" "$src"
"$bin" "$@"
