"""Latency-aware asynchronous successive halving: students compete only with students of similar latency.

Plain ASHA ranks every student by accuracy alone, so slow, accurate students stop every fast one and the fast end
of the Pareto front is never trained. Here, at each rung (epochs ``grace · rf^k`` below the last epoch; a fractional
grace puts rungs inside the first epochs, where trials report mid-epoch), the students recorded at that rung are
split by latency rank into ``latency_bins`` equal-count bins, and a student is stopped when its metric is below the
``1 − 1/rf`` quantile of the others already recorded in its bin (ASHA's rule, per bin) *and* some student recorded
at that rung dominates it (at least as fast and as good, one of them strictly). So a student on the rung's (metric,
latency) front always runs on: the fastest student seen so far is never stopped, however slowly it learns in its
first epochs. While a bin holds only the student itself, nothing stops it, so the first students of a search run on.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeGuard

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from kdnas.config import KDNASConfig
from kdnas.records import EPOCH_KEY
from kdnas.search.rungs import early_stopping_enabled, rungs


class LatencyAwareASHA(FIFOScheduler):
    """ASHA whose cutoffs are computed within latency bins; ``stop_reasons`` maps stopped Tune trial ids to why."""

    def __init__(
        self,
        *,
        metric: str,
        latency_attr: str,
        max_t: float,
        mode: Literal["max", "min"] = "max",
        time_attr: str = EPOCH_KEY,
        grace_period: float = 1,
        reduction_factor: int = 2,
        latency_bins: int = 3,
    ) -> None:
        super().__init__()
        self._objective, self._sign = metric, 1.0 if mode == "max" else -1.0
        self._latency_attr, self._time_attr = latency_attr, time_attr
        self._reduction_factor, self._latency_bins = reduction_factor, latency_bins
        self._rungs: dict[float, dict[str, tuple[float, float]]] = {
            m: {} for m in rungs(grace_period, reduction_factor, max_t)
        }
        self.stop_reasons: dict[str, str] = {}

    @property
    def metric(self) -> str:
        return self._objective

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return metric is None or metric == self._objective  # it has its own metric; TuneConfig sets none

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        t, value, latency = (result.get(k) for k in (self._time_attr, self._objective, self._latency_attr))
        rung = self._rung_at(t)
        if rung is None or not _finite(value) or not _finite(latency):
            return TrialScheduler.CONTINUE
        recorded = self._rungs[rung]
        if trial.trial_id in recorded:  # a repeated result (e.g. after a restore) was already judged
            return TrialScheduler.CONTINUE
        recorded[trial.trial_id] = (self._sign * value, latency)
        peers = self._bin_of(trial.trial_id, recorded)
        others = [recorded[p][0] for p in peers if p != trial.trial_id]
        if not others:
            return TrialScheduler.CONTINUE
        cutoff = float(np.percentile(others, (1 - 1 / self._reduction_factor) * 100))
        if self._sign * value >= cutoff or not self._dominated(trial.trial_id, recorded):
            return TrialScheduler.CONTINUE
        latencies = [recorded[p][1] for p in peers]
        self.stop_reasons[trial.trial_id] = (
            f"stopped early after epoch {rung:g}: {self._objective} {value:.4f} below {self._sign * cutoff:.4f}, "
            f"the cutoff among {len(peers)} students of {min(latencies):.3g}–{max(latencies):.3g} ms at that epoch"
        )
        return TrialScheduler.STOP

    def _rung_at(self, t: object) -> float | None:
        """The rung a report at epoch ``t`` belongs to (a mid-epoch report's epoch is a float), or None."""
        if not _finite(t):
            return None
        return next((rung for rung in self._rungs if math.isclose(rung, t, rel_tol=1e-9)), None)

    @staticmethod
    def _dominated(trial_id: str, recorded: dict[str, tuple[float, float]]) -> bool:
        """Whether another student in ``recorded`` is as good and as fast as ``trial_id``, and better in one."""
        value, latency = recorded[trial_id]
        return any(
            v >= value and lat <= latency and (v > value or lat < latency)
            for k, (v, lat) in recorded.items()
            if k != trial_id
        )

    def _bin_of(self, trial_id: str, recorded: dict[str, tuple[float, float]]) -> list[str]:
        """The trials in ``trial_id``'s equal-count latency bin among those ``recorded`` at a rung."""
        by_latency = sorted(recorded, key=lambda k: (recorded[k][1], k))
        n = len(by_latency)
        bins = [rank * self._latency_bins // n for rank in range(n)]
        own = bins[by_latency.index(trial_id)]
        return [k for k, b in zip(by_latency, bins) if b == own]

    def debug_string(self) -> str:
        sizes = ", ".join(f"epoch {t:g}: {len(r)}" for t, r in self._rungs.items())
        return f"LatencyAwareASHA: {len(self.stop_reasons)} stopped; students per rung: {sizes}"


def _finite(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and math.isfinite(value)


def make_scheduler(config: KDNASConfig, latency_attr: str) -> LatencyAwareASHA | None:
    """The configured latency-aware early stopping, or None when it is off."""
    if not early_stopping_enabled(config):
        return None
    stopping = config.search.early_stopping
    return LatencyAwareASHA(
        metric=config.data.metric,
        latency_attr=latency_attr,
        max_t=config.training.epochs,
        grace_period=stopping.grace_epochs,
        reduction_factor=stopping.reduction_factor,
        latency_bins=stopping.latency_bins,
    )
