"""GPU readiness: a demo-size search on one CUDA GPU, 4 students packed on it at once, latency timed on CUDA.

The built-in demo (``examples/demo.yaml``: two teachers, 8 students of 2 epochs on 3,000 labelled and 10,000 transfer
sentences) with every trial given a quarter of the GPU (``search.resources_per_trial.gpu: 0.25``,
``search.max_concurrent_trials: 4``), latency measured on CUDA (``latency.device: cuda``, with synchronisation, at
``latency.batch_size``) and ``training.precision: auto`` (bf16 where the GPU has it, else fp16). Everything goes
into a fresh output directory under ``runs/gpu-check/``; teachers are fitted there first, and their time is
reported apart from the search's.

    bash benchmarks/gpu_check.sh [--trials 8] [--concurrent 4] [--gpu-per-trial 0.25] [--time-budget-s 300]

Writes ``benchmarks/results/gpu_check.json``: the GPU, timings, trials per minute, the teachers' and the front's
latency, and the checks below; prints one summary line. Exits 1 with one line on stderr when CUDA is absent (the
check fails, it is never skipped), and 1 when a check fails: no trial failed, every student trained and was timed
on CUDA in mixed precision, the teachers were fitted on CUDA in mixed precision, ``--concurrent`` trials ran at once,
the whole run took at most ``--target-s`` seconds.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

NAME = "gpu_check"
REPO = Path(__file__).resolve().parents[1]


def fail(message: str) -> None:
    """One line on stderr, exit 1."""
    print(f"{NAME}: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def require_cuda() -> Any:
    """torch, once CUDA is known to be usable; else fail (the check is about the GPU: no GPU, no pass)."""
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        fail(f"CUDA is not available (torch {torch.__version__}, {build}): this check needs one NVIDIA GPU")
    return torch


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one time."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = running = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def front_row(trial: Any, metric: str) -> dict[str, Any]:
    """A front student's row of the result: its values, its latency's detail, where and how it trained."""
    import kdnas

    record = kdnas.StudentRecord.of(trial)
    latency = record.latency
    return {
        "trial": trial.number,
        "arch": record.arch_summary,
        metric: trial.values[0],
        "latency_ms": trial.values[1],
        "latency_p90_ms": latency.p90_ms if latency else None,
        "latency_device": latency.device if latency else None,
        "train_device": record.train_device,
        "train_precision": record.train_precision,
        "training_s": kdnas.training_seconds(trial),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="students (default 8, the demo's)")
    parser.add_argument("--concurrent", type=int, default=4, help="students training at once (default 4)")
    parser.add_argument("--gpu-per-trial", type=float, default=0.25, help="GPU fraction per student (default 0.25)")
    parser.add_argument("--time-budget-s", type=float, default=300.0, help="search.time_budget_s (default 300)")
    parser.add_argument("--target-s", type=float, default=480.0, help="the whole check's time limit (default 480)")
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "gpu-check"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / f"{NAME}.json"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch = require_cuda()

    import ray
    from optuna.trial import TrialState

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import kdnas
    from _common import write_result

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output_dir = (Path(args.runs_dir) / stamp).resolve()
    config = kdnas.load_config(
        REPO / "examples" / "demo.yaml",
        [
            f"output_dir={output_dir}",
            f"search.study_name=gpu-check-{stamp}",
            f"search.n_trials={args.trials}",
            f"search.max_concurrent_trials={args.concurrent}",
            f"search.resources_per_trial={{cpu: 1, gpu: {args.gpu_per_trial}}}",
            f"search.time_budget_s={args.time_budget_s}",
            "latency.device=cuda",
            "training.precision=auto",
        ],
    )
    cuda = torch.device("cuda")
    properties = torch.cuda.get_device_properties(cuda)

    step = time.perf_counter()
    task = kdnas.load_task(config.data)
    kdnas.fit_teachers(config, task)
    kdnas.teacher_reference(config, task, output_dir / "cache")  # the train split's logits and the teachers' latency
    teachers_s = time.perf_counter() - step

    step = time.perf_counter()
    study = kdnas.run_search(config)
    search_s = time.perf_counter() - step
    ray.shutdown()
    total_s = time.perf_counter() - started

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)}
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    spans = [
        (t.datetime_start.timestamp(), t.datetime_complete.timestamp())
        for t in trials
        if t.datetime_start and t.datetime_complete
    ]
    trained = [kdnas.StudentRecord.of(t) for t in trials if t.state == TrialState.COMPLETE and not kdnas.is_repeat(t)]
    timed = [(r.train_started_at, r.train_finished_at) for r in trained]
    trials_phase_s = (max(e for _, e in spans) - min(s for s, _ in spans)) if spans else 0.0
    front = [front_row(t, task.metric) for t in kdnas.pareto_front(study)]
    study_record = kdnas.StudyRecord.of(study)
    references = study_record.teachers or []
    fits = {r.name: r.ran_on.fit for r in references if r.ran_on and r.ran_on.fit}  # how the teachers fitted here ran
    teachers = [
        {
            "name": r.name,
            task.metric: r.value,
            "latency_ms": r.latency_ms,
            "latency_device": r.latency.device if r.latency else None,
            "fit": fits[r.name].to_attrs() if r.name in fits else None,  # device and precision of its fitting
        }
        for r in references
    ]
    failures = {t.number: kdnas.StudentRecord.of(t).failure_reason for t in trials if t.state == TrialState.FAIL}
    checks = {
        "no_trial_failed": not failures,
        "some_student_completed": bool(trained),
        "students_trained_on_cuda": bool(trained)
        and all(str(r.train_device or "").startswith("cuda") for r in trained),
        "students_in_mixed_precision": bool(trained) and all(r.train_precision in ("bf16", "fp16") for r in trained),
        "teachers_fitted_on_cuda_in_mixed_precision": bool(fits)
        and all(str(f.device).startswith("cuda") and f.precision in ("bf16", "fp16") for f in fits.values()),
        "latency_timed_on_cuda": bool(front) and all(x["latency_device"] == "cuda" for x in [*front, *teachers]),
        f"{min(args.concurrent, args.trials)}_trials_at_once": max_overlap(spans) >= min(args.concurrent, args.trials),
        f"within_{args.target_s:g}_s": total_s <= args.target_s,
    }
    payload = {
        "benchmark": NAME,
        "ok": all(checks.values()),
        "checks": checks,
        "device": {
            "name": properties.name,
            "memory_gib": round(properties.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "native_bf16": torch.cuda.is_bf16_supported(including_emulation=False),
        },
        "timings_s": {
            "total": total_s,
            "teachers_fit_and_logits": teachers_s,
            "search": search_s,
            "trials_phase": trials_phase_s,
            "training_sum": sum(e - s for s, e in timed),
        },
        "trials": {
            "n": len(trials),
            "states": states,
            "per_minute": len(finished) / (search_s / 60) if search_s else None,
            "per_minute_trials_phase": len(finished) / (trials_phase_s / 60) if trials_phase_s else None,
            "max_at_once": max_overlap(spans),
            "max_training_at_once": max_overlap(timed),
            "failures": failures,
        },
        "latency_settings": config.latency.model_dump(mode="json") | {"seq_len": config.latency_seq_len},
        "teachers": teachers,
        "front": front,
        # the front and teachers timed again at the end, where recorded
        "retimed": study_record.retimed.to_attrs() if study_record.retimed else None,
        "args": vars(args),
        "study": {"name": config.search.study_name, "output_dir": str(output_dir)},
    }
    path = write_result(args.out, payload)
    summary = (
        f"{properties.name}: {len(trials)} trials ({states}) in {search_s:.0f} s of search, "
        f"{payload['trials']['per_minute'] or 0:.2f} trials/min, {max_overlap(spans)} at once; "
        f"teachers {teachers_s:.0f} s; total {total_s:.0f} s; front {len(front)} students; wrote {path}"
    )
    print(f"{NAME}: {summary}")
    if not payload["ok"]:
        fail(f"checks failed: {', '.join(k for k, v in checks.items() if not v)} (see {path})")


if __name__ == "__main__":
    main()
