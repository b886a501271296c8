#!/usr/bin/env bash
# Build and run the encoder-forward variant microbenchmark (compiles csrc/kernels/encoder.cu in); stdout only.
exec "$(dirname "$0")/../probe_run.sh" "$(dirname "$0")/probe_encoder_forward.cu" "$@"
