"""P4, anytime: hypervolume against the compute spent, early stopping off vs on, and kdnas's samplers, on SST-2.

Every arm runs the same search (default initialisation: students inherit from the fine-tuned MiniLM and learn from
its soft labels on the augmented transfer set) for ``--time-budget-s`` seconds of trials, once per seed, in one
output directory (teachers fitted once, before any clock starts; teacher logits and latencies shared). For each
run the curve is the hypervolume of the students finished so far against the **cumulative compute seconds** of all
trials up to that moment (a trial's compute is its wall time from ask to tell, so stopped students' cost counts;
repeats of a student the study holds cost 0). Objectives are normalised with a fixed reference: metric
``(m − majority) / (1 − majority)`` (the majority-class accuracy of the dev set maps to 0) and latency divided by
the teacher's; reference point (0, 1), so the hypervolume is the share of the box "better than the majority
class and faster than the teacher" that the students dominate. Reported per run and per arm (mean over seeds):
the time to reach 90 % of the best-known hypervolume (the union of every run's students) and the area under the
curve up to the shortest run's total compute, divided by that horizon × the best-known hypervolume.

    python benchmarks/p4_early_stopping.py [--data DIR] [--seeds 0 1 2] [--time-budget-s 180] [--epochs 3]
        [--train-samples 500] [--teacher-epochs 5] [--arms tpe-off tpe-on nsga2 gp random]

Finished runs are journaled in ``<output-dir>/p4-runs.jsonl``: rerunning the command skips them. Writes
``benchmarks/results/p4_early_stopping.json`` and, with plotly and chromium at hand, the curves as HTML (in the
output dir) and PNG (``benchmarks/results/p4_early_stopping.png``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kdnas
from _common import REPO, add_common_args, fit_teachers_timed, require_sst2, sst2_sections, write_result

NAME = "p4_early_stopping"
SPEEDUP_TARGET = 1.3
FRACTION = 0.9
ARMS = {  # name -> (sampler, early stopping)
    "tpe-off": ("tpe", "off"),
    "tpe-on": ("tpe", "on"),
    "nsga2": ("nsga2", "on"),
    "gp": ("gp", "on"),
    "random": ("random", "on"),
}


def search_config(data: Path, args: argparse.Namespace, arm: str, seed: int) -> dict[str, Any]:
    sampler, stopping = ARMS[arm]
    return {
        "output_dir": str(Path(args.output_dir).resolve()),
        **sst2_sections(data, args.train_samples, args.teacher_epochs, gpt2_teacher=False),
        "training": {"epochs": args.epochs, "seed": seed},
        "latency": {"warmup": 2, "runs": 10},
        "search": {
            "study_name": f"p4-{arm}-seed{seed}",
            "n_trials": args.max_trials,
            "seed": seed,
            "sampler": sampler,
            "time_budget_s": args.time_budget_s,
            "early_stopping": {"mode": stopping},
        },
    }


def trial_span(trial: FrozenTrial, end: float) -> tuple[float, float] | None:
    """A trained trial's (ask, tell) in seconds since the epoch; None for a repeat (it trained nothing)."""
    if kdnas.is_repeat(trial) or trial.datetime_start is None:
        return None
    finished = trial.datetime_complete.timestamp() if trial.datetime_complete else end
    return trial.datetime_start.timestamp(), finished


def anytime_curve(study: optuna.Study, majority: float, teacher_ms: float) -> list[tuple[float, float]]:
    """``(cumulative compute s, normalised hypervolume)`` after each finished student, from (0, 0)."""
    trials = study.get_trials(deepcopy=False)
    end = max((t.datetime_complete.timestamp() for t in trials if t.datetime_complete), default=time.time())
    spans = [s for s in (trial_span(t, end) for t in trials) if s is not None]
    if not spans:
        return [(0.0, 0.0)]
    finished = sorted(
        (t.datetime_complete.timestamp(), normalise(t, majority, teacher_ms))
        for t in kdnas.feasible_completed(study)
        if not kdnas.is_repeat(t)
    )
    curve, points = [(0.0, 0.0)], []
    for moment, point in finished:
        points.append(point)
        compute = sum(max(0.0, min(stop, moment) - start) for start, stop in spans)
        curve.append((compute, kdnas.hypervolume(points, (0.0, 1.0))))
    total = sum(stop - start for start, stop in spans)
    curve.append((total, curve[-1][1]))
    return curve


def normalise(trial: FrozenTrial, majority: float, teacher_ms: float) -> tuple[float, float]:
    """(metric above the majority class as a share of what is left to 1, latency as a share of the teacher's)."""
    return (trial.values[0] - majority) / (1.0 - majority), trial.values[1] / teacher_ms


def time_to(curve: list[tuple[float, float]], level: float) -> float | None:
    """The compute at which ``curve`` first reaches ``level``; None when it never does."""
    return next((compute for compute, value in curve if value >= level), None)


def area(curve: list[tuple[float, float]], horizon: float) -> float:
    """The area under the step curve from 0 to ``horizon``."""
    total = 0.0
    for (x0, y0), (x1, _) in zip(curve, curve[1:] + [(horizon, 0.0)]):
        total += max(0.0, min(x1, horizon) - min(x0, horizon)) * y0
    return total


def plot(runs: dict[str, dict], level: float, html_path: Path, png_path: Path) -> str | None:
    """Draw every run's curve (one colour per arm) to HTML, and to PNG with headless chromium; the PNG's path."""
    import plotly.graph_objects as go

    colours = dict(zip(ARMS, ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f")))
    fig = go.Figure()
    for name, run in runs.items():
        xs, ys = zip(*run["curve"])
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"shape": "hv", "color": colours[run["arm"]], "dash": ["solid", "dash", "dot"][run["seed"] % 3]},
                name=name,
                legendgroup=run["arm"],
            )
        )
    fig.add_hline(y=level, line={"dash": "dot", "color": "black"}, annotation_text=f"{FRACTION:.0%} of best-known")
    fig.update_layout(
        title="P4: hypervolume against compute (SST-2; normalised, reference: majority class, teacher latency)",
        xaxis_title="cumulative compute (s)",
        yaxis_title="hypervolume",
        width=1100,
        height=600,
        template="plotly_white",
    )
    html_path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(html_path, include_plotlyjs=True)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return None
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={png_path}",
            "--window-size=1120,640",
            "--virtual-time-budget=5000",
            html_path.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    return str(png_path.relative_to(REPO)) if png_path.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, name=NAME, train_samples=500, output_dir="bench-p4")
    parser.add_argument("--time-budget-s", type=float, default=180.0, help="each run's search.time_budget_s")
    parser.add_argument("--max-trials", type=int, default=200, help="each run's trial cap (not meant to be reached)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--teacher-epochs", type=float, default=5.0, help="MiniLM fine-tuning epochs (on the same examples)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler and training seeds")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    args = parser.parse_args()
    data = require_sst2(NAME, args.data)
    output_dir = Path(args.output_dir).resolve()
    journal = output_dir / "p4-runs.jsonl"

    first = kdnas.load_config(search_config(data, args, args.arms[0], args.seeds[0]))
    task = kdnas.load_task(first.data)
    references, teacher_seconds = fit_teachers_timed(first, task)
    counts = Counter(task.labels("eval"))
    majority = max(counts.values()) / sum(counts.values())
    done = (
        {json.loads(line)["study"]: json.loads(line) for line in journal.read_text().splitlines()}
        if journal.exists()
        else {}
    )

    runs: dict[str, dict] = {}
    for seed in args.seeds:
        for arm in args.arms:
            config = kdnas.load_config(search_config(data, args, arm, seed))
            name = config.search.study_name
            if name not in done:
                started = time.perf_counter()
                kdnas.run_search(config)
                done[name] = {"study": name, "seconds": round(time.perf_counter() - started, 1)}
                with journal.open("a") as handle:
                    handle.write(json.dumps(done[name]) + "\n")
            study = kdnas.load_study(config.storage_url, name)
            trials = study.get_trials(deepcopy=False)
            runs[name] = {
                "arm": arm,
                "seed": seed,
                "seconds": done[name]["seconds"],
                "states": dict(Counter(t.state.name for t in trials)),
                "repeats": sum(kdnas.is_repeat(t) for t in trials),
                "stopped_early": sum("students of" in t.user_attrs.get("pruned_reason", "") for t in trials),
                "study": study,
            }
    teacher_ms = max(references, key=lambda r: r["value"])["latency_ms"]
    every_point = [
        normalise(t, majority, teacher_ms)
        for run in runs.values()
        for t in kdnas.feasible_completed(run["study"])
        if not kdnas.is_repeat(t)
    ]
    best = kdnas.hypervolume(every_point, (0.0, 1.0))
    for run in runs.values():
        run["curve"] = anytime_curve(run.pop("study"), majority, teacher_ms)
    horizon = min(run["curve"][-1][0] for run in runs.values())
    for run in runs.values():
        run["time_to_90"] = time_to(run["curve"], FRACTION * best)
        run["auc"] = area(run["curve"], horizon) / (horizon * best) if best and horizon else 0.0
        run["final_hypervolume"] = run["curve"][-1][1]

    arms = {}
    for arm in args.arms:
        mine = [r for r in runs.values() if r["arm"] == arm]
        reached = [r["time_to_90"] for r in mine if r["time_to_90"] is not None]
        arms[arm] = {
            "seeds": len(mine),
            "reached_90": len(reached),
            "time_to_90_mean_s": statistics.mean(
                r["time_to_90"] if r["time_to_90"] is not None else r["curve"][-1][0] for r in mine
            ),
            "auc_mean": statistics.mean(r["auc"] for r in mine),
            "final_hypervolume_mean": statistics.mean(r["final_hypervolume"] for r in mine),
            "stopped_early_mean": statistics.mean(r["stopped_early"] for r in mine),
        }
    speedup = None
    if "tpe-off" in arms and "tpe-on" in arms and best > 0 and arms["tpe-on"]["time_to_90_mean_s"] > 0:
        speedup = arms["tpe-off"]["time_to_90_mean_s"] / arms["tpe-on"]["time_to_90_mean_s"]
    png = plot(
        runs,
        FRACTION * best,
        output_dir / "p4_early_stopping.html",
        REPO / "benchmarks" / "results" / "p4_early_stopping.png",
    )
    path = write_result(
        args.out,
        {
            "benchmark": NAME,
            "target": f"time to {FRACTION:.0%} of the best-known hypervolume: stopping off / on >= {SPEEDUP_TARGET}",
            "definition": __doc__.split("\n\n")[0],
            "args": {
                **vars(args),
                "output_dir": str(Path(args.output_dir).resolve().relative_to(REPO))
                if Path(args.output_dir).resolve().is_relative_to(REPO)
                else args.output_dir,
                "data": None,
                "out": None,
            },
            "teacher_seconds": round(teacher_seconds, 1),
            "teacher": {k: v for k, v in max(references, key=lambda r: r["value"]).items() if k != "latency"},
            "majority_class_accuracy": majority,
            "best_known_hypervolume": best,
            "horizon_s": horizon,
            "speedup_time_to_90": speedup,
            "meets_target": speedup is not None and speedup >= SPEEDUP_TARGET,
            "arms": arms,
            "runs": runs,
            "plot": png,
            "config": first.model_dump(mode="json"),
        },
    )
    table = "; ".join(
        f"{arm}: t90 {a['time_to_90_mean_s']:.0f} s ({a['reached_90']}/{a['seeds']} reached), AUC {a['auc_mean']:.3f}"
        for arm, a in arms.items()
    )
    shown = "n/a" if speedup is None else f"{speedup:.2f}×"
    print(f"{NAME}: {table}; early stopping reaches 90 % {shown} sooner (target ≥ {SPEEDUP_TARGET}×) → {path}")


if __name__ == "__main__":
    main()
