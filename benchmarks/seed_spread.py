"""Seed spread and collapse: one student trained with several seeds, without and with the collapse restart.

The config's students are prepared once (teachers fitted, their logits cached under ``--output-dir``, as a search
does), then the student is trained with each seed twice: ``training.restart_collapsed`` off (kdnas before the
restart) and on (the default). Per seed: the final metric, the slice's metric before training, whether it restarted
(and after what) and whether it ended collapsed; per arm: the range (max − min) and mean. Goals (#35): no student ends
collapsed with the restart, and the range is halved.

    python benchmarks/seed_spread.py [--task demo|sst2|banking77] [--arch 4,4,32,1] [--seeds 0 1 2 3 4]
        [--train-samples N] [--data DIR] [--output-dir runs/seed-spread-<task>] [--out FILE]

``demo`` (the default) is the built-in demo task, whose ``L4-H128-A4-F128`` collapsed to one class on seed 0 in the
2026-12-05 fresh-clone demo. ``sst2`` and ``banking77`` read ``../shared/data`` beside the checkout (or ``--data``) and
fine-tune the MiniLM teacher on the same ``--train-samples`` rows (skipped cleanly without the data).
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
from _common import REPO, parse_student, skip, write_result

NAME = "seed_spread"
DATA = {"sst2": ("train.tsv", "dev.tsv"), "banking77": ("train.tsv", "test.tsv")}


def task_sections(task: str, data: str | None, train_samples: int | None) -> dict[str, Any]:
    """The config sections of ``task``: the demo's defaults, or a TSV task with the MiniLM teacher fitted on it."""
    if task == "demo":
        return {}
    directory = Path(data or REPO / ".." / "shared" / "data" / task).resolve()
    train, evaluation = DATA[task]
    if not (directory / train).is_file() or not (directory / evaluation).is_file():
        skip(NAME, f"no {task} {train}/{evaluation} in {directory} (pass --data)")
    return {
        "data": {
            "source": "files",
            "train_file": str(directory / train),
            "validation_file": str(directory / evaluation),
            "max_seq_length": 64,
            "max_train_samples": train_samples,
        },
        "teachers": [{"name": "minilm", "model": "minilm", "fit": {"epochs": 3, "learning_rate": 5e-5}}],
    }


def train_seed(inputs: Any, arch: dict[str, int], seed: int, restart: bool) -> dict[str, Any]:
    """Train ``arch`` with ``seed``, the collapse restart on or off; what the record says of it."""
    config = inputs.config
    training = config.training.model_copy(update={"restart_collapsed": restart})
    inputs = replace(inputs, config=config.model_copy(update={"training": training}))
    started = time.perf_counter()
    record = kdnas.train_student(inputs, arch, seed=seed, trial_number=seed)
    attrs = record.attrs
    return {
        "seed": seed,
        "value": record.value,
        "slice_metric": attrs["slice_metric"]["value"],
        "restarted": attrs.get("restart", {}).get("reason"),
        "first_attempt_after_epoch_1": attrs.get("restart", {}).get("metric"),
        "collapsed": attrs.get("collapsed"),
        "learning_rate": attrs["learning_rate"],
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
    parser.add_argument("--task", choices=["demo", *DATA], default="demo")
    parser.add_argument("--arch", default="4,4,32,1", help="layers,heads,head_dim,ffn_ratio (default L4-H128-A4-F128)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--train-samples", type=int)
    parser.add_argument("--data", help="the task's folder (default ../shared/data/<task> beside the checkout)")
    parser.add_argument("--output-dir")
    parser.add_argument("--out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    output_dir = args.output_dir or str(REPO / "runs" / f"seed-spread-{args.task}")
    config = kdnas.load_config(
        {
            "output_dir": output_dir,
            "search": {"study_name": NAME},
            **task_sections(args.task, args.data, args.train_samples),
        }
    )
    arch = parse_student(args.arch)
    started = time.perf_counter()
    inputs = kdnas.prepare_students(config)
    prepared_s = time.perf_counter() - started
    arms = {
        name: [train_seed(inputs, arch, seed, restart) for seed in args.seeds]
        for name, restart in (("restart_off", False), ("restart_on", True))
    }
    result = {
        "task": args.task,
        "arch": args.arch,
        "seeds": args.seeds,
        "train_rows": len(inputs.train),
        "transfer_rows": inputs.transfer_rows,
        "prepare_seconds": round(prepared_s, 1),
        "arms": {name: {"summary": summary(runs), "runs": runs} for name, runs in arms.items()},
    }
    out = write_result(args.out or REPO / "benchmarks" / "results" / f"{NAME}_{args.task}.json", result)
    line = "; ".join(f"{name}: {result['arms'][name]['summary']}" for name in arms)
    print(f"{NAME} ({args.task}, {args.arch}): {line} -> {out}")


if __name__ == "__main__":
    main()
