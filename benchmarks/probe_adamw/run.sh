#!/usr/bin/env bash
# Build and run the AdamW variant microbenchmark; everything goes to stdout.
# Arguments pass through to the binary: [n=400000000] [segments=2] [timed runs=20].
exec "$(dirname "$0")/../probe_run.sh" "$(dirname "$0")/probe_adamw.cu" "$@"
