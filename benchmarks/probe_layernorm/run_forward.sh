#!/usr/bin/env bash
# Build and run the LayerNorm-forward variant microbenchmark (compiles csrc/kernels/layernorm.cu in); stdout only.
exec "$(dirname "$0")/../probe_run.sh" "$(dirname "$0")/probe_ln_forward.cu" "$@"
