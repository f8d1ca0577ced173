"""A search on a real two-node Ray cluster (``ray start`` on this machine): a worker node lost mid-trial, then
rejoining; the search submitted with ``ray job submit``.

Figures these tests print (``-s``) are summarised in README "Reliability".
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from conftest import join_node, search_config, stop_group
from kdnas.study.orphans import counts_toward_budget
from kdnas.study.records import ATTRS_KEY, EPOCH_KEY, NODE_ATTR, RESTARTS_ATTR, TRIAL_NUMBER_KEY
from kdnas.study.repeats import is_repeat
from kdnas.study.storage import load_study
from test_reliability import _assert_consistent

EPOCHS = 3


class TuneResults:
    """What a search's trials reported so far, read from the ``result.json`` files Tune's driver writes into the
    cluster's session directory (under ``temp_dirs``) as results arrive (``search.storage_path`` gets them later):
    each trial's results (by Optuna trial number) with the time this test first saw each, and the session
    (the ``ray start`` node) of each reporting worker process, looked up while the process is alive."""

    def __init__(self, temp_dirs: Path, experiment: str) -> None:
        self.pattern = f"ray-cluster*/session_*/artifacts/*/{experiment}/driver_artifacts/*/result.json"
        self.temp_dirs = temp_dirs
        self.results: dict[int, list[dict]] = {}
        self.seen_at: dict[int, list[float]] = {}
        self.group_of_pid: dict[int, int | None] = {}

    def poll(self) -> None:
        for path in self.temp_dirs.glob(self.pattern):
            lines = []
            for line in path.read_text().splitlines():
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # being written
            if not lines:
                continue
            number = int(lines[0]["config"][TRIAL_NUMBER_KEY])
            seen = self.seen_at.setdefault(number, [])
            seen += [time.time()] * (len(lines) - len(seen))
            self.results[number] = lines
            for result in lines:
                if result["pid"] not in self.group_of_pid:
                    try:
                        self.group_of_pid[result["pid"]] = os.getsid(result["pid"])
                    except ProcessLookupError:
                        self.group_of_pid[result["pid"]] = None

    def training_on(self, group: int) -> int | None:
        """A trial whose worker process is in session ``group`` (a node's, see :func:`conftest.stop_group`) and that
        has reported (and checkpointed) an epoch but not its last one: it is training there now."""
        for number, results in self.results.items():
            last = results[-1]
            if self.group_of_pid.get(last["pid"]) == group and 1 <= last.get(EPOCH_KEY, 0) < EPOCHS:
                return number
        return None

    def node_of(self, result: dict) -> str:
        return json.loads(result[ATTRS_KEY])[NODE_ATTR]["id"]


def _poll_until(condition, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(every)


@pytest.mark.slow
def test_worker_node_lost_mid_trial_then_a_node_joins_and_a_ray_job_trains_on_both(
    run_dir, tmp_path, tmp_path_factory, cluster_storage, two_node_cluster_with_jobs
):
    """Two trials at a time, one a node; the worker node's processes are SIGKILLed while a student trains there. Its
    trial is restarted (``search.max_failures``) on the head node from its last checkpoint, the search completes its
    budget with nothing lost or duplicated. Then a new worker node joins and the study is resumed with a larger
    budget by ``ray job submit --address http://<head>:<dashboard port> -- kdnas search --config …``: the job's
    driver runs on the head node and joins the cluster (Ray sets ``RAY_ADDRESS`` for it), and its students train on
    both nodes, the new one included."""
    address, env, nodes = two_node_cluster_with_jobs
    head, worker = nodes
    n_trials = 2
    config = search_config(
        run_dir,
        f"node-loss-{uuid.uuid4().hex[:6]}",
        cluster_storage,
        training={"epochs": EPOCHS, "batch_size": 2},  # a few seconds an epoch: both nodes take a trial
        search={"n_trials": n_trials, "max_concurrent_trials": 2, "resources_per_trial": {"cpu": 1}, "max_failures": 1},
        # 3x the tiny task's rows: an epoch long enough that the worker's student is seen mid-training even on a
        # loaded machine (with 160 rows a whole trial took 3 s and the search sometimes ended before it was seen)
        data={"demo_train_size": 480},
    )
    config_file = tmp_path / "search.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    url, name = config.storage_url, config.search.study_name
    command = [sys.executable, "-m", "kdnas.cli", "search", "--config", str(config_file), "--ray-address", address]
    watch = TuneResults(tmp_path_factory.getbasetemp(), name)
    started = time.perf_counter()
    with (tmp_path / "driver-1.log").open("w") as log:
        driver = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def victim_found() -> int | None:
            assert driver.poll() is None, (tmp_path / "driver-1.log").read_text()[-3000:]
            watch.poll()
            return watch.training_on(worker)

        victim = _poll_until(victim_found, 300, "a trial training on the worker node")
        time.sleep(0.5)  # into its next epoch (1-4 s an epoch here)
        watch.poll()
        checkpointed = watch.results[victim][-1]
        assert checkpointed[EPOCH_KEY] < EPOCHS, "the trial finished before its node was stopped"
        checkpoint_seen = watch.seen_at[victim][-1]
        stop_group(worker)  # the worker node: its raylet, its object store, the trial's worker process
        killed_at = time.time()
        lost_node = watch.node_of(checkpointed)

        def resumed() -> bool:
            watch.poll()
            return len(watch.results[victim]) > checkpointed["training_iteration"]

        _poll_until(resumed, 300, "the interrupted trial to report again")
        resumed_at = watch.seen_at[victim][checkpointed["training_iteration"]]
        assert driver.wait(timeout=600) == 0, (tmp_path / "driver-1.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            stop_group(driver.pid)
    first_search_s = time.perf_counter() - started
    watch.poll()

    study = load_study(url, name)
    _assert_consistent(study, n_trials)
    assert [t.state for t in study.trials if counts_toward_budget(t)] == [TrialState.COMPLETE] * n_trials
    interrupted = study.trials[victim]
    head_nodes = {
        watch.node_of(r) for rs in watch.results.values() for r in rs if watch.group_of_pid.get(r["pid"]) == head
    }
    assert len(head_nodes) == 1, head_nodes
    assert interrupted.user_attrs[RESTARTS_ATTR] >= 1
    assert interrupted.user_attrs[NODE_ATTR]["id"] in head_nodes and lost_node not in head_nodes
    epochs = [r[EPOCH_KEY] for r in watch.results[victim] if EPOCH_KEY in r]
    resumed_epochs = epochs[checkpointed["training_iteration"] :]
    assert resumed_epochs[0] == checkpointed[EPOCH_KEY] + 1, epochs  # from its checkpoint, not from scratch
    assert epochs == sorted(set(epochs)), epochs
    restarts = sum(t.user_attrs.get(RESTARTS_ATTR, 0) for t in study.trials)
    epoch_s = statistics.median(b - a for seen in watch.seen_at.values() for a, b in itertools.pairwise(seen))
    head_free_at = min(  # the head node's one CPU: busy with another trial until it finished
        (
            seen
            for number, results in watch.results.items()
            if number != victim
            for result, seen in zip(results, watch.seen_at[number])
            if result.get(EPOCH_KEY) == EPOCHS and seen > killed_at and watch.group_of_pid.get(result["pid"]) == head
        ),
        default=killed_at,
    )

    # a worker node joins; the resumed study (a larger budget, the same config) is submitted as a Ray job
    rejoined_at = time.perf_counter()
    join_node(address, env, nodes)
    more = n_trials + 3
    job = _submit_job(env, ["kdnas", "search", "--config", str(config_file), "--set", f"search.n_trials={more}"])
    assert job.returncode == 0 and "succeeded" in job.stdout, (job.stdout + job.stderr)[-3000:]
    study = load_study(url, name)
    _assert_consistent(study, more)
    assert [t.state for t in study.trials if counts_toward_budget(t)] == [TrialState.COMPLETE] * more
    resumed_trials = [t for t in study.trials[n_trials:] if NODE_ATTR in t.user_attrs and not is_repeat(t)]
    trained = {t.user_attrs[NODE_ATTR]["id"] for t in resumed_trials}
    new_nodes = trained - head_nodes - {lost_node}
    assert len(new_nodes) == 1, f"no student trained on the node that joined: {trained}, head {head_nodes}"
    assert trained == head_nodes | new_nodes, "the job's students trained on both nodes"
    print(
        f"\n[reliability] worker node SIGKILLed while trial {victim} trained its epoch "
        f"{checkpointed[EPOCH_KEY] + 1} of {EPOCHS}: {restarts} restart, resumed on the head node from its epoch-"
        f"{checkpointed[EPOCH_KEY]} checkpoint; {killed_at - checkpoint_seen:.1f} s of training lost (since that "
        f"checkpoint), {resumed_at - killed_at:.1f} s from the kill to its next epoch on the head, "
        f"whose one CPU was busy until {head_free_at - killed_at:.1f} s after the kill (median epoch {epoch_s:.1f} s); "
        f"search {n_trials}/{n_trials} COMPLETE in {first_search_s:.0f} s, 0 lost, 0 duplicated; a new node joined "
        f"and `ray job submit … -- kdnas search` trained students on both nodes ({more}/{more} COMPLETE, "
        f"{time.perf_counter() - rejoined_at:.0f} s)"
    )


def _submit_job(env: dict[str, str], entrypoint: list[str]) -> subprocess.CompletedProcess:
    """``ray job submit --address <the head's job server> -- entrypoint``, waiting for the job to end; tried again
    while the head's job agent is not ready yet (Ray answers that there is no agent and to try again later)."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    for _ in range(20):
        job = subprocess.run(
            [ray_cli, "job", "submit", "--address", env["RAY_API_SERVER_ADDRESS"], "--", *entrypoint],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if "No available agent to submit job" not in job.stdout + job.stderr:
            break
        time.sleep(3)
    return job
