"""P3a on BANKING77: the best student at ≥ 5× lower latency than its teacher, within 1.5 points of it (#35).

A search with ``examples/banking77.yaml`` (all 10,003 labels, MiniLM fine-tuned on them as the one teacher, 4
augmented copies of every sentence as the transfer set, kdnas's defaults otherwise) on the 3,080 test sentences.
Also reported: how well each student's metric as sliced, before training (``slice_metric``), ranks its final one
(Spearman, over the trained students), the students that restarted after a collapsed first epoch or ended collapsed,
and the seconds before the first student trained (teacher fit, logits, importance, calibration).

    python benchmarks/p3a_banking77.py [--data DIR] [--trials 8] [--time-budget-s S] [--seed 0]
        [--output-dir runs/p3a-banking77] [--out FILE]

``--seed`` seeds the sampler and every student's training; a teacher already fitted in the output directory is reused
whatever the seed.

Skipped cleanly without the data (``../shared/data/banking77`` beside the checkout, or ``--data``). A rerun with the
same output directory resumes the search and reuses the fitted teacher and its cached logits.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kdnas
from _common import REPO, skip, write_result
from p4_learning_curves import spearman

NAME = "p3a_banking77"
SPEEDUP = 5.0
TARGET_POINTS = 1.5


def student_row(trial: Any) -> dict[str, Any]:
    record = kdnas.StudentRecord.of(trial)
    return {
        "trial": trial.number,
        "arch": record.arch_summary,
        "value": trial.values[0],
        "latency_ms": trial.values[1],
        "slice_metric": record.slice_metric.value if record.slice_metric else None,
        "restarted": record.restart.reason if record.restart else None,
        "collapsed": record.collapsed,
    }


def summarise(study: Any, started: float) -> dict[str, Any]:
    """The figures of a finished search: teacher, front, best at ≥ SPEEDUP×, slice ranking, collapses."""
    teachers = kdnas.StudyRecord.of(study).retimed_teachers()  # re-timed like the students
    teacher = max(teachers, key=lambda t: t.value)
    trained = [t for t in study.get_trials(deepcopy=False) if t.values and not kdnas.is_repeat(t)]
    rows = [student_row(t) for t in trained]
    sliced = [r for r in rows if r["slice_metric"] is not None]
    first_start = min((t.datetime_start.timestamp() for t in trained if t.datetime_start), default=started)
    result: dict[str, Any] = {
        "teacher": {"name": teacher.name, "value": teacher.value, "latency_ms": teacher.latency_ms},
        "students": rows,
        "front": [student_row(t) for t in kdnas.pareto_front(study)],
        "spearman_slice_vs_final": round(
            spearman([r["slice_metric"] for r in sliced], [r["value"] for r in sliced]), 3
        ),
        "restarted": sum(r["restarted"] is not None for r in rows),
        "collapsed": sum(r["collapsed"] is not None for r in rows),
        "seconds_to_first_student": round(first_start - started, 1),
        "best_at_speedup": None,
        "target": f"best student at >= {SPEEDUP:g}x lower latency within {TARGET_POINTS} points of the teacher",
        "meets_target": False,
    }
    try:
        best = kdnas.best_under_budget(study, latency_ms=teacher.latency_ms / SPEEDUP)
    except LookupError:
        return result
    gap = 100 * (teacher.value - best.values[0])
    result["best_at_speedup"] = {
        **student_row(best),
        "gap_points": round(gap, 2),
        "latency_ratio": round(teacher.latency_ms / best.values[1], 2),
    }
    result["meets_target"] = gap <= TARGET_POINTS
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="BANKING77 folder with train.tsv and test.tsv")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--time-budget-s", type=float, help="search.time_budget_s (default: none, every trial trains)")
    parser.add_argument("--seed", type=int, default=0, help="search.seed and training.seed")
    parser.add_argument("--output-dir", default=str(REPO / "runs" / "p3a-banking77"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / f"{NAME}.json"))
    args = parser.parse_args()
    data = Path(args.data or REPO / ".." / "shared" / "data" / "banking77").resolve()
    if not (data / "train.tsv").is_file() or not (data / "test.tsv").is_file():
        skip(NAME, f"no BANKING77 train.tsv/test.tsv in {data} (pass --data)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = kdnas.load_config(
        REPO / "examples" / "banking77.yaml",
        [
            f"output_dir={args.output_dir}",
            f"data.train_file={data / 'train.tsv'}",
            f"data.validation_file={data / 'test.tsv'}",
            f"search.n_trials={args.trials}",
            f"search.seed={args.seed}",
            f"training.seed={args.seed}",
            *([f"search.time_budget_s={args.time_budget_s}"] if args.time_budget_s else []),
        ],
    )
    started = time.time()
    study = kdnas.run_search(config)
    result = {
        "config": "examples/banking77.yaml",
        "trials": args.trials,
        "seed": args.seed,
        "time_budget_s": args.time_budget_s,
        **summarise(study, started),
    }
    result["seconds"] = round(time.time() - started, 1)
    out = write_result(args.out, result)
    best = result["best_at_speedup"]
    print(
        f"{NAME}: teacher {result['teacher']['value']:.4f}; best at >= {SPEEDUP:g}x: "
        + (
            f"{best['arch']} {best['value']:.4f} ({best['latency_ratio']}x, gap {best['gap_points']} points)"
            if best
            else "none"
        )
        + f"; slice/final Spearman {result['spearman_slice_vs_final']}; restarted {result['restarted']}, "
        f"collapsed {result['collapsed']} -> {out}"
    )


if __name__ == "__main__":
    main()
