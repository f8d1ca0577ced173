"""A long search loses nothing: driver and worker deaths, numerical faults, storage faults, load.

Figures these tests print (``-s``) are summarised in README "Reliability".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path

import optuna
import pytest
import ray
import ray.cloudpickle
import sqlalchemy
import torch
import yaml
from optuna.trial import TrialState
from ray import tune

from conftest import POSTGRES_URL, search_config, wait_for
from kdnas.cli import main
from kdnas.config import ConfigError
from kdnas.student.training import DivergedError, NonFiniteLossError, train
from kdnas.study import storage as study_mod
from kdnas.study.orphans import DRIVER_LOST, counts_toward_budget
from kdnas.study.records import FAILURE_ATTR, RESTARTS_ATTR, TRIAL_NUMBER_KEY
from kdnas.study.storage import load_study
from kdnas.tune import driver as runner
from kdnas.tune.checkpoint import load_state, save_state
from stub_search import use_stub_trials

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the dying trainable below runs on Ray workers
TESTS = Path(__file__).parent
STUB_SPACE = {"depth": {"min": 1, "max": 12}, "heads": [2, 4], "head_dim": [8, 16, 32], "ffn_ratio": [1, 2, 4]}
"""216 students: a 40-trial stub search ends at its budget, not because it has tried every student."""


def _states(study: optuna.Study) -> dict[TrialState, int]:
    counts: dict[TrialState, int] = {}
    for t in study.trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def _assert_consistent(study: optuna.Study, n_trials: int) -> None:
    """Nothing left RUNNING or WAITING, each lost trial retried at most once, the budget met exactly."""
    trials = study.trials
    assert not [
        (t.number, t.state.name, t.user_attrs, t.system_attrs)
        for t in trials
        if t.state in (TrialState.RUNNING, TrialState.WAITING)
    ], _states(study)
    retried = [t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs]
    assert len(retried) == len(set(retried)), "a lost trial was retried twice"
    for number in retried:
        assert trials[number].state == TrialState.FAIL and trials[number].user_attrs[FAILURE_ATTR] == DRIVER_LOST
    assert sum(counts_toward_budget(t) for t in trials) == n_trials


# --- 1. driver death -------------------------------------------------------------------------------------------

KILL_POINTS = ["mid-training", "resume-reconcile", "result-write", "after-tell", "trial-start", "random"]


@pytest.mark.slow
def test_driver_killed_at_many_points_then_rerun_loses_and_duplicates_nothing(
    run_dir, tmp_path, cluster_storage, two_node_cluster
):
    """As on a cluster: each driver joins a real two-node Ray cluster (``--ray-address``), two trials at a time, one a
    node, and the study is on PostgreSQL when there is one (a driver killed with the local Ray it started itself is
    tests/test_orchestration.py's subject). A SIGKILLed driver's trials die with its Ray job."""
    address, env, _ = two_node_cluster
    n_trials = 4
    config = search_config(
        run_dir,
        f"kill-points-{uuid.uuid4().hex[:6]}",
        cluster_storage,
        training={"epochs": 2},
        search={"n_trials": n_trials, "max_concurrent_trials": 2, "resources_per_trial": {"cpu": 1}},
    )
    config_file = tmp_path / "search.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    url, name = config.storage_url, config.search.study_name
    command = ["search", "--config", str(config_file), "--ray-address", address]
    completed: dict[int, list[float]] = {}
    killed = []
    started = time.perf_counter()
    for point in KILL_POINTS:
        args = [sys.executable, str(TESTS / "kill_driver.py"), "none" if point == "random" else point, *command]
        driver = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
        )
        if point == "random":  # SIGKILL from outside at a random moment while a trial trains
            wait_for(lambda: _running(url, name), 300, "a running trial")
            time.sleep(float(torch.rand(1, generator=torch.Generator().manual_seed(7))) * 3)
            os.killpg(driver.pid, signal.SIGKILL)
        returncode = driver.wait(timeout=600)
        killed.append((point, returncode))
        study = load_study(url, name)
        for t in study.trials:
            if t.state == TrialState.COMPLETE:
                assert completed.setdefault(t.number, t.values) == t.values, "a completed trial changed"
    assert all(code == -signal.SIGKILL for _, code in killed), killed
    # the rerun raises the budget by two: a study killed at every point resumes, and grows, with nothing lost
    total = n_trials + 2
    final = subprocess.run(
        [sys.executable, "-m", "kdnas.cli", *command, "--set", f"search.n_trials={total}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert final.returncode == 0, final.stderr[-2000:]
    study = load_study(url, name)
    assert all(study.trials[n].values == v for n, v in completed.items()), "a completed trial was lost"
    _assert_consistent(study, total)
    assert [t.state for t in study.trials if counts_toward_budget(t)] == [TrialState.COMPLETE] * total
    lost = sum(t.user_attrs.get(FAILURE_ATTR) == DRIVER_LOST for t in study.trials)
    nodes = {t.user_attrs["node"]["id"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert nodes, "the students recorded their node"  # which nodes depends on the kills: test_cluster checks both
    print(
        f"\n[reliability] driver SIGKILLed at {len(killed)} points ({', '.join(KILL_POINTS)}), then rerun: "
        f"{total}/{total} COMPLETE, {lost} trials failed as driver lost and retried, 0 RUNNING, "
        f"0 duplicates, students trained on {len(nodes)} node(s); {time.perf_counter() - started:.0f} s"
    )


def _running(url: str, name: str) -> bool:
    try:
        return any(t.state == TrialState.RUNNING for t in optuna.load_study(study_name=name, storage=url).trials)
    except (KeyError, sqlalchemy.exc.OperationalError):
        return False


# --- 2. worker death -------------------------------------------------------------------------------------------


def dying_student(config: dict, inputs) -> None:
    """``student_trainable`` whose worker SIGKILLs itself after training epoch 2, as often as ``kill-plan.json`` says.

    Each attempt appends the epoch it resumed from (0: from scratch) to ``starts-<trial>``.
    """
    from kdnas.tune.trainable import last_state, student_trainable

    folder = Path(inputs.students_dir)
    number = config[TRIAL_NUMBER_KEY]
    state = last_state()
    with (folder / f"starts-{number}").open("a") as log:
        log.write(f"{state['epoch'] if state else 0}\n")
    deaths = folder / f"deaths-{number}"
    died = len(deaths.read_text()) if deaths.exists() else 0
    if died < json.loads((folder / "kill-plan.json").read_text())[str(number)]:
        report = tune.report

        def report_or_die(metrics: dict, **kwargs) -> None:
            if metrics.get("epoch") == 2:
                with deaths.open("a") as log:
                    log.write("x")
                os.kill(os.getpid(), signal.SIGKILL)
            report(metrics, **kwargs)

        tune.report = report_or_die  # this worker process only
    student_trainable(config, inputs)


@pytest.mark.slow
def test_killed_worker_resumes_from_its_checkpoint_and_fails_after_the_retry_limit(run_dir, ray_session, monkeypatch):
    config = search_config(
        run_dir,
        f"worker-death-{uuid.uuid4().hex[:6]}",
        training={"epochs": 3},
        search={"n_trials": 2, "max_failures": 1},
    )
    folder = Path(config.output_dir) / "students" / config.search.study_name
    folder.mkdir(parents=True)
    (folder / "kill-plan.json").write_text(json.dumps({"0": 5, "1": 1}))  # trial 0 always dies, trial 1 once
    study = runner.run_search(config, trainable=dying_student)
    failed, resumed = study.trials
    assert failed.state == TrialState.FAIL and failed.user_attrs[RESTARTS_ATTR] == 1
    assert failed.user_attrs[FAILURE_ATTR] == "the trial's process failed after 1 restart(s) (see the Ray trial logs)"
    assert resumed.state == TrialState.COMPLETE and resumed.user_attrs[RESTARTS_ATTR] == 1
    assert resumed.user_attrs["epochs_trained"] == 3
    assert [point[0] for point in resumed.user_attrs["learning_curve"]] == [1, 2, 3]  # epoch 1 from the checkpoint
    assert (folder / "starts-0").read_text().split() == ["0", "1"]  # retried from its epoch-1 checkpoint
    assert (folder / "starts-1").read_text().split() == ["0", "1"]
    print(
        "\n[reliability] worker SIGKILLed in epoch 2: resumed from its epoch-1 checkpoint and COMPLETE "
        "(restarts=1); a worker dying every time: FAIL after max_failures=1 restart, search went on"
    )


def test_training_state_round_trips_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 2,
        "loss": None,
        "rng": torch.get_rng_state(),
    }
    save_state(state, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.safetensors"]
    loaded = load_state(tmp_path)
    assert loaded["epoch"] == 2 and loaded["loss"] is None and torch.equal(loaded["rng"], state["rng"])
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    fresh.load_state_dict(loaded["optimizer"])  # int keys and param groups survive JSON
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_resumed_training_continues_where_it_stopped():
    data = _tiny_data()
    states: list[dict] = []

    def run(**kwargs) -> torch.nn.Module:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 2))
        train(_Wrapped(model), data, loss_fn=_loss, epochs=3, batch_size=4, learning_rate=0.1, **kwargs)
        return model

    straight = run(on_state=lambda s: states.append({k: _copy(v) for k, v in s.items()}))
    resumed = run(state=states[0])
    assert [s["epoch"] for s in states] == [1, 2, 3]
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.allclose(a, b)


# --- 3. numerical faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "error"), [(float("nan"), NonFiniteLossError), (float("inf"), NonFiniteLossError), (None, DivergedError)]
)
def test_non_finite_or_diverging_loss_stops_training(bad, error):
    steps = []

    def loss(model, batch, labels, index, progress):
        steps.append(progress)
        value = _loss(model, batch, labels, index, progress)
        return value * (10 ** len(steps)) if bad is None else value + (bad if len(steps) == 3 else 0)

    with pytest.raises(error, match="non-finite loss|training diverged: mean loss"):
        train(_Wrapped(torch.nn.Linear(4, 2)), _tiny_data(), loss_fn=loss, epochs=2, batch_size=4, learning_rate=0.1)


@pytest.mark.slow
def test_diverging_student_fails_with_its_reason(run_dir, ray_session):
    study = runner.run_search(
        search_config(
            run_dir, f"diverge-{uuid.uuid4().hex[:6]}", training={"learning_rate": 10.0}, search={"n_trials": 1}
        )
    )
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL and trial.values is None
    assert trial.user_attrs[FAILURE_ATTR].startswith("DivergedError: training diverged: mean loss")


# --- 4. storage faults -----------------------------------------------------------------------------------------


def test_unreachable_storage_is_one_line_and_exit_code_2(tmp_path, capsys):
    url = "postgresql+psycopg2://kdnas:pw-secret@127.0.0.1:9/kdnas"  # nothing listens on port 9
    code = main(["search", "--storage", url, "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("kdnas: error: cannot open storage postgresql+psycopg2://kdnas:***@127.0.0.1:9/kdnas")
    assert "pw-secret" not in err[0]


def test_drivers_opening_one_fresh_postgresql_database_at_once_all_open_it(postgres_db):
    from concurrent.futures import ThreadPoolExecutor

    from kdnas.study.storage import open_storage

    url, _ = postgres_db
    start = threading.Barrier(8)

    def open_at_once(_: int) -> list:
        start.wait()
        return open_storage(url).get_all_studies()

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(open_at_once, range(8))) == [[]] * 8


def _terminate_backends(database: str, stop: threading.Event, every_s: float, counter: list[int]) -> None:
    engine = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        while not stop.wait(every_s):
            killed = conn.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
            ).scalar()
            counter[0] += killed
    engine.dispose()


@pytest.mark.slow
def test_dropped_postgresql_connections_lose_nothing(run_dir, ray_session, postgres_db, monkeypatch):
    url, database = postgres_db
    n_trials = 24
    config = search_config(
        run_dir, "dropped", student={"space": STUB_SPACE}, search={"n_trials": n_trials, "storage": url}
    )
    use_stub_trials(monkeypatch)
    stop, dropped, errors = threading.Event(), [0], []
    killer = threading.Thread(target=_terminate_backends, args=(database, stop, 0.5, dropped), daemon=True)
    killer.start()
    try:
        for runs in range(1, 6):  # noqa: B007 (the count is printed below)
            try:
                if not runner.trials_left(runner.run_search(config), n_trials):
                    break
            except Exception as err:  # the driver may stop on a dropped connection; rerunning must resume
                frames = traceback.extract_tb(err.__traceback__)
                where = [f"{f.name}:{f.lineno}" for f in frames if "kdnas" in f.filename]
                errors.append(f"{type(err).__name__} in {where[-1] if where else '?'}")
    finally:
        stop.set()
        killer.join()
    study = load_study(url, config.search.study_name)
    assert dropped[0] > 0
    _assert_consistent(study, n_trials)
    print(
        f"\n[reliability] PostgreSQL: {dropped[0]} connections terminated during a {n_trials}-trial search: "
        f"{runs} driver run(s) ({errors or 'no errors'}), {_states(study)}"
    )


def test_a_driver_that_loses_the_race_to_create_the_schema_opens_the_storage_again(monkeypatch, tmp_path):
    # two drivers on a new PostgreSQL database: the second one's CREATE TABLE meets the first one's tables
    raced = sqlalchemy.exc.ProgrammingError("CREATE TABLE studies", {}, Exception('relation "studies" already exists'))
    attempts = []

    def storage(url: str, **kwargs: object) -> optuna.storages.RDBStorage:
        attempts.append(url)
        if len(attempts) == 1:
            raise raced
        return real_storage(url, **kwargs)

    real_storage = study_mod.RDBStorage
    monkeypatch.setattr(study_mod, "RDBStorage", storage)
    monkeypatch.setattr(study_mod.time, "sleep", lambda seconds: None)
    assert isinstance(study_mod.open_storage(f"sqlite:///{tmp_path}/study.db"), optuna.storages.RDBStorage)
    assert len(attempts) == 2

    def refused(url: str, **kwargs: object) -> optuna.storages.RDBStorage:
        raise sqlalchemy.exc.ProgrammingError("SELECT", {}, Exception("permission denied for table studies"))

    monkeypatch.setattr(study_mod, "RDBStorage", refused)
    with pytest.raises(ConfigError, match="cannot open storage .*permission denied"):
        study_mod.open_storage(f"sqlite:///{tmp_path}/other.db")


@pytest.mark.slow
def test_four_drivers_on_one_postgresql_study_record_every_trial_once(run_dir, ray_session, postgres_db, tmp_path):
    url, _ = postgres_db
    n_trials = 24
    config = search_config(
        run_dir, "four-drivers", student={"space": STUB_SPACE}, search={"n_trials": n_trials, "storage": url}
    )
    config_file = tmp_path / "search.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    runner.init_ray(None)
    address = ray.get_runtime_context().gcs_address
    command = [
        sys.executable,
        str(TESTS / "stub_search.py"),
        "search",
        "--config",
        str(config_file),
        "--ray-address",
        address,
    ]
    started = time.perf_counter()
    drivers = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(4)
    ]
    errors = [d.communicate(timeout=600)[1] for d in drivers]
    failed = [f"driver {i} exited {d.returncode}: {e.strip()[-600:]}" for i, (d, e) in enumerate(zip(drivers, errors))]
    assert [d.returncode for d in drivers] == [0] * 4, "\n".join(f for f, d in zip(failed, drivers) if d.returncode)
    study = load_study(url, config.search.study_name)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    counted = [t for t in study.trials if counts_toward_budget(t)]
    assert all(t.state == TrialState.COMPLETE for t in counted)
    repeats = [t for t in study.trials if not counts_toward_budget(t)]  # a student another driver held: not trained
    assert all("duplicate_of" in t.user_attrs and t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in repeats)
    completed = len(counted)
    assert n_trials <= completed <= n_trials + 3  # each driver checks the budget before it asks: at most 3 over
    print(
        f"\n[reliability] 4 drivers on one PostgreSQL study (budget {n_trials}): {completed} trials, each recorded "
        f"once and COMPLETE; {time.perf_counter() - started:.0f} s"
    )


# --- 7. load ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_hundred_trivial_trials_are_all_recorded(run_dir, ray_session, monkeypatch, backend, request):
    url = None
    if backend == "postgresql":
        url = request.getfixturevalue("postgres_db")[0]
    n_trials = 200
    config = search_config(
        run_dir,
        f"load-{uuid.uuid4().hex[:6]}",  # 200 trials of an 8-student space: repeats train
        search={"n_trials": n_trials, "storage": url, "reuse_duplicates": False},
    )
    use_stub_trials(monkeypatch)
    started = time.perf_counter()
    study = runner.run_search(config)
    minutes = (time.perf_counter() - started) / 60
    assert len(study.trials) == n_trials and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all(t.user_attrs.get("stub") for t in study.trials)
    print(
        f"\n[reliability] load, {backend}: {n_trials} trivial trials in {minutes * 60:.0f} s = "
        f"{n_trials / minutes:.0f} trials/minute, all recorded COMPLETE"
    )


# --- helpers ---------------------------------------------------------------------------------------------------


class _Wrapped(torch.nn.Module):
    """A linear classifier with the ``model(**batch).logits`` interface ``train`` expects."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, **_: torch.Tensor):
        return type("Out", (), {"logits": self.inner(input_ids.float())})


def _loss(model, batch, labels, index, progress) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(**batch).logits, labels)


def _tiny_data():
    from kdnas.student.batches import Encoded

    torch.manual_seed(0)
    ids = torch.randint(0, 5, (16, 4))
    return Encoded(
        input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=None, labels=(ids.sum(1) > 8).long()
    )


def _copy(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
