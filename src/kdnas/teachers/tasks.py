"""Where teacher work runs: fitting, logits (with the teacher's reference metric and latency) and importance ranking.

On a local Ray (no ``search.ray_address``, no ``RAY_ADDRESS``) each step runs in this process, the driver, which sits
on the only node: on CUDA when ``search.resources_per_teacher.gpu`` resolves above 0, with its progress on the
driver's terminal or log as any other step. On a Ray cluster each step that has work to do runs as a Ray task with
``search.resources_per_teacher`` (so a head without a GPU fits its teachers on a GPU worker): the task's progress
lines reach the driver's terminal or job log through Ray's log forwarding, prefixed with the task's name; a step whose
outputs are already cached is read on the driver, without a task. Outputs land in ``output_dir`` either way, which on
a cluster must be on storage every node sees. Each output records where it was computed (:func:`where`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from kdnas.config import ConfigError, KDNASConfig
from kdnas.devices import assigned_device
from kdnas.ray_session import ray_init

if TYPE_CHECKING:
    import ray

logger = logging.getLogger(__name__)

T = TypeVar("T")

SETTING = "search.resources_per_teacher"
_POLL_S = 2.0
"""How often the driver looks whether a waiting teacher task has ended or could be placed."""
SAY_EVERY_S = 60.0
"""How often the driver says what a teacher task waits for."""

_QUIET_ENV = ("TOKENIZERS_PARALLELISM", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")
"""Environment variables the CLI sets to keep library chatter out of its output, passed on to teacher tasks."""

_remote: Any = None  # the Ray remote function of :func:`_teacher_task`, made once


def on_cluster(config: KDNASConfig) -> bool:
    """Whether teacher steps run as Ray tasks: the search joins a Ray cluster rather than starting a local Ray."""
    from kdnas.resources import uses_local_ray

    return not uses_local_ray(config)


def resources(config: KDNASConfig) -> dict[str, float]:
    """``search.resources_per_teacher`` with ``gpu: auto`` resolved: 1 when the cluster (on a local Ray: this
    machine) has a GPU now, else 0."""
    wanted = config.search.resources_per_teacher
    gpu = wanted.gpu
    if gpu == "auto":
        if on_cluster(config):
            import ray

            has_gpu = ray.cluster_resources().get("GPU", 0.0) > 0
        else:
            has_gpu = torch.cuda.is_available()
        gpu = 1.0 if has_gpu else 0.0
    return {"cpu": wanted.cpu, "gpu": float(gpu)}


def check_local(config: KDNASConfig) -> None:
    """On a local Ray, refuse a ``search.resources_per_teacher.gpu`` this machine lacks (the teachers run in the
    driver here, so no other node could provide it)."""
    gpu = config.search.resources_per_teacher.gpu
    if on_cluster(config) or gpu == "auto":
        return
    have = torch.cuda.device_count()
    if gpu > have:
        raise ConfigError(
            f"{SETTING}.gpu is {gpu:g} but this machine has {have} GPU(s) and no Ray cluster is given "
            "(search.ray_address): the teachers run on this machine; set gpu: 0 (or auto) to run them on its CPUs"
        )


def local_device(config: KDNASConfig) -> torch.device:
    """The device teacher steps use in the driver on a local Ray: CUDA when the resolved ``gpu`` is above 0."""
    check_local(config)
    return torch.device("cuda" if resources(config)["gpu"] > 0 else "cpu")


def where(device: torch.device | str) -> dict[str, Any]:
    """Where a teacher step runs: the node (Ray node id when Ray is up, IP, hostname), the device and whether it is a
    Ray task (else the driver)."""
    import ray

    from kdnas.latency.timing import device_name

    device = torch.device(device)
    context = ray.get_runtime_context() if ray.is_initialized() else None
    return {
        "id": context.get_node_id() if context else None,
        "ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "device": device.type,
        "device_name": device_name(device),
        "ray_task": bool(context and context.get_task_id() is not None),
    }


def _for_other_nodes(arg: Any) -> Any:
    """A config with ``output_dir`` made absolute, so that a task on another node (or in another working directory)
    reads and writes the driver's files; any other argument as it is."""
    if isinstance(arg, KDNASConfig):
        return arg.model_copy(update={"output_dir": str(Path(arg.output_dir).resolve())})
    return arg


def run_step(
    config: KDNASConfig,
    what: str,
    step: Callable[..., T],
    *args: Any,
    cached: bool = False,
    here: dict[str, Any] | None = None,
    **kwargs: Any,
) -> T:
    """``step(*args, device=…, **kwargs)``: in this process on a local Ray (on :func:`local_device`) or when
    ``cached`` (its outputs are on disk: read on the CPU), else as a Ray task with :func:`resources` on the cluster.
    ``here`` are more keyword arguments for a step run in this process only, e.g. a teacher already loaded here (a
    task loads its own: a model does not survive the trip through Ray's object store intact).

    ``what`` names the step in the driver's log and the task's name. The task's errors are raised here as they were
    raised there; when no node of the cluster could ever hold the task, the driver waits ``search.resource_wait_s``
    (saying every minute what is missing) and then raises :class:`~kdnas.resources.ResourcesUnavailable`.
    """
    if not on_cluster(config):
        return step(*args, device=local_device(config), **kwargs, **(here or {}))
    if cached:
        return step(*args, device=torch.device("cpu"), **kwargs, **(here or {}))
    import ray

    if not ray.is_initialized():
        ray_init(address=config.search.ray_address, ignore_reinit_error=True)
    wanted = resources(config)
    args = tuple(_for_other_nodes(arg) for arg in args)
    logger.info(
        "%s: a Ray task with %g CPU, %g GPU (%s); its progress follows, prefixed with its name",
        what,
        wanted["cpu"],
        wanted["gpu"],
        SETTING,
    )
    started = time.perf_counter()
    global _remote
    _remote = _remote or ray.remote(_teacher_task)
    quiet = {name: os.environ[name] for name in _QUIET_ENV if name in os.environ}
    options: dict[str, Any] = {"num_cpus": wanted["cpu"], "num_gpus": wanted["gpu"], "name": what}
    if quiet:  # merged with the job's runtime environment
        options["runtime_env"] = {"env_vars": quiet}
    ref = _remote.options(**options).remote(step, args, kwargs, wanted, logging.getLogger("kdnas").getEffectiveLevel())
    result, node = _wait(ref, wanted, config.search.resource_wait_s, what)
    logger.info(
        "%s: done on node %s (%s, %s) in %.0f s",
        what,
        node["hostname"],
        node["ip"],
        node["device_name"],
        time.perf_counter() - started,
    )
    return result


def _teacher_task(
    step: Callable[..., T], args: tuple, kwargs: dict, wanted: dict[str, float], level: int
) -> tuple[T, dict[str, Any]]:
    """The Ray task: log like the driver (to stderr, which Ray forwards to it), use the CPUs and the GPU it was given,
    run ``step``; return its result and where it ran."""
    log = logging.getLogger("kdnas")
    log.setLevel(level)
    if not log.handlers and not logging.getLogger().handlers:  # a worker process runs many tasks: one handler
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[kdnas] %(message)s"))
        log.addHandler(handler)
    torch.set_num_threads(max(1, int(wanted["cpu"])))
    device = assigned_device(wanted["gpu"], SETTING, "the node running the teacher task")
    return step(*args, device=device, **kwargs), where(device)


def _fits_a_node(wanted: dict[str, float]) -> bool:
    import ray

    return any(
        node.get("Resources", {}).get("CPU", 0.0) >= wanted["cpu"]
        and node.get("Resources", {}).get("GPU", 0.0) >= wanted["gpu"]
        for node in ray.nodes()
        if node.get("Alive")
    )


def _missing(wanted: dict[str, float]) -> str:
    import ray

    largest: dict[str, float] = max(
        (n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")),
        key=lambda r: (r.get("GPU", 0.0), r.get("CPU", 0.0)),
        default={},
    )
    return (
        f"a teacher task needs {wanted['cpu']:g} CPU, {wanted['gpu']:g} GPU ({SETTING}); the largest node has "
        f"{largest.get('CPU', 0.0):g} CPU, {largest.get('GPU', 0.0):g} GPU"
    )


def _wait(ref: ray.ObjectRef, wanted: dict[str, float], wait_s: float, what: str) -> Any:
    """The task's result; its error raised as it was raised in the task; a task no node can hold given up after
    ``wait_s``; a task the driver stops waiting for (Ctrl-C included) cancelled."""
    import ray

    from kdnas.resources import ResourcesUnavailable

    since: float | None = None
    said = 0.0
    try:
        while True:
            now = time.monotonic()
            if _fits_a_node(wanted):
                since = None
            elif since is None:
                since = said = now
            elif now - since >= wait_s:
                raise ResourcesUnavailable(
                    f"{what}: no node could run the teacher task within search.resource_wait_s ({wait_s:g} s): "
                    f"{_missing(wanted)}"
                )
            elif now - said >= SAY_EVERY_S:
                logger.warning("%s: waiting %.0f s for a node: %s", what, now - since, _missing(wanted))
                said = now
            if ray.wait([ref], timeout=_POLL_S)[0]:
                return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause
        if isinstance(cause, ConfigError):
            raise cause from None  # one line, as on the driver
        logger.error("%s failed in its Ray task:\n%s", what, err)
        raise (cause if isinstance(cause, Exception) else err) from None
    except BaseException:
        ray.cancel(ref, force=True)
        raise
