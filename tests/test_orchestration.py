"""The study records every student truthfully: PRUNED, FAIL with reasons, constraints, concurrency, resume, PostgreSQL.

Every test runs real tiny searches on local Ray.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from conftest import search_config, wait_for
from kdnas.config import ConfigError
from kdnas.study.front import pareto_front
from kdnas.study.orphans import DRIVER_LOST
from kdnas.study.records import CONFIG_ATTR, FAILURE_ATTR, PRUNED_ATTR, RECIPE_ATTR, TRIAL_NUMBER_KEY
from kdnas.study.storage import load_study, open_storage
from kdnas.tune.driver import run_search

pytestmark = pytest.mark.slow


class StopSecondTrialEarly(FIFOScheduler):
    """A real Tune scheduler decision: stop Optuna trial 1 after its first epoch."""

    def on_trial_result(self, tune_controller, trial, result):
        if trial.config.get(TRIAL_NUMBER_KEY) == 1 and result.get("epoch") == 1:
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


def test_early_stopped_student_is_pruned_and_constraints_are_stored(run_dir, ray_session, cluster_storage):
    config = search_config(run_dir, "pruned", cluster_storage, latency={"budget_ms": 1000.0})
    study = run_search(config, scheduler=StopSecondTrialEarly())
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]  # the tiny space has 8 students
    assert [t.state for t in trained] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    pruned = trained[1]
    assert pruned.values is None and pruned.user_attrs[PRUNED_ATTR] == "stopped early after epoch 1"
    assert 1 not in {t.number for t in pareto_front(study)}
    for t in (trained[0], trained[2]):
        assert t.constraints == {"latency_ms": pytest.approx(t.values[1] - 1000.0)}
        assert t.user_attrs["epochs_trained"] == 2


def test_every_teacher_combiner_trains_and_is_recorded(run_dir, ray_session):
    combiners = ["confidence", "gradient", "weighted"]  # "learned" and "mean": the other searches here
    kd = {"space": {"combiner": combiners}, "teacher_weights": [3, 1]}
    config = search_config(run_dir, "combiners", kd=kd, search={"n_trials": len(combiners)})
    run_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=open_storage(config.storage_url), study_name="combiners", directions=["maximize", "minimize"]
    )
    for combiner in combiners:  # one search, each combiner once
        study.enqueue_trial({"kd_combiner": combiner})
    study = run_search(config)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3, [t.user_attrs for t in study.trials]
    assert [t.user_attrs["kd"]["combiner"] for t in study.trials] == combiners


def test_sampled_kd_recipe_with_intermediate_and_emd_trains_and_is_recorded(run_dir, ray_session, caplog):
    kd = {
        "alpha": {"start": 1.0, "end": 0.2},
        "intermediate": {"weight": {"start": 1.0, "end": 0.0}},
        "space": {"intermediate": ["emd", "skip"], "combiner": ["mean", "confidence"], "temperature": [1.0, 4.0]},
    }
    study = run_search(search_config(run_dir, "recipe", kd=kd, search={"n_trials": 2, "sampler": "random", "seed": 3}))
    assert "teacher gpt2 has another tokenizer than the student: it takes part in logit KD only" in caplog.text
    layer_maps = set()
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE, trial.user_attrs.get(FAILURE_ATTR)
        recorded = trial.user_attrs["kd"]
        assert recorded["combiner"] == trial.params["kd_combiner"]
        assert recorded["temperature"] == trial.params["kd_temperature"]
        assert recorded["alpha"] == {"start": 1.0, "end": 0.2}
        intermediate = recorded["intermediate"]
        assert intermediate["enabled"] and intermediate["layer_map"] == trial.params["kd_intermediate"]
        (teacher,) = recorded["intermediate_teachers"]  # gpt2 has its own tokenizer: logit KD only
        details = recorded["intermediate_teachers"]["minilm"]
        if trial.params["kd_intermediate"] == "emd":
            weights = details["emd_weights"]["hidden"]
            assert len(weights["teacher"]) == 6 and sum(weights["student"]) == pytest.approx(1.0, abs=1e-3)
        else:
            assert details["layer_map"] == [min(2 * i, 6) for i in range(1, trial.params["num_layers"] + 1)]
        layer_maps.add(trial.params["kd_intermediate"])
        assert (
            json.loads(Path(trial.user_attrs["student_path"], "config.json").read_text()).get(
                "_attn_implementation", "sdpa"
            )
            != "eager"
        )


def test_latency_budget_below_every_student_is_refused_before_the_study_is_touched(run_dir, ray_session):
    config = search_config(run_dir, "infeasible", latency={"budget_ms": 1e-6}, search={"n_trials": 1})
    with pytest.raises(
        ConfigError,
        match=r"^no student of student.space fits the budget: even the smallest, "
        r"L1-H16-A2-F16, has latency [\d.e-]+ ms > budget 1e-06 ms$",
    ):
        run_search(config)
    with pytest.raises(ConfigError, match="no study 'infeasible'"):  # refused before the study was created
        load_study(config.storage_url, config.search.study_name)


def test_raising_trial_fails_with_its_reason(run_dir, ray_session, cluster_storage):
    config = search_config(run_dir, "raising", cluster_storage, search={"n_trials": 1})
    blocker = run_dir / "students" / config.search.study_name / "trial-0000"  # a file where the student goes
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")
    study = run_search(config)
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs[FAILURE_ATTR].startswith("OSError: the student was not saved to ")
    assert trial.user_attrs[FAILURE_ATTR].endswith("trial-0000: missing config.json, model.safetensors")


def test_a_search_runs_in_the_storage_it_is_given(run_dir, ray_session, tmp_path):
    """An open storage and a trainable passed in: the study lands there, the configured storage is never opened."""
    from stub_search import stub_student

    configured = tmp_path / "configured.db"
    config = search_config(
        run_dir,
        f"given-storage-{uuid.uuid4().hex[:6]}",
        latency={"retime": False},  # stub students have no model to time
        search={"n_trials": 2, "storage": f"sqlite:///{configured}"},
    )
    given_url = f"sqlite:///{tmp_path}/given.db"
    study = run_search(config, trainable=stub_student, storage=open_storage(given_url))
    held = optuna.load_study(study_name=config.search.study_name, storage=given_url)
    assert [t.state for t in held.trials] == [TrialState.COMPLETE] * 2 and [t.number for t in study.trials] == [0, 1]
    assert all(t.user_attrs["stub"] for t in held.trials)
    assert held.user_attrs[CONFIG_ATTR]["search"]["storage"] == given_url
    assert not configured.exists()


def test_nan_loss_fails_with_its_reason(run_dir, ray_session, cluster_storage):
    study = run_search(
        search_config(run_dir, "nan", cluster_storage, training={"learning_rate": 1e30}, search={"n_trials": 1})
    )
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs[FAILURE_ATTR].startswith("NonFiniteLossError: non-finite loss")


def test_concurrent_trials_overlap_in_time(run_dir, ray_session, cluster_storage):
    config = search_config(
        run_dir,
        "concurrent",
        cluster_storage,
        training={"epochs": 30},  # long enough to overlap, on the session's data (its teachers are fitted once)
        search={"n_trials": 4, "max_concurrent_trials": 2, "resources_per_trial": {"cpu": 0.5}},
    )
    study = run_search(config)
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    spans = sorted((t.user_attrs["train_started_at"], t.user_attrs["train_finished_at"]) for t in trained)
    assert len(spans) == 4 and all(t.state == TrialState.COMPLETE for t in trained)
    overlaps = sum(later_start < end for (_, end), (later_start, _) in zip(spans, spans[1:]))
    assert overlaps >= 1, spans


def test_kill_driver_then_resume_loses_and_duplicates_nothing(run_dir, tmp_path):
    """On SQLite (on PostgreSQL, with drivers on a cluster: the kill points in tests/test_reliability.py)."""
    config = search_config(run_dir, "resume", training={"epochs": 4}, search={"n_trials": 4})
    config_file = tmp_path / "resume.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    command = [sys.executable, "-m", "kdnas.cli", "search", "--config", str(config_file)]
    url, name = config.storage_url, config.search.study_name

    def trials() -> list[optuna.trial.FrozenTrial]:
        try:
            return optuna.load_study(study_name=name, storage=url).trials
        except (KeyError, sqlalchemy.exc.OperationalError):
            return []

    def completed_and_training() -> bool:
        """A trial completed and another's student handed to training (a kill while it is still being sampled
        leaves no student to retry: tests/test_runner.py)."""
        seen = trials()
        return any(t.state == TrialState.COMPLETE for t in seen) and any(
            t.state == TrialState.RUNNING and RECIPE_ATTR in t.user_attrs for t in seen
        )

    def in_session(sid: int) -> list[int]:
        """The running processes of session ``sid``: a driver started as a session leader and every process of its
        local Ray (Ray's workers leave the driver's process group, not its session)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                state, _, _, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
            except OSError:  # exited meanwhile
                continue
            if state != "Z" and int(session) == sid:
                found.append(int(stat.parent.name))
        return found

    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(completed_and_training, 300, "a trial in training")
    finally:
        os.kill(driver.pid, signal.SIGKILL)  # the driver alone (kill -9 PID): its local Ray is left to itself
        driver.wait()
    before = load_study(url, name)
    completed_before = {t.number: t.values for t in before.trials if t.state == TrialState.COMPLETE}
    orphans = [t.number for t in before.trials if t.state == TrialState.RUNNING]
    assert orphans

    resumed = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stderr = resumed.communicate(timeout=600)[1]
    finally:
        resumed.kill()  # only if it ran out of time
    assert resumed.returncode == 0, stderr[-2000:]
    # Ray's agents outlive a killed driver by up to a minute: the resume stopped them, and its own Ray ends with it
    assert f"left by the local Ray of driver {driver.pid}" in stderr, stderr[-2000:]
    assert not in_session(driver.pid), "a process of the killed driver's local Ray is still running"
    wait_for(lambda: not in_session(resumed.pid), 60, "the resumed run's local Ray to exit with it")
    after = load_study(url, name)
    by_number = {t.number: t for t in after.trials}
    assert all(by_number[n].values == v for n, v in completed_before.items()), "completed trials must be kept"
    assert not [t for t in after.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for n in orphans:
        assert by_number[n].state == TrialState.FAIL and by_number[n].user_attrs[FAILURE_ATTR] == DRIVER_LOST
        retries = [t for t in after.trials if t.user_attrs.get("retry_of") == n]
        if RECIPE_ATTR in by_number[n].user_attrs:  # its student was in training
            assert len(retries) == 1 and retries[0].params == by_number[n].params
        else:
            assert not retries
    counted = [
        t for t in after.trials if t.user_attrs.get(FAILURE_ATTR) != DRIVER_LOST and "duplicate_of" not in t.user_attrs
    ]  # a repeat of a student the study holds: its result, not trained, not counted
    assert len(counted) == 4 and all(t.state == TrialState.COMPLETE for t in counted)


def test_search_on_postgresql_with_masked_password(run_dir, ray_session, tmp_path, postgres_url):
    name = f"kdnas-test-{uuid.uuid4().hex[:8]}"
    url = sqlalchemy.engine.make_url(postgres_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    config = search_config(run_dir, name, search={"n_trials": 2, "storage": url})
    try:
        study = run_search(config)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
        assert "s3cret-pw" not in str(study.user_attrs)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "kdnas.cli",
                "report",
                "--storage",
                url,
                "--study-name",
                name,
                "--out",
                str(tmp_path / "report"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        assert "s3cret-pw" not in proc.stdout + proc.stderr
        assert "s3cret-pw" not in (tmp_path / "report" / "report.html").read_text()
    finally:
        optuna.delete_study(study_name=name, storage=url)
