"""KDNASSearch: a Ray Tune ``Searcher`` over Optuna's public ask/tell API that records every student truthfully.

Stock ``OptunaSearch`` writes no user_attrs, stores students stopped early by a scheduler as COMPLETE with
half-trained values, and leaves trials with NaN or missing metrics RUNNING forever. This searcher records the
arch, latency details and student path, tells PRUNED for early-stopped students and for students over a budget
(never trained), tells FAIL with a reason for errors and bad metrics, and stores the budgets' constraints.

It is the thin adapter between Tune's ``Searcher`` contract and the search's policies, each in a module of its own:
:mod:`~kdnas.tune.claims` (the trials this driver holds, claimed and kept alive by heartbeats),
:mod:`~kdnas.tune.reuse` (a student the study holds recorded as a repeat), :mod:`~kdnas.tune.promotion` (students
stopped early trained in full once the space is tried), :mod:`~kdnas.tune.deadline` (the trial and time budgets) and
:mod:`~kdnas.tune.outcomes` (how a trial's end is classified and told).

It touches Optuna only through public API (``optuna.Study``, ``optuna.Trial`` and the public methods of
``optuna.storages.BaseStorage``) and Ray only through the public ``Searcher`` contract.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, cast

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from kdnas.config import KDNASConfig, dump_config
from kdnas.student import SearchSpace
from kdnas.study.records import (
    LATENCY_KEY,
    PROMOTED_KEY,
    RESTARTS_ATTR,
    TRAINED_TWIN_KEY,
    TRIAL_NUMBER_KEY,
    Outcome,
    TrialReport,
)
from kdnas.study.repeats import recipe_key
from kdnas.study.storage import objective_names
from kdnas.study.student_record import StudentRecord
from kdnas.tune.claims import TrialClaims
from kdnas.tune.deadline import SearchBudget, cut_by_time_budget
from kdnas.tune.outcomes import report_outcome, retrying, tell_outcome
from kdnas.tune.promotion import Promotion, SpaceLeft
from kdnas.tune.reuse import RepeatReuse
from kdnas.tune.samplers import make_sampler
from kdnas.tune.twins import PrecisionTwins

_REPEATS_IN_A_ROW = 25
"""A sampler that proposes this many students the study holds in a row has (nearly) exhausted the space."""


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
    (see :class:`~kdnas.tune.deadline.SearchBudget`), whichever driver ran them. Once ``deadline`` (a
    ``time.monotonic()`` instant, set when the search's time budget starts) has passed, it suggests nothing more, and
    students Tune stops unfinished are PRUNED with the time budget as their reason.

    With ``reuse_duplicates``, a suggestion whose parameters (architecture and sampled recipe) equal those of a
    student the study holds under the same ``recipe`` (:func:`~kdnas.study.repeats.recipe_key`; any run or
    driver) is recorded at once as a repeat of it, with its result (:class:`~kdnas.tune.reuse.RepeatReuse`), and the
    sampler is asked again: repeats never reach Ray and do not use up the trial budget. With ``serve_twins`` (a
    searched ``latency.precision``), a student the study trained in another precision goes to its trial with that
    twin (:class:`~kdnas.tune.twins.PrecisionTwins`): measured and scored in its own precision, not trained again.
    When the study holds all ``space_size`` students, or the sampler proposes :data:`_REPEATS_IN_A_ROW` known
    students in a row, the students stopped early are promoted (:class:`~kdnas.tune.promotion.Promotion`); with none
    left, the search ends and :attr:`exhausted` says why.

    A pickle of it (Tune's experiment state, ``tuner.pkl``, often on shared storage) holds no storage, study or
    running trial, which hold the storage URL and so may hold a password: each policy leaves them out. kdnas resumes
    a search from its study, never from Tune's pickle.
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
        serve_twins: bool = False,
    ) -> None:
        # Tune's Searcher takes lists for several objectives (as its OptunaSearch passes), though typed for one
        super().__init__(metric=cast(Any, metric), mode=cast(Any, mode))
        if len(metric) != 2 or metric[1] != LATENCY_KEY:
            raise ValueError(f"the objectives are the task metric and {LATENCY_KEY!r}, not {metric}")
        self._objectives = list(metric)
        self._space = space
        self._sampler = sampler if sampler is not None else optuna.samplers.TPESampler()
        study = optuna.create_study(
            storage=storage,
            sampler=self._sampler,
            pruner=optuna.pruners.NopPruner(),
            study_name=study_name,
            directions=["maximize" if m == "max" else "minimize" for m in mode],
            load_if_exists=True,
        )
        self._claims = TrialClaims(storage, study_name, self._sampler, study_id=study_id)
        self._budget = SearchBudget(study, n_trials)
        self._reuse = RepeatReuse(study, recipe) if reuse_duplicates else None
        self._promotion = Promotion(study, recipe, space_size) if reuse_duplicates else None
        self._twins = PrecisionTwins(study, recipe) if serve_twins else None
        self._recipe = recipe
        self._space_size = space_size
        self._stop_reasons = stop_reasons if stop_reasons is not None else {}
        self.exhausted: str | None = None
        self._completed: set[str] = set()
        self._restarts: dict[str, int] = {}
        self._last_results: dict[str, dict] = {}

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
        ot_trial = self._claims.held(trial_id)
        if trial_id in self._completed or ot_trial is None:
            return
        report = TrialReport.from_result(result, self._objectives[0])
        restarts = self._restarts.get(trial_id, 0)
        outcome = self._explained(trial_id, report, report_outcome(report, error, self._objectives, restarts))

        def tell() -> None:
            try:
                tell_outcome(ot_trial, outcome)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # already told, e.g. before a restore

        retrying(tell)
        self._completed.add(trial_id)
        self._claims.release(trial_id)  # its Optuna trial (and the study view it holds) is not needed any more
        self._last_results.pop(trial_id, None)

    def save(self, checkpoint_path: str) -> None:
        """Save which Tune trial runs which storage trial, as JSON (Tune snapshots its experiment with it)."""
        state = {
            **self._claims.snapshot(),
            "completed": sorted(self._completed),
            "restarts": self._restarts,
            "exhausted": self.exhausted,
            "deadline_left": self._budget.seconds_left(),
        }
        with open(checkpoint_path, "w") as out:
            json.dump(state, out)

    def restore(self, checkpoint_path: str) -> None:
        """Restore what :meth:`save` saved; the running trials' Optuna trials are opened again from the storage."""
        with open(checkpoint_path) as source:
            state = json.load(source)
        self._completed = set(state["completed"])
        self._restarts, self.exhausted = dict(state["restarts"]), state["exhausted"]
        self._budget.resume(state["deadline_left"])
        self._claims.restore(state["storage_ids"], state["running"])

    # --- kdnas's additions ----------------------------------------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """When the search's time budget runs out (a ``time.monotonic()`` instant; None: no time budget)."""
        return self._budget.deadline

    @deadline.setter
    def deadline(self, instant: float | None) -> None:
        self._budget.deadline = instant

    def record_heartbeats(self) -> None:
        """Mark every trial this driver still runs as alive in the storage."""
        self._claims.record_heartbeats()

    def record_restart(self, trial_id: str) -> None:
        """Count a restart of Tune trial ``trial_id`` after its worker died, in the study too."""
        restarts = self._restarts[trial_id] = self._restarts.get(trial_id, 0) + 1
        ot_trial = self._claims.held(trial_id)
        if ot_trial is not None:
            retrying(lambda: ot_trial.set_user_attr(RESTARTS_ATTR, restarts))

    def finish_out_of_time(self) -> int:
        """Once the deadline has passed, tell the trials Tune left unfinished PRUNED (with their last epoch's
        attrs); returns how many. Tune ends such trials without telling the searcher."""
        if not self.out_of_time():
            return 0
        unfinished = [tid for tid in self._claims.running() if tid not in self._completed]
        for trial_id in unfinished:
            self.on_trial_complete(trial_id, self._last_results.get(trial_id))
        return len(unfinished)

    def out_of_time(self) -> bool:
        """Whether the search's time budget (``deadline``) has run out."""
        return self._budget.out_of_time()

    # --- internals --------------------------------------------------------------------------------------------------

    def _suggest(self, trial_id: str) -> dict | str | None:
        if not self._claims.asked(trial_id):
            if self._budget.spent():
                return Searcher.FINISHED
            left = self._promotion.space_left() if self._promotion is not None else SpaceLeft.UNTRIED
            if left == SpaceLeft.TRAINING:
                return None  # wait for the running ones: one may be cut by the time budget
            if left == SpaceLeft.NONE:
                self.exhausted = f"the study holds all {self._space_size} students of the search space"
                return Searcher.FINISHED
        for _ in range(_REPEATS_IN_A_ROW):
            ot_trial = self._claims.ask(trial_id)
            config = self._sample(ot_trial)
            promoted = StudentRecord.from_attrs(ot_trial.user_attrs).promoted_from is not None
            reuse = self._reuse if not promoted else None
            original = reuse.original_of(ot_trial) if reuse is not None else None
            if reuse is None or original is None:
                twin = self._twins.twin_of(ot_trial) if self._twins is not None and not promoted else None
                self._claims.claim(trial_id, self._recipe)
                return {
                    **config,
                    TRIAL_NUMBER_KEY: ot_trial.number,
                    **({PROMOTED_KEY: True} if promoted else {}),
                    **({TRAINED_TWIN_KEY: twin.to_attrs()} if twin is not None else {}),
                }
            try:
                reuse.tell(ot_trial, original)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # told before the connection dropped: this ask is a retry (see :func:`retrying`)
            self._claims.drop(trial_id)
        if self._promotion is not None and self._promotion.promote():
            return self._suggest(trial_id)
        self.exhausted = (
            f"the sampler proposed {_REPEATS_IN_A_ROW} students in a row that the study already holds: "
            "the search space is (nearly) exhausted"
        )
        return Searcher.FINISHED

    def _explained(self, trial_id: str, report: TrialReport, outcome: Outcome) -> Outcome:
        """``outcome`` with the reason a student stopped unfinished was stopped: the scheduler's, or the time
        budget's once it ran out (a student over a budget keeps its own)."""
        if outcome.state != TrialState.PRUNED:
            return outcome
        if trial_id in self._stop_reasons:
            return replace(outcome, reason=self._stop_reasons[trial_id])
        if report.infeasible is None and self.out_of_time():
            return replace(outcome, reason=cut_by_time_budget(str(outcome.reason)))
        return outcome

    def _sample(self, ot_trial: optuna.Trial) -> dict[str, Any]:
        """The student's parameters, sampled on ``ot_trial`` by the define-by-run space (as ``OptunaSearch`` does:
        the suggested values, updated with what the space returns)."""
        returned = self._space(ot_trial)
        if returned is not None and not isinstance(returned, dict):
            raise TypeError(f"the search space returned {type(returned).__name__}, not a dict or None")
        return {**ot_trial.params, **(returned or {})}


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
        serve_twins=config.latency.searches_precision,
    )
