"""Shared fixtures: a tiny offline config and one tiny real search on local Ray, run once per session."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kdnas.config import KDNASConfig, build_config


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
        "training": {"epochs": 2, "batch_size": 32},
        "latency": {"warmup": 1, "runs": 3},
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
    from kdnas.search.runner import run_search

    config = build_config(tiny_raw(run_dir))
    return config, run_search(config)
