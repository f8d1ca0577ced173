"""A trial's end, classified (COMPLETE, PRUNED or FAIL, with a reason) and told to the study, and the retry every
storage write of a search goes through."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import TrialState

from kdnas.errors import first_line
from kdnas.study.records import FAILURE_ATTR, PRUNED_ATTR, Outcome, TrialReport

logger = logging.getLogger(__name__)

STORAGE_RETRIES = 5


def retrying(operation: Callable[[], Any]) -> Any:
    """Run a storage ``operation``, retrying it (on a fresh connection) when the connection drops mid-way."""
    for attempt in range(1, STORAGE_RETRIES + 1):
        try:
            return operation()
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.DBAPIError) as err:
            if attempt == STORAGE_RETRIES:
                raise
            logger.warning(
                "storage error (retry %d of %d): %s",
                attempt,
                STORAGE_RETRIES - 1,
                first_line(err),
            )
            time.sleep(attempt)


def tell_outcome(ot_trial: optuna.Trial, outcome: Outcome) -> None:
    """Write ``outcome``'s attrs, reason (PRUNED or FAIL) and constraints on ``ot_trial``, then tell it."""
    for key, value in outcome.attrs.items():
        ot_trial.set_user_attr(key, value)
    if outcome.reason:
        ot_trial.set_user_attr(PRUNED_ATTR if outcome.state == TrialState.PRUNED else FAILURE_ATTR, outcome.reason)
    for key, value in outcome.constraints.items():
        ot_trial.set_constraint(key, value)
    ot_trial.study.tell(ot_trial, outcome.values, state=outcome.state, skip_if_finished=True)


def report_outcome(report: TrialReport, error: bool, metrics: list[str], restarts: int = 0) -> Outcome:
    """Classify a trial's last report into COMPLETE, PRUNED or FAIL (with a reason); ``error``: its process failed,
    ``restarts``: after that many restarts; ``metrics`` name the objectives in reasons.

    A student over a budget is PRUNED with its violated constraints: it has no metric, and as PRUNED it stays off
    the Pareto front and out of the objectives' statistics, while TPE still learns from its constraints.
    """
    attrs = report.attrs
    if report.error is not None:
        return Outcome(TrialState.FAIL, attrs=attrs, reason=report.error)
    if report.infeasible is not None:
        return Outcome(TrialState.PRUNED, attrs=attrs, reason=report.infeasible, constraints=report.constraints)
    if error:
        retried = f" after {restarts} restart(s)" if restarts else ""
        reason = f"the trial's process failed{retried} (see the Ray trial logs)"
        return Outcome(TrialState.FAIL, attrs=attrs, reason=reason)
    if not report.completed:
        where = f"after epoch {report.epoch}" if report.epoch is not None else "before its first evaluation"
        return Outcome(TrialState.PRUNED, attrs=attrs, reason=f"stopped early {where}")
    values = [report.value, report.latency_ms]
    bad = [name for name, value in zip(metrics, values) if not math.isfinite(value)]
    if bad:
        return Outcome(TrialState.FAIL, attrs=attrs, reason=f"missing or non-finite metric(s): {', '.join(bad)}")
    return Outcome(TrialState.COMPLETE, values=values, attrs=attrs, constraints=report.constraints)
