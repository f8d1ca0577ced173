import json
import math

import optuna
import sqlalchemy
from optuna.trial import TrialState

from conftest import make_searcher, outcome_of
from kdnas.config import KDNASConfig
from kdnas.study.orphans import this_driver
from kdnas.study.records import ATTRS_KEY, COMPLETED_KEY, DRIVER_ATTR, ERROR_KEY, TrialReport
from kdnas.study.storage import create_or_load_study, open_storage
from kdnas.tune import outcomes
from kdnas.tune.reuse import RepeatReuse

METRICS = ["accuracy", "latency_ms"]


def test_completed_result_is_complete_with_both_values_and_attrs():
    result = {"accuracy": 0.8, "latency_ms": 2.5, "epoch": 3, COMPLETED_KEY: True, ATTRS_KEY: json.dumps({"a": 1})}
    outcome = outcome_of(result)
    assert outcome.state == TrialState.COMPLETE
    assert outcome.values == [0.8, 2.5] and outcome.attrs == {"a": 1}


def test_early_stopped_student_is_pruned_not_complete():
    outcome = outcome_of({"accuracy": 0.6, "latency_ms": 1.0, "epoch": 1})
    assert outcome.state == TrialState.PRUNED
    assert outcome.reason == "stopped early after epoch 1"


def test_errors_and_bad_metrics_fail_with_a_reason():
    raised = outcome_of({ERROR_KEY: "NonFiniteLossError: non-finite loss nan"})
    assert raised.state == TrialState.FAIL and "non-finite loss" in raised.reason
    crashed = outcome_of(None, error=True)
    assert crashed.state == TrialState.FAIL and "process failed" in crashed.reason
    nan = outcome_of({"accuracy": math.nan, "latency_ms": 1.0, COMPLETED_KEY: True})
    assert nan.state == TrialState.FAIL and "accuracy" in nan.reason
    missing = outcome_of({"accuracy": 0.5, COMPLETED_KEY: True})
    assert missing.state == TrialState.FAIL and "latency_ms" in missing.reason


def test_a_connection_lost_mid_ask_leaves_no_unowned_trial(tmp_path, monkeypatch):
    config = KDNASConfig()
    storage = open_storage(f"sqlite:///{tmp_path}/study.db")
    study = create_or_load_study(config, storage)
    searcher = make_searcher(config, storage, n_trials=5)
    real_init, failures = optuna.Trial.__init__, []

    def drop_once(self, study, trial_id):  # the connection drops right after the trial was created
        if not failures:
            failures.append(trial_id)
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))
        real_init(self, study, trial_id)

    monkeypatch.setattr(optuna.Trial, "__init__", drop_once)
    monkeypatch.setattr(outcomes.time, "sleep", lambda _: None)
    config_1 = searcher.suggest("t1")
    assert failures, "the injected connection loss happened"
    (trial,) = study.trials
    assert trial.number == config_1["kdnas_trial_number"] == 0 and trial.state == TrialState.RUNNING
    assert trial.system_attrs[DRIVER_ATTR] == this_driver() and trial.params


def test_a_restored_searcher_tells_the_trials_its_snapshot_ran(tmp_path):
    config = KDNASConfig()
    storage = open_storage(f"sqlite:///{tmp_path}/study.db")
    study = create_or_load_study(config, storage)

    def searcher():
        return make_searcher(config, storage, n_trials=5)

    first = searcher()
    assert first.set_search_properties("accuracy", "max", {}) is False and first.metric == METRICS
    number = first.suggest("t1")["kdnas_trial_number"]
    first.save(str(tmp_path / "searcher.json"))
    restored = searcher()
    restored.restore(str(tmp_path / "searcher.json"))
    restored.on_trial_complete("t1", {"accuracy": 0.5, "latency_ms": 1.0, COMPLETED_KEY: True})
    assert study.trials[number].state == TrialState.COMPLETE and study.trials[number].values == [0.5, 1.0]
    assert restored.suggest("t2")["kdnas_trial_number"] == number + 1


def test_a_connection_lost_after_a_repeat_was_told_does_not_stop_the_driver(tmp_path, monkeypatch):
    config = KDNASConfig()
    storage = open_storage(f"sqlite:///{tmp_path}/study.db")
    study = create_or_load_study(config, storage)
    searcher = make_searcher(config, storage, reuse_duplicates=True, recipe="r", n_trials=3)
    searcher.suggest("t1")
    report = TrialReport(0.7, 1.5, 2, completed=True, attrs={"epochs_trained": 2})
    searcher.on_trial_complete("t1", report.to_result("accuracy"))
    seen = study.trials[0].params
    study.enqueue_trial(seen)  # the sampler proposes the same student again
    unseen = {**seen, "num_layers": seen["num_layers"] % 4 + 1}
    study.enqueue_trial(unseen)  # then a new one (not left to the sampler: it may repeat trial 0 again)
    real_tell, drops = RepeatReuse.tell, []

    def tell_then_drop(self, ot_trial, original):  # the repeat is told, then the connection drops
        real_tell(self, ot_trial, original)
        if not drops:
            drops.append(ot_trial.number)
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(RepeatReuse, "tell", tell_then_drop)
    monkeypatch.setattr(outcomes.time, "sleep", lambda _: None)
    fresh = searcher.suggest("t2")  # retried: the told repeat is not told again, a new student is asked for
    original, repeat, new = study.trials
    assert drops == [1] and repeat.state == TrialState.COMPLETE and repeat.user_attrs["duplicate_of"] == 0
    assert fresh["kdnas_trial_number"] == new.number == 2 and new.state == TrialState.RUNNING
    assert new.params == unseen


def test_the_public_searcher_runs_a_configured_search_without_ray():
    """``kdnas.make_searcher`` builds the searcher a search runs (space, sampler, budget, recipe, repeats), so a
    search can be driven without Ray, as the tabulated P4 benchmark replays searches."""
    import kdnas
    from kdnas.config import build_config, dump_config
    from kdnas.study.records import TRIAL_NUMBER_KEY
    from kdnas.study.repeats import recipe_key

    config = build_config(
        {
            "student": {"space": {"depth": {"min": 1, "max": 2}, "heads": [2], "head_dim": [8], "ffn_ratio": [1, 2]}},
            "search": {"sampler": "random", "n_trials": 3, "seed": 5},
        }
    )
    storage = optuna.storages.InMemoryStorage()
    searcher = kdnas.make_searcher(config, storage)
    suggestions = [searcher.suggest(f"t{i}") for i in range(3)]
    students = {(s["num_layers"], s["ffn_ratio"]) for s in suggestions}
    assert len(students) == 3 and students <= {(1, 1), (1, 2), (2, 1), (2, 2)}, "3 distinct students of the space"
    for i in range(3):
        report = TrialReport(value=0.5 + i / 10, latency_ms=1.0 + i, epoch=2, completed=True)
        searcher.on_trial_complete(f"t{i}", report.to_result("accuracy"))
    assert searcher.suggest("t3") == "FINISHED", "search.n_trials is the budget"
    study = optuna.load_study(study_name=config.search.study_name, storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert [t.values for t in study.trials] == [[0.5, 1.0], [0.6, 2.0], [0.7, 3.0]]
    assert {t.user_attrs["recipe"] for t in study.trials} == {recipe_key(dump_config(config))}
    assert [s[TRIAL_NUMBER_KEY] for s in suggestions] == [0, 1, 2]
    again = kdnas.make_searcher(config, optuna.storages.InMemoryStorage())
    assert [again.suggest(f"t{i}") for i in range(3)] == suggestions, "the sampler is seeded with search.seed"
