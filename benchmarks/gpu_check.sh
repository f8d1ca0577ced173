#!/usr/bin/env bash
# GPU readiness check (one CUDA GPU, at most 8 minutes): the demo search with 4 students sharing the GPU
# (resources_per_trial.gpu 0.25), mixed precision and latency timed on CUDA. Writes benchmarks/results/gpu_check.json.
# Fails (exit 1, one line) when CUDA is absent. Needs kdnas installed (scripts/demo.sh or README's install); installs
# nothing. Flags go to benchmarks/gpu_check.py (--help).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if ! [ -x "$PYTHON" ] && ! command -v "$PYTHON" >/dev/null; then
    echo "gpu_check: FAILED: no Python at $PYTHON: install kdnas first (bash scripts/demo.sh) or set PYTHON" >&2
    exit 1
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
