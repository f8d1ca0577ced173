"""Quality on the SST-2 dev set: searched students against their teachers, KD against no KD, 2 teachers against 1.

(a) A search (``run_search``: two teachers, a MiniLM fine-tuned and a GPT-2 trained from scratch; students of 1–3
    layers, width 32–128) into a fresh study, or an existing study given with ``--study``/``--storage``. Its Pareto
    front is compared with the best teacher (highest dev accuracy; latency measured with the students' settings):
    the most accurate front student's accuracy gap (teacher − student, points) and latency ratio, and the most
    accurate student at ≥ 5× lower latency than that teacher. Target: within 3 points at ≥ 5× lower latency.
(b) KD against no KD for the same architecture, over 3 architectures: kdnas's default logit KD from both teachers
    (``mean`` combiner, α 0.5, T 2) against cross-entropy only (``kd.alpha: 1.0``), same data, steps and seed.
    Target: ≥ +1.0 point on average.
(c) 2 teachers (``mean``) against the best single teacher (``weighted`` with weight 1 on the teacher with the
    best dev accuracy) for one architecture.

(b) and (c) run kdnas's trial body (``run_trial``) with the benchmark's own settings (also when ``--study`` is
given), on the same teachers and cached teacher logits as the search.

    python benchmarks/p3_quality.py [--data DIR] [--train-samples 4000] [--epochs 3] [--trials 12] [--seeds 0]
    python benchmarks/p3_quality.py --study NAME --storage URL      # (a) from an existing study
    python benchmarks/p3_quality.py --warm-start --learning-rate 1e-4 --epochs 2 --trials 6 \
        --out benchmarks/results/p3_quality_warm_start.json

``--warm-start`` gives the students MiniLM's shape (12 heads of 32, FFN ×4; depth 1–3 searched) and starts them
from MiniLM's layers (``student.warm_start``); (b) and (c) then compare warm-started L1/L2/L3 students.

Writes ``benchmarks/results/p3_quality.json`` and prints one summary line.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, parse_student, require_sst2, sst2_sections, write_result  # noqa: E402

from kdnas.config import build_config, dump_config  # noqa: E402
from kdnas.dashboards.pareto import best_under_budget, pareto_front  # noqa: E402
from kdnas.data import load_task  # noqa: E402
from kdnas.search.runner import fit_teachers, prepare_inputs, run_search, teacher_reference  # noqa: E402
from kdnas.search.study import load_study, mask_url  # noqa: E402
from kdnas.search.trial import run_trial  # noqa: E402

NAME = "p3_quality"
GAP_TARGET_POINTS = 3.0
SPEEDUP_TARGET = 5.0
KD_GAIN_TARGET_POINTS = 1.0
DEFAULT_ARCHS = ["1,2,32,4", "2,4,32,4", "3,4,32,4"]  # (b); (c) takes the second
WARM_START_ARCHS = ["1,12,32,4", "2,12,32,4", "3,12,32,4"]
MINILM_SHAPE = {"heads": [12], "head_dim": [32], "ffn_ratio": [4]}  # a student of this shape takes whole layers


def arch_name(arch: dict[str, int]) -> str:
    return f"L{arch['num_layers']}-H{arch['num_heads'] * arch['head_dim']}-A{arch['num_heads']}-F×{arch['ffn_ratio']}"


def base_config(data: Path, args: argparse.Namespace, study_name: str) -> dict[str, Any]:
    """The benchmark's settings: SST-2 subset, two teachers, student space, training budget, search."""
    space: dict[str, Any] = {"depth": {"min": 1, "max": 3}, "heads": [2, 4], "head_dim": [16, 32], "ffn_ratio": [2, 4]}
    student: dict[str, Any] = {"space": space}
    if args.warm_start:
        student = {"space": {**space, **MINILM_SHAPE}, "warm_start": {"teacher": "minilm"}}
    return {
        "output_dir": str(Path(args.output_dir).resolve()),
        **sst2_sections(data, args.train_samples, args.teacher_epochs),
        "student": student,
        "training": {"epochs": args.epochs, "learning_rate": args.learning_rate, "seed": args.seeds[0]},
        "search": {"study_name": study_name, "n_trials": args.trials, "seed": args.search_seed,
                   "max_concurrent_trials": args.concurrent_trials, "resources_per_trial": {"cpu": args.threads}},
    }


def compare_front(study: Any) -> dict[str, Any]:
    """(a): the study's front against its best teacher (both as recorded in the study)."""
    teachers = study.user_attrs.get("teachers") or []
    if not teachers:
        raise SystemExit(f"{NAME}: study {study.study_name!r} records no teachers")
    teacher = max(teachers, key=lambda t: (t["value"], -t["latency_ms"]))
    front = pareto_front(study)
    if not front:
        raise SystemExit(f"{NAME}: study {study.study_name!r} has no completed feasible student")
    rows = [{"trial": t.number, "arch": t.user_attrs.get("arch_summary"), "value": t.values[0],
             "latency_ms": t.values[1], "params": t.user_attrs.get("params")} for t in front]
    best = best_under_budget(study)
    section: dict[str, Any] = {
        "study": study.study_name,
        "teachers": [{k: t.get(k) for k in ("name", "model", "value", "latency_ms", "params")} for t in teachers],
        "best_teacher": teacher["name"],
        "front": rows,
        "best_student": {"trial": best.number, "arch": best.user_attrs.get("arch_summary"), "value": best.values[0],
                         "latency_ms": best.values[1],
                         "gap_points": 100 * (teacher["value"] - best.values[0]),
                         "latency_ratio": teacher["latency_ms"] / best.values[1]},
    }
    budget = teacher["latency_ms"] / SPEEDUP_TARGET
    try:
        fast = best_under_budget(study, latency_ms=budget)
        section["best_student_at_5x"] = {
            "latency_budget_ms": budget, "trial": fast.number, "arch": fast.user_attrs.get("arch_summary"),
            "value": fast.values[0], "latency_ms": fast.values[1],
            "gap_points": 100 * (teacher["value"] - fast.values[0]),
            "latency_ratio": teacher["latency_ms"] / fast.values[1]}
        section["meets_target"] = section["best_student_at_5x"]["gap_points"] <= GAP_TARGET_POINTS
    except LookupError:
        section["best_student_at_5x"] = None
        section["meets_target"] = False
    return section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, name=NAME, train_samples=4000, output_dir="bench-p3")
    parser.add_argument("--epochs", type=int, default=3, help="student epochs (search and (b)/(c) runs)")
    parser.add_argument("--teacher-epochs", type=float, default=1.0, help="MiniLM fine-tuning epochs")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="student learning rate")
    parser.add_argument("--trials", type=int, default=12, help="(a) search trials")
    parser.add_argument("--search-seed", type=int, default=0, help="(a) sampler seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of (b)/(c) (the first one "
                                                                         "also trains the search's students)")
    parser.add_argument("--archs", nargs=3, help="(b) three students as layers,heads,head_dim,ffn_ratio (default "
                                                  "1,2,32,4 2,4,32,4 3,4,32,4; with --warm-start 1,12,32,4 ...)")
    parser.add_argument("--arch-c", help="(c) the student as layers,heads,head_dim,ffn_ratio (default 2,4,32,4; "
                                         "with --warm-start 2,12,32,4)")
    parser.add_argument("--warm-start", action="store_true", help="students of MiniLM's shape (depth 1-3), "
                                                                   "initialised from MiniLM's layers")
    parser.add_argument("--study", help="(a) read this existing study instead of running a search")
    parser.add_argument("--storage", help="storage URL of --study (default: the SQLite study in --output-dir)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, and Ray CPUs per search trial (default "
                                                                 "1: 2 threads on 2 busy cores run slower)")
    parser.add_argument("--concurrent-trials", type=int, default=1, help="search.max_concurrent_trials (default 1: "
                                                                          "students are timed on an idle core)")
    args = parser.parse_args(argv)
    data = require_sst2(NAME, args.data)
    torch.set_num_threads(args.threads)
    default_archs = WARM_START_ARCHS if args.warm_start else DEFAULT_ARCHS
    archs = [parse_student(a) for a in args.archs or default_archs]
    arch_c = parse_student(args.arch_c or default_archs[1])
    timings: dict[str, float] = {}

    # (a) the search and its front against the best teacher
    search_name = args.study or f"p3-quality-{time.strftime('%Y%m%d-%H%M%S')}"
    search_raw = base_config(data, args, search_name)
    started = time.perf_counter()
    if args.study:
        storage = args.storage or build_config(search_raw).storage_url
        study = load_study(storage, args.study)
    else:
        config = build_config(search_raw)
        storage = config.storage_url
        study = run_search(config)
        ray.shutdown()  # free the workers' CPUs for (b) and (c)
    timings["a_search_s"] = time.perf_counter() - started
    section_a = {"source": "existing study" if args.study else "search run by this benchmark",
                 "storage": mask_url(storage), **compare_front(study)}

    # (b) KD vs no KD over three archs; (c) 2 teachers vs the best single teacher, on the same teachers and logits
    started = time.perf_counter()
    config = build_config(search_raw)
    task = load_task(config.data)
    fit_teachers(config, task)  # nothing to do after our own search
    references, teacher_logits = teacher_reference(config, task, Path(config.output_dir) / "cache")
    timings["teachers_s"] = time.perf_counter() - started
    best_single = max(range(len(references)), key=lambda i: references[i]["value"])
    one_hot = [1.0 if i == best_single else 0.0 for i in range(len(references))]
    recipes = {
        "no KD": {"alpha": 1.0},
        "2 teachers": {"combiner": "mean"},
        "best single teacher": {"combiner": "weighted", "teacher_weights": one_hot},
    }
    configs: dict[str, dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []

    def train(recipe: str, arch: dict[str, int], seed: int) -> float:
        for run in runs:  # (c) reuses (b)'s run of the same recipe, arch and seed
            if (run["recipe"], run["arch"], run["seed"]) == (recipe, arch_name(arch), seed):
                return run["value"]
        raw = {**search_raw, "kd": recipes[recipe], "training": {**search_raw["training"], "seed": seed},
               "search": {**search_raw["search"], "study_name": "p3-kd-runs"}}
        config = build_config(raw)
        configs.setdefault(recipe, dump_config(config))
        inputs = prepare_inputs(config, task, teacher_logits)
        started = time.perf_counter()
        result = run_trial(arch, inputs, trial_number=len(runs), device="cpu", report=lambda _: None)
        seconds = time.perf_counter() - started
        runs.append({"recipe": recipe, "arch": arch_name(arch), "seed": seed, "value": result[task.metric],
                     "seconds": seconds})
        logging.info("%s %s seed %d: %s %.4f (%.0f s)", recipe, arch_name(arch), seed, task.metric,
                     result[task.metric], seconds)
        return result[task.metric]

    started = time.perf_counter()
    per_arch = []
    for arch in archs:
        kd = [train("2 teachers", arch, seed) for seed in args.seeds]
        ce = [train("no KD", arch, seed) for seed in args.seeds]
        per_arch.append({"arch": arch_name(arch), "kd": statistics.mean(kd), "no_kd": statistics.mean(ce),
                         "gain_points": 100 * (statistics.mean(kd) - statistics.mean(ce))})
    mean_gain = statistics.mean(a["gain_points"] for a in per_arch)
    section_b = {"recipes": {"kd": "2 teachers", "no_kd": "no KD"}, "per_arch": per_arch,
                 "mean_gain_points": mean_gain, "meets_target": mean_gain >= KD_GAIN_TARGET_POINTS}
    two = [train("2 teachers", arch_c, seed) for seed in args.seeds]
    one = [train("best single teacher", arch_c, seed) for seed in args.seeds]
    section_c = {"arch": arch_name(arch_c), "best_single_teacher": references[best_single]["name"],
                 "two_teachers": statistics.mean(two), "single_teacher": statistics.mean(one),
                 "gain_points": 100 * (statistics.mean(two) - statistics.mean(one))}
    timings["b_c_runs_s"] = time.perf_counter() - started

    path = write_result(args.out, {
        "benchmark": NAME,
        "targets": {"a": f"best student within {GAP_TARGET_POINTS} points of the best teacher at >= "
                         f"{SPEEDUP_TARGET}x lower measured latency",
                    "b": f"KD - no KD >= +{KD_GAIN_TARGET_POINTS} point on average over 3 archs",
                    "c": "reported: 2 teachers - best single teacher"},
        "a": section_a,
        "b": section_b,
        "c": section_c,
        "teachers": [{k: r[k] for k in ("name", "value", "latency_ms", "params")} for r in references],
        "train_examples": len(task.train),
        "eval_examples": len(task.eval),
        "seeds": {"training": args.seeds, "search_sampler": args.search_seed, "data_subset": config.data.seed},
        "timings_s": timings,
        "args": vars(args),
        "config": {"search": dump_config(build_config(search_raw)), "runs": configs},
        "runs": runs,
    })
    best, fast = section_a["best_student"], section_a["best_student_at_5x"]
    at_5x = (f"at ≥ {SPEEDUP_TARGET:g}× {fast['value']:.4f}, gap {fast['gap_points']:+.1f} pts "
             f"({fast['latency_ratio']:.1f}×)" if fast else f"no student at ≥ {SPEEDUP_TARGET:g}×")
    print(f"{NAME}: (a) teacher {section_a['best_teacher']} vs best student {best['value']:.4f}: gap "
          f"{best['gap_points']:+.1f} pts at {best['latency_ratio']:.1f}× lower latency, {at_5x} "
          f"(target ≤ {GAP_TARGET_POINTS:g} pts at ≥ {SPEEDUP_TARGET:g}×); (b) KD − no KD "
          f"{mean_gain:+.2f} pts mean over {len(archs)} archs (target ≥ +{KD_GAIN_TARGET_POINTS:g}); (c) 2 teachers "
          f"− {section_c['best_single_teacher']} alone {section_c['gain_points']:+.2f} pts ({section_c['arch']}) "
          f"→ {path}")


if __name__ == "__main__":
    main()
