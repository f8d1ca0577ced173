"""Shared fixtures: a tiny offline config, one tiny real search on local Ray (run once per session), the storages
to test against (SQLite, PostgreSQL), a searcher over a config, and waiting for an event."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from kdnas.config import KDNASConfig, build_config

SCRATCH_TEACHER = {
    "name": "gpt2",
    "model": "gpt2",
    "scratch": {"layers": 1, "hidden": 32, "heads": 2, "vocab_size": 400},
    "fit": {"epochs": 1, "learning_rate": 1e-3},
}
"""The tiny config's GPT-2 teacher alone: fitted in about a second."""


def tiny_raw(output_dir: Path, **sections) -> dict:
    """A config that runs in seconds: tiny demo data, tiny teachers, tiny students."""
    raw = {
        "output_dir": str(output_dir),
        "data": {"demo_train_size": 160, "demo_eval_size": 48, "max_seq_length": 24, "transfer": {"demo_size": 32}},
        "teachers": [
            {"name": "minilm", "model": "minilm", "fit": {"epochs": 0.5, "batch_size": 16}},
            {
                "name": "gpt2",
                "model": "gpt2",
                "scratch": {"layers": 1, "hidden": 32, "heads": 2, "vocab_size": 400},
                "fit": {"epochs": 1, "learning_rate": 1e-3},
            },
        ],
        "student": {"space": {"depth": {"min": 1, "max": 2}, "heads": [2], "head_dim": [8, 16], "ffn_ratio": [1, 2]}},
        # tiny students stay at the majority level while a tiny teacher may learn: collapse handling (restart,
        # kept off the front) has its own tests; these searches test the machinery around it
        "training": {"epochs": 2, "batch_size": 32, "detect_collapse": False},
        "latency": {"warmup": 1, "runs": 3, "min_run_time_s": 0},
        "search": {"n_trials": 3, "max_concurrent_trials": 1, "study_name": "tiny"},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


@pytest.fixture
def tiny_config(tmp_path: Path) -> KDNASConfig:
    return build_config(tiny_raw(tmp_path / "run"))


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One output directory for the session's searches: teachers are fitted once, each test uses its own study."""
    return tmp_path_factory.mktemp("search") / "run"


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray shared by the session's in-process searches."""
    import ray

    logging.getLogger("kdnas").setLevel(logging.INFO)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def searched(run_dir: Path, ray_session):
    """(config, study) after one real tiny search on local Ray with a SQLite study."""
    from kdnas.tune.driver import run_search

    config = build_config(tiny_raw(run_dir))
    return config, run_search(config)


# --- storages ---------------------------------------------------------------------------------------------------

POSTGRES_URL = os.environ.get("KDNAS_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
"""The PostgreSQL server the storage tests use (skipped, saying why, when none answers)."""


@functools.cache
def postgres_unreachable() -> str | None:
    """Why there is no PostgreSQL to test against, or None when :data:`POSTGRES_URL` answers (asked once)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return None
    except Exception as err:  # any failure means: no server to test against
        return f"no PostgreSQL at {POSTGRES_URL} ({type(err).__name__})"


@pytest.fixture
def postgres_url() -> str:
    """:data:`POSTGRES_URL`; the test is skipped, with the reason, when no server answers."""
    reason = postgres_unreachable()
    if reason:
        pytest.skip(reason)
    return POSTGRES_URL


@pytest.fixture
def postgres_db(postgres_url: str):
    """(URL, name) of a fresh PostgreSQL database for one test, dropped afterwards."""
    import sqlalchemy

    name = f"kdnas_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    yield sqlalchemy.engine.make_url(postgres_url).set(database=name).render_as_string(hide_password=False), name
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture
def cluster_storage():
    """(URL, suffix) for :func:`search_config`: PostgreSQL when a server answers (a cluster's study lives there),
    with a unique suffix for study names (the studies ending in it are deleted afterwards); else ``(None, "")``, the
    SQLite file in the output dir."""
    if postgres_unreachable():
        yield None, ""
        return
    import optuna

    suffix = f"-{uuid.uuid4().hex[:8]}"
    yield POSTGRES_URL, suffix
    for summary in optuna.get_all_study_summaries(POSTGRES_URL):
        if summary.study_name.endswith(suffix):
            optuna.delete_study(study_name=summary.study_name, storage=POSTGRES_URL)


def search_config(run_dir: Path, study_name: str, storage: tuple[str | None, str] = (None, ""), **sections):
    """The tiny config (:func:`tiny_raw`) searching into study ``study_name`` (+ the suffix) at ``storage``'s URL
    (see :func:`cluster_storage`)."""
    url, suffix = storage
    raw = tiny_raw(run_dir, **sections)
    raw["search"] = {**raw["search"], "study_name": study_name + suffix, "storage": url, **sections.get("search", {})}
    return build_config(raw)


def outcome_of(result: dict | None, error: bool = False):
    """How ``KDNASSearch`` classifies a trial whose last Tune result is ``result`` (metrics: accuracy, latency)."""
    from kdnas.study.records import TrialReport
    from kdnas.tune.outcomes import report_outcome

    return report_outcome(TrialReport.from_result(result, "accuracy"), error, ["accuracy", "latency_ms"])


def make_searcher(config: KDNASConfig, storage, **kwargs):
    """A ``KDNASSearch`` over ``config``'s space and study in ``storage`` (accuracy up, latency down); ``kwargs``
    go to its constructor."""
    from kdnas.student import SearchSpace
    from kdnas.tune.searcher import KDNASSearch

    return KDNASSearch(
        space=SearchSpace(config.student.space).suggest,
        metric=["accuracy", "latency_ms"],
        mode=["max", "min"],
        storage=storage,
        study_name=config.search.study_name,
        **kwargs,
    )


# --- a Ray cluster of two nodes -----------------------------------------------------------------------------------


@pytest.fixture
def two_node_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real two-node Ray cluster on this machine, 1 CPU a node, started with ``ray start`` (token authentication
    off, as for a local test cluster): yields ``(address, env, nodes)`` (``env`` for drivers joining it, ``nodes``
    the ``ray start`` sessions, each a node's processes: head, worker; a test that starts a node with
    :func:`join_node` adds its own). Only the processes it started are stopped afterwards (:func:`stop_group`)."""
    yield from _two_node_cluster(tmp_path_factory)


@pytest.fixture
def two_node_cluster_with_jobs(tmp_path_factory: pytest.TempPathFactory):
    """:func:`two_node_cluster` whose head runs Ray's dashboard, so it takes ``ray job submit``: ``env`` holds its
    address as ``RAY_API_SERVER_ADDRESS`` (``http://127.0.0.1:<port>``); the head declares a lost node dead within
    seconds (:data:`NODE_DEATH_ENV`). Skipped, saying why, without ``ray[default]``."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401  (what Ray checks: installed with ray[default])
    except ImportError as missing:
        pytest.skip(f"ray job submit needs ray[default] (the dashboard): {missing}")
    yield from _two_node_cluster(tmp_path_factory, dashboard=True, head_env=NODE_DEATH_ENV)


NODE_DEATH_ENV = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
"""Ray settings for the head of :func:`two_node_cluster_with_jobs`: a node that stops answering is declared
dead after about 3 s (Ray's defaults: 3 s a check, 5 failures, so 15 s or more)."""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_start(args: list[str], env: dict[str, str]) -> int:
    """Run ``ray start args`` (1 CPU) in a new session; its pid, the session's id. Every process of the node stays
    in that session (its worker processes get process groups of their own), after that ``ray start`` has exited."""
    import shutil
    import subprocess
    import sys

    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable))
    if ray_cli is None:
        pytest.skip("the `ray` command is not installed beside this Python")
    # every node's dashboard agent on a port of its own: Ray's default (52365) is the same for every node, and where
    # two nodes share a machine the head's agent may lose it, which leaves `ray job submit` with no agent to take jobs
    agent_port = ["--dashboard-agent-listen-port", str(_free_port())]
    node = subprocess.Popen(
        [ray_cli, "start", *args, *agent_port, "--num-cpus", "1", "--disable-usage-stats"],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = node.communicate(timeout=120)
    except BaseException:
        stop_group(node.pid)
        raise
    if node.returncode != 0:
        stop_group(node.pid)
        raise AssertionError(output[-2000:])
    return node.pid


def join_node(address: str, env: dict[str, str], nodes: list[int]) -> int:
    """Start a worker node (1 CPU) joining the cluster at ``address``; its session is added to ``nodes`` (so the
    cluster fixture stops it too) and returned."""
    group = _ray_start(["--address", address], env)
    nodes.append(group)
    return group


def _two_node_cluster(
    tmp_path_factory: pytest.TempPathFactory, *, dashboard: bool = False, head_env: dict[str, str] | None = None
):
    import shutil
    import sys
    import tempfile

    # Ray's Unix socket paths (<temp dir>/session_<date>_<pid>/sockets/dash_MetricsHead) must stay under 108 bytes,
    # which a pytest temp dir can exceed: the cluster's files go to a short /tmp dir, linked from pytest's
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    link = tmp_path_factory.mktemp("ray-cluster")
    link.rmdir()
    link.symlink_to(temp_dir)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # the venv's commands first: a Ray job's entrypoint (`kdnas search …`) runs in the head node's environment
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": path}
    head = ["--head", "--port", str(port), "--temp-dir", str(temp_dir)]
    if dashboard:
        dashboard_port = _free_port()
        head += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1"]
        head += ["--dashboard-port", str(dashboard_port)]
        env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    else:
        head += ["--include-dashboard", "false"]
    groups: list[int] = []  # a node's processes stay in the session of the `ray start` that started them
    try:
        groups.append(_ray_start(head, {**env, **(head_env or {})}))
        join_node(address, env, groups)
        yield address, env, groups
    finally:
        for group in groups:
            stop_group(group)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_group(group: int) -> None:
    """SIGKILL every process of session ``group`` (started with ``start_new_session``, as :func:`_ray_start` and the
    tests' drivers are) and wait until none is left. A Ray node's worker processes have process groups of their own
    but stay in the session of the ``ray start`` that started the node."""
    import signal

    def gone() -> bool:
        left = _session_processes(group)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return not left

    wait_for(gone, 30, f"the processes of session {group} to exit")


def _session_processes(session: int) -> list[int]:
    """The live (not zombie) processes of ``session``, from ``/proc``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        if fields[0] != "Z" and int(fields[3]) == session:  # state, ppid, pgrp, session
            pids.append(int(entry.name))
    return pids


def tiny_bert(hidden: int = 16, layers: int = 2, heads: int = 2, seed: int = 0):
    """A tiny random BERT classifier (vocabulary 50, 16 positions, 2 labels) in eval mode, seeded."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=16,
        num_labels=2,
    )
    return BertForSequenceClassification(config).eval()


@functools.cache
def _tiny_student() -> Path:
    import tempfile

    from kdnas.student import StudentArch
    from kdnas.teachers.loading import load_tokenizer, resolve_model_ref

    path = Path(tempfile.mkdtemp(prefix="kdnas-tiny-student-"))
    tokenizer = load_tokenizer("minilm")
    StudentArch(1, 2, 8, 1).build(tokenizer, 2, max_positions=64).save_pretrained(path)
    tokenizer.save_pretrained(path)
    shutil.copy(Path(resolve_model_ref("minilm")) / "vocab.txt", path)  # the slow tokenizer's file too
    return path


def save_tiny_student(directory: Path) -> Path:
    """A real (untrained) 1-layer student with the MiniLM tokenizer saved in ``directory``: what an export copies
    and must be able to load."""
    shutil.copytree(_tiny_student(), directory, dirs_exist_ok=True)
    return directory


def minilm_classifier(path: Path) -> str:
    """The packaged MiniLM saved with a (random) 2-label classification head and its tokenizer at ``path``: a ready
    teacher that is used as it is (the bare packaged MiniLM has no head, so it is refused unless fitted)."""
    from transformers import AutoModelForSequenceClassification

    from kdnas.teachers.loading import load_tokenizer, resolve_model_ref

    if not (path / "model.safetensors").is_file():
        AutoModelForSequenceClassification.from_pretrained(resolve_model_ref("minilm"), num_labels=2).save_pretrained(
            path
        )
        load_tokenizer("minilm").save_pretrained(path)
    return str(path)


def students_vocabulary_bert(vocab_size: int):
    """A BERT classifier of 4 layers, width 32 (4 heads of 8), FFN 64, 2 labels, with the students' vocabulary
    (``vocab_size``) and LayerNorm gains that differ per channel (so channel importance is not a tie); seeded."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=2,
            max_position_embeddings=64,
        )
    ).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm.weight" in name:
                param.copy_(torch.rand_like(param) + 0.5)
    return model


# --- waiting ----------------------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)
