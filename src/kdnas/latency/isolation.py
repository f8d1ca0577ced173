"""Latency measured alone on its node: a node-wide readers–writer lock between training and timing.

Every training step and every inference batch (students' and teachers', in any process of the node) runs inside
:func:`training_step`, a shared lock; a latency measurement runs inside :func:`isolated`, the exclusive one. While a
measurement waits or runs, no step starts on the node, and it begins only when the steps in flight have ended, so
no student trains beside a timed forward pass. Ray's resources cannot give this: they are logical and do not stop a
training process from using the cores (or the GPU) a measurement runs on.

The locks are ``flock`` files in the node's temporary directory (``$KDNAS_LOCK_DIR`` to override), so every kdnas
process of one machine shares them — searches, drivers and Ray nodes alike — and the kernel releases a dead
process's locks. A turnstile (the *gate*) gives waiting measurements priority over new steps.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

LOCK_DIR_ENV = "KDNAS_LOCK_DIR"

_files: dict[tuple[int, str], IO[bytes]] = {}  # per process (a forked child opens its own) and lock name
_held = threading.local()  # how deep this thread is in training_step blocks (an inner one must not unlock)


def lock_dir() -> Path:
    """Where this node's lock files are (``$KDNAS_LOCK_DIR``, else ``<tmp>/kdnas-locks-<uid>``)."""
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"kdnas-locks-{os.getuid()}")


def _lock_file(name: str) -> IO[bytes]:
    key = (os.getpid(), str(lock_dir() / name))
    if key not in _files:
        lock_dir().mkdir(parents=True, exist_ok=True)
        _files[key] = open(key[1], "ab")  # held open for the process's life
    return _files[key]


@contextmanager
def _flock(name: str, mode: int) -> Iterator[None]:
    file = _lock_file(name)
    fcntl.flock(file, mode)
    try:
        yield
    finally:
        fcntl.flock(file, fcntl.LOCK_UN)


@contextmanager
def training_step() -> Iterator[None]:
    """Hold the node's training lock (shared) for one step or batch; waits while a measurement is waiting or runs.
    Re-entrant: a batch inside a step (e.g. a teacher's forward pass in a loss) holds the step's lock."""
    depth = getattr(_held, "depth", 0)
    if depth == 0:
        with _flock("gate", fcntl.LOCK_SH):
            pass
    _held.depth = depth + 1
    try:
        if depth:
            yield
        else:
            with _flock("work", fcntl.LOCK_SH):
                yield
    finally:
        _held.depth = depth


@contextmanager
def isolated(enabled: bool = True) -> Iterator[float]:
    """Hold the node's training lock exclusively: no training step runs on the node inside the block. Yields the
    seconds spent waiting for it (0 when ``enabled`` is false: the block then runs beside any training)."""
    if not enabled:
        yield 0.0
        return
    started = time.perf_counter()
    with _flock("gate", fcntl.LOCK_EX), _flock("work", fcntl.LOCK_EX):
        yield time.perf_counter() - started
