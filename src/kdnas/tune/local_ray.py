"""What a driver's local Ray leaves behind when the driver is killed, and its removal by the next search.

``ray.init()`` ties the GCS, the raylet and Ray's monitors to the driver (they die with it), and workers exit
within seconds of their raylet. The raylet's two agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) also
notice at once, but then wait up to 60 s to report the death to the GCS, which died too. So :func:`record` writes,
for each local Ray a driver starts, the driver and the node's processes (pid and start time, which name a process
even after its pid is reused) to ``<output_dir>/ray_sessions/<host>-<pid>.json``, and :func:`stop_leftovers`, at
the start of the next search into that output directory, stops those still running whose driver is gone. Nothing
else is touched: not a live driver's Ray, not a cluster a driver joined. Reads ``/proc``: elsewhere than on Linux,
both do nothing.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from kdnas.ray_session import ray_init

logger = logging.getLogger(__name__)

RECORDS = "ray_sessions"
"""The folder of ``output_dir`` holding one record per driver that started a local Ray."""
PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    """One process as ``/proc`` shows it."""

    pid: int
    ppid: int
    start: int
    """Clock ticks from boot to its start: with the pid, it names one process of this boot."""
    running: bool
    """False for a zombie (exited, not yet reaped)."""
    args: tuple[str, ...]


def read_process(pid: int, proc: Path = PROC) -> Process | None:
    """Process ``pid`` as ``proc`` shows it, or None when there is none."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        args = (proc / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces and parentheses
    return Process(pid, int(fields[1]), int(fields[19]), fields[0] not in ("Z", "X"), tuple(a for a in args if a))


def processes(proc: Path = PROC) -> list[Process]:
    """Every process ``proc`` shows (those that exit meanwhile are left out)."""
    found = (read_process(int(entry.name), proc) for entry in proc.iterdir() if entry.name.isdigit())
    return [p for p in found if p is not None]


def _names_dir(args: tuple[str, ...], directory: str) -> bool:
    """Whether a command line has an argument that is (or lies under) ``directory``, e.g. ``--session-dir=D``."""
    return any(f"{directory}/" in f"{arg}/" for arg in args)


def _node_processes(driver: int, session_dir: str, table: list[Process]) -> list[Process]:
    """The processes of the Ray node at ``session_dir`` that ``driver`` started: its children that name the
    session's directory (GCS, raylet, monitors) and all their descendants (agents, workers)."""
    found = [p for p in table if p.ppid == driver and _names_dir(p.args, session_dir)]
    frontier = {p.pid for p in found}
    while frontier:
        children = [p for p in table if p.ppid in frontier]
        found += children
        frontier = {p.pid for p in children}
    return found


def boot_id(proc: Path = PROC) -> str:
    """This boot's id (a new one at every boot), or "" when ``proc`` has none."""
    try:
        return (proc / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return ""


def record(output_dir: Path, session_dir: Path, proc: Path = PROC) -> Path | None:
    """Record the Ray node at ``session_dir`` in ``output_dir`` if this process started it; the record's path, or
    None when there is nothing to record (a Ray this process joined, or no ``/proc``)."""
    me = read_process(os.getpid(), proc)
    if me is None:
        return None
    node = _node_processes(me.pid, str(session_dir), processes(proc))
    if not node:
        return None
    path = output_dir / RECORDS / f"{socket.gethostname()}-{me.pid}.json"
    path.parent.mkdir(exist_ok=True)
    session = {
        "boot_id": boot_id(proc),
        "driver": [me.pid, me.start],
        "session_dir": str(session_dir),
        "processes": [[p.pid, p.start] for p in node],
    }
    path.write_text(json.dumps(session))
    return path


def leftovers(session: dict[str, Any], proc: Path = PROC) -> list[Process] | None:
    """The recorded processes of ``session`` (see :func:`record`) still running if its driver is gone; None when
    the driver still runs or the record is from another machine or boot."""
    if session["boot_id"] != boot_id(proc):
        return None
    driver = read_process(session["driver"][0], proc)
    if driver is not None and driver.running and driver.start == session["driver"][1]:
        return None
    found = ((read_process(pid, proc), start) for pid, start in session["processes"])
    return [p for p, start in found if p is not None and p.running and p.start == start]


def stop_leftovers(output_dir: Path, proc: Path = PROC) -> list[int]:
    """SIGKILL what is left of each local Ray recorded in ``output_dir`` whose driver is gone (one log line per
    session that left any) and drop those records; the pids stopped."""
    stopped = []
    for path in sorted((output_dir / RECORDS).glob("*.json")):
        try:
            session = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # half written by a starting driver, or removed by another one
        left = leftovers(session, proc)
        if left is None:
            continue
        killed = [p for p in left if _kill(p.pid)]
        if killed:
            logger.info(
                "stopped %d process(es) left by the local Ray of driver %d, which is gone (%s): %s",
                len(killed),
                session["driver"][0],
                session["session_dir"],
                ", ".join(f"{p.pid} {Path(p.args[0]).name if p.args else '?'}" for p in killed),
            )
        stopped += [p.pid for p in killed]
        path.unlink(missing_ok=True)
    return stopped


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def init_ray(address: str | None, output_dir: Path | None = None) -> None:
    """Connect to the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start a quiet local Ray; with
    ``output_dir``, a local Ray this process starts is recorded there, so that the next search stops what is left
    of it if this driver is killed."""
    if address or os.environ.get("RAY_ADDRESS"):
        if not ray.is_initialized():  # joined already to run the teachers (kdnas.teachers.tasks)
            ray_init(address=address)
        return
    ray_init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    if output_dir is not None:
        context = ray.get_runtime_context()
        record(output_dir, Path(context.get_temp_dir()) / context.get_session_name())
