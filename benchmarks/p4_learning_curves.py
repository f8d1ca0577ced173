"""P4, tabulated: every student of the default space trained in full once, its learning curve recorded, then early
stopping rules replayed on those curves.

P4 proper (``p4_early_stopping.py``) costs ~70 minutes of this machine for one pair of arms over 3 seeds, so it
can only confirm a rule, not choose one. Here, as in syne-tune's tabulated NAS benchmarks, each student of the
default search space (SST-2, P4's settings: default initialisation, ``--train-samples`` examples, ``--epochs``
epochs) is trained once, in full, with :func:`kdnas.train_student`, and its ``learning_curve`` (the metric at each
rung inside the first epoch and after each epoch, with the training seconds so far) is journaled. Then:

* **predictivity**: the Spearman rank correlation between each rung's metric and the final one, over all students
  and within latency bins (students of similar latency), and how many final-front students sit in the bottom half
  of their bin at each rung (what ASHA's median cut within latency bins, kdnas's earlier rule, stopped);
* **replay**: searches with ``--workers`` concurrent trials, students drawn in a random order (``--replays`` seeds),
  judged by kdnas's own scheduler (:func:`kdnas.make_scheduler`) at each rung, with each step
  charged its recorded training seconds, the evaluations the arm makes (estimated from the curve) and
  ``--trial-overhead-s`` per trial, each architecture's latency measured alone after training. Per arm: the mean
  compute to reach 90 % of the space's hypervolume (range normalisation, as P4) and its ratio to no stopping.

    python benchmarks/p4_learning_curves.py [--data DIR] [--train-samples 500] [--epochs 3] [--replays 100]

Writes ``benchmarks/results/p4_learning_curves.json``; trained students are journaled in
``<output-dir>/curves.jsonl`` (rerunning the command skips them).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kdnas
from _common import add_common_args, require_sst2, sst2_sections, write_result
from p4_early_stopping import FRACTION, anytime_curve, area, measures, time_to

NAME = "p4_learning_curves"
LATENCY_BINS = 3
"""Equal-count latency bins the predictivity is also measured within (students of similar latency compete)."""
GRACES = (1.0, 0.5, 0.25)
"""The stopping arms replayed (grace epochs; the reduction factor and margin stay the config's defaults)."""


def curves_config(data: Path, args: argparse.Namespace, grace: float = 0.25, mode: str = "on") -> Any:
    """P4's config, with early stopping ``mode`` at ``grace`` (on at 0.25: trials report the rungs inside the first
    epoch)."""
    return kdnas.load_config(
        {
            "output_dir": str(Path(args.output_dir).resolve()),
            **sst2_sections(data, args.train_samples, args.teacher_epochs, gpt2_teacher=False),
            "training": {"epochs": args.epochs, "seed": args.seed},
            "latency": {"warmup": 2, "runs": 10},
            "search": {"study_name": "p4-curves", "early_stopping": {"mode": mode, "grace_epochs": grace}},
        }
    )


def space_students(config: Any) -> list[dict[str, int]]:
    """Every architecture of ``config``'s student space, as the sampler's parameters."""
    space = config.student.space
    return [
        {"num_layers": layers, "num_heads": heads, "head_dim": head_dim, "ffn_ratio": ffn}
        for layers, heads, head_dim, ffn in itertools.product(
            range(space.depth.min, space.depth.max + 1), space.heads, space.head_dim, space.ffn_ratio
        )
    ]


def tabulate(config: Any, journal: Path) -> list[dict[str, Any]]:
    """Train every student of the space in full (those not journaled yet) and return all journaled records."""
    done = [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []
    seen = {json.dumps(r["params"], sort_keys=True) for r in done}
    todo = [p for p in space_students(config) if json.dumps(p, sort_keys=True) not in seen]
    total = len(done) + len(todo)
    if todo:
        students = kdnas.prepare_students(config)
        for number, params in enumerate(todo, start=len(done)):
            started = time.perf_counter()
            report = kdnas.train_student(students, params, trial_number=number)
            record = {
                "params": params,
                "arch": report.attrs["arch_summary"],
                "latency_ms": report.latency_ms,
                "value": report.value,
                "curve": report.attrs["learning_curve"],
                "wall_s": round(time.perf_counter() - started, 2),
            }
            with journal.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            done.append(record)
            print(
                f"{len(done)}/{total} {record['arch']}: {record['value']:.4f} at {record['latency_ms']:.2f} ms, "
                f"{record['wall_s']:.1f} s",
                flush=True,
            )
    return done


def retime(config: Any, records: list[dict[str, Any]], cache: Path, rounds: int = 3) -> None:
    """Give each record the latency of its architecture measured alone after training, in ``rounds`` interleaved
    rounds (the fastest round's median, as ``kdnas retime`` keeps), cached in ``cache``; the latency measured
    before training stays as ``latency_ms_in_training``."""
    if not cache.exists():
        medians: dict[str, list[float]] = {r["arch"]: [] for r in records}
        for _ in range(rounds):
            for r in records:
                arch = kdnas.StudentArch.from_dict(r["params"])
                medians[r["arch"]].append(kdnas.measure_architecture(config, arch).median_ms)
        cache.write_text(json.dumps({arch: kdnas.fastest_round(values) for arch, values in medians.items()}))
    retimed = json.loads(cache.read_text())
    for r in records:
        r["latency_ms_in_training"] = r.get("latency_ms_in_training", r["latency_ms"])
        r["latency_ms"] = retimed[r["arch"]]


def average_ranks(values: list[float]) -> np.ndarray:
    """1-based ranks of ``values``, ties sharing their mean rank."""
    array = np.asarray(values, dtype=float)
    ranks = np.empty(len(array))
    ranks[array.argsort(kind="mergesort")] = np.arange(1, len(array) + 1)
    for value in np.unique(array):
        ranks[array == value] = ranks[array == value].mean()
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` (NaN for fewer than 3 pairs or a constant side)."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(np.corrcoef(average_ranks(x), average_ranks(y))[0, 1])


def value_at(record: dict[str, Any], epoch: float) -> float:
    """The metric of ``record``'s student after ``epoch`` epochs."""
    return next(v for x, v, _ in record["curve"] if abs(x - epoch) < 1e-9)


def latency_bins(records: list[dict[str, Any]], bins: int) -> list[list[int]]:
    """Indices of ``records`` in ``bins`` equal-count latency bins (as the scheduler splits a rung)."""
    order = sorted(range(len(records)), key=lambda i: records[i]["latency_ms"])
    return [[i for rank, i in enumerate(order) if rank * bins // len(order) == b] for b in range(bins)]


def front(records: list[dict[str, Any]]) -> set[int]:
    """Indices of the students on the (final metric, latency) Pareto front."""
    points = [(r["value"], r["latency_ms"]) for r in records]
    return {
        i for i, (v, lat) in enumerate(points) if not any(w >= v and m <= lat and (w > v or m < lat) for w, m in points)
    }


def predictivity(records: list[dict[str, Any]], bins: int) -> dict[str, dict[str, Any]]:
    """Per rung: how the metric there ranks the final metric, overall and within latency bins, and how many
    final-front students are in the bottom half of their bin there (a reduction factor of 2 may stop those)."""
    finals = [r["value"] for r in records]
    on_front, groups = front(records), latency_bins(records, bins)
    out: dict[str, dict[str, Any]] = {}
    for epoch in [x for x, _, _ in records[0]["curve"]][:-1]:
        at = [value_at(r, epoch) for r in records]
        below = 0
        for group in groups:
            median = statistics.median(at[i] for i in group)
            below += sum(at[i] < median for i in group if i in on_front)
        out[f"{epoch:g}"] = {
            "spearman_all": round(spearman(at, finals), 3),
            "spearman_within_bins": round(  # a bin where the rung's metric is constant has none
                float(np.nanmean([spearman([at[i] for i in g], [finals[i] for i in g]) for g in groups])), 3
            ),
            "front_students_below_bin_median": below,
        }
    out["front_size"] = {"students": len(on_front)}
    return out


def step_costs(record: dict[str, Any]) -> tuple[float, float]:
    """(training seconds per epoch, seconds per evaluation) fitted to ``record``'s curve: the seconds at its k-th
    point are ``epochs · a + k · e`` (least squares, ``e`` ≥ 0)."""
    epochs = np.array([x for x, _, _ in record["curve"]])
    seconds = np.array([s for _, _, s in record["curve"]])
    counts = np.arange(1, len(epochs) + 1)
    (per_epoch, per_eval), *_ = np.linalg.lstsq(np.stack([epochs, counts], axis=1), seconds, rcond=None)
    if per_eval < 0:
        return float(seconds[-1] / epochs[-1]), 0.0
    return float(per_epoch), float(per_eval)


def replay(
    records: list[dict[str, Any]], order: list[int], config: Any, args: argparse.Namespace, eval_rows: int
) -> tuple[list[tuple[float, tuple[float, float]]], list[tuple[float, float]], int]:
    """One search replayed: students started in ``order`` on ``args.workers`` workers until ``args.time_budget_s``
    of wall time, judged at ``config``'s rungs by its scheduler (none when stopping is off). Returns the finished
    students (moment, (metric, latency)), every trial's (start, end) and how many were stopped."""
    scheduler = kdnas.make_scheduler(config, "latency_ms", eval_rows)
    ladder = scheduler.rungs if scheduler is not None else []
    reports = sorted({*ladder, *range(1, args.epochs + 1)})  # what a trial reports: rungs and every epoch's end
    events: list[tuple[float, int, int]] = []  # (moment, student, index into ``reports``)
    starts: dict[int, float] = {}
    spans: list[tuple[float, float]] = []
    finished: list[tuple[float, tuple[float, float]]] = []
    queue, stopped = list(order), 0

    def report_time(student: int, index: int) -> float:
        per_epoch, per_eval = step_costs(records[student])
        return starts[student] + args.trial_overhead_s + per_epoch * reports[index] + per_eval * (index + 1)

    def start(moment: float) -> None:
        if queue and moment < args.time_budget_s:
            student = queue.pop(0)
            starts[student] = moment
            events.append((report_time(student, 0), student, 0))

    for _ in range(args.workers):
        start(0.0)
    while events:
        events.sort()
        moment, student, index = events.pop(0)
        if moment > args.time_budget_s:  # cut by the time budget
            spans.append((starts[student], args.time_budget_s))
            continue
        record, last = records[student], index == len(reports) - 1
        if scheduler is not None:  # Tune hands the scheduler every report, the last one too
            result = {"accuracy": value_at(record, reports[index]), "latency_ms": record["latency_ms"]}
            decision = scheduler.on_trial_result(
                None, SimpleNamespace(trial_id=str(student), config={}), {**result, scheduler.time_attr: reports[index]}
            )
            if not last and decision == "STOP":
                stopped += 1
                spans.append((starts[student], moment))
                start(moment)
                continue
        if not last:
            events.append((report_time(student, index + 1), student, index + 1))
            continue
        finished.append((moment, (record["value"], record["latency_ms"])))
        spans.append((starts[student], moment))
        start(moment)
    return finished, spans, stopped


def replays(records: list[dict[str, Any]], data: Path, args: argparse.Namespace, eval_rows: int) -> dict[str, Any]:
    """Every arm (stopping off, and on at each of :data:`GRACES`) replayed over ``args.replays`` random orders."""
    every_point = [(r["value"], r["latency_ms"]) for r in records]
    scale = measures(every_point, 0.5, max(lat for _, lat in every_point))["range"]
    best = kdnas.hypervolume([scale["normalise"](p) for p in every_point], scale["reference"])
    arms = {"off": curves_config(data, args, mode="off")}
    arms.update({f"grace{g:g}": curves_config(data, args, grace=g) for g in GRACES})
    out: dict[str, Any] = {}
    for arm, config in arms.items():
        times, reached, aucs, stops, trained = [], 0, [], [], []
        for seed in range(args.replays):
            order = list(range(len(records)))
            random.Random(seed).shuffle(order)
            finished, spans, stopped = replay(records, order, config, args, eval_rows)
            curve = anytime_curve(finished, spans, scale)
            hit = time_to(curve, FRACTION * best)
            reached += hit is not None
            times.append(hit if hit is not None else curve[-1][0])
            aucs.append(area(curve, args.workers * args.time_budget_s) / (args.workers * args.time_budget_s * best))
            stops.append(stopped)
            trained.append(len(finished))
        out[arm] = {
            "time_to_90_mean_s": round(statistics.mean(times), 1),
            "reached_90": f"{reached}/{args.replays}",
            "auc_mean": round(statistics.mean(aucs), 4),
            "stopped_mean": round(statistics.mean(stops), 1),
            "trained_in_full_mean": round(statistics.mean(trained), 1),
        }
    for arm in out:
        out[arm]["speedup_vs_off"] = round(out["off"]["time_to_90_mean_s"] / out[arm]["time_to_90_mean_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, name=NAME, train_samples=500, output_dir="bench-p4-curves")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--teacher-epochs", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--replays", type=int, default=100, help="random student orders replayed per arm")
    parser.add_argument("--workers", type=int, default=2, help="concurrent trials in a replay")
    parser.add_argument("--time-budget-s", type=float, default=600.0, help="a replay's wall-clock budget (P4's)")
    parser.add_argument(
        "--trial-overhead-s",
        type=float,
        default=1.5,
        help="per trial: start, build, measure, save (not training); P1 measured ~1 s",
    )
    args = parser.parse_args()
    data = require_sst2(NAME, args.data)
    config = curves_config(data, args)
    journal = Path(args.output_dir).resolve() / "curves.jsonl"
    journal.parent.mkdir(parents=True, exist_ok=True)
    records = tabulate(config, journal)
    retime(config, records, journal.parent / "latencies.json")
    shape = predictivity(records, LATENCY_BINS)
    eval_rows = len(kdnas.load_task(config.data).labels("eval"))
    replayed = replays(records, data, args, eval_rows)
    path = write_result(
        args.out,
        {
            "benchmark": NAME,
            "definition": __doc__.split("\n\n")[0],
            "args": {**vars(args), "data": None, "out": None, "output_dir": None},
            "students": len(records),
            "wall_s_mean": round(statistics.mean(r["wall_s"] for r in records), 1),
            "predictivity": shape,
            "replays": replayed,
            "curves": records,
            "config": config.model_dump(mode="json"),
        },
    )
    print(json.dumps({"predictivity": shape, "replays": replayed}, indent=1))
    print(f"{NAME} → {path}")


if __name__ == "__main__":
    main()
