"""The multi-objective samplers a search offers, each one Ray Tune can pickle with its searcher."""

from __future__ import annotations

import threading
from typing import Any

import optuna

from kdnas.config import KDNASConfig

_RLOCK = type(threading.RLock())
_LOCK_TYPES = (type(threading.Lock()), _RLOCK)
_LOCKS = "_kdnas_locks"
"""The pickled state's key listing the sampler's locks: (attribute, re-entrant)."""


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable: Tune pickles its searcher (and so the sampler) into the experiment state when a
    search starts, and Optuna's genetic samplers hold a thread lock (5.1 and later), which cannot be pickled. A copy
    gets fresh, unlocked locks."""

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if not isinstance(v, _LOCK_TYPES)}
        state[_LOCKS] = [(k, isinstance(v, _RLOCK)) for k, v in self.__dict__.items() if isinstance(v, _LOCK_TYPES)]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        locks = state.pop(_LOCKS, [])
        self.__dict__.update(state)
        for key, reentrant in locks:
            setattr(self, key, threading.RLock() if reentrant else threading.Lock())


def make_sampler(config: KDNASConfig, trials_before: int = 0) -> optuna.samplers.BaseSampler:
    """The configured multi-objective sampler, seeded with ``search.seed`` plus the number of trials the study held
    before this run: a resumed run does not replay the proposals of the first. TPE and GP model the study after
    ``search.startup_trials`` random students."""
    seed, startup = config.search.seed + trials_before, config.search.startup_trials
    if config.search.sampler == "nsga2":
        return PicklableNSGAIISampler(seed=seed)
    if config.search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if config.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=startup)
