"""Pareto dominance of (metric ↑, latency ↓) points, written once for the front, early stopping and the benchmarks."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

Key = TypeVar("Key", bound=Hashable)


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether ``a`` is at least as accurate and as fast as ``b`` and strictly better in one of the two."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def front_keys(points: Mapping[Key, tuple[float, float]]) -> list[Key]:
    """The keys of the points no other point dominates (equal points are all kept)."""
    return [key for key, point in points.items() if not any(dominates(other, point) for other in points.values())]


def pareto_ranks(points: Mapping[Key, tuple[float, float]]) -> dict[Key, int]:
    """Non-dominated sorting of ``(metric, latency)`` points: 0 for the front, 1 for the front of the rest, and so on.
    Equal points share a rank."""
    left, ranks, rank = dict(points), {}, 0
    while left:
        for key in front_keys(left):
            ranks[key] = rank
            del left[key]
        rank += 1
    return ranks
