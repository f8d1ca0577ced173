"""Latency-aware early stopping on SST-2: the same search with ``search.early_stopping`` off and on, at equal
wall-clock.

Both runs share the fitted teachers, teacher logits and latency cache (one output directory, teachers fitted before
either clock starts), use the same seeded sampler, the same ``search.time_budget_s`` and a trial cap neither
reaches, and differ only in the scheduler. Students still training when the time runs out are PRUNED, so only
students that finished count. Reports trials by state and the hypervolume of each feasible front against two common
reference points, both at 1.1 × the slowest finished student of both runs: metric 0 (the dashboards' default), and
the majority-class accuracy of the dev set (the area above a trivial classifier, where differences show).

    python benchmarks/p4_early_stopping.py [--data DIR] [--time-budget-s 540] [--epochs 4] [--train-samples 4000]

Writes ``benchmarks/results/p4_early_stopping.json`` and prints one summary line.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, fit_teachers_timed, require_sst2, sst2_sections, write_result  # noqa: E402

from kdnas.config import build_config, dump_config  # noqa: E402
from kdnas.dashboards.pareto import feasible_completed, hypervolume, pareto_front  # noqa: E402
from kdnas.data import load_task  # noqa: E402
from kdnas.search.runner import run_search  # noqa: E402

NAME = "p4_early_stopping"
HYPERVOLUME_RATIO_TARGET = 1.3


def search_config(data: Path, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    return {
        "output_dir": str(Path(args.output_dir).resolve()),
        **sst2_sections(data, args.train_samples, gpt2_teacher=False),
        "training": {"epochs": args.epochs, "seed": args.seed},
        "latency": {"warmup": 2, "runs": 10},
        "search": {"study_name": f"p4-{mode}-{args.stamp}", "n_trials": args.max_trials, "seed": args.seed,
                   "time_budget_s": args.time_budget_s, "early_stopping": {"mode": mode}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, name=NAME, train_samples=4000, output_dir="bench-p4")
    parser.add_argument("--time-budget-s", type=float, default=540.0, help="each run's search.time_budget_s")
    parser.add_argument("--max-trials", type=int, default=200, help="each run's trial cap (not meant to be reached)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="sampler and training seed")
    args = parser.parse_args()
    args.stamp = time.strftime("%Y%m%d-%H%M%S")
    data = require_sst2(NAME, args.data)

    configs = {mode: build_config(search_config(data, args, mode)) for mode in ("off", "on")}
    task = load_task(configs["off"].data)
    _, _, teacher_seconds = fit_teachers_timed(configs["off"], task)
    counts = Counter(task.labels("eval"))
    majority = max(counts.values()) / sum(counts.values())

    runs, studies = {}, {}
    for mode, config in configs.items():
        started = time.perf_counter()
        study = run_search(config)
        seconds = time.perf_counter() - started
        studies[mode] = study
        trials = study.get_trials(deepcopy=False)
        runs[mode] = {
            "seconds": round(seconds, 1),
            "states": {s.name: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED)},
            "pruned_by_scheduler": sum("students of" in t.user_attrs.get("pruned_reason", "") for t in trials),
            "cut_by_time_budget": sum("time budget" in t.user_attrs.get("pruned_reason", "") for t in trials),
            "finished": sorted((round(t.values[1], 4), round(t.values[0], 4)) for t in feasible_completed(study)),
            "front": [(t.number, t.user_attrs.get("arch_summary"), round(t.values[1], 4), round(t.values[0], 4))
                      for t in pareto_front(study)],
        }
    slowest = max((t.values[1] for s in studies.values() for t in feasible_completed(s)), default=1.0)
    references = {"metric_0": (0.0, 1.1 * slowest), "majority_class": (majority, 1.1 * slowest)}
    for mode, study in studies.items():
        points = [tuple(t.values) for t in feasible_completed(study)]
        runs[mode]["hypervolume"] = {name: hypervolume(points, ref) for name, ref in references.items()}
    ratios = {name: runs["on"]["hypervolume"][name] / runs["off"]["hypervolume"][name]
              if runs["off"]["hypervolume"][name] else None for name in references}
    path = write_result(args.out, {
        "benchmark": NAME,
        "target": f"hypervolume(on) / hypervolume(off) >= {HYPERVOLUME_RATIO_TARGET} at equal wall-clock",
        "args": vars(args),
        "teacher_seconds": round(teacher_seconds, 1),
        "majority_class_accuracy": majority,
        "references": references,
        "hypervolume_ratio": ratios,
        "meets_target": (ratios["majority_class"] or 0) >= HYPERVOLUME_RATIO_TARGET,
        "runs": runs,
        "config": {mode: dump_config(config) for mode, config in configs.items()},
    })
    off, on = runs["off"], runs["on"]
    shown = {name: "n/a" if r is None else f"{r:.3f}" for name, r in ratios.items()}
    print(f"{NAME}: in {args.time_budget_s:g} s each, early stopping finished {on['states']['COMPLETE']} students "
          f"({on['pruned_by_scheduler']} stopped early) vs {off['states']['COMPLETE']}; hypervolume ratio "
          f"{shown['majority_class']} above the majority class, {shown['metric_0']} above metric 0 "
          f"(target ≥ {HYPERVOLUME_RATIO_TARGET}) → {path}")


if __name__ == "__main__":
    main()
