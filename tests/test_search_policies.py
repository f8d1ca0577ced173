"""The searcher's policies, each on its own over a real SQLite study: claims, repeats reused, promotion, the budgets,
and how a trial's end is told (retried over dropped connections)."""

from __future__ import annotations

import json
import time

import optuna
import pytest
import ray.cloudpickle
import sqlalchemy
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from conftest import make_searcher
from kdnas.config import KDNASConfig
from kdnas.study.orphans import this_driver
from kdnas.study.records import (
    DRIVER_ATTR,
    HEARTBEAT_ATTR,
    LATENCY_ATTR,
    LEARNING_CURVE_ATTR,
    PROMOTED_ATTR,
    PRUNED_ATTR,
    RECIPE_ATTR,
    REPEAT_OF_ATTR,
)
from kdnas.study.storage import create_or_load_study, open_storage
from kdnas.tune import outcomes
from kdnas.tune.claims import TrialClaims
from kdnas.tune.deadline import DeadlineStopper, SearchBudget, cut_by_time_budget
from kdnas.tune.promotion import Promotion, SpaceLeft
from kdnas.tune.reuse import RepeatReuse

X = IntDistribution(0, 3)

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


def _study(tmp_path) -> tuple[optuna.storages.RDBStorage, optuna.Study]:
    storage = open_storage(f"sqlite:///{tmp_path}/study.db")
    return storage, create_or_load_study(KDNASConfig(), storage)


def _add(study: optuna.Study, x: int, state: TrialState, recipe: str = "r", **attrs) -> None:
    """A finished trial of student ``x`` under ``recipe``."""
    values = [0.6, 1.0] if state == TrialState.COMPLETE else None
    user_attrs = {RECIPE_ATTR: recipe, **attrs}
    study.add_trial(
        create_trial(state=state, params={"x": x}, distributions={"x": X}, values=values, user_attrs=user_attrs)
    )


def _stopped(study: optuna.Study, x: int, accuracy: float, latency_ms: float) -> None:
    """A student of recipe "r" the scheduler stopped after epoch 1 at ``accuracy`` and ``latency_ms``."""
    attrs = {
        PRUNED_ATTR: "stopped early after epoch 1",
        LEARNING_CURVE_ATTR: [[1, accuracy, 3.0]],
        LATENCY_ATTR: {"median_ms": latency_ms},
    }
    _add(study, x, TrialState.PRUNED, **attrs)


def _sampled(study: optuna.Study, recipe: str | None = None) -> optuna.Trial:
    """A RUNNING trial that sampled a student (``x``), handed to training under ``recipe`` when given."""
    trial = study.ask()
    trial.suggest_int("x", 0, 3)
    if recipe is not None:
        trial.set_user_attr(RECIPE_ATTR, recipe)
    return trial


# --- claims --------------------------------------------------------------------------------------------------------


def test_claims_take_the_oldest_enqueued_trial_first_then_create_trials_already_claimed(tmp_path):
    storage, study = _study(tmp_path)
    study.enqueue_trial({"x": 2})
    claims = TrialClaims(storage, study.study_name, optuna.samplers.RandomSampler(seed=0))
    enqueued, created = claims.ask("a"), claims.ask("b")
    assert (enqueued.number, created.number) == (0, 1) and claims.ask("a") is enqueued
    assert enqueued.suggest_int("x", 0, 3) == 2, "the enqueued trial keeps its parameters"
    waiting, new = study.trials
    assert waiting.state == new.state == TrialState.RUNNING and DRIVER_ATTR not in waiting.system_attrs
    assert new.system_attrs[DRIVER_ATTR] == this_driver() and HEARTBEAT_ATTR in new.system_attrs
    claims.claim("a", "r1")
    claimed = study.trials[0]
    assert claimed.user_attrs[RECIPE_ATTR] == "r1" and claimed.system_attrs[DRIVER_ATTR] == this_driver()
    assert HEARTBEAT_ATTR in claimed.system_attrs
    claims.drop("b")
    assert not claims.asked("b") and claims.running() == ["a"]
    assert claims.ask("b").number == 2, "a dropped trial's Tune trial gets another"


def test_heartbeats_refresh_every_held_trial_past_one_told_meanwhile(tmp_path):
    storage, study = _study(tmp_path)
    claims = TrialClaims(storage, study.study_name, optuna.samplers.RandomSampler(seed=0))
    told, running = claims.ask("told"), claims.ask("running")
    told.suggest_int("x", 0, 3)
    study.tell(told, [0.5, 1.0])  # told, not released yet
    before = {t.number: t.system_attrs[HEARTBEAT_ATTR] for t in study.trials}
    time.sleep(0.01)
    claims.record_heartbeats()
    after = {t.number: t.system_attrs[HEARTBEAT_ATTR] for t in study.trials}
    assert after[told.number] == before[told.number] and after[running.number] > before[running.number]


def test_a_claims_snapshot_holds_the_running_trials_again_from_the_storage(tmp_path):
    storage, study = _study(tmp_path)
    claims = TrialClaims(storage, study.study_name, optuna.samplers.RandomSampler(seed=0))
    done, running = claims.ask("done"), claims.ask("running")
    study.tell(done, [0.5, 1.0])
    claims.release("done")
    snapshot = json.loads(json.dumps(claims.snapshot()))
    assert snapshot["running"] == ["running"]
    again = TrialClaims(storage, study.study_name, optuna.samplers.RandomSampler(seed=0))
    again.restore(snapshot["storage_ids"], snapshot["running"])
    assert again.asked("done") and again.held("done") is None and again.running() == ["running"]
    held = again.held("running")
    assert held is not None and held.number == running.number
    assert again.ask("running") is held, "a restored trial is not asked for again"


def test_a_pickled_searcher_holds_no_storage(tmp_path):
    """Tune pickles its searcher into its experiment state: no policy may carry the storage URL there."""
    config = KDNASConfig()
    storage = open_storage(f"sqlite:///{tmp_path}/study.db")
    searcher = make_searcher(config, storage, n_trials=3, reuse_duplicates=True, recipe="r", space_size=8)
    searcher.suggest("t1")
    searcher.deadline = time.monotonic() + 60.0
    pickled = ray.cloudpickle.dumps(searcher)
    assert str(tmp_path).encode() not in pickled
    copy = ray.cloudpickle.loads(pickled)
    assert copy.deadline == searcher.deadline and copy.metric == searcher.metric


# --- repeats reused --------------------------------------------------------------------------------------------------


def test_reuse_finds_the_trial_holding_a_sampled_student_under_the_same_recipe_and_tells_its_result(tmp_path):
    _, study = _study(tmp_path)
    first = _sampled(study, recipe="r1")
    reuse = RepeatReuse(study, "r1")
    assert reuse.original_of(first) is None, "the first trial of a student repeats nothing"
    study.enqueue_trial(first.params)
    again = _sampled(study)
    assert RepeatReuse(study, "r2").original_of(again) is None, "another recipe trains it afresh"
    study.tell(first, [0.7, 1.5])
    original = reuse.original_of(again)
    assert original is not None and original.number == first.number
    reuse.tell(again, original)
    repeat = study.trials[again.number]
    assert repeat.state == TrialState.COMPLETE and repeat.values == [0.7, 1.5]
    assert repeat.user_attrs[REPEAT_OF_ATTR] == first.number


def test_a_repeat_of_a_student_still_training_is_pruned_not_trained_twice(tmp_path):
    _, study = _study(tmp_path)
    training = _sampled(study, recipe="r")
    study.enqueue_trial(training.params)
    again = _sampled(study)
    reuse = RepeatReuse(study, "r")
    original = reuse.original_of(again)
    assert original is not None
    reuse.tell(again, original)
    repeat = study.trials[again.number]
    assert repeat.state == TrialState.PRUNED and repeat.user_attrs[PRUNED_ATTR].endswith("not trained twice")


# --- promotion -----------------------------------------------------------------------------------------------------


def test_stopped_students_are_promoted_once_every_student_was_tried_the_most_promising_first(tmp_path):
    _, study = _study(tmp_path)
    _add(study, 0, TrialState.COMPLETE)
    _stopped(study, 1, accuracy=0.55, latency_ms=1.0)
    promotion = Promotion(study, "r", space_size=3)
    assert promotion.space_left() == SpaceLeft.UNTRIED
    assert not study.get_trials(states=(TrialState.WAITING,)), "nothing promoted while a student is untried"
    _stopped(study, 2, accuracy=0.50, latency_ms=2.0)  # dominated by student 1 when both were stopped
    assert promotion.space_left() == SpaceLeft.UNTRIED
    assert promotion.promote() and not promotion.promote(), "each stopped student is promoted once"
    promoted = [_sampled(study) for _ in range(2)]  # enqueued: asked for first, with their students
    assert [(t.params, t.user_attrs[PROMOTED_ATTR]) for t in promoted] == [({"x": 1}, 1), ({"x": 2}, 2)]


def test_with_every_student_tried_and_none_to_promote_the_search_waits_for_training_then_ends(tmp_path):
    _, study = _study(tmp_path)
    _add(study, 0, TrialState.COMPLETE)
    _add(study, 1, TrialState.COMPLETE, recipe="other")  # another recipe's student is not this one's
    assert Promotion(study, "r", space_size=2).space_left() == SpaceLeft.UNTRIED
    study.enqueue_trial({"x": 1})
    training = _sampled(study, recipe="r")
    promotion = Promotion(study, "r", space_size=2)
    assert promotion.space_left() == SpaceLeft.TRAINING
    study.tell(training, [0.5, 2.0])
    assert promotion.space_left() == SpaceLeft.NONE
    assert Promotion(study, "r").space_left() == SpaceLeft.UNTRIED, "without the space's size it is never covered"


# --- the budgets ---------------------------------------------------------------------------------------------------


def test_the_trial_budget_counts_trained_students_not_repeats(tmp_path):
    _, study = _study(tmp_path)
    budget = SearchBudget(study, n_trials=2)
    _add(study, 0, TrialState.COMPLETE)
    _add(study, 0, TrialState.COMPLETE, **{REPEAT_OF_ATTR: 0})
    assert not budget.trials_reached() and not budget.spent()
    _add(study, 1, TrialState.COMPLETE)
    assert budget.trials_reached() and budget.spent() and not budget.out_of_time()
    assert not SearchBudget(study).spent(), "no budget without n_trials or a deadline"


def test_the_time_budget_runs_out_at_the_deadline_and_survives_a_snapshot(tmp_path):
    _, study = _study(tmp_path)
    budget = SearchBudget(study)
    stopper = DeadlineStopper(budget)
    assert budget.seconds_left() is None and not stopper.stop_all()
    budget.deadline = time.monotonic() + 60.0
    left = budget.seconds_left()
    assert left is not None and 59.0 < left <= 60.0 and not budget.out_of_time()
    resumed = SearchBudget(study)
    resumed.resume(left)
    assert resumed.deadline is not None and abs(resumed.deadline - budget.deadline) < 1.0
    resumed.resume(None)
    assert resumed.deadline is not None, "a snapshot without a time budget leaves the clock as it is"
    budget.deadline = time.monotonic() - 1.0
    assert budget.out_of_time() and budget.spent() and stopper.stop_all() and not stopper("t", {})


def test_a_student_cut_by_the_time_budget_says_so_in_its_reason():
    assert cut_by_time_budget("stopped early after epoch 2") == (
        "stopped when the search's time budget ran out after epoch 2"
    )
    assert cut_by_time_budget("stopped early before its first evaluation").startswith("stopped when the search's")


# --- telling a trial's end -----------------------------------------------------------------------------------------


def test_a_storage_write_is_retried_when_its_connection_drops_and_given_up_after_the_last_try(monkeypatch):
    monkeypatch.setattr(outcomes.time, "sleep", lambda _: None)
    calls: list[int] = []

    def dropping(times: int):
        def operation() -> str:
            calls.append(1)
            if len(calls) <= times:
                raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))
            return "written"

        return operation

    assert outcomes.retrying(dropping(2)) == "written" and len(calls) == 3
    calls.clear()
    with pytest.raises(sqlalchemy.exc.OperationalError):
        outcomes.retrying(dropping(outcomes.STORAGE_RETRIES))
    assert len(calls) == outcomes.STORAGE_RETRIES
    calls.clear()

    def broken() -> None:
        calls.append(1)
        raise ValueError("not a storage error")

    with pytest.raises(ValueError):
        outcomes.retrying(broken)
    assert len(calls) == 1, "only a dropped connection is retried"
