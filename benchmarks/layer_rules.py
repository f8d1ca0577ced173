"""Which teacher layers a student inherits: ``student.inherit.layers`` rules compared on one task (#35, lever 4).

The config's students are prepared once (teacher fitted, its logits and importance cached under ``--output-dir``, as a
search does), then each architecture is trained with each rule and seed: ``uniform`` (kdnas's default: spread, first
and last teacher layer included), ``skip`` (TinyBERT's and PKD-skip's map: the top of each of S equal blocks, last
included, first not), ``importance`` (the layers with the highest block importance). Per rule: the mean final metric
over architectures and seeds and the mean difference from ``uniform`` (paired by architecture and seed).

    python benchmarks/layer_rules.py [--task banking77|sst2|demo] [--archs 2,4,32,2 3,4,32,2] [--seeds 0 1]
        [--rules uniform skip importance] [--data DIR] [--output-dir runs/layer-rules-<task>] [--out FILE]
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

NAME = "layer_rules"


def with_rule(inputs: Any, rule: str) -> Any:
    """The prepared students, sliced with layer rule ``rule`` (the same teacher, importance and data)."""
    config = inputs.config
    inherit = config.student.inherit.model_copy(update={"layers": rule})
    student = config.student.model_copy(update={"inherit": inherit})
    return replace(
        inputs, config=config.model_copy(update={"student": student}), inherit=replace(inputs.inherit, rule=rule)
    )


def train(inputs: Any, arch: dict[str, int], seed: int) -> dict[str, Any]:
    """One student's final metric and what its record says of its initialisation."""
    started = time.perf_counter()
    report = kdnas.train_student(inputs, arch, seed=seed, trial_number=seed)
    record = kdnas.StudentRecord.from_attrs(report.attrs)
    return {
        "seed": seed,
        "value": report.value,
        "slice_metric": record.slice_metric.value if record.slice_metric else None,
        "teacher_layers": record.init.layers if record.init else None,
        "collapsed": record.collapsed,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["demo", *TASK_DATA], default="banking77")
    parser.add_argument("--archs", nargs="+", default=["2,4,32,2", "3,4,32,2"], help="layers,heads,head_dim,ffn_ratio")
    parser.add_argument("--rules", nargs="+", default=["uniform", "skip", "importance"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--train-samples", type=int)
    parser.add_argument("--data", help="the task's folder (default ../shared/data/<task> beside the checkout)")
    parser.add_argument("--output-dir")
    parser.add_argument("--out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    output_dir = args.output_dir or str(REPO / "runs" / f"layer-rules-{args.task}")
    config = task_config(NAME, args.task, data=args.data, train_samples=args.train_samples, output_dir=output_dir)
    config = config.model_copy(update={"search": config.search.model_copy(update={"study_name": NAME})})
    inputs = kdnas.prepare_students(config)
    out = Path(args.out or REPO / "benchmarks" / "results" / f"{NAME}_{args.task}.json")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {rule: {arch: [] for arch in args.archs} for rule in args.rules}
    for seed in args.seeds:  # every rule on a seed before the next seed: a run cut short still pairs what it did
        for arch in args.archs:
            for rule in args.rules:
                runs[rule][arch].append(train(with_rule(inputs, rule), parse_student(arch), seed))
            write_result(out, result(args, runs))
    print(f"{NAME} ({args.task}): {result(args, runs)['summary']} -> {out}")


def result(args: argparse.Namespace, runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """The runs so far and, per rule, the mean metric and the mean paired difference from the first rule."""
    baseline = runs[args.rules[0]]
    summary = {
        rule: {
            "mean": round(statistics.mean(r["value"] for arch in args.archs for r in by_arch[arch]), 4),
            f"mean_minus_{args.rules[0]}_points": round(
                100
                * statistics.mean(
                    r["value"] - b["value"] for arch in args.archs for r, b in zip(by_arch[arch], baseline[arch])
                ),
                2,
            ),
            "runs": sum(len(by_arch[arch]) for arch in args.archs),
        }
        for rule, by_arch in runs.items()
        if all(by_arch[arch] for arch in args.archs)
    }
    return {"task": args.task, "archs": args.archs, "seeds": args.seeds, "summary": summary, "runs": runs}


if __name__ == "__main__":
    main()
