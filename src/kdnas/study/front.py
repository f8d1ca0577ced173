"""The accuracy-vs-latency Pareto front of a kdnas study, its knee, and the best student under a budget."""

from __future__ import annotations

import copy
import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from kdnas.study.dominance import front_keys
from kdnas.study.records import LATENCY_KEY
from kdnas.study.repeats import folded, is_repeat
from kdnas.study.student_record import StudentRecord
from kdnas.study.study_record import StudyRecord, TeacherReference


def _feasible(trial: FrozenTrial) -> bool:
    return all(c <= 0 for c in trial.constraints.values()) and StudentRecord.of(trial).collapsed is None


def search_feasible_completed(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials that meet every constraint and did not collapse (to one class or the majority-class level),
    in trial-number order, with the latency measured in the search."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _feasible(t)]


def retimed(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """``trials`` with the latency ``kdnas retime`` measured again (copies; a trial it did not re-time is kept)."""
    latencies = StudyRecord.of(study).retimed_students()
    result = []
    for trial in trials:
        latency = latencies.get(trial.number)
        if latency is not None and trial.values is not None:
            trial = copy.copy(trial)
            trial.values = [trial.values[0], latency]
        result.append(trial)
    return result


def feasible_completed(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials that meet every constraint, in trial-number order; their latency is the re-timed one where
    the study was re-timed (``kdnas retime``)."""
    return retimed(study, search_feasible_completed(study))


def study_teachers(study: optuna.Study) -> list[TeacherReference]:
    """The study's teachers' references, each ``latency_ms`` re-timed where the study was re-timed."""
    return StudyRecord.of(study).retimed_teachers()


def non_dominated(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials no other trial dominates (metric max, latency min), fastest first; equal points are all kept."""
    keys = front_keys({i: (t.values[0], t.values[1]) for i, t in enumerate(trials)})
    return sorted((trials[i] for i in keys), key=lambda t: (t.values[1], -t.values[0]))


def hypervolume_reference(study: optuna.Study) -> tuple[float, float]:
    """The default reference point: metric 0 and 1.1 × the slowest feasible completed student's latency."""
    latencies = [t.values[1] for t in feasible_completed(study)]
    return 0.0, 1.1 * max(latencies, default=1.0)


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``(metric, latency)`` points (metric maximised, latency minimised) up to ``reference``."""
    ref_metric, ref_latency = reference
    area, best = 0.0, ref_metric
    for metric, latency in sorted(
        ((m, t) for m, t in points if m > ref_metric and t < ref_latency), key=lambda p: (p[1], -p[0])
    ):
        if metric > best:
            area += (ref_latency - latency) * (metric - best)
            best = metric
    return area


def hypervolume_history(study: optuna.Study, reference: tuple[float, float] | None = None) -> list[tuple[int, float]]:
    """``(trial number, hypervolume of the feasible completed trials so far)`` for every finished trial."""
    reference = reference or hypervolume_reference(study)
    feasible = {t.number: (t.values[0], t.values[1]) for t in feasible_completed(study)}
    finished = [t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    history, points = [], []
    for number in sorted(finished):
        if number in feasible:
            points.append(feasible[number])
        history.append((number, hypervolume(points, reference)))
    return history


def front_students(study: optuna.Study) -> list[tuple[FrozenTrial, list[int]]]:
    """The Pareto front's students, fastest first, each with the numbers of the trials holding it: itself and the
    repeats folded into it."""
    return sorted(
        folded(non_dominated(feasible_completed(study))), key=lambda group: (group[0].values[1], -group[0].values[0])
    )


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Non-dominated feasible COMPLETE students (metric max, latency min), fastest first; one trial per student."""
    return [trial for trial, _ in front_students(study)]


def knee_point(front: list[FrozenTrial]) -> FrozenTrial:
    """The front's knee: of the points above the line joining its two extremes (objectives min–max scaled), the one
    farthest from it, where giving up a little accuracy buys the most speed. A front with no point above that line
    has no knee: its most accurate student (as for a front of one or two)."""
    if not front:
        raise ValueError("the Pareto front is empty")
    best = max(front, key=lambda t: t.values[0])
    if len(front) <= 2:
        return best
    values = [t.values[0] for t in front]
    lats = [t.values[1] for t in front]
    v_span = (max(values) - min(values)) or 1.0
    l_span = (max(lats) - min(lats)) or 1.0
    fastest, slowest = min(front, key=lambda t: t.values[1]), max(front, key=lambda t: t.values[1])

    def scaled(t: FrozenTrial) -> tuple[float, float]:
        return (t.values[1] - min(lats)) / l_span, (t.values[0] - min(values)) / v_span

    (x1, y1), (x2, y2) = scaled(fastest), scaled(slowest)
    norm = math.hypot(x2 - x1, y2 - y1) or 1.0

    def above(t: FrozenTrial) -> float:  # signed distance from the line, positive on the more accurate side
        x, y = scaled(t)
        return ((x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)) / norm

    knee = max(front, key=above)
    return knee if above(knee) > 1e-12 else best


def best_under_budget(
    study: optuna.Study, *, latency_ms: float | None = None, params: int | None = None
) -> FrozenTrial:
    """The feasible COMPLETE trial with the best metric within the budgets (ties: the faster one)."""
    candidates = [
        t
        for t, _ in folded(feasible_completed(study))
        if (latency_ms is None or t.values[1] <= latency_ms) and (params is None or _params(t, math.inf) <= params)
    ]
    if not candidates:
        limits = [
            f"latency ≤ {latency_ms} ms" if latency_ms is not None else "",
            f"params ≤ {params}" if params else "",
        ]
        raise LookupError(f"no completed student within {' and '.join(x for x in limits if x) or 'the study'}")
    return max(candidates, key=lambda t: (t.values[0], -t.values[1]))


def _params(trial: FrozenTrial, unknown: float) -> float:
    """``trial``'s student's parameter count (``unknown`` when not recorded)."""
    params = StudentRecord.of(trial).params
    return unknown if params is None else params


def front_rows(study: optuna.Study, metric: str) -> list[dict]:
    """The Pareto front, fastest first, as display rows (``repeats``: later trials that reused the student)."""
    return [
        {
            "trial": t.number,
            "repeats": ", ".join(str(n) for n in numbers if n != t.number),
            "arch": StudentRecord.of(t).label,
            metric: f"{t.values[0]:.4f}",
            LATENCY_KEY: f"{t.values[1]:.3f}",
            "params": f"{_params(t, 0) / 1e6:.2f}M",
        }
        for t, numbers in front_students(study)
    ]


def study_summary(study: optuna.Study) -> dict[str, Any]:
    """Where a study stands: trials by state (repeats of a student counted apart as ``reused``), the front's size
    (one point per student) and its hypervolume (reference: :func:`hypervolume_reference`)."""
    trials = study.get_trials(deepcopy=False)
    counts = {"complete": 0, "reused": 0, "pruned": 0, "failed": 0, "running": 0}
    names = {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "running",
    }
    for trial in trials:
        if is_repeat(trial) and trial.state.is_finished():
            counts["reused"] += 1
        elif trial.state in names:
            counts[names[trial.state]] += 1
    front = pareto_front(study)
    points = [(t.values[0], t.values[1]) for t in front]
    return {
        "trials": len(trials),
        **counts,
        "front": len(front),
        "hypervolume": hypervolume(points, hypervolume_reference(study)),
    }


def summary_line(summary: dict[str, Any]) -> str:
    """:func:`study_summary` as one line."""
    return (
        f"{summary['complete']} complete, {summary['pruned']} pruned, {summary['failed']} failed, "
        f"{summary['running']} running, {summary['reused']} reused · front {summary['front']} · "
        f"hypervolume {summary['hypervolume']:.4g}"
    )
