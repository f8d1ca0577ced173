"""The Optuna study: storage URLs (credentials masked), creation with checked directions, reading it back."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import sqlalchemy
from optuna.storages import RDBStorage

from kdnas.config import ConfigError, KDNASConfig
from kdnas.errors import first_line
from kdnas.study.records import FINGERPRINT_ATTR, LATENCY_KEY
from kdnas.study.student_record import StudentRecord
from kdnas.study.study_record import StudyRecord

_SQLITE_LOCK_TIMEOUT_S = 60.0
_CONNECT_TIMEOUT_S = 10
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
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": _SQLITE_LOCK_TIMEOUT_S}}
    elif url.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": _CONNECT_TIMEOUT_S}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    attempt = 0
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=HEARTBEAT_INTERVAL_S,
                    grace_period=4 * HEARTBEAT_INTERVAL_S,
                )
        except Exception as err:  # sqlalchemy raises many kinds; all mean the same to the user
            attempt += 1
            if _lost_schema_race(err) and attempt < 3:  # drivers racing to create the schema of a new database
                time.sleep(attempt)
                continue
            reason = first_line(err)
            raise ConfigError(f"cannot open storage {mask_url(url)}: {mask_url(reason)}") from None


def _lost_schema_race(err: Exception) -> bool:
    """Whether ``err`` says another driver created Optuna's tables or rows first (a unique violation, or PostgreSQL's
    and MySQL's "already exists"): opening the storage again finds them."""
    if isinstance(err, sqlalchemy.exc.IntegrityError):
        return True
    return isinstance(err, sqlalchemy.exc.DBAPIError) and "already exists" in str(err)


def objective_names(config: KDNASConfig) -> list[str]:
    """The study's two objectives: the task metric (maximised) and latency in ms (minimised)."""
    return [config.data.metric, LATENCY_KEY]


def find_study(storage: RDBStorage, study_name: str) -> optuna.Study | None:
    """The study named ``study_name`` in ``storage``, or None (nothing is created)."""
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else f"{text[:60]}… (hash {hashlib.sha256(text.encode()).hexdigest()[:8]})"


def fingerprint_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: recorded → current`` for each key of ``current`` the study recorded with another value."""
    return [
        f"{key} {_short(recorded[key])} → {_short(value)}"
        for key, value in current.items()
        if key in recorded and recorded[key] != value
    ]


def check_comparable(
    study: optuna.Study | None,
    config: KDNASConfig,
    fingerprint: dict[str, Any],
    space_conflicts: Sequence[str] = (),
) -> None:
    """Refuse to add students to ``study`` that would not be comparable with its own: other objectives, a
    ``fingerprint`` that differs from the recorded one (keys both hold), or ``space_conflicts`` (search-space
    parameters Optuna cannot sample consistently with the study's trials). Nothing is written."""
    if study is None:
        return
    names = objective_names(config)
    directions = [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    existing_names = study.metric_names
    if study.directions != directions or (existing_names is not None and existing_names != names):
        raise ConfigError(
            f"study {study.study_name!r} already exists with objectives "
            f"{existing_names or [d.name.lower() for d in study.directions]}, not {names}"
        )
    problems = fingerprint_differences(StudyRecord.of(study).fingerprint or {}, fingerprint)
    problems += [f"search space {conflict}" for conflict in space_conflicts]
    if problems:
        raise ConfigError(
            f"study {study.study_name!r} holds students that this config would not be comparable with: "
            f"{'; '.join(problems)}. Keep the study's settings, or start a new study with --study-name NAME"
        )


def create_or_load_study(
    config: KDNASConfig, storage: RDBStorage, fingerprint: dict[str, Any] | None = None
) -> optuna.Study:
    """Create the configured study recording ``fingerprint``, or load it when it exists with the same objectives
    and fingerprint (a study recorded before fingerprints existed gets this one now; None records none)."""
    study = optuna.create_study(
        storage=storage,
        study_name=config.search.study_name,
        directions=["maximize", "minimize"],
        load_if_exists=True,
    )
    check_comparable(study, config, fingerprint or {})  # another driver may have created it meanwhile
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(objective_names(config))
    if fingerprint:
        record_once(study, {FINGERPRINT_ATTR: fingerprint})
    return study


def record_once(study: optuna.Study, attrs: dict[str, Any]) -> None:
    """Set each of ``attrs`` the study does not hold yet: a rerun never overwrites what the study recorded."""
    held = study.user_attrs
    for key, value in attrs.items():
        if key not in held:
            study.set_user_attr(key, value)


def outcome_problem(trials: list[optuna.trial.FrozenTrial]) -> str | None:
    """None when a trial is COMPLETE; else one line counting the trials' failure and pruning reasons."""
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
        return None
    reasons = Counter((StudentRecord.of(t).reason or t.state.name).splitlines()[0][:160] for t in trials)
    shown = "; ".join(f"{n}× {reason}" for reason, n in reasons.most_common(3))
    more = f"; {len(reasons) - 3} other reason(s)" if len(reasons) > 3 else ""
    return f"no student completed ({len(trials)} trial(s): {shown or 'none ran'}{more})"


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite ``url`` (None for other URLs, in-memory and URI-form SQLite)."""
    try:
        database = sqlalchemy.engine.make_url(url).database
    except sqlalchemy.exc.ArgumentError:
        return None
    if not url.startswith("sqlite") or not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite ``url`` when it does not exist (opening it would create it), else None."""
    file = _sqlite_file(url)
    return None if file is None or file.exists() else file


def check_writable(url: str) -> None:
    """Refuse, up front, a SQLite study file (or its directory, where SQLite keeps its journal) that this process
    cannot write: a search would otherwise fail at its first write as a lost connection."""
    file = _sqlite_file(url)
    if file is None or not file.exists():
        return
    for path in (file, file.resolve().parent):
        if not os.access(path, os.W_OK):
            raise ConfigError(f"the study storage {path} is not writable: a search needs to write its trials there")


def open_storage_if_exists(url: str) -> RDBStorage | None:
    """:func:`open_storage`, or None for a SQLite file not created yet (whose directory must exist), so a search
    whose inputs turn out bad leaves no database behind."""
    missing = _missing_sqlite_file(url)
    if missing is None:
        return open_storage(url)
    if not missing.parent.is_dir():
        raise ConfigError(f"cannot open storage {mask_url(url)}: directory {missing.parent} does not exist")
    return None


def open_existing_storage(url: str, *, read_only: bool = False) -> RDBStorage:
    """:func:`open_storage` for readers: a SQLite file that does not exist is an error, never created; with
    ``read_only`` a SQLite file is opened read-only, so nothing (not even Optuna's schema) is ever written to it."""
    missing = _missing_sqlite_file(url)
    if missing is not None:
        raise ConfigError(f"no study storage at {mask_url(url)}: {missing} does not exist (run kdnas search first)")
    file = _sqlite_file(url)
    if not read_only or file is None:
        return open_storage(url)
    if file.stat().st_size == 0:
        raise ConfigError(f"no study storage at {mask_url(url)}: {file} is empty (run kdnas search first)")
    try:
        return open_storage(f"sqlite:///file:{quote(str(file.resolve()))}?mode=ro&uri=true")
    except ConfigError as err:
        reason = str(err).rsplit(": ", 1)[-1]
        raise ConfigError(f"cannot read the study storage {file}: {reason}") from None


def load_study(url: str, study_name: str, *, read_only: bool = False) -> optuna.Study:
    """Load an existing study, with a one-line error naming the study and the (masked) storage; ``read_only`` opens
    a SQLite file read-only (:func:`open_existing_storage`)."""
    storage = open_existing_storage(url, read_only=read_only)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        known = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise ConfigError(f"no study {study_name!r} in {mask_url(url)}; studies there: {known}") from None


def study_summaries(url: str) -> list[dict]:
    """One row per study in the storage (a SQLite file opened read-only): name, objectives, trial counts by state."""
    storage = open_existing_storage(url, read_only=True)
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        counts = {state.name.lower(): 0 for state in optuna.trial.TrialState}
        for trial in study.get_trials(deepcopy=False):
            counts[trial.state.name.lower()] += 1
        rows.append(
            {
                "study": summary.study_name,
                "objectives": ",".join(study.metric_names or []),
                "trials": summary.n_trials,
                **counts,
            }
        )
    return rows
