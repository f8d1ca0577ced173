"""P3e: students sliced from the elastic network against students sliced from the teacher, at equal compute (#35).

Direct: each student sliced from the importance-ranked teacher and trained ``--epochs`` (kdnas's default path).
Elastic: the teacher trained once as an elastic network (``student.inherit.elastic``, ``--elastic-epochs``), each
student sliced from it and trained ``--after-elastic-epochs``. Both over ``--archs`` × ``--seeds``. The compute of a
``--students``-student search is compared: direct ``N × mean student seconds`` against elastic ``elastic phase + N ×
mean student seconds``. Adopt elastic as the default when it is ≥ +1 point on the mean at no more compute, or within
0.3 point at ≤ 0.6× the compute. Also reported: Spearman of each arm's ``slice_metric`` (the student before
training) with its final metric (≥ 0.7 on both tasks would justify screening students by it).

    python benchmarks/p3e_elastic.py [--task demo|sst2|banking77] [--archs 1,4,32,4 2,6,32,4 3,8,32,4]
        [--seeds 0 1 2] [--epochs 2] [--elastic-epochs 1] [--after-elastic-epochs 1] [--students 16]
        [--train-samples N] [--data DIR] [--output-dir DIR] [--out FILE]

The teachers, their logits and the elastic network are cached under ``--output-dir`` (for ``banking77`` the default
is P3a's, ``runs/p3a-banking77``, so its fitted teacher is reused). The result is rewritten after every student.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kdnas
from _common import REPO, TASK_DATA, parse_student, task_config, write_result
from p4_learning_curves import spearman

NAME = "p3e_elastic"


def with_training(config: Any, epochs: float, *, elastic: float | None = None) -> Any:
    """``config`` with ``training.epochs`` and, when ``elastic`` is given, the elastic network on for that many
    epochs."""
    update: dict[str, Any] = {"training": config.training.model_copy(update={"epochs": epochs})}
    if elastic is not None:
        inherit = config.student.inherit
        settings = inherit.elastic.model_copy(update={"enabled": True, "epochs": elastic})
        student = config.student.model_copy(update={"inherit": inherit.model_copy(update={"elastic": settings})})
        update["student"] = student
    return config.model_copy(update=update)


def run(students: Any, arch: str, seed: int, arm: str) -> dict[str, Any]:
    started = time.perf_counter()
    report = kdnas.train_student(students, parse_student(arch), seed=seed)
    record = kdnas.StudentRecord.from_attrs(report.attrs)
    row = {
        "arm": arm,
        "arch": record.arch_summary,
        "seed": seed,
        "slice_metric": record.slice_metric.value if record.slice_metric else None,
        "value": report.value,
        "seconds": round(time.perf_counter() - started, 1),
        "restarted": record.restart.reason if record.restart else None,
    }
    logging.info(
        "%s %s seed %d: sliced %.4f -> %.4f (%.0f s)",
        arm,
        row["arch"],
        seed,
        row["slice_metric"],
        row["value"],
        row["seconds"],
    )
    return row


def summary(rows: list[dict[str, Any]], elastic_seconds: float, students: int) -> dict[str, Any]:
    arms: dict[str, Any] = {}
    for arm in ("direct", "elastic"):
        ours = [r for r in rows if r["arm"] == arm]
        if not ours:
            continue
        per_student = statistics.mean(r["seconds"] for r in ours)
        arms[arm] = {
            "mean": round(statistics.mean(r["value"] for r in ours), 4),
            "mean_slice_metric": round(statistics.mean(r["slice_metric"] for r in ours), 4),
            "per_arch": {
                arch: round(statistics.mean(r["value"] for r in ours if r["arch"] == arch), 4)
                for arch in dict.fromkeys(r["arch"] for r in ours)
            },
            "spearman_slice_vs_final": round(
                spearman([r["slice_metric"] for r in ours], [r["value"] for r in ours]), 3
            ),
            "search_compute_s": round(students * per_student + (elastic_seconds if arm == "elastic" else 0.0), 1),
        }
    if len(arms) < 2:
        return arms
    gain = 100 * (arms["elastic"]["mean"] - arms["direct"]["mean"])
    ratio = arms["elastic"]["search_compute_s"] / arms["direct"]["search_compute_s"]
    adopt = (gain >= 1.0 and ratio <= 1.0) or (gain >= -0.3 and ratio <= 0.6)
    return {**arms, "gain_points": round(gain, 2), "compute_ratio": round(ratio, 3), "adopt": adopt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["demo", *TASK_DATA], default="demo")
    parser.add_argument("--archs", nargs="+", default=["1,4,32,4", "2,6,32,4", "3,8,32,4"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--elastic-epochs", type=float, default=1.0)
    parser.add_argument("--after-elastic-epochs", type=int, default=1)
    parser.add_argument("--students", type=int, default=16)
    parser.add_argument("--train-samples", type=int)
    parser.add_argument("--data")
    parser.add_argument("--output-dir")
    parser.add_argument("--out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    default_dir = "p3a-banking77" if args.task == "banking77" else f"p3e-{args.task}"
    output_dir = args.output_dir or str(REPO / "runs" / default_dir)
    config = task_config(NAME, args.task, data=args.data, train_samples=args.train_samples, output_dir=output_dir)
    out = args.out or REPO / "benchmarks" / "results" / f"{NAME}_{args.task}.json"
    direct = kdnas.prepare_students(with_training(config, args.epochs))
    elastic = kdnas.prepare_students(with_training(config, args.after_elastic_epochs, elastic=args.elastic_epochs))
    record = elastic.inherit.elastic
    result: dict[str, Any] = {
        "task": args.task,
        "settings": {k: v for k, v in vars(args).items() if k not in ("data", "output_dir", "out")},
        "train_rows": len(direct.train),
        "transfer_rows": direct.transfer_rows,
        "elastic_phase": record.to_attrs() if record else None,
        "runs": [],
    }
    for arch in args.archs:
        for seed in args.seeds:
            for arm, students in (("direct", direct), ("elastic", elastic)):
                result["runs"].append(run(students, arch, seed, arm))
                result["summary"] = summary(result["runs"], record.seconds if record else 0.0, args.students)
                write_result(out, result)
    print(f"{NAME} ({args.task}): {result['summary']} -> {out}")


if __name__ == "__main__":
    main()
