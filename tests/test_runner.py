"""The Ray trainable's device placement and error reporting, and the driver's study bookkeeping (no Ray)."""

import math
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from ray import tune

from kdnas.config import KDNASConfig, build_config, load_config
from kdnas.study import orphans
from kdnas.study.records import DRIVER_ATTR, ERROR_KEY, FAILURE_ATTR, RECIPE_ATTR, TRIAL_NUMBER_KEY
from kdnas.tune import driver as runner
from kdnas.tune import trainable
from kdnas.tune.trial_inputs import TrialInputs


@pytest.fixture(autouse=True)
def _outside_ray(monkeypatch):
    """The trainable is called here as a plain function: asking Ray for its node would start a local Ray."""
    monkeypatch.setattr(
        trainable, "this_node", lambda: {"id": "n", "ip": "127.0.0.1", "hostname": socket.gethostname()}
    )


def _inputs(gpu: float) -> TrialInputs:
    config = build_config({"search": {"resources_per_trial": {"cpu": 1, "gpu": gpu}}})
    empty = torch.zeros(0)
    return TrialInputs(
        config=config,
        metric="accuracy",
        label_names=("a", "b"),
        train=None,
        eval=None,
        teacher_names=(),
        teacher_logits=empty,
        students_dir="/nonexistent",
    )


@pytest.mark.parametrize(("gpu", "cuda", "expected"), [(1, True, "cuda"), (0.25, True, "cuda"), (0, True, "cpu")])
def test_trainable_places_students_on_gpu_when_given_one(monkeypatch, gpu, cuda, expected):
    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(trainable, "run_trial", lambda config, inputs, **kw: seen.update(kw))
    trainable.student_trainable({TRIAL_NUMBER_KEY: 7}, _inputs(gpu))
    assert seen["device"].type == expected and seen["trial_number"] == 7


def test_trainable_reports_errors_with_their_reason(monkeypatch):
    reports = []
    monkeypatch.setattr(tune, "report", reports.append)

    def explode(*args, **kwargs):
        raise FloatingPointError("non-finite loss nan at step 3")

    monkeypatch.setattr(trainable, "run_trial", explode)
    trainable.student_trainable({TRIAL_NUMBER_KEY: 1}, _inputs(0))
    (report,) = reports
    assert report[ERROR_KEY] == "FloatingPointError: non-finite loss nan at step 3"
    assert math.isnan(report["accuracy"]) and math.isnan(report["latency_ms"])


def test_orphans_are_failed_reenqueued_and_not_counted(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    done = study.ask()
    done.suggest_int("num_layers", 1, 4)
    study.tell(done, [0.5, 1.0])
    orphan = study.ask()
    orphan.suggest_int("num_layers", 1, 4)
    orphan.set_user_attr(RECIPE_ATTR, "r")  # its student was handed to training
    sampling = study.ask()  # lost while its student was being sampled: part of one, never trained
    sampling.suggest_int("num_layers", 1, 4)
    # a trial no driver has claimed yet may belong to a driver between creating and claiming it: left alone
    assert orphans.reconcile_orphans(study, storage) == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for lost in (orphan, sampling):
        storage.set_trial_system_attr(lost._trial_id, DRIVER_ATTR, {"host": socket.gethostname(), "pid": dead.pid})
    assert orphans.reconcile_orphans(study, storage) == 2
    failed = study.trials[orphan.number]
    for lost in (orphan, sampling):
        assert study.trials[lost.number].state == TrialState.FAIL
        assert study.trials[lost.number].user_attrs[FAILURE_ATTR] == orphans.DRIVER_LOST
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [failed.params]  # only the student in training
    assert waiting[0].user_attrs["retry_of"] == orphan.number
    assert orphans.trials_left(study, 3) == 2


def test_an_unclaimed_trial_is_an_orphan_only_after_the_grace(tmp_path, monkeypatch):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    study.ask()
    assert orphans.reconcile_orphans(study, storage) == 0
    monkeypatch.setattr(orphans, "UNCLAIMED_GRACE_S", -1.0)
    assert orphans.reconcile_orphans(study, storage) == 1


def test_a_trial_is_an_orphan_once_its_drivers_heartbeat_is_stale(tmp_path, monkeypatch):
    from kdnas.study.records import HEARTBEAT_ATTR

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/s.db")
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    elsewhere = {"host": "another-host", "pid": 1}
    fresh, stale, legacy = study.ask(), study.ask(), study.ask()
    for trial, beat in ((fresh, orphans.time.time()), (stale, orphans.time.time() - orphans.STALE_AFTER_S - 1)):
        storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, beat)
    for trial in (fresh, stale, legacy):  # legacy: written before kdnas recorded its own heartbeat
        storage.set_trial_system_attr(trial._trial_id, DRIVER_ATTR, elsewhere)
    assert orphans.reconcile_orphans(study, storage) == 1
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.FAIL, TrialState.RUNNING]
    monkeypatch.setattr(orphans, "STALE_AFTER_S", -1.0)  # the legacy trial started longer ago than the grace
    assert orphans.reconcile_orphans(study, storage) == 2


def test_preflight_checks_the_study_in_a_given_storage_and_never_opens_the_configured_one(tmp_path):
    from kdnas.config import ConfigError
    from kdnas.study.storage import open_storage

    configured = tmp_path / "configured.db"
    config = build_config({"output_dir": str(tmp_path / "run"), "search": {"storage": f"sqlite:///{configured}"}})
    given = open_storage(f"sqlite:///{tmp_path}/given.db")
    optuna.create_study(storage=given, study_name=config.search.study_name, directions=["minimize"])
    with pytest.raises(ConfigError, match="already exists with objectives"):  # the given storage's study is checked
        runner.preflight(config, given)
    assert runner.preflight(config)[1:] == (None, None), "the configured storage holds no study"
    assert not configured.exists()


def test_samplers_are_seeded_and_chosen_from_config():
    assert isinstance(runner.make_sampler(KDNASConfig()), optuna.samplers.TPESampler)
    config = load_config(None, ["search.sampler=nsga2"])
    assert isinstance(runner.make_sampler(config), optuna.samplers.NSGAIISampler)


@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_model_based_samplers_model_the_study_after_search_startup_trials(sampler):
    def relative_sample(startup: int) -> dict:
        config = load_config(None, [f"search.sampler={sampler}", f"search.startup_trials={startup}"])
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=runner.make_sampler(config))
        study.optimize(lambda trial: (trial.suggest_int("x", 0, 9), trial.suggest_int("y", 0, 9)), n_trials=2)
        trial = study.ask()
        space = study.sampler.infer_relative_search_space(study, trial)
        return study.sampler.sample_relative(study, trial, space)  # empty while the sampler samples at random

    assert relative_sample(startup=3) == {}
    assert set(relative_sample(startup=2)) == {"x", "y"}


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "random"])
def test_every_sampler_survives_the_pickling_tune_gives_its_searcher(tmp_path, sampler):
    import ray.cloudpickle

    from conftest import make_searcher
    from kdnas.study.storage import open_storage

    config = load_config(None, [f"search.sampler={sampler}"])
    storage = open_storage(f"sqlite:///{tmp_path}/study.db")
    searcher = make_searcher(config, storage, sampler=runner.make_sampler(config))
    copy = ray.cloudpickle.loads(ray.cloudpickle.dumps(searcher))  # what tune.Tuner does when a search starts
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=copy._sampler)
    study.optimize(lambda trial: (trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)), n_trials=3)
    assert len(study.trials) == 3


def test_examples_demo_yaml_is_the_built_in_default():
    demo = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"
    assert load_config(demo) == KDNASConfig()
