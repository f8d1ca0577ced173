"""Latency-aware early stopping on SST-2: the same search with ``search.early_stopping`` off and on.

Both runs share the fitted teachers, teacher logits and latency cache (one output directory), use the same seeded
sampler and budget, and differ only in the scheduler. Reports wall time, trials by state and the
hypervolume of the feasible front (common reference point: metric 0, 1.1 × the slowest student of both runs).

    python benchmarks/p4_early_stopping.py [--data DIR] [--trials 16] [--epochs 4] [--train-samples 4000]

Writes ``benchmarks/results/p4_early_stopping.json`` and prints one summary line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, require_sst2, sst2_sections, write_result  # noqa: E402

from kdnas.config import build_config  # noqa: E402
from kdnas.dashboards.pareto import feasible_completed, hypervolume  # noqa: E402
from kdnas.search.runner import run_search  # noqa: E402

NAME = "p4_early_stopping"


def search_config(data: Path, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    return {
        "output_dir": str(Path(args.output_dir).resolve()),
        **sst2_sections(data, args.train_samples, gpt2_teacher=False),
        "training": {"epochs": args.epochs},
        "latency": {"warmup": 2, "runs": 10},
        "search": {"study_name": f"p4-{mode}", "n_trials": args.trials, "early_stopping": {"mode": mode}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, name=NAME, train_samples=4000, output_dir="bench-p4")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    data = require_sst2(NAME, args.data, configure_logging=False)

    runs, studies = {}, {}
    for mode in ("off", "on"):
        started = time.perf_counter()
        study = run_search(build_config(search_config(data, args, mode)))
        seconds = time.perf_counter() - started
        studies[mode] = study
        trials = study.get_trials(deepcopy=False)
        runs[mode] = {
            "seconds": round(seconds, 1),
            "states": {s.name: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED)},
            "front": sorted((t.values[1], t.values[0]) for t in feasible_completed(study)),
        }
    slowest = max((t.values[1] for s in studies.values() for t in feasible_completed(s)), default=1.0)
    reference = (0.0, 1.1 * slowest)
    for mode, study in studies.items():
        runs[mode]["hypervolume"] = hypervolume([tuple(t.values) for t in feasible_completed(study)], reference)
    path = write_result(args.out, {"benchmark": NAME, "args": vars(args), "reference": reference, "runs": runs})
    off, on = runs["off"], runs["on"]
    print(f"{NAME}: early stopping {on['seconds']:.0f} s vs {off['seconds']:.0f} s "
          f"({on['states']['PRUNED']} pruned), hypervolume {on['hypervolume']:.4f} vs {off['hypervolume']:.4f} → {path}")


if __name__ == "__main__":
    main()
