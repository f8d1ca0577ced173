"""Run ``kdnas`` and SIGKILL its whole process group (driver and local Ray) at a chosen point of the search.

Usage: ``python kill_driver.py POINT kdnas-arguments…`` with POINT one of :data:`POINTS` (or ``none``).
"""

from __future__ import annotations

import os
import signal
import sys

import optuna

from kdnas.cli import main
from kdnas.tune.searcher import KDNASSearch


def _die(*_: object, **__: object) -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


def _after(owner: type, name: str) -> None:
    """SIGKILL right after the first call of ``owner.name`` returns."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        if name != "suggest" or isinstance(result, dict):
            _die()
        return result

    setattr(owner, name, wrapper)


def _on_call(owner: type, name: str, n: int) -> None:
    """SIGKILL at the ``n``-th call of ``owner.name``, before it runs."""
    original, calls = getattr(owner, name), []

    def wrapper(*args, **kwargs):
        calls.append(name)
        if len(calls) == n:
            _die()
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


POINTS = {
    "trial-start": lambda: _after(KDNASSearch, "suggest"),  # trial created (RUNNING, driver recorded), not launched
    "mid-training": lambda: _after(KDNASSearch, "on_trial_result"),  # the driver got a student's epoch 1 result
    "result-write": lambda: _on_call(optuna.trial.Trial, "set_user_attr", 2),  # one user_attr written, not told
    "after-tell": lambda: _after(KDNASSearch, "on_trial_complete"),  # a trial was just told to the study
    "resume-reconcile": lambda: _on_call(optuna.Study, "enqueue_trial", 1),  # orphan failed, retry not enqueued
    "none": lambda: None,
}

if __name__ == "__main__":
    POINTS[sys.argv[1]]()
    sys.exit(main(sys.argv[2:]))
