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
* **replay**: searches with ``--workers`` concurrent trials replayed without Ray, ``--replays`` seeds per arm:
  kdnas's own searcher (:func:`kdnas.make_searcher`: the arm's sampler, repeats reused, promotions once the space is
  covered) proposes the students and kdnas's scheduler (:func:`kdnas.make_scheduler`) judges them at each rung, each
  step charged its recorded training seconds (× ``--cost-scale``), the evaluations the arm makes (estimated from the
  curve) and ``--trial-overhead-s`` per trial, each architecture's latency measured alone after training. Per arm:
  the mean compute to reach 90 % of the space's hypervolume (range normalisation, as P4) and its ratio to the same
  sampler without stopping. With several tabulations of the space (``--curves-from A.json B.json``: the same
  students trained with different seeds), each training in a replay follows one of them, drawn at random, and the
  students are scored by their results averaged over the tabulations, so no stopping rule is judged against one
  draw of training noise.

    python benchmarks/p4_learning_curves.py [--data DIR | --task demo] [--epochs 3] [--replays 100] [--startup-trials N]
        [--curves-from JSON [JSON ...]] [--plot PNG]

Writes ``benchmarks/results/p4_learning_curves.json`` (each arm with its mean anytime curve; ``--plot`` draws them);
trained students are journaled in ``<output-dir>/curves.jsonl`` (rerunning the command skips them).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import logging
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kdnas
from _common import add_common_args, require_sst2, screenshot, sst2_sections, write_result
from p4_early_stopping import FRACTION, anytime_curve, area, measures, time_to

NAME = "p4_learning_curves"
CURVE_POINTS = 61
"""Points of the mean anytime curve each arm's replays are summed up in (and plotted with ``--plot``)."""
LATENCY_BINS = 3
"""Equal-count latency bins the predictivity is also measured within (students of similar latency compete)."""
ARMS = (
    "tpe-off",
    "tpe-grace1",
    "tpe-grace0.5",
    "tpe-grace0.25",
    "random-off",
    "random-grace1",
    "random-grace0.5",
    "random-grace0.25",
    "tpe-grace1-metric",
    "tpe-grace0.5-metric",
    "tpe-grace0.25-metric",
)
"""The arms replayed: ``<sampler>-off`` (no early stopping) or ``<sampler>-grace<epochs>`` (kdnas's scheduler from that
grace, judging students by the label probability, the default; the margin stays the config's default), with
``-metric`` judging them by the task metric instead (the rule before 2026-12-04) and ``-margin<k>`` (not run by
default) a margin of k standard errors; ``<sampler>-oracle<epochs>`` (not run by default) replays
:class:`FrontOracle` at that grace instead of kdnas's scheduler, ``<sampler>-knows<epochs>`` (not run by default)
:class:`OwnFinalOracle`."""


def params_key(params: dict[str, Any]) -> str:
    """One student's sampled parameters as a key (the journal, the replay and the oracle match students by it)."""
    return json.dumps(params, sort_keys=True)


class FrontOracle:
    """A stopping rule that knows the end: at the first rung of ``scheduler`` (kdnas's, for its rungs), every student
    off the final (metric, latency) front of ``records`` is stopped and every front student runs on; a student
    proposed again after a stop (a promotion) trains in full. What stopping alone could save if early metrics were
    perfect, for comparison with kdnas's scheduler."""

    def __init__(self, records: list[dict[str, Any]], scheduler: kdnas.ParetoStopping) -> None:
        self.rungs, self.stop_reasons = scheduler.rungs, {}
        self._time_attr = scheduler.time_attr
        self._on_front = {params_key(records[i]["params"]) for i in front(records)}
        self._params = list(records[0]["params"])
        self._stopped: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        student = params_key({key: trial.config[key] for key in self._params})
        first_rung = abs(result[self._time_attr] - self.rungs[0]) < 1e-9
        if first_rung and student not in self._on_front and student not in self._stopped:
            self._stopped.add(student)
            self.stop_reasons[trial.trial_id] = "off the final front"
            return "STOP"
        return "CONTINUE"


class OwnFinalOracle:
    """The best any rule judging a student from its own training could do: at the first rung of ``scheduler``, it
    knows the final metric this very training will reach (``final_of(trial_id)``) and stops the student when a student
    already finished, at least as fast, ended above it; a student proposed again after a stop (a promotion) trains in
    full. With several tabulations, what keeps it from :class:`FrontOracle`'s gain is training noise alone."""

    def __init__(self, scheduler: kdnas.ParetoStopping, metric: str, student_params: list[str], final_of: Any) -> None:
        self.rungs, self.stop_reasons = scheduler.rungs, {}
        self._time_attr, self._metric, self._final_of = scheduler.time_attr, metric, final_of
        self._finished: list[tuple[float, float]] = []  # (final metric, latency) of every student trained in full
        self._params = list(student_params)
        self._stopped: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        latency = result["latency_ms"]
        if kdnas.TrialReport.from_result(result, self._metric).completed:
            self._finished.append((result[self._metric], latency))
            return "CONTINUE"
        if abs(result[self._time_attr] - self.rungs[0]) >= 1e-9:  # it judges at the first rung only
            return "CONTINUE"
        final = self._final_of(trial.trial_id)
        beaten = any(value > final and lat <= latency for value, lat in self._finished)
        student = params_key({key: trial.config[key] for key in self._params})
        if beaten and student not in self._stopped:
            self._stopped.add(student)
            # the record's documented form of a stop (README, trial states), so the searcher promotes it as kdnas's
            reason = f"stopped early after epoch {self.rungs[0]:g}: its final {self._metric} beaten by a faster student"
            self.stop_reasons[trial.trial_id] = reason
            return "STOP"
        return "CONTINUE"


def curves_config(
    data: Path | None, args: argparse.Namespace, grace: float = 0.25, mode: str = "on", search: dict | None = None
) -> Any:
    """P4's config on SST-2 in ``data`` (None: the demo task, with its default teachers), with early stopping
    ``mode`` at ``grace`` (on at 0.25: trials report the rungs inside the first epoch) and the ``search`` keys (its
    ``early_stopping`` keys join those)."""
    sections = sst2_sections(data, args.train_samples, args.teacher_epochs, gpt2_teacher=False) if data else {}
    search = dict(search or {})
    stopping = {"mode": mode, "grace_epochs": grace, **search.pop("early_stopping", {})}
    return kdnas.load_config(
        {
            "output_dir": str(Path(args.output_dir).resolve()),
            **sections,
            "training": {"epochs": args.epochs, "seed": args.seed},
            "latency": {"warmup": 2, "runs": 10},
            "search": {
                "study_name": "p4-curves",
                "early_stopping": stopping,
                **search,
            },
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
    seen = {params_key(r["params"]) for r in done}
    todo = [p for p in space_students(config) if params_key(p) not in seen]
    total = len(done) + len(todo)
    if todo:
        students = kdnas.prepare_students(config)
        for number, params in enumerate(todo, start=len(done)):
            started = time.perf_counter()
            report = kdnas.train_student(students, params, trial_number=number)
            trained = kdnas.StudentRecord.from_attrs(report.attrs)
            record = {
                "params": params,
                "arch": trained.arch_summary,
                "latency_ms": report.latency_ms,
                "value": report.value,
                "curve": [point.to_attr() for point in trained.learning_curve or []],
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


def point_at(record: dict[str, Any], epoch: float) -> list[float]:
    """The learning-curve point of ``record``'s student after ``epoch`` epochs."""
    return next(point for point in record["curve"] if abs(point[0] - epoch) < 1e-9)


def latency_bins(records: list[dict[str, Any]], bins: int) -> list[list[int]]:
    """Indices of ``records`` in ``bins`` equal-count latency bins (as the scheduler splits a rung)."""
    order = sorted(range(len(records)), key=lambda i: records[i]["latency_ms"])
    return [[i for rank, i in enumerate(order) if rank * bins // len(order) == b] for b in range(bins)]


def front(records: list[dict[str, Any]]) -> set[int]:
    """Indices of the students on the (final metric, latency) Pareto front."""
    ranks = kdnas.pareto_ranks({i: (r["value"], r["latency_ms"]) for i, r in enumerate(records)})
    return {i for i, rank in ranks.items() if rank == 0}


def predictivity(records: list[dict[str, Any]], bins: int) -> dict[str, dict[str, Any]]:
    """Per rung: how the metric there ranks the final metric, overall and within latency bins, how many final-front
    students are in the bottom half of their bin there (a reduction factor of 2 may stop those) and, where the curves
    record it, how the label probability there ranks the final metric."""
    finals = [r["value"] for r in records]
    on_front, groups = front(records), latency_bins(records, bins)
    out: dict[str, dict[str, Any]] = {}
    for epoch in [point[0] for point in records[0]["curve"]][:-1]:
        points = [point_at(r, epoch) for r in records]
        at = [point[1] for point in points]
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
        if all(len(point) > 3 for point in points):  # curves that record the label probability
            probability = [point[3] for point in points]
            out[f"{epoch:g}"]["spearman_label_probability_all"] = round(spearman(probability, finals), 3)
    out["front_size"] = {"students": len(on_front)}
    return out


def step_costs(record: dict[str, Any]) -> tuple[float, float]:
    """(training seconds per epoch, seconds per evaluation) fitted to ``record``'s curve: the seconds at its k-th
    point are ``epochs · a + k · e`` (least squares, ``e`` ≥ 0)."""
    epochs = np.array([point[0] for point in record["curve"]])
    seconds = np.array([point[2] for point in record["curve"]])
    counts = np.arange(1, len(epochs) + 1)
    (per_epoch, per_eval), *_ = np.linalg.lstsq(np.stack([epochs, counts], axis=1), seconds, rcond=None)
    if per_eval < 0:
        return float(seconds[-1] / epochs[-1]), 0.0
    return float(per_epoch), float(per_eval)


def arm_config(data: Path | None, args: argparse.Namespace, arm: str, seed: int) -> Any:
    """The config of ``arm`` (``<sampler>-off``, ``-grace<epochs>[-metric][-margin<k>]``, ``-oracle<epochs>`` or
    ``-knows<epochs>``) for replay ``seed``: the sampler's seed, a trial budget the time budget ends first,
    ``args.startup_trials`` (default: the config's)."""
    sampler, stopping, *options = arm.split("-")
    grace = (
        float(stopping.removeprefix("grace").removeprefix("oracle").removeprefix("knows")) if stopping != "off" else 1.0
    )
    search: dict[str, Any] = {"sampler": sampler, "seed": seed, "n_trials": 1000}
    rule: dict[str, Any] = {}
    for option in options:  # "metric" (judge by it), "margin<standard errors>"
        if option.startswith("margin"):
            rule["margin_se"] = float(option.removeprefix("margin"))
        else:
            rule["judge_by"] = option
    if rule:
        search["early_stopping"] = rule
    if args.startup_trials is not None:
        search["startup_trials"] = args.startup_trials
    return curves_config(data, args, grace=grace, mode="off" if stopping == "off" else "on", search=search)


def aligned(tabulations: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """The ``tabulations`` of one space, each ordered as the first (by the students' parameters)."""
    order = [params_key(r["params"]) for r in tabulations[0]]
    by_key = [{params_key(r["params"]): r for r in records} for records in tabulations]
    if any(set(keys) != set(order) for keys in by_key):
        raise SystemExit("the tabulations replayed together must hold the same students")
    return [[keys[key] for key in order] for keys in by_key]


def expected(tabulations: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each student of the aligned ``tabulations`` with its final metric and latency averaged over them: what a
    student can be expected to reach, the standard replays are scored against."""
    return [
        {
            **runs[0],
            "value": statistics.mean(r["value"] for r in runs),
            "latency_ms": statistics.mean(r["latency_ms"] for r in runs),
        }
        for runs in zip(*tabulations)
    ]


def replay(
    tabulations: list[list[dict[str, Any]]],
    config: Any,
    args: argparse.Namespace,
    eval_rows: int,
    oracle: str | None = None,
) -> tuple[list[tuple[float, tuple[float, float]]], list[tuple[float, float]], dict[str, int]]:
    """One search replayed without Ray on ``args.workers`` workers until ``args.time_budget_s`` of wall time:
    kdnas's own searcher (:func:`kdnas.make_searcher`: the configured sampler, repeats reused, promotions once the
    space is covered) proposes the students, kdnas's scheduler judges them at ``config``'s rungs (none when stopping
    is off; at those rungs :class:`FrontOracle` with ``oracle="oracle"``, :class:`OwnFinalOracle` with
    ``"knows"``), and each student's steps take the seconds its curve recorded, its evaluations and
    ``args.trial_overhead_s``. Each training (a promotion too) follows the curve
    of one of the aligned ``tabulations`` (training runs of the space with different seeds), drawn at random with the
    replay's seed, as tabulated benchmarks draw one of their seeds per evaluation; a finished student is scored by
    its :func:`expected` result. Returns the finished students (moment, (metric, latency)), every trial's (start,
    end) and counts of students stopped, promoted and repeats."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one in-memory study per replay: no line for each
    records = expected(tabulations)
    draws = np.random.default_rng(config.search.seed)
    scheduler: Any = kdnas.make_scheduler(config, "latency_ms", eval_rows)
    if scheduler is not None and oracle == "oracle":
        scheduler = FrontOracle(records, scheduler)
    elif scheduler is not None and oracle == "knows":
        scheduler = OwnFinalOracle(
            scheduler, config.data.metric, list(records[0]["params"]), lambda trial: final_of(trials[trial])
        )
    storage = optuna.storages.InMemoryStorage()
    stop_reasons = scheduler.stop_reasons if scheduler is not None else None
    searcher = kdnas.make_searcher(config, storage, stop_reasons=stop_reasons)
    reports = sorted({*(scheduler.rungs if scheduler is not None else []), *range(1, args.epochs + 1)})
    by_params = {params_key(r["params"]): i for i, r in enumerate(records)}
    costs = [[step_costs(r) for r in runs] for runs in tabulations]
    trials: dict[str, tuple[int, float, dict[str, Any], int]] = {}  # Tune id → (student, start, suggestion, draw)
    events: list[tuple[float, int, int]] = []  # (moment, trial, index into ``reports``): a heap
    spans: list[tuple[float, float]] = []
    finished: list[tuple[float, tuple[float, float]]] = []
    free, exhausted = args.workers, False

    def final_of(trial: tuple[int, float, dict[str, Any], int]) -> float:
        student, _, _, draw = trial
        return tabulations[draw][student]["value"]

    def report_time(trial: int, index: int) -> float:
        student, began, _, draw = trials[str(trial)]
        per_epoch, per_eval = costs[draw][student]
        return began + args.trial_overhead_s + args.cost_scale * (per_epoch * reports[index] + per_eval * (index + 1))

    def result(student: int, draw: int, index: int) -> dict[str, Any]:
        record, epoch = tabulations[draw][student], reports[index]
        point = point_at(record, epoch)
        return kdnas.TrialReport(
            value=point[1],
            label_probability=(point[3], point[4]) if len(point) > 3 else None,  # curves from before 2026-12-04: none
            latency_ms=record["latency_ms"],
            epoch=epoch,
            completed=index == len(reports) - 1,
            attrs={  # what promotions rank stopped students by (and name them with)
                "arch_summary": record["arch"],
                "learning_curve": [p for p in record["curve"] if p[0] <= epoch + 1e-9],
                "latency": {"median_ms": record["latency_ms"]},
            },
        ).to_result(config.data.metric)

    def fill(moment: float) -> None:
        """Start the searcher's next students on the free workers (Tune asks again after each trial ends)."""
        nonlocal free, exhausted
        while free and not exhausted and moment < args.time_budget_s:
            trial = len(trials)
            suggestion = searcher.suggest(str(trial))
            if suggestion is None:  # it waits for a running student
                return
            if not isinstance(suggestion, dict):  # finished: the space is covered and nothing left to promote
                exhausted = True
                return
            params = {key: suggestion[key] for key in records[0]["params"]}
            draw = int(draws.integers(len(tabulations)))
            trials[str(trial)] = (by_params[params_key(params)], moment, suggestion, draw)
            heapq.heappush(events, (report_time(trial, 0), trial, 0))
            free -= 1

    def end(trial: int, moment: float) -> None:
        nonlocal free
        spans.append((trials[str(trial)][1], moment))
        free += 1
        fill(moment)

    fill(0.0)
    while events:
        moment, trial, index = heapq.heappop(events)
        student, began, suggestion, draw = trials[str(trial)]
        if moment > args.time_budget_s:  # cut by the time budget
            spans.append((began, args.time_budget_s))
            continue
        reported, last = result(student, draw, index), index == len(reports) - 1
        searcher.on_trial_result(str(trial), reported)
        if scheduler is not None:  # Tune hands the scheduler every report, the last one too
            judged = SimpleNamespace(trial_id=str(trial), config=suggestion)
            decision = scheduler.on_trial_result(None, judged, reported)  # it reads the epoch the report carries
            if not last and decision == "STOP":
                searcher.on_trial_complete(str(trial), reported)
                end(trial, moment)
                continue
        if not last:
            heapq.heappush(events, (report_time(trial, index + 1), trial, index + 1))
            continue
        searcher.on_trial_complete(str(trial), reported)
        finished.append((moment, (records[student]["value"], records[student]["latency_ms"])))
        end(trial, moment)
    held = optuna.load_study(study_name=config.search.study_name, storage=storage).get_trials(deepcopy=False)
    counts = {
        "stopped": len(stop_reasons or {}),
        "promoted": sum(kdnas.StudentRecord.of(t).promoted_from is not None for t in held),
        "repeats": sum(kdnas.is_repeat(t) for t in held),
    }
    return finished, spans, counts


def replay_arm(
    tabulations: list[list[dict[str, Any]]],
    data: Path | None,
    args: argparse.Namespace,
    eval_rows: int,
    arm: str,
    seed: int,
) -> dict[str, Any]:
    """Replay ``arm`` with ``seed``: its anytime curve's time to 90 % of the space's hypervolume (its students'
    :func:`expected` results), area and counts."""
    every_point = [(r["value"], r["latency_ms"]) for r in expected(tabulations)]
    scale = measures(every_point, 0.5, max(lat for _, lat in every_point))["range"]
    best = kdnas.hypervolume([scale["normalise"](p) for p in every_point], scale["reference"])
    config = arm_config(data, args, arm, seed)
    oracle = next((kind for kind in ("oracle", "knows") if f"-{kind}" in arm), None)
    finished, spans, counts = replay(tabulations, config, args, eval_rows, oracle)
    curve = anytime_curve(finished, spans, scale)
    hit = time_to(curve, FRACTION * best)
    horizon = args.workers * args.time_budget_s
    return {
        "reached": hit is not None,
        "time": hit if hit is not None else curve[-1][0],
        "auc": area(curve, horizon) / (horizon * best),
        "curve": [value_at(curve, compute) / best for compute in curve_grid(horizon)],
        "trained_in_full": len(finished),
        **counts,
    }


def curve_grid(horizon: float) -> list[float]:
    """The compute seconds at which replays' anytime curves are averaged: :data:`CURVE_POINTS` from 0 to ``horizon``."""
    return [horizon * i / (CURVE_POINTS - 1) for i in range(CURVE_POINTS)]


def value_at(curve: list[tuple[float, float]], compute: float) -> float:
    """The step ``curve``'s hypervolume once ``compute`` seconds are spent."""
    return max((value for at, value in curve if at <= compute), default=0.0)


def plot_mean_curves(replayed: dict[str, Any], title: str, png_path: Path) -> str | None:
    """Each arm's mean anytime curve (share of the space's hypervolume against compute) to HTML beside ``png_path``
    and to PNG with headless chromium; the PNG's path, or None without chromium."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for arm, numbers in replayed.items():
        xs, ys = zip(*numbers["mean_curve"])
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"{arm} ({numbers['time_to_90_mean_s']:.0f} s)"))
    fig.add_hline(y=FRACTION, line={"dash": "dot", "color": "black"}, annotation_text=f"{FRACTION:.0%}")
    fig.update_layout(
        title=title,
        xaxis_title="cumulative compute (s)",
        yaxis_title="mean share of the space's hypervolume",
        width=1060,
        height=580,
        template="plotly_white",
    )
    html_path = png_path.with_suffix(".html")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(html_path, include_plotlyjs=True, config={"displayModeBar": False})
    return screenshot(html_path, png_path)


def replays(
    tabulations: list[list[dict[str, Any]]], data: Path | None, args: argparse.Namespace, eval_rows: int
) -> dict[str, Any]:
    """Every arm of ``args.arms`` replayed with ``args.replays`` seeds, on ``args.jobs`` processes."""
    runs = [(arm, seed) for arm in args.arms for seed in range(args.replays)]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        outcomes = list(
            pool.map(replay_arm, *zip(*[(tabulations, data, args, eval_rows, arm, seed) for arm, seed in runs]))
        )
    out: dict[str, Any] = {}
    for arm in args.arms:
        mine = [o for (a, _), o in zip(runs, outcomes) if a == arm]
        times = [o["time"] for o in mine]
        out[arm] = {
            "time_to_90_mean_s": round(statistics.mean(times), 1),
            "time_to_90_sem_s": round(statistics.stdev(times) / len(times) ** 0.5, 1) if len(times) > 1 else None,
            "reached_90": f"{sum(o['reached'] for o in mine)}/{len(mine)}",
            "auc_mean": round(statistics.mean(o["auc"] for o in mine), 4),
            "mean_curve": [
                [round(compute), round(statistics.mean(values), 4)]
                for compute, values in zip(
                    curve_grid(args.workers * args.time_budget_s), zip(*(o["curve"] for o in mine))
                )
            ],
            **{
                f"{key}_mean": round(statistics.mean(o[key] for o in mine), 1)
                for key in ("stopped", "promoted", "repeats", "trained_in_full")
            },
        }
    for arm, numbers in out.items():
        off = out.get(f"{arm.split('-')[0]}-off")
        if off is not None:
            numbers["speedup_vs_off"] = round(off["time_to_90_mean_s"] / numbers["time_to_90_mean_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, name=NAME, train_samples=500, output_dir="bench-p4-curves")
    parser.add_argument(
        "--task", choices=("sst2", "demo"), default="sst2", help="SST-2 (P4's task) or the embedded demo task"
    )
    parser.add_argument("--epochs", type=int, help="training epochs (default: 3 on SST-2, the config's on the demo)")
    parser.add_argument("--teacher-epochs", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--replays", type=int, default=100, help="seeds replayed per arm")
    parser.add_argument(
        "--arms",
        nargs="+",
        default=list(ARMS),
        help="<sampler>-off, <sampler>-grace<epochs>[-metric][-margin<k>], <sampler>-oracle<epochs> or "
        "<sampler>-knows<epochs>",
    )
    parser.add_argument("--jobs", type=int, default=2, help="processes the replays run on")
    parser.add_argument(
        "--startup-trials", type=int, help="random students before TPE/GP model the study (default: the config's)"
    )
    parser.add_argument(
        "--curves-from",
        type=Path,
        nargs="+",
        help="replay the curves of earlier result JSONs (their `curves`) instead of training the students; with "
        "several (tabulations of the same space with different training seeds), each training draws one of them",
    )
    parser.add_argument("--workers", type=int, default=2, help="concurrent trials in a replay")
    parser.add_argument("--time-budget-s", type=float, default=600.0, help="a replay's wall-clock budget (P4's)")
    parser.add_argument(
        "--trial-overhead-s",
        type=float,
        default=1.5,
        help="per trial: start, build, measure, save (not training); P1 measured ~1 s",
    )
    parser.add_argument(
        "--cost-scale",
        type=float,
        default=1.0,
        help="training and evaluation seconds × this: a student trained beside another one (P4 proper's 2 "
        "concurrent trials on 2 cores) takes ~1.8× the seconds it took alone",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        help="draw each arm's mean anytime curve to this PNG (with an HTML beside it; the PNG needs chromium)",
    )
    args = parser.parse_args()
    if args.startup_trials is not None and args.startup_trials < 1:
        parser.error("--startup-trials must be at least 1")
    if args.task == "demo":
        data = None
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    else:
        data = require_sst2(NAME, args.data)
    if args.epochs is None:
        args.epochs = 3 if data else kdnas.load_config(None).training.epochs
    config = curves_config(data, args)
    if args.curves_from is not None:
        tabulations = aligned([json.loads(path.read_text())["curves"] for path in args.curves_from])
    else:
        journal = Path(args.output_dir).resolve() / "curves.jsonl"
        journal.parent.mkdir(parents=True, exist_ok=True)
        tabulations = [tabulate(config, journal)]
        retime(config, tabulations[0], journal.parent / "latencies.json")
    records = tabulations[0]
    shape = predictivity(records, LATENCY_BINS)
    if len(tabulations) > 1:  # each tabulation's own, and how alike their final metrics rank the students
        shape = {
            "tabulations": [predictivity(t, LATENCY_BINS) for t in tabulations],
            "finals_spearman": [
                round(spearman([r["value"] for r in a], [r["value"] for r in b]), 3)
                for a, b in itertools.combinations(tabulations, 2)
            ],
            "expected_front_size": len(front(expected(tabulations))),
        }
    eval_rows = len(kdnas.load_task(config.data).labels("eval"))
    replayed = replays(tabulations, data, args, eval_rows)
    path = write_result(
        args.out,
        {
            "benchmark": NAME,
            "definition": __doc__.split("\n\n")[0],
            "args": {**vars(args), "data": None, "out": None, "output_dir": None, "curves_from": None, "plot": None},
            "curves_from": [path.name for path in args.curves_from or []],
            "students": len(records),
            "wall_s_mean": round(statistics.mean(r["wall_s"] for t in tabulations for r in t), 1),
            "predictivity": shape,
            "replays": replayed,
            **({"curves": records} if len(tabulations) == 1 else {}),  # several: in the JSONs they came from
            "config": config.model_dump(mode="json"),
        },
    )
    if args.plot is not None:
        title = f"P4 replayed: {', '.join(p.name for p in args.curves_from or [path])}"
        print(f"curves → {plot_mean_curves(replayed, title, args.plot) or args.plot.with_suffix('.html')}")
    summary = {arm: {k: v for k, v in numbers.items() if k != "mean_curve"} for arm, numbers in replayed.items()}
    print(json.dumps({"predictivity": shape, "replays": summary}, indent=1))
    print(f"{NAME} → {path}")


if __name__ == "__main__":
    main()
