"""Students a study already holds: the identity of a student (parameters + recipe) and the copy a repeat gets.

A student is its sampled parameters (architecture and sampled recipe) trained under the study's fixed training
configuration. ``recipe_key`` hashes the part of the config that changes what a student learns or how it is
measured, so a repeat is recognised across runs and drivers, and a rerun with another recipe (e.g. more epochs)
trains its students afresh. Light on purpose: readers (report, export) fold repeats without the training stack.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from kdnas.study.dominance import pareto_ranks
from kdnas.study.records import RECIPE_ATTR as RECIPE_ATTR  # tune/searcher.py imports it from here
from kdnas.study.records import STOPPED_EARLY_REASON, Outcome
from kdnas.study.student_record import StudentRecord

TIME_BUDGET_REASON = "stopped when the search's time budget ran out"
"""How a student cut short by the search's time budget is PRUNED: not a property of the student, so it may rerun."""

_NOT_TRAINING = ("search", "output_dir")
_SPACES = (("student", "space"), ("kd", "space"), ("training", "space"), ("latency", "cache"))


def recipe_key(recorded: Mapping[str, Any]) -> str:
    """A short hash of a recorded (``dump_config``) config without what does not change a given student: the search
    settings, output paths, the search spaces (a sampled value is part of the student's parameters) and caching."""
    kept = {k: v for k, v in recorded.items() if k not in _NOT_TRAINING}
    for section, key in _SPACES:
        kept[section] = {k: v for k, v in kept.get(section, {}).items() if k != key}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def student_key(params: Mapping[str, Any]) -> str:
    """The sampled parameters as a comparable key."""
    return json.dumps(dict(params), sort_keys=True)


def is_repeat(trial: FrozenTrial) -> bool:
    """Whether ``trial`` holds a repeat of an earlier trial's student (not trained itself)."""
    return StudentRecord.of(trial).repeat_of is not None


def _holds_student(trial: FrozenTrial, record: StudentRecord) -> bool:
    """Whether ``trial`` (of ``record``) trained (or is training) a student a repeat may reuse: COMPLETE, RUNNING, or
    PRUNED for a reason of its own (over a budget, stopped by the scheduler), not cut by the time budget; never a
    repeat."""
    if record.repeat_of is not None or not trial.params:
        return False
    if trial.state == TrialState.PRUNED:
        return not str(record.pruned_reason or "").startswith(TIME_BUDGET_REASON)
    return trial.state in (TrialState.COMPLETE, TrialState.RUNNING)


def known_students(trials: Iterable[FrozenTrial], recipe: str) -> dict[str, FrozenTrial]:
    """Student key → the first trial holding that student under ``recipe``, or the trial that promoted it to full
    training after the first stopped early."""
    known: dict[str, FrozenTrial] = {}
    for trial in sorted(trials, key=lambda t: t.number):
        record = StudentRecord.of(trial)
        if record.recipe != recipe or not _holds_student(trial, record):
            continue
        key = student_key(trial.params)
        if key not in known or record.promoted_from == known[key].number:
            known[key] = trial
    return known


def stopped_early(trial: FrozenTrial, record: StudentRecord) -> bool:
    """Whether ``trial`` (of ``record``) trained a student the scheduler stopped early (not a repeat, not cut by the
    time budget)."""
    reason = str(record.pruned_reason or "")
    return trial.state == TrialState.PRUNED and record.repeat_of is None and reason.startswith(STOPPED_EARLY_REASON)


def promotion_candidates(trials: Iterable[FrozenTrial], recipe: str) -> list[FrozenTrial]:
    """The students of ``recipe`` stopped early that no trial promoted yet, the most promising first: by Pareto rank
    of (metric when stopped, latency) among them, then the later stop, then the better metric; a student without a
    recorded curve or latency last."""
    trials = list(trials)
    records = {t.number: StudentRecord.of(t) for t in trials}
    promoted = {record.promoted_from for record in records.values()} - {None}
    stopped = [
        t
        for t in trials
        if records[t.number].recipe == recipe
        and stopped_early(t, records[t.number])
        and t.number not in promoted
        and t.params
    ]
    points = {t.number: _stop_point(records[t.number]) for t in stopped}
    ranks = pareto_ranks({n: (p[1], p[2]) for n, p in points.items() if p is not None})
    worst = max(ranks.values(), default=0) + 1

    def order(t: FrozenTrial) -> tuple[float, ...]:
        point = points[t.number]
        if point is None:
            return (worst, 0.0, 0.0, t.number)
        return (ranks[t.number], -point[0], -point[1], t.number)

    return sorted(stopped, key=order)


def _stop_point(record: StudentRecord) -> tuple[float, float, float] | None:
    """(epochs, metric, latency ms) where the student of ``record`` was stopped, or None when not recorded."""
    curve = record.learning_curve
    latency = record.latency.median_ms if record.latency else None
    if not curve or latency is None:
        return None
    return curve[-1].epochs, curve[-1].metric, float(latency)


def repeat_of(original: FrozenTrial) -> Outcome:
    """The record of a repeat of ``original``'s student: its result without training (no training times, nor the
    original's own reason, restarts or retry)."""
    record = StudentRecord.of(original)
    copied = replace(
        record,
        train_started_at=None,
        train_finished_at=None,
        pruned_reason=None,
        failure_reason=None,
        restarts=None,
        retry_of=None,
        repeat_of=original.number,
    )
    attrs = copied.to_attrs()
    if original.state == TrialState.COMPLETE:
        return Outcome(TrialState.COMPLETE, list(original.values), attrs, constraints=dict(original.constraints))
    if original.state == TrialState.PRUNED:
        reason = f"the same student as trial {original.number}: {record.pruned_reason or 'pruned'}"
        return Outcome(TrialState.PRUNED, None, attrs, reason, dict(original.constraints))
    return Outcome(
        TrialState.PRUNED,
        None,
        attrs,
        f"the same student as trial {original.number}, which was training: not trained twice",
    )


def folded(trials: Iterable[FrozenTrial]) -> list[tuple[FrozenTrial, list[int]]]:
    """``trials`` with each repeat folded into its original: ``(trial, [its number, its repeats' numbers])``; a
    repeat whose original is not among ``trials`` stands for itself."""
    trials = list(trials)
    numbers = {t.number for t in trials}
    repeats: dict[int, list[int]] = {}
    originals = {t.number: StudentRecord.of(t).repeat_of for t in trials}
    for t in trials:
        original = originals[t.number]
        if original is not None and original in numbers:
            repeats.setdefault(original, []).append(t.number)
    return [(t, sorted([t.number, *repeats.get(t.number, [])])) for t in trials if originals[t.number] not in numbers]


def training_seconds(trial: FrozenTrial) -> float:
    """The compute ``trial`` itself spent training (and evaluating, saving) its student: 0 for a repeat, which reused
    another trial's, and for a trial that never trained."""
    record = StudentRecord.of(trial)
    if record.repeat_of is not None or record.train_started_at is None or record.train_finished_at is None:
        return 0.0
    return float(record.train_finished_at - record.train_started_at)
