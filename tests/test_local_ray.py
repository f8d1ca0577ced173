"""What a killed driver's local Ray leaves behind: which processes are recorded, which are stopped (no Ray)."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kdnas.tune import local_ray

SESSION = "/tmp/ray/session_2026-01-01_00-00-00_000000_7"
ME = os.getpid()


def fake_proc(root: Path, table: dict[int, tuple[int, int, str, list[str]]], boot: str = "boot-1") -> Path:
    """A ``/proc`` holding ``table`` (pid → ppid, start, state, command line) and a boot id."""
    for pid, (ppid, start, state, args) in table.items():
        (root / str(pid)).mkdir(parents=True)
        # the command name in parentheses may itself hold ") ", as a process title can
        (root / str(pid) / "stat").write_text(f"{pid} (ray::A) x) {state} {ppid} " + "0 " * 17 + f"{start} 0 0\n")
        (root / str(pid) / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in args))
    (root / "sys" / "kernel" / "random").mkdir(parents=True)
    (root / "sys" / "kernel" / "random" / "boot_id").write_text(boot + "\n")
    return root


def test_record_keeps_the_node_this_process_started_and_nothing_else(tmp_path):
    proc = fake_proc(
        tmp_path / "proc",
        {
            ME: (1, 100, "R", ["python", "-m", "kdnas.cli", "search"]),
            201: (ME, 101, "S", ["/venv/ray/core/src/ray/gcs/gcs_server", f"--session-dir={SESSION}"]),
            202: (ME, 102, "S", ["/venv/ray/core/src/ray/raylet/raylet", f"--store_socket_name={SESSION}/sockets/p"]),
            203: (202, 103, "S", ["ray::DashboardAgent"]),  # titles hide the session: found as the raylet's
            204: (202, 104, "S", ["ray::IDLE"]),
            205: (204, 105, "S", ["python", "-c", "..."]),
            301: (ME, 106, "S", ["python", "-c", "a child of the driver that is no Ray"]),
            302: (301, 107, "S", ["ray::IDLE"]),
            401: (ME, 108, "S", ["raylet", f"--session_dir={SESSION}1"]),  # another session, a longer name
            501: (1, 109, "S", ["raylet", f"--session_dir={SESSION}"]),  # not this driver's child
        },
    )
    out = tmp_path / "out"
    out.mkdir()
    path = local_ray.record(out, Path(SESSION), proc)
    assert path == out / local_ray.RECORDS / f"{socket.gethostname()}-{ME}.json"
    session = json.loads(path.read_text())
    assert session["boot_id"] == "boot-1" and session["driver"] == [ME, 100] and session["session_dir"] == SESSION
    assert sorted(map(tuple, session["processes"])) == [(201, 101), (202, 102), (203, 103), (204, 104), (205, 105)]
    # a Ray this process joined (no child of its names the session) is not recorded
    path.unlink()
    assert local_ray.record(out, Path("/tmp/ray/session_of_a_cluster"), proc) is None
    assert not list((out / local_ray.RECORDS).iterdir())


def test_leftovers_are_the_recorded_processes_still_running_once_the_driver_is_gone(tmp_path):
    session = {"boot_id": "boot-1", "driver": [700, 50], "session_dir": SESSION}
    session["processes"] = [[201, 10], [203, 11], [204, 12], [205, 13], [206, 14]]
    others = {
        203: (1, 11, "S", ["ray::DashboardAgent"]),  # left behind
        204: (1, 99, "S", ["ray::IDLE"]),  # pid reused by another process
        205: (1, 13, "Z", []),  # exited, not yet reaped
        206: (1, 14, "S", ["ray::RuntimeEnvAgent"]),  # left behind
    }  # 201 is gone
    alive = fake_proc(tmp_path / "alive", {700: (1, 50, "S", ["kdnas"]), **others})
    assert local_ray.leftovers(session, alive) is None
    for name, driver in {"reused": (1, 51, "S", ["other"]), "zombie": (1, 50, "Z", []), "gone": None}.items():
        proc = fake_proc(tmp_path / name, {**({700: driver} if driver else {}), **others})
        assert [p.pid for p in local_ray.leftovers(session, proc)] == [203, 206], name
    rebooted = fake_proc(tmp_path / "rebooted", others, boot="boot-2")  # or another machine: not judged here
    assert local_ray.leftovers(session, rebooted) is None


@pytest.mark.skipif(not local_ray.PROC.is_dir(), reason="reads /proc (Linux)")
def test_stop_leftovers_kills_what_a_dead_driver_left_and_nothing_of_a_live_one(tmp_path, caplog):
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    left, spared = subprocess.Popen(sleeper), subprocess.Popen(sleeper)
    dead = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        identity = {p.pid: [p.pid, local_ray.read_process(p.pid).start] for p in (left, spared, dead)}
        identity[ME] = [ME, local_ray.read_process(ME).start]
        dead.communicate()
        records = tmp_path / local_ray.RECORDS
        records.mkdir()
        for name, driver, process in (("dead", dead.pid, left.pid), ("live", ME, spared.pid)):
            session = {"boot_id": local_ray.boot_id(), "driver": identity[driver], "session_dir": SESSION}
            (records / f"{name}.json").write_text(json.dumps({**session, "processes": [identity[process]]}))
        with caplog.at_level(logging.INFO, logger="kdnas"):
            assert local_ray.stop_leftovers(tmp_path) == [left.pid]
        assert left.wait(timeout=30) == -signal.SIGKILL and spared.poll() is None
        assert sorted(p.name for p in records.iterdir()) == ["live.json"]
        assert f"stopped 1 process(es) left by the local Ray of driver {dead.pid}, which is gone ({SESSION})" in (
            caplog.text
        )
        assert local_ray.stop_leftovers(tmp_path) == []  # the live driver's Ray stays
    finally:
        for p in (left, spared):
            p.kill()
            p.wait()
