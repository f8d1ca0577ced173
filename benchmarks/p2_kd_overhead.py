"""KD overhead: one student trial with 2-teacher logit KD ÷ the same trial with cross-entropy only.

The same student, data, steps and seed, once with the two teachers' cached logits combined by ``kd.combiner``
(``kd.alpha`` 0.5: CE + T²·KL) and once with ``kd.alpha: 1.0`` (hard labels only; no teacher logits are read). Both
train on the labelled examples alone (no transfer set) through kdnas's own trial body, ``kdnas.train_student``, which is
timed as a whole: building the student, its latency (from the latency cache after the first, untimed, warm-up run of
each), training with the evaluation after every epoch, and saving the student. Runs alternate (KD, CE, then CE, KD, …)
so drift in a shared machine's load hits both alike; the figure is the ratio of the medians over ``--repeats`` runs of
each. Two more ratios are reported: of the part after the latency measurement (the trial's ``train_started_at`` →
``train_finished_at``), and of the process's CPU time (``time.process_time``), which varies less than wall time on a
machine shared with other jobs. Runs use 1 torch thread by default, as a search trial does with
``resources_per_trial.cpu: 1``.

The teachers (MiniLM fine-tuned, a GPT-2 trained from scratch) are fitted and their logits cached first, untimed.

    python benchmarks/p2_kd_overhead.py [--data DIR] [--train-samples 2000] [--epochs 2] [--repeats 7]

Writes ``benchmarks/results/p2_kd_overhead.json`` and prints one summary line (target: ratio ≤ 1.15).
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

NAME = "p2_kd_overhead"
TARGET = 1.15


def base_config(data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark's fixed settings: SST-2 subset without a transfer set, two teachers, one training budget."""
    sections = sst2_sections(data, args.train_samples)
    sections["data"]["transfer"] = {"augment_copies": 0}
    return {
        "output_dir": str(Path(args.output_dir).resolve()),
        **sections,
        "training": {"epochs": args.epochs, "batch_size": 32, "seed": args.seed},
        "latency": {"warmup": 2, "runs": 10},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, name=NAME, train_samples=2000, output_dir="bench-p2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each variant (median)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every run")
    parser.add_argument(
        "--student", default="2,4,32,4", help="layers,heads,head_dim,ffn_ratio (default 2,4,32,4: 2 layers, width 128)"
    )
    parser.add_argument(
        "--combiner",
        choices=["mean", "confidence", "gradient"],
        default="mean",
        help="how the two teachers are combined in the KD run (default mean)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the timed runs (default 1, as a search trial with resources_per_trial.cpu 1)",
    )
    args = parser.parse_args(argv)
    data = require_sst2(NAME, args.data)
    student = parse_student(args.student)

    base = base_config(data, args)
    config = kdnas.load_config(base)
    task = kdnas.load_task(config.data)
    references, teacher_seconds = fit_teachers_timed(config, task)
    torch.set_num_threads(args.threads)  # teachers were fitted with torch's default threads

    variants = {
        "kd": {**base, "kd": {"alpha": 0.5, "combiner": args.combiner}, "search": {"study_name": "p2-kd"}},
        "ce": {**base, "kd": {"alpha": 1.0}, "search": {"study_name": "p2-ce"}},
    }
    students = {name: kdnas.prepare_students(kdnas.load_config(raw), task) for name, raw in variants.items()}

    def timed(name: str, number: int) -> dict[str, float]:
        started, cpu_started = time.perf_counter(), time.process_time()
        report = kdnas.train_student(students[name], student, trial_number=number)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        record = kdnas.StudentRecord.from_attrs(report.attrs)
        return {
            "seconds": seconds,
            "cpu_s": cpu_seconds,
            "train_s": record.train_finished_at - record.train_started_at,
            task.metric: report.value,
        }

    warmup = {name: timed(name, 0)["seconds"] for name in variants}  # untimed: fills the latency cache
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        order = ("kd", "ce") if repeat % 2 == 0 else ("ce", "kd")
        for name in order:
            run = {"variant": name, "repeat": repeat, **timed(name, repeat + 1)}
            runs.append(run)
            logging.info(
                "%s repeat %d: %.2f s (training %.2f s), %s %.4f",
                name,
                repeat,
                run["seconds"],
                run["train_s"],
                task.metric,
                run[task.metric],
            )

    seconds = {name: [r["seconds"] for r in runs if r["variant"] == name] for name in variants}
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    train_medians = {name: statistics.median(r["train_s"] for r in runs if r["variant"] == name) for name in variants}
    cpu_medians = {name: statistics.median(r["cpu_s"] for r in runs if r["variant"] == name) for name in variants}
    ratio = medians["kd"] / medians["ce"]
    path = write_result(
        args.out,
        {
            "benchmark": NAME,
            "target": f"median train_student seconds, 2-teacher KD / CE only <= {TARGET}",
            "ratio": ratio,
            "meets_target": ratio <= TARGET,
            "median_s": medians,
            "train_only_ratio": train_medians["kd"] / train_medians["ce"],
            "train_only_median_s": train_medians,
            "cpu_time_ratio": cpu_medians["kd"] / cpu_medians["ce"],
            "cpu_time_median_s": cpu_medians,
            "min_s": {name: min(values) for name, values in seconds.items()},
            "max_s": {name: max(values) for name, values in seconds.items()},
            "warmup_s": warmup,
            "student": student,
            "combiner": args.combiner,
            "train_examples": len(task.train),
            "eval_examples": len(task.eval),
            "epochs": args.epochs,
            "repeats": args.repeats,
            "seeds": {"training": args.seed, "data_subset": config.data.seed},
            "threads": args.threads,
            "teachers": [
                {"name": r.name, "value": r.value, "latency_ms": r.latency_ms, "params": r.params} for r in references
            ],
            "teacher_seconds": teacher_seconds,
            "args": vars(args),
            "config": {name: kdnas.load_config(raw).model_dump(mode="json") for name, raw in variants.items()},
            "runs": runs,
        },
    )
    print(
        f"{NAME}: 2-teacher KD ({args.combiner}) {medians['kd']:.2f} s vs CE only {medians['ce']:.2f} s per trial "
        f"= {ratio:.3f} (target ≤ {TARGET}; training alone {train_medians['kd'] / train_medians['ce']:.3f}, CPU time "
        f"{cpu_medians['kd'] / cpu_medians['ce']:.3f}; "
        f"median of {args.repeats}, {len(task.train)} examples × {args.epochs} epochs) → {path}"
    )


if __name__ == "__main__":
    main()
