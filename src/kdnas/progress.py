"""Progress a person can read: a live bar on a terminal, a plain line now and then in a log (CI, ``ray job``)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm

_LOG_EVERY_S = 30.0
"""In a non-interactive log, a long step says where it is this often."""

logger = logging.getLogger("kdnas")


def interactive() -> bool:
    """Whether progress is drawn live: stderr is a terminal and kdnas logs at INFO."""
    return sys.stderr.isatty() and logger.isEnabledFor(logging.INFO)


def duration(seconds: float) -> str:
    """``seconds`` as ``1h02m``, ``4m01s`` or ``12s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """The progress of one long step (``description``) counted in ``unit``: a tqdm bar on a terminal, otherwise a
    log line at most every ``every_s`` seconds with the count, the rate and the time left (and one at the end)."""

    def __init__(self, description: str, unit: str, *, every_s: float = _LOG_EVERY_S) -> None:
        self.description, self.unit, self.every_s = description, unit, every_s
        self.done, self.total, self.status, self.logged = 0, 0, "", 0
        self.started = self.last_line = time.monotonic()
        self.bar = tqdm(desc=description, unit=unit, leave=False, dynamic_ncols=True) if interactive() else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.logged and self.logged != self.done:  # a step long enough to be logged says when it ends
            logger.info("%s", self.line())

    def advance(self, done: int, total: int, **status: Any) -> None:
        """``done`` of ``total`` units are done; ``status`` (e.g. ``loss=0.41``) is shown beside the count."""
        self.done, self.total = done, total
        self.status = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in status.items())
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(done - self.bar.n)
            if status:
                self.bar.set_postfix_str(self.status, refresh=False)
        elif time.monotonic() - self.last_line >= self.every_s:
            self.last_line, self.logged = time.monotonic(), done
            logger.info("%s", self.line())

    def line(self) -> str:
        """``description: done/total unit (pct), status, rate, time left``."""
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        running = rate > 0 and self.done < self.total
        left = f", about {duration((self.total - self.done) / rate)} left" if running else ""
        status = f", {self.status}" if self.status else ""
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return (
            f"{self.description}: {self.unit} {self.done}/{self.total}{percent}{status}, "
            f"{rate:.3g} {self.unit}/s, {duration(elapsed)} elapsed{left}"
        )
