"""Orchestration overhead: wall time of a real 16-trial ``run_search`` ÷ the time its trials spent training.

One real search (local Ray started by ``run_search``, SQLite study, a fresh study name in a fresh output directory
under ``runs/bench-p1/``, small students on an SST-2 subset, early stopping off so that every trial trains its full
budget, one trial at a time). The teachers are fitted and their logits cached *before* the clock starts (a one-off
per study); the clock then runs around the whole ``run_search`` call.

Trial compute is each trial's own ``train_started_at`` → ``train_finished_at`` (user_attrs written by the trial):
training, the evaluation after each epoch and saving the student. Everything else in the wall time is overhead:

- driver set-up: loading the task, loading the cached teachers and timing their latency, tokenising for the
  students, study writes, starting Ray, putting the trial inputs in the object store, starting the Tuner;
- per trial: the sampler (``study.ask``) and the study writes (driver, heartbeat, user_attrs, ``tell``), Tune's
  dispatch to the (reused) worker, fetching the inputs from the object store, building the student and measuring
  its latency, the reports back to the driver;
- Tune's shutdown after the last trial.

Tune's own ``time_total_s`` (worker side: from the trainable's start to its last report, so it also counts building
the student and its latency measurement) is read from Tune's ``result.json`` files and reported as a second ratio.

    python benchmarks/p1_overhead.py [--data DIR] [--trials 16] [--train-samples 4000] [--epochs 4]

Writes ``benchmarks/results/p1_overhead.json`` and prints one summary line (target: ratio ≤ 1.10).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import ray
import torch
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kdnas
from _common import REPO, add_common_args, require_sst2, sst2_sections, write_result

NAME = "p1_overhead"
TARGET = 1.10


def search_config(data: Path, args: argparse.Namespace, output_dir: Path, study_name: str) -> dict[str, Any]:
    """A small but real search: two teachers, small students, early stopping off, one trial at a time."""
    return {
        "output_dir": str(output_dir),
        **sst2_sections(data, args.train_samples),
        "student": {
            "space": {"depth": {"min": 1, "max": 2}, "heads": [2, 4], "head_dim": [16, 32], "ffn_ratio": [1, 2]}
        },
        "training": {"epochs": args.epochs, "seed": args.seed},
        "search": {
            "study_name": study_name,
            "n_trials": args.trials,
            "seed": args.seed,
            "max_concurrent_trials": 1,
            "resources_per_trial": {"cpu": args.trial_cpus},
            "early_stopping": {"mode": "off"},
        },
    }


def tune_times(config: Any) -> dict[int, float]:
    """Optuna trial number → Tune's ``time_total_s`` at the trial's last report, from Tune's ``result.json`` files."""
    results = kdnas.tune_results(config)
    return {number: float(last["time_total_s"]) for number, last in results.items() if "time_total_s" in last}


def trained_when(record: Any) -> tuple[float, float] | None:
    """When (Unix time) a trial's training started and finished; None for a trial that did not train."""
    if record.train_started_at is None or record.train_finished_at is None:
        return None
    return record.train_started_at, record.train_finished_at


def around_training(trial: Any, record: Any) -> dict[str, Any]:
    """A trained trial's compute, the time from being asked to training and from training to being told, and its
    latency measurement's time (an estimate; none when read from the cache)."""
    started, finished = trained_when(record) or (0.0, 0.0)
    told = trial.datetime_complete.timestamp() if trial.datetime_complete else None
    latency = record.latency
    cached = latency.cached if latency else None
    runs = ((latency.warmup or 0) + (latency.runs or 0)) * (latency.median_ms or 0.0) if latency else 0.0
    return {
        "compute_s": kdnas.training_seconds(trial),
        "asked_to_train_s": started - trial.datetime_start.timestamp(),
        "trained_to_told_s": (told - finished) if told else None,
        "latency_cached": cached,
        "latency_measure_s_est": 0.0 if cached else runs / 1000,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, name=NAME, train_samples=4000)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4, help="student epochs (default 4, kdnas's default)")
    parser.add_argument("--seed", type=int, default=0, help="sampler and training seed")
    parser.add_argument(
        "--trial-cpus",
        type=float,
        default=1.0,
        help="search.resources_per_trial.cpu (default 1, kdnas's default; torch threads per trial)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the driver, i.e. teacher fitting (default 1: 2 threads on 2 busy cores run slower)",
    )
    parser.add_argument(
        "--runs-dir",
        default=str(REPO / "runs" / "bench-p1"),
        help="a fresh output directory is made in here for every run",
    )
    args = parser.parse_args(argv)
    data = require_sst2(NAME, args.data)
    torch.set_num_threads(args.threads)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    output_dir = (Path(args.runs_dir) / stamp).resolve()
    study_name = f"p1-overhead-{stamp}"
    raw = search_config(data, args, output_dir, study_name)
    config = kdnas.load_config(raw)

    # Teachers are a one-off per study: fit them and cache their logits before the clock starts.
    started = time.perf_counter()
    task = kdnas.load_task(config.data)
    kdnas.fit_teachers(config, task)
    kdnas.teacher_reference(config, task, output_dir / "cache")
    teacher_seconds = time.perf_counter() - started

    wall_start = time.time()
    started = time.perf_counter()
    study = kdnas.run_search(config)
    wall = time.perf_counter() - started
    wall_end = wall_start + wall
    ray.shutdown()

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    records = {t.number: kdnas.StudentRecord.of(t) for t in trials}
    timed = [t for t in trials if trained_when(records[t.number]) is not None]
    if not timed:
        raise SystemExit(f"{NAME}: no trial recorded its training times (states: {states})")
    tune_total = tune_times(config)

    rows = []
    for t in trials:
        record = records[t.number]
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, "arch": record.arch_summary}
        if kdnas.is_repeat(t):  # the result of an earlier student, reused: it trained nothing
            row.update({"compute_s": 0.0, "repeat_of": record.repeat_of})
        elif trained_when(record) is not None:
            row.update(around_training(t, record))
        row["tune_time_total_s"] = tune_total.get(t.number)
        rows.append(row)

    compute = sum(kdnas.training_seconds(t) for t in trials)
    repeats = sum(kdnas.is_repeat(t) for t in trials)
    ratio = wall / compute
    per_trial = (wall - compute) / len(trials)
    starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start]
    ends = [t.datetime_complete.timestamp() for t in trials if t.datetime_complete]
    gaps = [
        b.datetime_start.timestamp() - a.datetime_complete.timestamp()
        for a, b in zip(trials, trials[1:])
        if a.datetime_complete and b.datetime_start
    ]
    breakdown = {
        "driver_setup_s": min(starts) - wall_start,
        "asked_to_train_s_sum": sum(r.get("asked_to_train_s", 0.0) for r in rows),
        "latency_measure_s_est_sum": sum(r.get("latency_measure_s_est", 0.0) for r in rows),
        "trained_to_told_s_sum": sum(r.get("trained_to_told_s") or 0.0 for r in rows),
        "between_trials_s_sum": sum(gaps),
        "after_last_trial_s": wall_end - max(ends),
    }
    tune_sum = sum(v for v in tune_total.values())
    tune_ratio = wall / tune_sum if len(tune_total) == len(trials) and tune_sum > 0 else None

    path = write_result(
        args.out,
        {
            "benchmark": NAME,
            "target": f"wall / sum(trial compute) <= {TARGET}",
            "compute_definition": "sum over trials of user_attrs train_finished_at - train_started_at (training, "
            "per-epoch evaluation, saving the student); 0 for a repeat of a student the study "
            "holds (its result reused, nothing trained)",
            "ratio": ratio,
            "meets_target": ratio <= TARGET,
            "per_trial_overhead_s": per_trial,
            "wall_s": wall,
            "compute_s": compute,
            "tune_time_total_s_sum": tune_sum if tune_total else None,
            "ratio_vs_tune_time_total_s": tune_ratio,
            "breakdown_s": breakdown,
            "teacher_seconds_before_clock": teacher_seconds,
            "trials": len(trials),
            "states": states,
            "repeats": repeats,
            "train_examples": len(task.train),
            "eval_examples": len(task.eval),
            "seeds": {"sampler": args.seed, "training": args.seed, "data_subset": config.data.seed},
            "args": vars(args),
            "study": {"name": study_name, "storage": config.storage_url, "output_dir": str(output_dir)},
            "config": config.model_dump(mode="json"),
            "per_trial": rows,
        },
    )
    tune_part = f", {tune_ratio:.3f} vs Tune's time_total_s" if tune_ratio is not None else ""
    print(
        f"{NAME}: {len(trials)} trials ({repeats} repeats reused, not trained), "
        f"wall {wall:.1f} s / trial compute {compute:.1f} s = {ratio:.3f} "
        f"(target ≤ {TARGET}{tune_part}); overhead {per_trial:.2f} s per trial "
        f"(set-up {breakdown['driver_setup_s']:.1f} s, median trial compute "
        f"{statistics.median(r['compute_s'] for r in rows if r.get('compute_s')):.1f} s) → {path}"
    )


if __name__ == "__main__":
    main()
