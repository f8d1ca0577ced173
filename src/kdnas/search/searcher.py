"""KDNASSearch: Ray Tune's OptunaSearch, made to record every student truthfully in the Optuna study.

Stock ``OptunaSearch`` writes no user_attrs, stores students stopped early by a scheduler as COMPLETE with
half-trained values, and leaves trials with NaN or missing metrics RUNNING forever. This subclass records the
arch, latency details and student path, tells PRUNED for early-stopped students, tells FAIL with a reason for
errors and bad metrics, and sets a latency constraint when a budget is configured.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from kdnas.search.trial import ATTRS_KEY, COMPLETED_KEY, ERROR_KEY, LATENCY_KEY

TRIAL_NUMBER_KEY = "kdnas_trial_number"
FAILURE_ATTR = "failure_reason"
PRUNED_ATTR = "pruned_reason"


@dataclass(frozen=True)
class Outcome:
    """How a finished Tune trial is told to Optuna."""

    state: TrialState
    values: list[float] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


def trial_outcome(result: dict[str, Any] | None, error: bool, metrics: list[str]) -> Outcome:
    """Classify a Tune trial's last result into COMPLETE, PRUNED or FAIL (with a reason)."""
    result = result or {}
    attrs = json.loads(result[ATTRS_KEY]) if ATTRS_KEY in result else {}
    if ERROR_KEY in result:
        return Outcome(TrialState.FAIL, attrs=attrs, reason=str(result[ERROR_KEY]))
    if error:
        return Outcome(TrialState.FAIL, attrs=attrs, reason="the trial's process failed (see the Ray trial logs)")
    if not result.get(COMPLETED_KEY):
        epoch = result.get("epoch")
        where = f"after epoch {epoch}" if epoch is not None else "before its first evaluation"
        return Outcome(TrialState.PRUNED, attrs=attrs, reason=f"stopped early {where}")
    values = [result.get(m) for m in metrics]
    bad = [m for m, v in zip(metrics, values) if not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        return Outcome(TrialState.FAIL, attrs=attrs, reason=f"missing or non-finite metric(s): {', '.join(bad)}")
    return Outcome(TrialState.COMPLETE, values=[float(v) for v in values], attrs=attrs)


class KDNASSearch(OptunaSearch):
    """``OptunaSearch`` that writes user_attrs, PRUNED/FAIL states with reasons, and latency constraints."""

    def __init__(self, *args: Any, latency_budget_ms: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._latency_budget_ms = latency_budget_ms

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is not None:
            config[TRIAL_NUMBER_KEY] = self._ot_trials[trial_id].number
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        outcome = trial_outcome(result, error, list(self._metric))
        try:
            for key, value in outcome.attrs.items():
                ot_trial.set_user_attr(key, value)
            if outcome.reason:
                reason_key = PRUNED_ATTR if outcome.state == TrialState.PRUNED else FAILURE_ATTR
                ot_trial.set_user_attr(reason_key, outcome.reason)
            if outcome.state == TrialState.COMPLETE and self._latency_budget_ms is not None:
                latency = outcome.values[self._metric.index(LATENCY_KEY)]
                ot_trial.set_constraint(LATENCY_KEY, latency - self._latency_budget_ms)
            self._ot_study.tell(ot_trial, outcome.values, state=outcome.state, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # already told, e.g. before a restore
        self._completed_trials.add(trial_id)
