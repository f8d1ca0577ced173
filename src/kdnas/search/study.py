"""The Optuna study: storage URLs (credentials masked), creation with checked directions, reading it back."""

from __future__ import annotations

import re
import time
import warnings

import optuna
import sqlalchemy
from optuna.storages import RDBStorage

from kdnas.config import ConfigError, KDNASConfig
from kdnas.search.trial import LATENCY_KEY

SQLITE_LOCK_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10
HEARTBEAT_INTERVAL_S = 30
"""Drivers record a heartbeat on their running trials this often; after 4 intervals without one a trial is an orphan."""


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str) -> RDBStorage:
    """An Optuna RDB storage for ``url`` with trial heartbeats: a lock timeout for SQLite; ``pool_pre_ping`` (a dropped
    connection is replaced) and a connect timeout for servers."""
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}
    elif url.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    attempt = 0
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_INTERVAL_S,
                                  grace_period=4 * HEARTBEAT_INTERVAL_S)
        except Exception as err:  # sqlalchemy raises many kinds; all mean the same to the user
            attempt += 1
            if isinstance(err, sqlalchemy.exc.IntegrityError) and attempt < 3:  # drivers racing to create tables
                time.sleep(attempt)
                continue
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"cannot open storage {mask_url(url)}: {mask_url(reason)}") from None


def objective_names(config: KDNASConfig) -> list[str]:
    """The study's two objectives: the task metric (maximised) and latency in ms (minimised)."""
    return [config.data.metric, LATENCY_KEY]


def create_or_load_study(config: KDNASConfig, storage: RDBStorage) -> optuna.Study:
    """Create the configured study, or load it when it exists with the same objectives."""
    names = objective_names(config)
    directions = [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    study = optuna.create_study(
        storage=storage, study_name=config.search.study_name, directions=directions, load_if_exists=True
    )
    existing_names = study.metric_names
    if study.directions != directions or (existing_names is not None and existing_names != names):
        raise ConfigError(
            f"study {config.search.study_name!r} already exists with objectives "
            f"{existing_names or [d.name.lower() for d in study.directions]}, not {names}"
        )
    if existing_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    return study


def load_study(url: str, study_name: str) -> optuna.Study:
    """Load an existing study, with a one-line error naming the study and the (masked) storage."""
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        known = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise ConfigError(f"no study {study_name!r} in {mask_url(url)}; studies there: {known}") from None


def study_summaries(url: str) -> list[dict]:
    """One row per study in the storage: name, objectives, trial counts by state."""
    storage = open_storage(url)
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        counts = {state.name.lower(): 0 for state in optuna.trial.TrialState}
        for trial in study.get_trials(deepcopy=False):
            counts[trial.state.name.lower()] += 1
        rows.append({"study": summary.study_name, "objectives": ",".join(study.metric_names or []),
                     "trials": summary.n_trials, **counts})
    return rows
