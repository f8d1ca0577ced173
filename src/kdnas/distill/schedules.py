"""Scheduled scalars: a constant, or a linear ramp over training progress."""

from __future__ import annotations

from kdnas.config import Ramp, Scheduled


def value_at(value: Scheduled, progress: float) -> float:
    """``value`` at ``progress`` (0 at the first step, 1 at the end of training)."""
    if isinstance(value, Ramp):
        progress = min(max(progress, 0.0), 1.0)
        return value.start + (value.end - value.start) * progress
    return float(value)
