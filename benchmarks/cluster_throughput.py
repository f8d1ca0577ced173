"""Cluster throughput: trials per minute of the same search on a local Ray and on a two-node Ray cluster.

Both arms run on this machine with the same budget and the same resources: (a) ``run_search`` starts a local Ray
(all of this machine's CPUs); (b) a cluster of two nodes started with ``ray start`` (``--head`` and ``--address``,
``--num-cpus 1`` each, token authentication off as for a local test cluster) that ``run_search`` joins
(``search.ray_address``). Two trials at a time, one CPU each, early stopping off, each arm its own study (SQLite) in
one output directory under ``runs/bench-cluster/``. The teachers are fitted, their logits and importance cached
before any clock starts (a one-off per study), and the latency cache (``<output_dir>/cache/latency``) is emptied
before each arm, so each arm measures its students afresh as a first search does.

Per arm: the wall time of the ``run_search`` call (driver set-up, starting or joining Ray, the trials, the re-timing
at the end), the search phase (first trial started → last trial told, from the study) and trials per minute over
each; trials per node on the cluster. Starting the cluster is timed apart (a cluster is up before a search).

    python benchmarks/cluster_throughput.py [--data DIR] [--trials 6] [--train-samples 400] [--epochs 1]
        [--repeats 2]

With ``--repeats 2`` (the default) the arms run local, cluster, cluster, local, so that a drift of the machine's
load falls on both; the summary is each arm's median. About 5 minutes on 2 cores.

Writes ``benchmarks/results/cluster_throughput.json`` and prints one line per arm.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kdnas
from _common import REPO, add_common_args, require_sst2, sst2_sections, write_result

NAME = "cluster_throughput"


def search_config(data: Path, args: argparse.Namespace, output_dir: Path, study_name: str) -> dict[str, Any]:
    """A small real search: one teacher, small students, early stopping off, two trials at a time, one CPU each."""
    return {
        "output_dir": str(output_dir),
        **sst2_sections(data, args.train_samples, teacher_epochs=1.0, gpt2_teacher=False),
        "student": {
            "space": {"depth": {"min": 1, "max": 3}, "heads": [2, 4], "head_dim": [16, 32], "ffn_ratio": [1, 2, 4]}
        },
        "training": {"epochs": args.epochs, "seed": args.seed},
        "search": {
            "study_name": study_name,
            "n_trials": args.trials,
            "seed": args.seed,
            "max_concurrent_trials": 2,
            "resources_per_trial": {"cpu": 1},
            "early_stopping": {"mode": "off"},
        },
    }


# --- a two-node cluster on this machine ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_cluster(temp_dir: Path) -> tuple[str, list[int]]:
    """A head and a worker node, 1 CPU each: (address, the nodes' session ids)."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    sessions = []
    for args in (
        ["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", str(temp_dir)],
        ["--address", address],
    ):
        sessions.append(_start_node(args))
    return address, sessions


def _start_node(args: list[str]) -> int:
    """``ray start args --num-cpus 1`` in a new session; that session's id (the ``ray start`` pid), which every
    process of the node keeps."""
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    node = subprocess.Popen(
        [ray_cli, "start", *args, "--num-cpus", "1", "--disable-usage-stats"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output, _ = node.communicate(timeout=180)
    if node.returncode != 0:
        stop_sessions([node.pid])
        raise SystemExit(f"{NAME}: `ray start {' '.join(args)}` failed:\n{output[-2000:]}")
    return node.pid


def _session_processes(session: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[3]) == session:
                pids.append(int(entry.name))
    return pids


def stop_sessions(sessions: list[int], timeout: float = 30.0) -> None:
    """SIGKILL every process of ``sessions`` (the nodes this script started, nothing else) until none is left."""
    deadline = time.monotonic() + timeout
    while left := [pid for session in sessions for pid in _session_processes(session)]:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{NAME}: processes {left} of the cluster would not exit")
        time.sleep(0.2)


# --- one arm -------------------------------------------------------------------------------------------------------


def node_id(trial: Any) -> str:
    """The start of the id of the Ray node ``trial``'s student trained on (``?``: not recorded)."""
    node = kdnas.StudentRecord.of(trial).node
    return ((node.id if node else None) or "?")[:8]


def run_arm(raw: dict[str, Any], arm: str, address: str | None) -> dict[str, Any]:
    """One search of ``raw`` (on the cluster at ``address``, else a local Ray) and its throughput figures."""
    raw = {**raw, "search": {**raw["search"], "ray_address": address}}
    config = kdnas.load_config(raw)
    shutil.rmtree(Path(config.output_dir) / "cache" / "latency", ignore_errors=True)  # measured afresh
    started = time.perf_counter()
    study = kdnas.run_search(config)
    wall = time.perf_counter() - started
    ray.shutdown()  # a local Ray stops; the driver leaves a cluster

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    trained = [t for t in trials if t.state.name == "COMPLETE" and not kdnas.is_repeat(t)]
    timed = [t for t in trained if t.datetime_start and t.datetime_complete]
    phase = max(t.datetime_complete.timestamp() for t in timed) - min(t.datetime_start.timestamp() for t in timed)
    compute = sum(kdnas.training_seconds(t) for t in trained)
    nodes = Counter(node_id(t) for t in trained)
    result = {
        "arm": arm,
        "study": config.search.study_name,
        "wall_s": wall,
        "search_phase_s": phase,
        "trained": len(trained),
        "repeats": sum(kdnas.is_repeat(t) for t in trials),
        "states": dict(Counter(t.state.name for t in trials)),
        "trials_per_minute_wall": len(trained) / wall * 60,
        "trials_per_minute_search": len(trained) / phase * 60,
        "compute_s": compute,
        "slot_utilisation": compute / (2 * phase),
        "median_trial_s": statistics.median(kdnas.training_seconds(t) for t in trained),
        "trials_per_node": dict(nodes),
    }
    print(
        f"{NAME}: {arm}: {len(trained)} trials in {wall:.1f} s wall ({result['trials_per_minute_wall']:.2f}/min), "
        f"search phase {phase:.1f} s ({result['trials_per_minute_search']:.2f}/min), nodes {dict(nodes)}",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, name=NAME, train_samples=400)
    parser.add_argument("--trials", type=int, default=6, help="trials per arm (default 6)")
    parser.add_argument("--epochs", type=int, default=1, help="student epochs (default 1)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each arm, alternating (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="sampler and training seed")
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "bench-cluster"))
    args = parser.parse_args(argv)
    data = require_sst2(NAME, args.data)
    torch.set_num_threads(1)
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the local test cluster runs without tokens; the local arm alike

    stamp = time.strftime("%Y%m%d-%H%M%S")
    output_dir = (Path(args.runs_dir) / stamp).resolve()
    raw = search_config(data, args, output_dir, f"cluster-throughput-{stamp}")
    started = time.perf_counter()
    kdnas.prepare_students(kdnas.load_config(raw))  # teachers fitted, logits and importance cached: before the clocks
    teacher_seconds = time.perf_counter() - started

    temp_dir = Path(tempfile.mkdtemp(prefix="kdnas-bench-ray-"))  # short: Ray's socket paths live in it
    started = time.perf_counter()
    address, sessions = start_cluster(temp_dir)
    cluster_start_s = time.perf_counter() - started
    runs = []
    try:
        for repeat in range(args.repeats):
            order = [("local", None), ("cluster", address)]
            for arm, where in order if repeat % 2 == 0 else order[::-1]:
                arm_raw = {
                    **raw,
                    "search": {**raw["search"], "study_name": f"{raw['search']['study_name']}-{arm}{repeat}"},
                }
                runs.append({"repeat": repeat, **run_arm(arm_raw, arm, where)})
    finally:
        stop_sessions(sessions)
        shutil.rmtree(temp_dir, ignore_errors=True)

    summary = {}
    for arm in ("local", "cluster"):
        mine = [r for r in runs if r["arm"] == arm]
        summary[arm] = {
            key: statistics.median(r[key] for r in mine)
            for key in ("trials_per_minute_wall", "trials_per_minute_search", "wall_s", "search_phase_s")
        }
    ratio = summary["cluster"]["trials_per_minute_search"] / summary["local"]["trials_per_minute_search"]
    path = write_result(
        args.out,
        {
            "benchmark": NAME,
            "summary": summary,
            "cluster_over_local_search_phase": ratio,
            "cluster_start_s": cluster_start_s,
            "teacher_seconds_before_clock": teacher_seconds,
            "runs": runs,
            "seeds": {"sampler": args.seed, "training": args.seed},
            "args": vars(args),
            "output_dir": str(output_dir),
            "config": kdnas.load_config(raw).model_dump(mode="json"),
        },
    )
    print(
        f"{NAME}: trials/min (search phase) local {summary['local']['trials_per_minute_search']:.2f}, two-node "
        f"cluster {summary['cluster']['trials_per_minute_search']:.2f} (x{ratio:.2f}); wall local "
        f"{summary['local']['wall_s']:.1f} s, cluster {summary['cluster']['wall_s']:.1f} s; cluster started in "
        f"{cluster_start_s:.1f} s; {path}"
    )


if __name__ == "__main__":
    main()
