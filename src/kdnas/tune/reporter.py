"""The search's progress reporter (a Tune callback, drawn with :mod:`kdnas.progress`): one line per finished student
with the study's summary, and on a terminal a live bar (trials done of N, running, pruned, failed, front size,
hypervolume, elapsed, time left)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any

import optuna
from ray import tune
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from kdnas.progress import duration, interactive
from kdnas.student.space import PRECISION_PARAM
from kdnas.study.front import study_summary, summary_line
from kdnas.study.orphans import counts_toward_budget
from kdnas.study.records import TrialReport, TrialTicket

logger = logging.getLogger(__name__)


def _finished_in_budget(study: optuna.Study) -> int:
    """Trials that used up the trial budget and are finished."""
    return sum(t.state.is_finished() and counts_toward_budget(t) for t in study.get_trials(deepcopy=False))


class SearchProgress(tune.Callback):
    """Logs one line per finished student followed by where the study stands; on a terminal, keeps a live bar
    below the lines. Use it as a context manager around ``Tuner.fit``."""

    def __init__(self, study: optuna.Study, metric: str, n_trials: int, time_budget_s: float | None = None) -> None:
        self.study, self.metric, self.n_trials, self.time_budget_s = study, metric, n_trials, time_budget_s
        self.started = time.monotonic()
        self.done_before = _finished_in_budget(study)
        self.bar: tqdm | None = None
        self._stack = contextlib.ExitStack()

    def __getstate__(self) -> dict[str, Any]:
        """What pickles of this callback (Tune's experiment state, ``tuner.pkl``): all but the study, whose storage
        URL may hold a password; the callback runs in the driver only."""
        return {**self.__dict__, "study": None}

    def __enter__(self) -> SearchProgress:
        if interactive():
            self._stack.enter_context(logging_redirect_tqdm())
            self.bar = self._stack.enter_context(
                tqdm(total=self.n_trials, initial=self.done_before, desc="students", unit="trial", dynamic_ncols=True)
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def status(self, *, final: bool = False) -> str:
        """``done/N done · states · front · hypervolume · elapsed, time left`` (``final``: without the time left)."""
        done = _finished_in_budget(self.study)
        elapsed = time.monotonic() - self.started
        rate = (done - self.done_before) / elapsed if elapsed > 0 else 0.0
        estimate = rate > 0 and done < self.n_trials and not final
        left = f", about {duration(self.seconds_left(done, elapsed))} left" if estimate else ""
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        return f"{done}/{self.n_trials} done · {summary_line(study_summary(self.study))} · {duration(elapsed)}{left}"

    def seconds_left(self, done: int, elapsed: float) -> float:
        """The time left at the rate students finished so far, capped by what is left of the time budget."""
        left = (self.n_trials - done) * elapsed / (done - self.done_before)
        return left if self.time_budget_s is None else min(left, max(self.time_budget_s - elapsed, 0.0))

    def _event(self, line: str) -> None:
        status = self.status()
        if self.bar is not None:
            self.bar.set_postfix_str(status.split(" · ", 1)[1], refresh=True)
            logger.info("%s", line)
        else:
            logger.info("%s | %s", line, status)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.status().split(" · ", 1)[1], refresh=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._event(_trial_line(trial, self.metric))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._event(
            f"trial {TrialTicket.from_attrs(trial.config).number} {_arch_label(trial.config)}: its process failed "
            "(see the Ray trial logs)"
        )


def _arch_label(config: dict[str, Any]) -> str:
    """``L2 A4x32 F×2`` for a trial's sampled architecture (``L2 A4x32 F×2 int8`` where the precision is sampled)."""
    precision = f" {config[PRECISION_PARAM]}" if PRECISION_PARAM in config else ""
    return "L{num_layers} A{num_heads}x{head_dim} F×{ffn_ratio}".format(**config) + precision


def _trial_line(trial: Any, metric: str) -> str:
    """What happened to a finished Tune trial's student."""
    result = trial.last_result or {}
    report = TrialReport.from_result(result, metric)
    ticket = TrialTicket.from_attrs(trial.config)
    name = f"trial {ticket.number} {_arch_label(trial.config)}"
    if report.error is not None:
        return f"{name} failed: {report.error}"
    if report.infeasible is not None:
        return f"{name}: {report.infeasible}"
    if math.isnan(report.value) or math.isnan(report.latency_ms):
        return f"{name}: stopped before its first evaluation"
    values = f"{metric}={report.value:.4f} latency={report.latency_ms:.2f} ms"
    seconds = f"{result.get('time_total_s', 0.0):.0f} s"
    if report.completed and ticket.trained_twin is not None:
        return f"{name}: {values} (trial {ticket.trained_twin.number}'s student, not trained again; {seconds})"
    if report.completed:
        return f"{name}: {values} (epoch {report.epoch}, {seconds})"
    return f"{name}: stopped early after epoch {report.epoch}: {values} ({seconds})"
