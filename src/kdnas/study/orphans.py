"""Who owns a RUNNING trial, and what a resumed driver does with trials whose driver is gone (orphans).

Every trial a driver runs records that driver (:data:`~kdnas.study.records.DRIVER_ATTR`: host and pid) and a heartbeat
(:data:`~kdnas.study.records.HEARTBEAT_ATTR`: the Unix time of the driver's last beat), both trial system attrs written
through Optuna's public storage API. A resumed driver fails only trials whose driver is gone (see
:func:`driver_gone`) and re-enqueues the students they were training once, so several drivers can share a study.
Light on purpose (no Ray, torch or transformers): ``kdnas search``'s interrupt handler and the progress display
import it.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from kdnas.study.records import FAILURE_ATTR
from kdnas.study.repeats import is_repeat
from kdnas.study.storage import HEARTBEAT_INTERVAL_S
from kdnas.study.student_record import DriverId, StudentRecord, TrialClaim

DRIVER_LOST = "driver lost: the search driver stopped while this trial ran"
UNCLAIMED_GRACE_S = 60.0
"""A driver records itself on a trial right after creating it; a RUNNING trial still without one after this long
was left by a driver that died in between."""
STALE_AFTER_S = 4.0 * HEARTBEAT_INTERVAL_S
"""A trial whose driver's last heartbeat is older than this (by the reading host's clock) is an orphan."""


def this_driver() -> dict[str, Any]:
    """The identity recorded on every trial this process runs (:class:`DriverId`'s layout)."""
    return DriverId.current().to_attrs()


def counts_toward_budget(trial: FrozenTrial) -> bool:
    """Whether a trial uses up the trial budget: every finished or running trial but repeats of a student the study
    holds and those whose driver was lost."""
    if is_repeat(trial):
        return False
    if trial.state == TrialState.FAIL:
        reason = StudentRecord.of(trial).failure_reason
        return reason is not None and reason != DRIVER_LOST  # a FAIL with no reason: lost mid-tell
    return trial.state != TrialState.WAITING


def driver_gone(trial: FrozenTrial, now: float | None = None) -> bool:
    """Whether the driver of a RUNNING trial is gone: it never recorded itself (within :data:`UNCLAIMED_GRACE_S`),
    its last heartbeat is older than :data:`STALE_AFTER_S` (``now``: a ``time.time()``, by default the current one),
    or it ran on this host and its process has exited.

    A trial written by a kdnas older than :data:`~kdnas.study.records.HEARTBEAT_ATTR` kept its heartbeat only in
    Optuna's own table, which has no public reader: on another host, such a trial is judged by its start instead
    (gone once it started longer ago than :data:`STALE_AFTER_S`), so a study left by an old driver still resumes.
    """
    claim = TrialClaim.of(trial)
    driver, beat, started = claim.driver, claim.heartbeat, trial.datetime_start
    if driver is None:  # another driver may be between creating this trial and recording itself on it
        return started is None or (datetime.now() - started).total_seconds() > UNCLAIMED_GRACE_S
    if isinstance(beat, (int, float)) and (time.time() if now is None else now) - beat > STALE_AFTER_S:
        return True
    if driver.host != socket.gethostname():  # judged by its heartbeat
        return beat is None and (started is None or (datetime.now() - started).total_seconds() > STALE_AFTER_S)
    if driver.pid is None or driver.pid == os.getpid():
        return True  # an earlier search in this process, which has ended (or a driver that recorded no process)
    try:
        os.kill(driver.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def reconcile_orphans(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """Fail RUNNING trials whose driver is gone (reason: driver lost) and re-enqueue their students once.

    A trial's student is re-enqueued only if it was handed to training (it records the recipe it trains under): a
    driver lost while still sampling leaves no student, or part of one, and a fresh sample takes its place in the
    budget. Trials of drivers still running (their process on this host, or a fresh heartbeat) are left alone, so
    several drivers can share a study.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    now = time.time()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    released = 0
    for trial in (t for t in running if driver_gone(t, now)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, FAILURE_ATTR, DRIVER_LOST)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished meanwhile (e.g. another driver reconciled it)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        if StudentRecord.of(trial).recipe is not None:
            study.enqueue_trial(trial.params, user_attrs=StudentRecord(retry_of=trial.number).to_attrs())
        released += 1
    return released


def trials_left(study: optuna.Study, n_trials: int) -> int:
    """The trial budget minus trials finished or running (those failed by a lost driver are retried, not counted)."""
    return max(0, n_trials - sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False)))
