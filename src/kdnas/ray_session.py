"""Connect to (or start) Ray without losing the caller's SIGTERM handling."""

from __future__ import annotations

import signal
import threading
from typing import Any

import ray


def ray_init(**kwargs: Any) -> None:
    """``ray.init(**kwargs)``, then the SIGTERM handler the caller had installed (``kdnas search``: stop, release
    the running trials and say how to resume, exit 143) is put back in place of Ray's, which exits at once with a
    stack dump. Without a handler of the caller's, Ray's stays."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    ray.init(**kwargs)
    if callable(previous):
        signal.signal(signal.SIGTERM, previous)
