"""KD objectives on SST-2: one fixed student taught by each recipe, same data and steps, over several seeds.

Compares no KD, single-teacher KD, two teachers averaged, confidence-aware (CA-MKD), gradient-space (AE-KD) and
intermediate-layer KD (EMD mapping, and a fixed uniform map) on the SST-2 dev set. Teachers (MiniLM fine-tuned,
a GPT-2 trained from scratch) are fitted once on the same training subset; every student trains on the labelled
examples alone (no transfer set) through ``kdnas.train_student``, a search's own trial body, so the figures are
those a search would record.

    python benchmarks/kd_objectives.py [--data DIR] [--train-samples 4000] [--epochs 3] [--seeds 0 1 2]

Writes ``benchmarks/results/kd_objectives.json`` and prints one summary line per recipe.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kdnas
from _common import (
    add_common_args,
    fit_teachers_timed,
    parse_student,
    require_sst2,
    sst2_sections,
    write_result,
)

RECIPES: dict[str, dict[str, Any]] = {
    "no KD (CE only)": {"alpha": 1.0},
    "1 teacher (MiniLM)": {"combiner": "weighted", "teacher_weights": [1.0, 0.0]},
    "2 teachers, mean": {"combiner": "mean"},
    "2 teachers, confidence (CA-MKD)": {"combiner": "confidence"},
    "2 teachers, gradient-space (AE-KD)": {"combiner": "gradient"},
    "2 teachers, mean + EMD intermediate": {"combiner": "mean", "intermediate": {"enabled": True, "layer_map": "emd"}},
    "2 teachers, mean + uniform intermediate": {
        "combiner": "mean",
        "intermediate": {"enabled": True, "layer_map": "uniform"},
    },
}


def base_config(data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark's fixed settings: SST-2 subset without a transfer set, two teachers, training budget."""
    sections = sst2_sections(data, args.train_samples)
    sections["data"]["transfer"] = {"augment_copies": 0}
    return {
        "output_dir": str(Path(args.output_dir).resolve()),
        **sections,
        "training": {"epochs": args.epochs, "batch_size": 32, "learning_rate": args.learning_rate},
        "latency": {"warmup": 2, "runs": 5},
        "search": {"study_name": "kd-objectives"},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, name="kd_objectives", train_samples=4000, output_dir="bench-kd-objectives")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--student", default="2,4,32,4", help="layers,heads,head_dim,ffn_ratio (default 2,4,32,4)")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    data = require_sst2("kd_objectives", args.data)
    torch.set_num_threads(args.threads)
    student = parse_student(args.student)

    base = base_config(data, args)
    config = kdnas.load_config(base)
    task = kdnas.load_task(config.data)
    references, teacher_seconds = fit_teachers_timed(config, task)

    runs, number = [], 0
    for name in args.recipes:
        config = kdnas.load_config({**base, "kd": RECIPES[name]})
        students = kdnas.prepare_students(config, task)  # the seed does not change what is prepared
        for seed in args.seeds:
            started = time.perf_counter()
            report = kdnas.train_student(students, student, seed=seed, trial_number=number)
            seconds = time.perf_counter() - started
            runs.append(
                {
                    "recipe": name,
                    "seed": seed,
                    "accuracy": report.value,
                    "seconds": seconds,
                    "kd": config.model_dump(mode="json")["kd"],
                }
            )
            logging.info("%s seed %d: accuracy %.4f in %.0f s", name, seed, report.value, seconds)
            number += 1

    summary = []
    for name in args.recipes:
        accs = [r["accuracy"] for r in runs if r["recipe"] == name]
        secs = [r["seconds"] for r in runs if r["recipe"] == name]
        summary.append(
            {
                "recipe": name,
                "mean": statistics.mean(accs),
                "std": statistics.pstdev(accs),
                "min": min(accs),
                "max": max(accs),
                "seconds_mean": statistics.mean(secs),
            }
        )
    out = write_result(
        args.out,
        {
            "benchmark": "kd_objectives",
            "student": student,
            "train_examples": len(task.train),
            "eval_examples": len(task.eval),
            "epochs": args.epochs,
            "seeds": args.seeds,
            "threads": args.threads,
            "teachers": [
                {"name": r.name, "value": r.value, "latency_ms": r.latency_ms, "params": r.params} for r in references
            ],
            "teacher_seconds": teacher_seconds,
            "config": kdnas.load_config(base).model_dump(mode="json"),
            "summary": summary,
            "runs": runs,
        },
    )
    for row in summary:
        print(
            f"kd_objectives: {row['recipe']:<42} accuracy {row['mean']:.4f} ± {row['std']:.4f} "
            f"(min {row['min']:.4f}, max {row['max']:.4f}; {row['seconds_mean']:.0f} s/run)"
        )
    print(f"kd_objectives: results in {out}")


if __name__ == "__main__":
    main()
