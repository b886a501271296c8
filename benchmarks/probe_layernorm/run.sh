#!/usr/bin/env bash
# Build and run the LayerNorm-backward variant microbenchmark (compiles csrc/kernels/layernorm.cu in); stdout only.
exec "$(dirname "$0")/../probe_run.sh" "$(dirname "$0")/probe_ln_backward.cu" "$@"
