#!/usr/bin/env bash
# Install kdnas with its test extras into ./.venv, lint and format-check with ruff, type-check with mypy, and run the whole test suite (offline).
# Test files run on 2 pytest-xdist workers (a file's tests stay on one worker: they share its session fixtures);
# pass -n 0 to run them in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -m ruff check --quiet src tests benchmarks scripts
.venv/bin/python -m ruff format --check --quiet src tests benchmarks scripts
.venv/bin/python -m mypy src/kdnas
.venv/bin/python -m pytest -n 2 --dist loadfile "$@"
