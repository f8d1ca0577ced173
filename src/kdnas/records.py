"""The names of what a trial records, defined once: the keys a worker reports to Tune and the attrs the study keeps.

Light on purpose (no torch, Ray or transformers): readers of a study (report, export, ``kdnas trials``, the
dashboard) import their names from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState

# Keys of a worker's Tune result (``search/trial.py`` reports them, ``search/searcher.py`` stores them).
LATENCY_KEY = "latency_ms"
"""The student's measured latency: the second objective."""
EPOCH_KEY = "epoch"
"""The epoch a result was reported after (the scheduler's time attribute)."""
COMPLETED_KEY = "kdnas_completed"
"""True on the result of a student that finished training."""
ERROR_KEY = "kdnas_error"
"""A failure inside the trial, as one line."""
ATTRS_KEY = "kdnas_attrs"
"""The user attrs the trial's Optuna record gets (JSON in a string)."""
INFEASIBLE_KEY = "kdnas_infeasible"
"""Why a student over a budget was not trained."""
CONSTRAINTS_KEY = "kdnas_constraints"
"""The student's Optuna constraints (feasible when ≤ 0), JSON in a string."""
TRIAL_NUMBER_KEY = "kdnas_trial_number"
"""The Optuna trial number, in a Tune trial's config."""

# Optuna trial user attrs.
FAILURE_ATTR = "failure_reason"
"""Why a FAIL trial failed."""
PRUNED_ATTR = "pruned_reason"
"""Why a PRUNED trial stopped (infeasible, stopped early, time budget, a repeat of a student still training)."""
RESTARTS_ATTR = "restarts"
"""How often Tune restarted the trial from its checkpoint."""
RETRY_ATTR = "retry_of"
"""On a trial enqueued again after its driver was lost: the number of the trial it retries."""
RECIPE_ATTR = "recipe"
"""Hash of the configuration the trial's student was (or is being) trained under."""
DUPLICATE_ATTR = "duplicate_of"
"""On a repeat: the number of the trial whose student it is."""
COST_ATTRS = ("train_started_at", "train_finished_at")
"""Attrs that time the training itself: a repeat spent none, so it does not carry them."""
PARAMS_CONSTRAINT = "params"
"""The constraint (and attr) of the student's parameter count."""

# Optuna trial system attrs and study user attrs.
DRIVER_ATTR = "kdnas:driver"
"""System attr: the driver process that runs the trial."""
HEARTBEAT_ATTR = "kdnas:heartbeat"
"""System attr: when (Unix time, the driver's clock) the trial's driver last recorded that it still runs the trial."""
FINGERPRINT_ATTR = "fingerprint"
"""Study user attr: what makes its students comparable (a flat ``{key: value}`` dict)."""

STUDENT_FILES = ("config.json", "model.safetensors")
"""The files of a saved student."""


@dataclass(frozen=True)
class Outcome:
    """How a trial is told to Optuna: its state, values, user attrs, reason (PRUNED or FAIL) and constraints."""

    state: TrialState
    values: list[float] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    constraints: dict[str, float] = field(default_factory=dict)
