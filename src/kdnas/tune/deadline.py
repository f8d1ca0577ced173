"""SearchBudget: when a search stops asking for students (its time budget ran out, or the study holds its trial
budget), and DeadlineStopper, the Tune stop that ends the running trials on the same clock."""

from __future__ import annotations

import time
from typing import Any, Protocol

import optuna
from ray.tune import Stopper

from kdnas.study.orphans import counts_toward_budget
from kdnas.study.repeats import TIME_BUDGET_REASON


class SearchBudget:
    """The budgets of a search over ``study``: ``n_trials`` trials counting toward the budget (see
    :func:`counts_toward_budget`), whichever driver ran them, and a time budget ending at ``deadline`` (a
    ``time.monotonic()`` instant, set when the search's time budget starts; None: no time budget)."""

    def __init__(self, study: optuna.Study, n_trials: int | None = None) -> None:
        self._study = study
        self.n_trials = n_trials
        self.deadline: float | None = None

    def __getstate__(self) -> dict[str, Any]:
        """All but the study, which holds the storage URL and so may hold a password."""
        return {**self.__dict__, "_study": None}

    def spent(self) -> bool:
        """Whether no more students are to be asked for: out of time, or the study holds ``n_trials`` trials."""
        return self.out_of_time() or self.trials_reached()

    def out_of_time(self) -> bool:
        """Whether the time budget (``deadline``) has run out."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def trials_reached(self) -> bool:
        """Whether the study holds ``n_trials`` trials counting toward the budget (never, without ``n_trials``)."""
        if self.n_trials is None:
            return False
        return sum(counts_toward_budget(t) for t in self._study.get_trials(deepcopy=False)) >= self.n_trials

    def seconds_left(self) -> float | None:
        """The time budget left, for a snapshot (None: no time budget)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def resume(self, seconds_left: float | None) -> None:
        """Start the clock again with what :meth:`seconds_left` gave (None leaves the deadline as it is)."""
        if seconds_left is not None:
            self.deadline = time.monotonic() + seconds_left


def cut_by_time_budget(reason: str) -> str:
    """The reason a student stopped unfinished is PRUNED with once the time budget ran out: the budget, not the
    scheduler, stopped it ("stopped early after epoch 2" → "stopped when the search's time budget ran out after
    epoch 2")."""
    return reason.replace("stopped early", TIME_BUDGET_REASON)


class Clock(Protocol):
    """What tells whether a search's time budget has run out (a searcher, or its :class:`SearchBudget`)."""

    def out_of_time(self) -> bool: ...


class DeadlineStopper(Stopper):
    """Tune's stop for ``search.time_budget_s``, on the searcher's clock: Tune ends the trials exactly when the
    searcher counts them as cut by the budget and records them PRUNED. (``TuneConfig.time_budget_s`` keeps a
    wall-clock budget of its own, so a trial it cut could look left behind to the searcher, and be failed.)"""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self._clock.out_of_time()
