#!/usr/bin/env bash
# Run the Optuna <-> Tune bridge's tests against the floors of the Optuna and Ray ranges in pyproject.toml (the current
# versions are what scripts/test.sh installs). Each floor (its newest patch release) is installed into .floor/ and put
# ahead of the .venv's own copy on PYTHONPATH (Ray's local workers inherit it); nothing else changes. Skips (exit 0,
# saying why) when a floor cannot be downloaded. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
floor_of() { sed -n "s/^ *\"$1>=\([0-9.]*\)[,\"].*/\1/p" pyproject.toml; }
paths=()
for package in optuna "ray\[tune\]"; do
  version="$(floor_of "$package")"
  name="${package%%\\*}"
  [ -n "$version" ] || { echo "floor: no $name>=X range in pyproject.toml"; exit 1; }
  target=".floor/$name-$version"
  if [ ! -d "$target/$name" ] && ! .venv/bin/python -m pip install --quiet --no-deps --target "$target" \
      "$name==$version.*" 2>/dev/null; then
    echo "floor: cannot install $name==$version.* (offline?): floor tests skipped"
    exit 0
  fi
  paths+=("$PWD/$target")
done
export PYTHONPATH="$(IFS=:; echo "${paths[*]}")"
.venv/bin/python -c 'import optuna, ray; print(f"floor: optuna {optuna.__version__}, ray {ray.__version__}")'
.venv/bin/python -m pytest -q tests/test_public_api_only.py tests/test_searcher.py tests/test_runner.py \
  tests/test_efficiency.py tests/test_pareto.py tests/test_progress.py -m "not slow" "$@"
# one real search through Tune's Searcher contract and callbacks, with trivial trials
.venv/bin/python -m pytest -q "tests/test_reliability.py::test_two_hundred_trivial_trials_are_all_recorded[sqlite]" "$@"
