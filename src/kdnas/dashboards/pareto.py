"""The accuracy-vs-latency Pareto front of a kdnas study, its knee, and the best student under a budget."""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial, TrialState


def _feasible(trial: FrozenTrial) -> bool:
    return all(c <= 0 for c in trial.constraints.values())


def feasible_completed(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials that meet every constraint, in trial-number order."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _feasible(t)]


def hypervolume_reference(study: optuna.Study) -> tuple[float, float]:
    """The default reference point: metric 0 and 1.1 × the slowest feasible completed student's latency."""
    latencies = [t.values[1] for t in feasible_completed(study)]
    return 0.0, 1.1 * max(latencies, default=1.0)


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``(metric, latency)`` points (metric maximised, latency minimised) up to ``reference``."""
    ref_metric, ref_latency = reference
    area, best = 0.0, ref_metric
    for metric, latency in sorted(((m, l) for m, l in points if m > ref_metric and l < ref_latency),
                                  key=lambda p: (p[1], -p[0])):
        if metric > best:
            area += (ref_latency - latency) * (metric - best)
            best = metric
    return area


def hypervolume_history(
    study: optuna.Study, reference: tuple[float, float] | None = None
) -> list[tuple[int, float]]:
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


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Non-dominated feasible COMPLETE trials (metric max, latency min), fastest first."""
    return sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0]))


def knee_point(front: list[FrozenTrial]) -> FrozenTrial:
    """The front's knee: the point farthest from the line joining its two extremes (objectives min–max scaled)."""
    if not front:
        raise ValueError("the Pareto front is empty")
    if len(front) <= 2:
        return max(front, key=lambda t: t.values[0])
    values = [t.values[0] for t in front]
    lats = [t.values[1] for t in front]
    v_span = (max(values) - min(values)) or 1.0
    l_span = (max(lats) - min(lats)) or 1.0
    points = [((t.values[1] - min(lats)) / l_span, (t.values[0] - min(values)) / v_span) for t in front]
    (x1, y1), (x2, y2) = points[0], points[-1]
    norm = math.hypot(x2 - x1, y2 - y1) or 1.0
    distances = [abs((y2 - y1) * x - (x2 - x1) * y + x2 * y1 - y2 * x1) / norm for x, y in points]
    return front[max(range(len(front)), key=distances.__getitem__)]


def best_under_budget(
    study: optuna.Study, *, latency_ms: float | None = None, params: int | None = None
) -> FrozenTrial:
    """The feasible COMPLETE trial with the best metric within the budgets (ties: the faster one)."""
    candidates = [
        t
        for t in feasible_completed(study)
        if (latency_ms is None or t.values[1] <= latency_ms)
        and (params is None or t.user_attrs.get("params", math.inf) <= params)
    ]
    if not candidates:
        limits = [f"latency ≤ {latency_ms} ms" if latency_ms is not None else "", f"params ≤ {params}" if params else ""]
        raise LookupError(f"no completed student within {' and '.join(x for x in limits if x) or 'the study'}")
    return max(candidates, key=lambda t: (t.values[0], -t.values[1]))


def front_rows(study: optuna.Study, metric: str) -> list[dict]:
    """The Pareto front, fastest first, as display rows."""
    return [
        {
            "trial": t.number,
            "arch": t.user_attrs.get("arch_summary", "?"),
            metric: f"{t.values[0]:.4f}",
            "latency_ms": f"{t.values[1]:.3f}",
            "params": f"{t.user_attrs.get('params', 0) / 1e6:.2f}M",
        }
        for t in pareto_front(study)
    ]
