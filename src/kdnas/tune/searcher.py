"""KDNASSearch: a Ray Tune ``Searcher`` over Optuna's public ask/tell API that records every student truthfully.

Stock ``OptunaSearch`` writes no user_attrs, stores students stopped early by a scheduler as COMPLETE with
half-trained values, and leaves trials with NaN or missing metrics RUNNING forever. This searcher records the
arch, latency details and student path, tells PRUNED for early-stopped students and for students over a budget
(never trained), tells FAIL with a reason for errors and bad metrics, and stores the budgets' constraints. It
also keeps the trial budget across drivers sharing the study, and marks each trial with its driver and a heartbeat
so that a resumed driver can tell orphans from trials another live driver is running. A suggestion of a student
the study already holds is recorded as a repeat (its result, not trained again) and the sampler asked again.

It touches Optuna only through public API (``optuna.Study``, ``optuna.Trial`` and the public methods of
``optuna.storages.BaseStorage``) and Ray only through the public ``Searcher`` contract.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, cast

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from ray.tune import Stopper
from ray.tune.search import Searcher

from kdnas.config import KDNASConfig, dump_config
from kdnas.errors import first_line
from kdnas.student import SearchSpace
from kdnas.study.orphans import counts_toward_budget, this_driver
from kdnas.study.records import (
    ARCH_SUMMARY_ATTR,
    DRIVER_ATTR,
    FAILURE_ATTR,
    HEARTBEAT_ATTR,
    LATENCY_KEY,
    PROMOTED_ATTR,
    PROMOTED_KEY,
    PRUNED_ATTR,
    RESTARTS_ATTR,
    TRIAL_NUMBER_KEY,
    Outcome,
    TrialReport,
)
from kdnas.study.repeats import (
    RECIPE_ATTR,
    TIME_BUDGET_REASON,
    known_students,
    promotion_candidates,
    recipe_key,
    repeat_of,
    student_key,
)
from kdnas.study.storage import objective_names
from kdnas.tune.samplers import make_sampler

REPEATS_IN_A_ROW = 25
"""A sampler that proposes this many students the study holds in a row has (nearly) exhausted the space."""

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


class KDNASSearch(Searcher):
    """A Tune ``Searcher`` over an Optuna study that writes user_attrs, PRUNED/FAIL states with reasons, and budget
    constraints.

    ``space`` is a define-by-run function sampling a student's parameters on an ``optuna.Trial`` (its return value,
    a dict or None, adds to them); ``metric`` and ``mode`` name the study's objectives (the task metric and
    ``latency_ms``: a worker's :class:`~kdnas.study.records.TrialReport`) and their directions ("max", "min"). The study
    ``study_name`` in ``storage`` is created when missing; ``study_id`` (its id in ``storage``) is looked up when
    not given. ``sampler`` samples the students (TPE by default).

    ``stop_reasons`` (Tune trial id → reason, filled by a scheduler) explains students stopped early.

    With ``n_trials``, it stops suggesting once the study holds that many trials counting toward the budget
    (see :func:`counts_toward_budget`), whichever driver ran them. Once ``deadline`` (a ``time.monotonic()``
    instant, set when the search's time budget starts) has passed, it suggests nothing more, and students Tune stops
    unfinished are PRUNED with the time budget as their reason.

    With ``reuse_duplicates``, a suggestion whose parameters (architecture and sampled recipe) equal those of a
    student the study holds under the same ``recipe`` (:func:`~kdnas.study.repeats.recipe_key`; any run or
    driver) is recorded at once as a repeat of it, with its result (with the study's fixed training seed it would
    learn the same), and the sampler is asked again: repeats never reach Ray and do not use up the trial budget.
    When the study holds all ``space_size`` students, or the sampler proposes :data:`REPEATS_IN_A_ROW` known
    students in a row, the search ends and :attr:`exhausted` says why.
    """

    def __init__(
        self,
        space: Callable[[optuna.Trial], dict[str, Any] | None],
        metric: list[str],
        mode: list[str],
        storage: optuna.storages.BaseStorage,
        study_name: str,
        *,
        study_id: int | None = None,
        sampler: optuna.samplers.BaseSampler | None = None,
        stop_reasons: Mapping[str, str] | None = None,
        n_trials: int | None = None,
        reuse_duplicates: bool = False,
        recipe: str = "",
        space_size: int | None = None,
    ) -> None:
        # Tune's Searcher takes lists for several objectives (as its OptunaSearch passes), though typed for one
        super().__init__(metric=cast(Any, metric), mode=cast(Any, mode))
        if len(metric) != 2 or metric[1] != LATENCY_KEY:
            raise ValueError(f"the objectives are the task metric and {LATENCY_KEY!r}, not {metric}")
        self._objectives = list(metric)
        self._space = space
        self._storage = storage
        self._views_storage: optuna.storages.BaseStorage = storage  # see _open
        self._study_name = study_name
        self._sampler = sampler if sampler is not None else optuna.samplers.TPESampler()
        self._study = optuna.create_study(
            storage=storage,
            sampler=self._sampler,
            pruner=optuna.pruners.NopPruner(),
            study_name=study_name,
            directions=["maximize" if m == "max" else "minimize" for m in mode],
            load_if_exists=True,
        )
        self._study_id = study_id if study_id is not None else storage.get_study_id_from_name(study_name)
        self._stop_reasons = stop_reasons if stop_reasons is not None else {}
        self._n_trials = n_trials
        self._reuse_duplicates = reuse_duplicates
        self._recipe = recipe
        self._space_size = space_size
        self.deadline: float | None = None
        self.exhausted: str | None = None
        self._ot_trials: dict[str, optuna.Trial] = {}  # Tune trial id → its Optuna trial, while it runs
        self._storage_ids: dict[str, int] = {}  # Tune trial id → its trial's id in the storage
        self._completed: set[str] = set()
        self._restarts: dict[str, int] = {}
        self._last_results: dict[str, dict] = {}

    def __getstate__(self) -> dict[str, Any]:
        """What pickles of this searcher (Tune's experiment state, ``tuner.pkl``, often on shared storage): all but
        the storage, the study and the running trials, which hold the storage URL and so may hold a password. kdnas
        resumes a search from its study, never from Tune's pickle."""
        state = dict(self.__dict__)
        state.update(_storage=None, _views_storage=None, _study=None, _ot_trials={})
        return state

    # --- Ray Tune's Searcher contract -------------------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Nothing to take from Tune: the objectives (``metric``, ``mode``) and the space are this searcher's own
        (False: a ``param_space`` given to Tune is not used, and Tune refuses one that needs sampling)."""
        return False

    # Tune's annotation leaves out Searcher.FINISHED, a str its own docstring tells searchers to return
    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
        return retrying(lambda: self._suggest(trial_id))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._last_results[trial_id] = result  # multi-objective: Optuna takes no intermediate values

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        report = TrialReport.from_result(result, self._objectives[0])
        outcome = report_outcome(report, error, self._objectives, self._restarts.get(trial_id, 0))
        if outcome.state == TrialState.PRUNED and trial_id in self._stop_reasons:
            outcome = replace(outcome, reason=self._stop_reasons[trial_id])
        elif outcome.state == TrialState.PRUNED and report.infeasible is None and self.out_of_time():
            reason = str(outcome.reason).replace("stopped early", TIME_BUDGET_REASON)
            outcome = replace(outcome, reason=reason)

        def tell() -> None:
            try:
                tell_outcome(ot_trial, outcome)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # already told, e.g. before a restore

        retrying(tell)
        self._completed.add(trial_id)
        del self._ot_trials[trial_id]  # its Optuna trial (and the study view it holds) is not needed any more
        self._last_results.pop(trial_id, None)

    def save(self, checkpoint_path: str) -> None:
        """Save which Tune trial runs which storage trial, as JSON (Tune snapshots its experiment with it)."""
        state = {
            "storage_ids": self._storage_ids,
            "running": sorted(self._ot_trials),
            "completed": sorted(self._completed),
            "restarts": self._restarts,
            "exhausted": self.exhausted,
            "deadline_left": None if self.deadline is None else self.deadline - time.monotonic(),
        }
        with open(checkpoint_path, "w") as out:
            json.dump(state, out)

    def restore(self, checkpoint_path: str) -> None:
        """Restore what :meth:`save` saved; the running trials' Optuna trials are opened again from the storage."""
        with open(checkpoint_path) as source:
            state = json.load(source)
        self._storage_ids, self._completed = dict(state["storage_ids"]), set(state["completed"])
        self._restarts, self.exhausted = dict(state["restarts"]), state["exhausted"]
        if state["deadline_left"] is not None:
            self.deadline = time.monotonic() + state["deadline_left"]
        self._ot_trials = {tid: self._open(self._storage_ids[tid]) for tid in state["running"]}

    # --- kdnas's additions ----------------------------------------------------------------------------------------

    def record_heartbeats(self) -> None:
        """Mark every trial this driver still runs as alive in the storage."""
        now = time.time()
        for trial_id in list(self._ot_trials):
            try:
                self._beat(self._storage_ids[trial_id], now)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # told meanwhile
            except Exception as err:  # a lost connection is retried at the next beat (pool_pre_ping reconnects)
                logger.warning("could not record heartbeats: %s", first_line(err))
                return

    def record_restart(self, trial_id: str) -> None:
        """Count a restart of Tune trial ``trial_id`` after its worker died, in the study too."""
        self._restarts[trial_id] = self._restarts.get(trial_id, 0) + 1
        if trial_id in self._ot_trials:
            retrying(lambda: self._ot_trials[trial_id].set_user_attr(RESTARTS_ATTR, self._restarts[trial_id]))

    def finish_out_of_time(self) -> int:
        """Once the deadline has passed, tell the trials Tune left unfinished PRUNED (with their last epoch's
        attrs); returns how many. Tune ends such trials without telling the searcher."""
        if not self.out_of_time():
            return 0
        unfinished = [tid for tid in self._ot_trials if tid not in self._completed]
        for trial_id in unfinished:
            self.on_trial_complete(trial_id, self._last_results.get(trial_id))
        return len(unfinished)

    def out_of_time(self) -> bool:
        """Whether the search's time budget (``deadline``) has run out."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    # --- internals --------------------------------------------------------------------------------------------------

    def _budget_reached(self) -> bool:
        """Whether the study holds ``n_trials`` trials counting toward the budget (never, without ``n_trials``)."""
        if self._n_trials is None:
            return False
        trials = self._study.get_trials(deepcopy=False)
        return sum(counts_toward_budget(t) for t in trials) >= self._n_trials

    def _suggest(self, trial_id: str) -> dict | str | None:
        started = trial_id in self._storage_ids
        if not started and (self.out_of_time() or self._budget_reached()):
            return Searcher.FINISHED
        if not started and self._reuse_duplicates and self._space_size is not None:
            known = known_students(self._study.get_trials(deepcopy=False), self._recipe)
            if len(known) >= self._space_size and not self._promote():
                if any(t.state == TrialState.RUNNING for t in known.values()):
                    return None  # wait for the running ones: one may be cut by the time budget
                self.exhausted = f"the study holds all {self._space_size} students of the search space"
                return Searcher.FINISHED
        for _ in range(REPEATS_IN_A_ROW):
            if trial_id not in self._ot_trials:
                self._ot_trials[trial_id] = self._ask(trial_id)
            ot_trial = self._ot_trials[trial_id]
            config = self._sample(ot_trial)
            promoted = PROMOTED_ATTR in ot_trial.user_attrs
            original = self._held_student(ot_trial) if self._reuse_duplicates and not promoted else None
            if original is None:
                storage_id = self._storage_ids[trial_id]
                self._storage.set_trial_user_attr(storage_id, RECIPE_ATTR, self._recipe)
                self._beat(storage_id, time.time())  # before the driver: a claimed trial always has a heartbeat
                self._storage.set_trial_system_attr(storage_id, DRIVER_ATTR, this_driver())
                return {**config, TRIAL_NUMBER_KEY: ot_trial.number, **({PROMOTED_KEY: True} if promoted else {})}
            try:
                self._tell_repeat(ot_trial, original)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # told before the connection dropped: this ask is a retry (see :func:`retrying`)
            del self._ot_trials[trial_id], self._storage_ids[trial_id]
        if self._promote():
            return self._suggest(trial_id)
        self.exhausted = (
            f"the sampler proposed {REPEATS_IN_A_ROW} students in a row that the study already holds: "
            "the search space is (nearly) exhausted"
        )
        return Searcher.FINISHED

    def _promote(self) -> bool:
        """Once every student has been tried, enqueue the most promising student the scheduler stopped early (see
        :func:`~kdnas.study.repeats.promotion_candidates`) for full training, as ASHA promotes: a stopped
        student's result is otherwise final. False when there is none left to promote."""
        if not self._reuse_duplicates:
            return False
        candidates = promotion_candidates(self._study.get_trials(deepcopy=False), self._recipe)
        if not candidates:
            return False
        stopped = candidates[0]
        self._study.enqueue_trial(stopped.params, user_attrs={PROMOTED_ATTR: stopped.number})
        logger.info(
            "every student of the space has been tried: the student of trial %d (%s, %s) is trained again, in full",
            stopped.number,
            stopped.user_attrs.get(ARCH_SUMMARY_ATTR, ""),
            stopped.user_attrs.get(PRUNED_ATTR, "stopped early"),
        )
        return True

    def _sample(self, ot_trial: optuna.Trial) -> dict[str, Any]:
        """The student's parameters, sampled on ``ot_trial`` by the define-by-run space (as ``OptunaSearch`` does:
        the suggested values, updated with what the space returns)."""
        returned = self._space(ot_trial)
        if returned is not None and not isinstance(returned, dict):
            raise TypeError(f"the search space returned {type(returned).__name__}, not a dict or None")
        return {**ot_trial.params, **(returned or {})}

    def _beat(self, storage_id: int, now: float) -> None:
        """Record that this driver still runs storage trial ``storage_id``: kdnas's heartbeat attr (what
        :func:`~kdnas.study.orphans.driver_gone` reads) and Optuna's own heartbeat (what Optuna's tools read)."""
        self._storage.set_trial_system_attr(storage_id, HEARTBEAT_ATTR, now)
        record_heartbeat = getattr(self._storage, "record_heartbeat", None)  # storages with heartbeat support
        if callable(record_heartbeat):
            record_heartbeat(storage_id)

    def _held_student(self, ot_trial: optuna.Trial) -> FrozenTrial | None:
        """The study's trial holding the student ``ot_trial`` sampled (same parameters and recipe), if any."""
        known = known_students(self._study.get_trials(deepcopy=False), self._recipe)
        original = known.get(student_key(ot_trial.params))
        return original if original is not None and original.number != ot_trial.number else None

    def _tell_repeat(self, ot_trial: optuna.Trial, original: FrozenTrial) -> None:
        """Record ``ot_trial`` as a repeat of ``original``: its result (COMPLETE or PRUNED), never trained."""
        tell_outcome(ot_trial, repeat_of(original))
        logger.info(
            "trial %d %s: the same student as trial %d, its result reused without training",
            ot_trial.number,
            original.user_attrs.get(ARCH_SUMMARY_ATTR, ""),
            original.number,
        )

    def _fresh_study(self) -> optuna.Study:
        """A new view of the study: the sampler of a ``Study`` caches the trials it saw until that study's next
        ask or tell, and trials here are created through the storage, so each ask gets a view of its own (as
        ``Study.ask()`` clears its cache)."""
        return optuna.load_study(
            study_name=self._study_name,
            storage=self._views_storage,
            sampler=self._sampler,
            pruner=optuna.pruners.NopPruner(),
        )

    def _claim_waiting(self) -> int | None:
        """Set the oldest WAITING (enqueued, e.g. a retry) trial RUNNING and return its storage id, as
        ``Study.ask()`` does; None when there is none (another driver may claim one first)."""
        for waiting in self._storage.get_all_trials(self._study_id, deepcopy=False, states=(TrialState.WAITING,)):
            storage_id = self._storage.get_trial_id_from_study_id_trial_number(self._study_id, waiting.number)
            try:
                if self._storage.set_trial_state_values(storage_id, state=TrialState.RUNNING):
                    return storage_id
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    def _ask(self, trial_id: str) -> optuna.Trial:
        """``Study.ask()``, except that a new trial is created already claimed by this driver (its
        :data:`DRIVER_ATTR` and heartbeat written in the same transaction) and a retry after a storage error reuses
        the trial an earlier attempt created: a connection lost mid-ask can leave no RUNNING trial that nobody
        owns. Waiting (enqueued) trials come first, as in ``Study.ask()``."""
        storage_id = self._storage_ids.get(trial_id)
        if storage_id is None:
            storage_id = self._claim_waiting()
            if storage_id is None:
                claimed = FrozenTrial(
                    number=-1,
                    state=TrialState.RUNNING,
                    value=None,
                    datetime_start=datetime.now(),
                    datetime_complete=None,
                    params={},
                    distributions={},
                    user_attrs={},
                    system_attrs={HEARTBEAT_ATTR: time.time(), DRIVER_ATTR: this_driver()},
                    intermediate_values={},
                    trial_id=-1,
                )
                storage_id = self._storage.create_new_trial(self._study_id, template_trial=claimed)
            self._storage_ids[trial_id] = storage_id
        return self._open(storage_id)

    def _open(self, storage_id: int) -> optuna.Trial:
        """The ``optuna.Trial`` of storage trial ``storage_id``, on a fresh view of the study.

        The views share the first view's storage (``Trial.storage``: Optuna's trial cache over ``storage``), so a
        view reads only the trials that changed since the last one, not the whole study."""
        study = self._fresh_study()
        study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))  # the view reads the trial it is to sample
        trial = optuna.Trial(study, storage_id)
        self._views_storage = trial.storage
        return trial


class DeadlineStopper(Stopper):
    """Tune's stop for ``search.time_budget_s``, on the searcher's clock: Tune ends the trials exactly when the
    searcher counts them as cut by the budget and records them PRUNED. (``TuneConfig.time_budget_s`` keeps a
    wall-clock budget of its own, so a trial it cut could look left behind to the searcher, and be failed.)"""

    def __init__(self, searcher: KDNASSearch) -> None:
        self._searcher = searcher

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self._searcher.out_of_time()


def make_searcher(
    config: KDNASConfig,
    storage: optuna.storages.BaseStorage,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
    stop_reasons: Mapping[str, str] | None = None,
) -> KDNASSearch:
    """The searcher a search over ``config`` runs, on the study ``search.study_name`` in ``storage`` (created when
    missing): the configured space, the trial budget, repeats reused and promotions as configured; ``sampler``
    (default: the configured one, seeded with ``search.seed``) proposes the students. ``stop_reasons``: the
    early-stopping scheduler's (:attr:`~kdnas.tune.scheduler.ParetoStopping.stop_reasons`), which explain the
    students it stopped.

    It also drives a search without Ray: ``suggest`` a trial, hand it the results, ``on_trial_complete`` (as
    ``benchmarks/p4_learning_curves.py`` replays searches on recorded learning curves)."""
    space = SearchSpace.of(config)
    return KDNASSearch(
        space=space.suggest,
        metric=objective_names(config),
        mode=["max", "min"],
        storage=storage,
        study_name=config.search.study_name,
        sampler=sampler if sampler is not None else make_sampler(config),
        stop_reasons=stop_reasons,
        n_trials=config.search.n_trials,
        reuse_duplicates=config.search.reuse_duplicates,
        recipe=recipe_key(dump_config(config)),
        space_size=space.size(),
    )
