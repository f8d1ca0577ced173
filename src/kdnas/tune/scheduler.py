"""Early stopping for an (accuracy, latency) search: a student stops when a student at least as fast is clearly ahead.

At each rung (epochs ``grace · rf^k`` below the last epoch; a fractional grace puts rungs inside the first epochs,
where trials report mid-epoch), a student is stopped when another student recorded at that rung is at least as fast
and ahead of it by more than ``margin_se`` standard errors. "Ahead" is judged by the mean probability the students
give the evaluation set's labels (``judge_by="label_probability"``, the default; standard error from its spread over
the examples) or by the task metric itself (``"metric"``; :func:`~kdnas.student.metrics.standard_error`). The
label probability moves before the predictions do: early in training most students still predict the majority
class, tie on the metric and cannot be told apart by it, while their probabilities already differ.

To reach the front, a stopped student would have had to overtake, in its remaining epochs, a student already faster and
measurably better at the same point of training. So a student on the rung's front always runs on (the fastest student
seen so far is never stopped, however slowly it learns in its first epochs), no student is stopped on a difference the
evaluation set cannot resolve, and the first students of a search, with nobody to compare with, run on. A student
promoted to full training (see :class:`~kdnas.tune.promotion.Promotion`) is compared with, never stopped.

Plain ASHA ranks students by the metric alone, and so stops the fast end of the front. The rule is off by default
(``search.early_stopping.mode``): benchmarks/README.md (P4) has the measurements behind that choice.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from kdnas.config import KDNASConfig
from kdnas.student.metrics import standard_error
from kdnas.study.records import EPOCH_KEY, STOPPED_EARLY_REASON, TrialReport, TrialTicket
from kdnas.tune.rungs import early_stopping_enabled, rungs

_JUDGES = ("label_probability", "metric")
"""What students are compared by at a rung: the mean probability of the eval labels, or the task metric."""


class ParetoStopping(FIFOScheduler):
    """Stops a student at a rung when one at least as fast leads it there by more than ``margin_se`` standard errors
    of what ``judge_by`` names (:data:`_JUDGES`: the label probability a trial reports, or ``metric``, maximised, on
    ``eval_rows`` examples); ``stop_reasons`` maps stopped Tune trial ids to why."""

    def __init__(
        self,
        *,
        metric: str,
        latency_attr: str,
        max_t: float,
        eval_rows: int,
        time_attr: str = EPOCH_KEY,
        grace_period: float = 1,
        reduction_factor: int = 2,
        margin_se: float = 1.0,
        judge_by: str = "label_probability",
    ) -> None:
        super().__init__()
        if judge_by not in _JUDGES:
            raise ValueError(f"judge_by must be one of {', '.join(_JUDGES)}, not {judge_by!r}")
        self._objective, self._latency_attr, self._time_attr = metric, latency_attr, time_attr
        self._eval_rows, self._margin_se, self._judge_by = eval_rows, margin_se, judge_by
        self._rungs: dict[float, dict[str, tuple[float, float, float]]] = {
            m: {} for m in rungs(grace_period, reduction_factor, max_t)
        }
        self.stop_reasons: dict[str, str] = {}

    @property
    def metric(self) -> str:
        return self._objective

    @property
    def time_attr(self) -> str:
        """The result key a trial's progress is read from (epochs trained)."""
        return self._time_attr

    @property
    def judge_by(self) -> str:
        """What students are compared by at a rung (one of :data:`_JUDGES`)."""
        return self._judge_by

    @property
    def rungs(self) -> list[float]:
        """The epochs at which students are judged."""
        return list(self._rungs)

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return metric is None or metric == self._objective  # it has its own metric; TuneConfig sets none

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        rung, judged, latency = (
            self._rung_at(result.get(self._time_attr)),
            self._judged(result),
            result.get(self._latency_attr),
        )
        if rung is None or judged is None or not _finite(latency):
            return TrialScheduler.CONTINUE
        recorded = self._rungs[rung]
        if trial.trial_id in recorded:  # a repeated result (e.g. after a restore) was already judged
            return TrialScheduler.CONTINUE
        recorded[trial.trial_id] = (*judged, latency)
        leader = self._clear_leader(trial.trial_id, recorded)
        if leader is None or TrialTicket.from_attrs(trial.config).promoted:  # a promoted student trains in full
            return TrialScheduler.CONTINUE
        lead_value, error, lead_latency = recorded[leader]
        judge = self._objective if self._judge_by == "metric" else "label probability"
        metric = "" if self._judge_by == "metric" else f"{self._objective} {result[self._objective]:.4f}, "
        self.stop_reasons[trial.trial_id] = (
            f"{STOPPED_EARLY_REASON} {rung:g}: {metric}{judge} {judged[0]:.4f}, while a student at least as fast "
            f"({lead_latency:.3g} ms, this one {latency:.3g} ms) had {lead_value:.4f} there, ahead by more than "
            f"{self._margin_se:g} standard error(s) ({error:.4f} on {self._eval_rows} examples)"
        )
        return TrialScheduler.STOP

    def _judged(self, result: dict) -> tuple[float, float] | None:
        """(value, standard error) a report is judged by, or None when it has none (or a non-finite one)."""
        if self._judge_by == "metric":
            value = result.get(self._objective)
            error = standard_error(self._objective, value, self._eval_rows) if _finite(value) else None
        else:
            value, error = TrialReport.from_result(result, self._objective).label_probability or (None, None)
        return (value, error) if _finite(value) and _finite(error) else None

    def _rung_at(self, t: object) -> float | None:
        """The rung a report at epoch ``t`` belongs to (a mid-epoch report's epoch is a float), or None."""
        if not _finite(t):
            return None
        return next((rung for rung in self._rungs if math.isclose(rung, t, rel_tol=1e-9)), None)

    def _clear_leader(self, trial_id: str, recorded: dict[str, tuple[float, float, float]]) -> str | None:
        """The student furthest ahead of ``trial_id`` among those recorded at its rung that are at least as fast
        and lead it by more than the margin (in the leader's standard errors); None when there is none."""
        value, _, latency = recorded[trial_id]
        leads = {
            other: v - self._margin_se * error - value
            for other, (v, error, lat) in recorded.items()
            if other != trial_id and lat <= latency
        }
        ahead = {other: lead for other, lead in leads.items() if lead > 0}
        return max(ahead, key=lambda other: ahead[other]) if ahead else None

    def debug_string(self) -> str:
        sizes = ", ".join(f"epoch {t:g}: {len(r)}" for t, r in self._rungs.items())
        return f"ParetoStopping: {len(self.stop_reasons)} stopped; students per rung: {sizes}"


def _finite(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and math.isfinite(value)


def make_scheduler(config: KDNASConfig, latency_attr: str, eval_rows: int) -> ParetoStopping | None:
    """The configured early stopping for a task evaluated on ``eval_rows`` examples, or None when it is off."""
    if not early_stopping_enabled(config):
        return None
    stopping = config.search.early_stopping
    return ParetoStopping(
        metric=config.data.metric,
        latency_attr=latency_attr,
        max_t=config.training.epochs,
        eval_rows=eval_rows,
        grace_period=stopping.grace_epochs,
        reduction_factor=stopping.reduction_factor,
        margin_se=stopping.margin_se,
        judge_by=stopping.judge_by,
    )
