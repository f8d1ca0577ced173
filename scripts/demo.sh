#!/usr/bin/env bash
# Install kdnas into ./.venv and run the built-in demo search offline: fit two teachers, search students on
# local Ray into a SQLite study, write the HTML report and export the knee of the Pareto front.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
start=$(date +%s)
.venv/bin/kdnas search
.venv/bin/kdnas export --knee --out runs/kdnas-demo/export/knee
echo "demo finished in $(( $(date +%s) - start )) s"
