#!/usr/bin/env bash
# Development build: editable install into the active environment (Python files are live from python/llmc,
# the extension is rebuilt). A lock serialises builds when several shells share one build folder.
set -euo pipefail
cd "$(dirname "$0")/.."
exec flock /tmp/llmc-build.lock python -m pip install -q --no-build-isolation --no-deps -e . "$@"
