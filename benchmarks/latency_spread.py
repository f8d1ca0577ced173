"""Latency spread during a search: the same 3 architectures timed again and again while 2 trials train.

A real search (the built-in demo task and teachers, early stopping off, two trials at a time, one CPU each) runs
in a subprocess. Once both trials train, this process times 3 fixed student architectures in rounds, each round
measuring every architecture twice, interleaved: once alone on the node (``latency.isolate: true``, the default:
no training step runs on the machine during the measurement) and once beside the training students
(``latency.isolate: false``). Each measurement is taken as in a search (``latency.runs``, ``latency.min_run_time_s``).

The spread of one architecture is (slowest median − fastest median) ÷ the median of its medians over the rounds
(also reported: their interquartile range ÷ median). Target: spread ≤ 5 % for every architecture when isolated.
Before the search starts, the same rounds are taken with nothing of kdnas running (``quiet``): the machine's own
floor, which no isolation inside a search can go below. Also reported: the spread of what ``kdnas retime`` (run at
the end of every search) would record from these measurements, the fastest of each 3 consecutive rounds.

    python benchmarks/latency_spread.py [--rounds 18] [--output-dir runs/bench-latency] [--device cuda]

With ``--device cuda`` every measurement is taken on the GPU (``latency.device: cuda``, CUDA-synchronised) while the
two trials train on that GPU (half of it each): like with like on a GPU node. Without CUDA it fails at the first
measurement (``latency.device is 'cuda' but no CUDA device is available``).

Writes ``benchmarks/results/latency_spread.json``. The first run fits the demo teachers (a few minutes on a
2-core machine; later runs reuse them).
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kdnas
from _common import REPO, write_result

NAME = "latency_spread"
TARGET_PCT = 5.0
ARCHS = [(1, 2, 32, 2), (2, 4, 32, 2), (4, 8, 32, 4)]  # layers, heads, head_dim, ffn_ratio
RETIME_ROUNDS = inspect.signature(kdnas.retime_study).parameters["rounds"].default  # `kdnas retime`'s default


def spread_pct(medians: list[float]) -> float:
    """(max − min) ÷ median, in percent."""
    return 100.0 * (max(medians) - min(medians)) / statistics.median(medians)


def iqr_pct(medians: list[float]) -> float:
    """The interquartile range ÷ the median, in percent."""
    low, _, high = statistics.quantiles(medians, n=4)
    return 100.0 * (high - low) / statistics.median(medians)


def retimed(medians: list[float], rounds: int) -> list[float]:
    """What ``kdnas retime`` would record from these measurements: the fastest of each ``rounds`` consecutive ones."""
    return [kdnas.fastest_round(medians[i : i + rounds]) for i in range(0, len(medians) - rounds + 1, rounds)]


def wait_for_training(url: str, name: str, search: subprocess.Popen, timeout_s: float) -> None:
    """Until two trials of the study are RUNNING (the search's teachers are fitted and its students train)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if search.poll() is not None:
            sys.exit(f"{NAME}: the search ended (exit {search.returncode}) before two trials trained")
        try:
            study = kdnas.load_study(url, name)
            if len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) >= 2:
                return
        except Exception:  # the study does not exist until the teachers are ready
            pass
        time.sleep(2)
    sys.exit(f"{NAME}: no two trials trained within {timeout_s:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=18)
    parser.add_argument("--output-dir", default=str(REPO / "runs" / "bench-latency"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / f"{NAME}.json"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where models are timed and trained")
    args = parser.parse_args()
    on_gpu = ["search.resources_per_trial.gpu=0.5"] if args.device == "cuda" else []
    name = f"latency-spread-{uuid.uuid4().hex[:6]}"
    overrides = [
        "search.n_trials=200",
        "search.max_concurrent_trials=2",
        "search.resources_per_trial.cpu=1",
        "search.early_stopping.mode='off'",
        "latency.retime=false",
        "training.epochs=6",
        f"latency.device={args.device}",
        *on_gpu,
    ]
    config = kdnas.load_config(None, [f"output_dir={args.output_dir}", f"search.study_name={name}", *overrides])
    archs = [kdnas.StudentArch(*arch) for arch in ARCHS]
    device = f"latency.device={args.device}"
    quiet_config = kdnas.load_config(None, ["latency.isolate=true", device])
    quiet: dict[str, list[float]] = {a.summary: [] for a in archs}
    for _ in range(args.rounds):  # the machine's own floor: nothing of kdnas runs beside the measurements
        for arch in archs:
            quiet[arch.summary].append(kdnas.measure_architecture(quiet_config, arch).median_ms)
    command = [sys.executable, "-m", "kdnas.cli", "search", "--output-dir", args.output_dir, "--study-name", name]
    search = subprocess.Popen([*command, *[a for o in overrides for a in ("--set", o)]], stdout=subprocess.DEVNULL)
    try:
        wait_for_training(config.storage_url, name, search, 1200)
        time.sleep(5)  # past the trials' own latency measurement, into their training
        settings = {
            True: kdnas.load_config(None, ["latency.isolate=true", device]),
            False: kdnas.load_config(None, ["latency.isolate=false", device]),
        }
        medians: dict[bool, dict[str, list[float]]] = {mode: {a.summary: [] for a in archs} for mode in settings}
        waits: list[float] = []
        for round_number in range(args.rounds):
            for arch in archs:
                for isolate, mode_config in settings.items():
                    started = time.perf_counter()
                    result = kdnas.measure_architecture(mode_config, arch)
                    medians[isolate][arch.summary].append(result.median_ms)
                    if isolate:
                        waits.append(time.perf_counter() - started)
            running = len(
                kdnas.load_study(config.storage_url, name).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            )
            print(f"round {round_number + 1}/{args.rounds}: {running} trials training", flush=True)
            time.sleep(1)
    finally:
        search.terminate()
        search.wait(timeout=120)
    rows = {
        arch: {
            "quiet_spread_pct": round(spread_pct(quiet[arch]), 2),
            "isolated_spread_pct": round(spread_pct(medians[True][arch]), 2),
            "retimed_spread_pct": round(spread_pct(retimed(medians[True][arch], RETIME_ROUNDS)), 2),
            "quiet_retimed_spread_pct": round(spread_pct(retimed(quiet[arch], RETIME_ROUNDS)), 2),
            "beside_training_spread_pct": round(spread_pct(medians[False][arch]), 2),
            "isolated_iqr_pct": round(iqr_pct(medians[True][arch]), 2),
            "beside_training_iqr_pct": round(iqr_pct(medians[False][arch]), 2),
            "quiet_median_ms": round(statistics.median(quiet[arch]), 4),
            "isolated_median_ms": round(statistics.median(medians[True][arch]), 4),
            "beside_training_median_ms": round(statistics.median(medians[False][arch]), 4),
            "quiet_medians_ms": [round(m, 4) for m in quiet[arch]],
            "isolated_medians_ms": [round(m, 4) for m in medians[True][arch]],
            "beside_training_medians_ms": [round(m, 4) for m in medians[False][arch]],
        }
        for arch in medians[True]
    }
    worst_isolated = max(r["isolated_spread_pct"] for r in rows.values())
    worst_beside = max(r["beside_training_spread_pct"] for r in rows.values())
    worst_quiet = max(r["quiet_spread_pct"] for r in rows.values())
    worst_retimed = max(r["retimed_spread_pct"] for r in rows.values())
    worst_quiet_retimed = max(r["quiet_retimed_spread_pct"] for r in rows.values())
    payload = {
        "rounds": args.rounds,
        "retimed": f"the fastest of each {RETIME_ROUNDS} consecutive rounds (kdnas.fastest_round)",
        "concurrent_trials": 2,
        "latency_settings": settings[True].latency.model_dump(
            include={"device", "batch_size", "threads", "warmup", "runs", "min_run_time_s"}
        ),
        "architectures": rows,
        "worst_isolated_spread_pct": worst_isolated,
        "worst_beside_training_spread_pct": worst_beside,
        "worst_quiet_spread_pct": worst_quiet,
        "worst_retimed_spread_pct": worst_retimed,
        "worst_quiet_retimed_spread_pct": worst_quiet_retimed,
        "isolated_measurement_seconds_median": round(statistics.median(waits), 3),
        "target_pct": TARGET_PCT,
        "met": worst_isolated <= TARGET_PCT,
    }
    out = write_result(args.out, payload)
    print(
        f"{NAME}: worst spread isolated {worst_isolated:.1f} % vs beside training {worst_beside:.1f} % "
        f"(the machine with no search running: {worst_quiet:.1f} %); as `kdnas retime` records them (fastest of "
        f"{RETIME_ROUNDS} rounds): {worst_retimed:.1f} % (no search running: {worst_quiet_retimed:.1f} %) "
        f"(target ≤ {TARGET_PCT:g} %: {'met' if payload['met'] else 'NOT met'}); {out}"
    )


if __name__ == "__main__":
    main()
