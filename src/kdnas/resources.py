"""Trial resources Ray can provide: refused up front on a local Ray, waited for (then given up) on a cluster."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import ray
import torch
from ray import tune

from kdnas.config import ConfigError, KDNASConfig

logger = logging.getLogger(__name__)

SAY_EVERY_S = 60.0
"""How often the driver says what it is waiting for."""


class ResourcesUnavailable(ConfigError):
    """No trial could start within ``search.resource_wait_s``: the cluster lacks the resources one trial needs."""


def uses_local_ray(config: KDNASConfig) -> bool:
    """Whether the search starts (or reuses) a Ray on this machine rather than joining a cluster."""
    return not (config.search.ray_address or os.environ.get("RAY_ADDRESS"))


def _local_capacity() -> dict[str, float]:
    if ray.is_initialized():  # a Ray this process already started is what the search will use
        total = ray.cluster_resources()
        return {"cpu": total.get("CPU", 0.0), "gpu": total.get("GPU", 0.0)}
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"cpu": float(cpus), "gpu": float(torch.cuda.device_count())}


def check_local_resources(config: KDNASConfig) -> None:
    """Refuse ``search.resources_per_trial`` that a local Ray could never give one trial (it would wait forever)."""
    if not uses_local_ray(config):
        return
    wanted = config.search.resources_per_trial
    capacity = _local_capacity()
    for kind, amount in (("cpu", wanted.cpu), ("gpu", wanted.gpu)):
        if amount > capacity[kind]:
            raise ConfigError(
                f"search.resources_per_trial.{kind} is {amount:g} but this machine has {capacity[kind]:g} "
                f"{kind.upper()}(s) and no Ray cluster is given (search.ray_address): no trial could ever start"
            )


def _missing(needed: dict[str, float]) -> str:
    """What a waiting trial needs and what the cluster offers."""
    wanted = ", ".join(f"{amount:g} {kind.upper()}" for kind, amount in needed.items() if amount)
    if not ray.is_initialized():
        return f"a trial needs {wanted} (search.resources_per_trial)"
    free = ray.available_resources()
    largest: dict[str, float] = max(
        (n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")),
        key=lambda r: (r.get("GPU", 0.0), r.get("CPU", 0.0)),
        default={},
    )
    return (
        f"a trial needs {wanted} (search.resources_per_trial); free now: {free.get('CPU', 0.0):g} CPU, "
        f"{free.get('GPU', 0.0):g} GPU; the largest node has {largest.get('CPU', 0.0):g} CPU, "
        f"{largest.get('GPU', 0.0):g} GPU"
    )


class ResourceWait(tune.Callback):
    """While no trial runs and some wait for resources, say what is missing every minute; after ``wait_s``
    raise :class:`ResourcesUnavailable`."""

    def __init__(self, wait_s: float, needed: dict[str, float]) -> None:
        self.wait_s, self.needed = wait_s, needed
        self.since: float | None = None
        self.said = 0.0

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        statuses = {t.status for t in trials}
        if "RUNNING" in statuses or "PENDING" not in statuses:
            self.since = None
            return
        now = time.monotonic()
        if self.since is None:
            self.since = self.said = now
            return
        if now - self.since >= self.wait_s:
            raise ResourcesUnavailable(
                f"no trial could start within search.resource_wait_s ({self.wait_s:g} s): {_missing(self.needed)}"
            )
        if now - self.said >= SAY_EVERY_S:
            logger.warning("waiting %.0f s for resources: %s", now - self.since, _missing(self.needed))
            self.said = now
