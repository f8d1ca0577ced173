"""TrialClaims: the storage trials a driver holds for its Tune trials, each claimed so that no trial is left RUNNING
without an owner, and kept alive by heartbeats.

A trial is claimed as ``Study.ask()`` would ask for it, but through the storage's public methods: an enqueued
(WAITING) trial first, else a new trial created already RUNNING with this driver's id and a heartbeat. A resumed
driver reads those marks to tell orphans from trials another live driver is running
(:func:`~kdnas.study.orphans.driver_gone`).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from kdnas.errors import first_line
from kdnas.study.orphans import this_driver
from kdnas.study.records import DRIVER_ATTR, HEARTBEAT_ATTR, RECIPE_ATTR

logger = logging.getLogger(__name__)


class TrialClaims:
    """The Optuna trials of study ``study_name`` in ``storage`` (``study_id`` there, looked up when not given) that
    this driver holds, by Tune trial id; ``sampler`` samples their parameters.

    :meth:`ask` is idempotent per Tune trial: a retry after a storage error gets the trial an earlier attempt
    created, so a connection lost mid-ask leaves no RUNNING trial that nobody owns.
    """

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        study_name: str,
        sampler: optuna.samplers.BaseSampler,
        *,
        study_id: int | None = None,
    ) -> None:
        self._storage = storage
        self._views_storage: optuna.storages.BaseStorage = storage  # see _open
        self._study_name = study_name
        self._sampler = sampler
        self._study_id = study_id if study_id is not None else storage.get_study_id_from_name(study_name)
        self._held: dict[str, optuna.Trial] = {}  # Tune trial id → its Optuna trial, while it runs
        self._storage_ids: dict[str, int] = {}  # Tune trial id → its trial's id in the storage

    def __getstate__(self) -> dict[str, Any]:
        """All but the storage and the held trials, which hold the storage URL and so may hold a password."""
        return {**self.__dict__, "_storage": None, "_views_storage": None, "_held": {}}

    def asked(self, trial_id: str) -> bool:
        """Whether a storage trial was asked for Tune trial ``trial_id`` (and not dropped)."""
        return trial_id in self._storage_ids

    def held(self, trial_id: str) -> optuna.Trial | None:
        """The Optuna trial this driver holds for Tune trial ``trial_id``, or None (never asked, or released)."""
        return self._held.get(trial_id)

    def running(self) -> list[str]:
        """The Tune trial ids whose trials this driver holds, in the order they were asked."""
        return list(self._held)

    def ask(self, trial_id: str) -> optuna.Trial:
        """The trial held for Tune trial ``trial_id``; the first time, the oldest WAITING trial (claimed RUNNING) or
        else a new trial created RUNNING with this driver's :data:`DRIVER_ATTR` and heartbeat in one transaction."""
        if trial_id in self._held:
            return self._held[trial_id]
        storage_id = self._storage_ids.get(trial_id)
        if storage_id is None:
            storage_id = self._claim_waiting()
            if storage_id is None:
                storage_id = self._storage.create_new_trial(self._study_id, template_trial=_claimed_trial())
            self._storage_ids[trial_id] = storage_id
        self._held[trial_id] = self._open(storage_id)
        return self._held[trial_id]

    def claim(self, trial_id: str, recipe: str) -> None:
        """Mark the trial held for ``trial_id`` as this driver's student to train: its ``recipe``, a heartbeat, and
        then its driver (so a trial with a driver always has a heartbeat)."""
        storage_id = self._storage_ids[trial_id]
        self._storage.set_trial_user_attr(storage_id, RECIPE_ATTR, recipe)
        self._beat(storage_id, time.time())
        self._storage.set_trial_system_attr(storage_id, DRIVER_ATTR, this_driver())

    def release(self, trial_id: str) -> None:
        """Stop holding ``trial_id``'s trial once it was told (its storage id is kept for :meth:`snapshot`)."""
        del self._held[trial_id]

    def drop(self, trial_id: str) -> None:
        """Forget ``trial_id``'s trial altogether (told as a repeat): the next :meth:`ask` for it claims another."""
        del self._held[trial_id], self._storage_ids[trial_id]

    def record_heartbeats(self) -> None:
        """Mark every trial this driver still holds as alive in the storage."""
        now = time.time()
        for trial_id in list(self._held):
            try:
                self._beat(self._storage_ids[trial_id], now)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # told meanwhile
            except Exception as err:  # a lost connection is retried at the next beat (pool_pre_ping reconnects)
                logger.warning("could not record heartbeats: %s", first_line(err))
                return

    def snapshot(self) -> dict[str, Any]:
        """Which Tune trial runs which storage trial, as JSON-able ``storage_ids`` and ``running``."""
        return {"storage_ids": self._storage_ids, "running": sorted(self._held)}

    def restore(self, storage_ids: dict[str, int], running: list[str]) -> None:
        """Hold again what :meth:`snapshot` gave: the ``running`` trials are opened again from the storage."""
        self._storage_ids = dict(storage_ids)
        self._held = {trial_id: self._open(self._storage_ids[trial_id]) for trial_id in running}

    def _beat(self, storage_id: int, now: float) -> None:
        """Record that this driver still runs storage trial ``storage_id``: kdnas's heartbeat attr (what
        :func:`~kdnas.study.orphans.driver_gone` reads) and Optuna's own heartbeat (what Optuna's tools read)."""
        self._storage.set_trial_system_attr(storage_id, HEARTBEAT_ATTR, now)
        record_heartbeat = getattr(self._storage, "record_heartbeat", None)  # storages with heartbeat support
        if callable(record_heartbeat):
            record_heartbeat(storage_id)

    def _claim_waiting(self) -> int | None:
        """Set the oldest WAITING (enqueued, e.g. a retry) trial RUNNING and return its storage id, as
        ``Study.ask()`` does; None when there is none (another driver may claim one first)."""
        for waiting in self._storage.get_all_trials(self._study_id, deepcopy=False, states=(TrialState.WAITING,)):
            storage_id = self._storage.get_trial_id_from_study_id_trial_number(self._study_id, waiting.number)
            try:
                if self._storage.set_trial_state_values(storage_id, state=TrialState.RUNNING):
                    return storage_id
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    def _open(self, storage_id: int) -> optuna.Trial:
        """The ``optuna.Trial`` of storage trial ``storage_id``, on a fresh view of the study: the sampler of a
        ``Study`` caches the trials it saw until that study's next ask or tell, and trials here are created through
        the storage, so each trial gets a view of its own (as ``Study.ask()`` clears its cache).

        The views share the first view's storage (``Trial.storage``: Optuna's trial cache over ``storage``), so a
        view reads only the trials that changed since the last one, not the whole study."""
        study = optuna.load_study(
            study_name=self._study_name,
            storage=self._views_storage,
            sampler=self._sampler,
            pruner=optuna.pruners.NopPruner(),
        )
        study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))  # the view reads the trial it is to sample
        trial = optuna.Trial(study, storage_id)
        self._views_storage = trial.storage
        return trial


def _claimed_trial() -> FrozenTrial:
    """The template of a new trial claimed by this driver: RUNNING, with its :data:`DRIVER_ATTR` and heartbeat."""
    return FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.now(),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs={HEARTBEAT_ATTR: time.time(), DRIVER_ATTR: this_driver()},
        intermediate_values={},
        trial_id=-1,
    )
