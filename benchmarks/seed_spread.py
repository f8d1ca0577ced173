"""Seed spread and collapse: one student trained with several seeds, without and with the collapse restart.

The config's students are prepared once (teachers fitted, their logits cached under ``--output-dir``, as a search
does), then the student is trained with each seed twice: ``training.detect_collapse`` off (kdnas before the
restart) and on (the default). Per seed: the final metric, the slice's metric before training, whether it restarted
(and after what) and whether it ended collapsed; per arm: the range (max − min) and mean. Goals (#35): no student ends
collapsed with the restart, and the range is halved.

    python benchmarks/seed_spread.py [--task demo|sst2|banking77] [--arch 4,4,32,1] [--seeds 0 1 2 3 4]
        [--arms restart_off restart_on] [--train-samples N] [--learning-rate R] [--data DIR]
        [--output-dir runs/seed-spread-<task>] [--out FILE]

``demo`` (the default) is the built-in demo task, whose ``L4-H128-A4-F128`` collapsed to one class on seed 0 in the
2026-12-05 fresh-clone demo; ``sst2`` and ``banking77`` read ``../shared/data`` beside the checkout (or ``--data``;
skipped cleanly without it), see ``_common.task_config``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kdnas
from _common import REPO, TASK_DATA, parse_student, task_config, write_result

NAME = "seed_spread"
ARMS = {"restart_off": False, "restart_on": True}
"""Each arm's ``training.detect_collapse``."""


def train_seed(inputs: Any, arch: dict[str, int], seed: int, restart: bool) -> dict[str, Any]:
    """Train ``arch`` with ``seed``, the collapse restart on or off; what the record says of it."""
    config = inputs.config
    training = config.training.model_copy(update={"detect_collapse": restart})
    inputs = replace(inputs, config=config.model_copy(update={"training": training}))
    started = time.perf_counter()
    report = kdnas.train_student(inputs, arch, seed=seed, trial_number=seed)
    record = kdnas.StudentRecord.from_attrs(report.attrs)
    return {
        "seed": seed,
        "value": report.value,
        "slice_metric": record.slice_metric.value if record.slice_metric else None,
        "restarted": record.restart.reason if record.restart else None,
        "first_attempt_after_epoch_1": record.restart.metric if record.restart else None,
        "collapsed": record.collapsed,
        "learning_rate": record.learning_rate,
        "seconds": round(time.perf_counter() - started, 1),
    }


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    values = [run["value"] for run in runs]
    return {
        "mean": round(statistics.mean(values), 4),
        "range": round(max(values) - min(values), 4),
        "min": min(values),
        "max": max(values),
        "collapsed": sum(run["collapsed"] is not None for run in runs),
        "restarted": sum(run["restarted"] is not None for run in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["demo", *TASK_DATA], default="demo")
    parser.add_argument("--arch", default="4,4,32,1", help="layers,heads,head_dim,ffn_ratio (default L4-H128-A4-F128)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--train-samples", type=int)
    parser.add_argument("--learning-rate", type=float, help="training.learning_rate (default: kdnas's per-init rate)")
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=list(ARMS),
        default=list(ARMS),
        help="restart_on alone measures today's default (the arms differ only where a student collapses)",
    )
    parser.add_argument("--data", help="the task's folder (default ../shared/data/<task> beside the checkout)")
    parser.add_argument("--output-dir")
    parser.add_argument("--out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    output_dir = args.output_dir or str(REPO / "runs" / f"seed-spread-{args.task}")
    config = task_config(NAME, args.task, data=args.data, train_samples=args.train_samples, output_dir=output_dir)
    training = config.training.model_copy(update={"learning_rate": args.learning_rate})
    config = config.model_copy(
        update={"search": config.search.model_copy(update={"study_name": NAME}), "training": training}
    )
    arch = parse_student(args.arch)
    started = time.perf_counter()
    inputs = kdnas.prepare_students(config)
    prepared_s = time.perf_counter() - started
    out = Path(args.out or REPO / "benchmarks" / "results" / f"{NAME}_{args.task}.json")
    arms: dict[str, list[dict[str, Any]]] = {name: [] for name in args.arms}
    result: dict[str, Any] = {}
    for name in args.arms:
        for seed in args.seeds:  # the JSON is written after every run: a run cut short keeps what it measured
            arms[name].append(train_seed(inputs, arch, seed, ARMS[name]))
            result = {
                "task": args.task,
                "learning_rate": args.learning_rate,
                "arch": args.arch,
                "seeds": args.seeds,
                "train_rows": len(inputs.train),
                "transfer_rows": inputs.transfer_rows,
                "prepare_seconds": round(prepared_s, 1),
                "arms": {name: {"summary": summary(runs), "runs": runs} for name, runs in arms.items() if runs},
            }
            write_result(out, result)
    line = "; ".join(f"{name}: {result['arms'][name]['summary']}" for name in arms)
    print(f"{NAME} ({args.task}, {args.arch}): {line} -> {out}")


if __name__ == "__main__":
    main()
