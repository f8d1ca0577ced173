"""Student quality on the SST-2 dev set: students against a fair teacher, inheritance, the transfer set, 2 teachers.

The teacher is MiniLM-L6-H384 fine-tuned on ``--teacher-samples`` (default 20,000) SST-2 training examples, fitted
once and cached under ``--output-dir`` (its accuracy and fitting time are reported). Students learn from it on a
``--train-samples`` subset with kdnas's defaults: inherited from the teacher, a transfer set of augmented copies
(``data.transfer.augment_copies``, default 4), the learned combiner, the per-init default learning rate.

(a) A search (``run_search``, students of the default teacher-relative space, depth 1–4) against the teacher: the
    most accurate student at ≥ 4× lower measured latency. Target: within 2.0 points.
(b) Inherited against random initialisation, 3 architectures × ``--seeds``, same data and steps. Target: ≥ +3 points.
(c) Inherited students with the transfer set (KD) against hard labels only (α = 1, no transfer set). Target: ≥ +1.
(d) Two teachers (the MiniLM and a second MiniLM fitted with another seed, learned combiner) against the better
    one alone, for the middle architecture. Target: ≥ +0.5 point.
(layers) ``student.inherit.layers``: the most important teacher layers against uniformly spread ones, for the
    2- and 3-layer students (not run by default: ``--parts layers``).
(text) How the knee student (``--text-arch``, default L4-H192-A6-F384) gains from more in-domain text: the SST-2
    training rows beyond the labelled subset as unlabelled transfer text (``data.transfer.unused_train_rows``), a
    seeded ``--text-rows`` of them each run, beside the augmented copies (not run by default: ``--parts text``).
    With ``--train-samples 67349 --text-rows 0 --augment-copies 0`` it is an oracle: the same student taught with
    every SST-2 training label, an upper bound on what more in-domain text can give it.
(hidden) Lever 3 of #35: the knee student with ``--text-rows``' largest count of unused rows, logit KD alone against
    logit KD plus hidden-state KD of its last layer by the teacher's last (``kd.intermediate.layer_map: final``,
    hidden states only, β = ``--hidden-weight``), over ``--seeds`` (not run by default: ``--parts hidden``).
(copies) Lever 1 of #35: the knee student with ``--more-copies`` (16) augmented copies of each labelled sentence,
    each epoch a fresh sample as large as kdnas's default 4 copies (``data.transfer.per_epoch``: the same cost per
    trial), against the default 4 copies, over ``--seeds``; also the seconds each transfer set takes to build and
    label once per study (not run by default: ``--parts copies``).

    python benchmarks/p3_quality.py [--parts b c d a layers] [--data DIR] [--teacher-samples 20000]
        [--train-samples 2000] [--epochs 2] [--seeds 0 1 2] [--trials 8] [--layers uniform|importance]
        [--unused-train-rows N] [--per-epoch N] [--text-rows 0 16000 32000] [--text-arch L,HEADS,HEAD_DIM,FFN]
        [--more-copies 16]

Parts run in the order given and merge into ``benchmarks/results/p3_quality.json`` (earlier parts' results are kept),
so they can run as separate commands, each within 45 minutes on 2 cores (the first also fits the teacher, 13 min;
(d) fits the second one); finished runs are journalled, so a rerun skips them. The summary line prints each part.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import ray
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kdnas
from _common import add_common_args, parse_student, require_sst2, sst2_sections, write_result

NAME = "p3_quality"
TARGETS = {
    "a": "best student at >= 4x lower latency within 2.0 points of the teacher",
    "b": "inherited - random >= +3.0 points mean",
    "c": "transfer set (KD) - hard labels only >= +1.0 point",
    "d": "2 teachers - the better one alone >= +0.5 point",
}
DEFAULT_COPIES = 4  # data.transfer.augment_copies' default for file and hub tasks
ARCHS = ["1,4,32,2", "2,6,32,2", "3,8,32,2"]  # L1-H128, L2-H192, L3-H256: MiniLM's head size, FFN 2x
SPEEDUP = 4.0


def fitted_teacher(data: Path, args: argparse.Namespace, name: str, seed: int) -> dict[str, Any]:
    """Fine-tune MiniLM on ``--teacher-samples`` examples with training seed ``seed`` (once; cached)."""
    sections = sst2_sections(data, args.teacher_samples, args.teacher_epochs, gpt2_teacher=False)
    sections["teachers"][0]["name"] = name
    config = kdnas.load_config({"output_dir": args.output_dir, **sections, "training": {"seed": seed}})
    kdnas.fit_teachers(config)
    path = Path(args.output_dir) / "teachers" / name
    record = kdnas.teacher_fit_record(config, name)
    if record is None:
        raise SystemExit(f"{NAME}: teacher {name} has no saved fit after fitting it")
    return {
        "name": name,
        "path": str(path.resolve()),
        "seed": seed,
        "train_examples": args.teacher_samples,
        "epochs": args.teacher_epochs,
        "dev_accuracy": record.value,
        "fit_seconds": record.fit_seconds,
    }


def student_raw(sst2: Path, args: argparse.Namespace, teachers: list[dict[str, Any]], **sections: Any) -> dict:
    """The students' config: a ``--train-samples`` subset, the fitted teachers as ready models, kdnas defaults;
    ``sections`` are merged into it (one level deep)."""
    base = sst2_sections(sst2, args.train_samples, gpt2_teacher=False)
    if args.unused_train_rows:  # the SST-2 training rows beyond the labelled subset, as unlabelled transfer text
        base["data"]["transfer"] = {"unused_train_rows": True, "max_samples": args.unused_train_rows}
    if args.per_epoch:
        base["data"].setdefault("transfer", {})["per_epoch"] = args.per_epoch
    raw: dict[str, Any] = {
        "output_dir": args.output_dir,
        "data": base["data"],
        "teachers": [{"name": t["name"], "model": t["path"]} for t in teachers],
        "student": {"inherit": {"layers": args.layers}},
        "training": {"epochs": args.epochs},
        "search": {"study_name": "p3-runs", "resources_per_trial": {"cpu": args.threads}},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


class Runs:
    """Trains students with :func:`kdnas.train_student`, preparing each config's students once; remembers every run,
    also in ``journal`` (JSON lines), so an interrupted benchmark restarted with the same settings skips finished
    runs."""

    def __init__(self, journal: Path) -> None:
        self.prepared: dict[str, tuple[Any, str]] = {}  # config key -> (kdnas.prepare_students(config), metric)
        self.journal = journal
        self.done = [json.loads(line) for line in journal.read_text().splitlines()] if journal.exists() else []
        self.runs: list[dict[str, Any]] = []
        self.configs: dict[str, dict] = {}
        self.prepare_seconds: dict[str, float] = {}  # variant -> seconds its students' inputs took to prepare

    def train(self, variant: str, raw: dict, arch: str, seed: int) -> float:
        key = json.dumps(raw, sort_keys=True)
        for run in self.runs + self.done:  # the same config, arch and seed trains the same student
            if (run["config_key"], run["arch_spec"], run["seed"]) == (key, arch, seed):
                if run not in self.runs:
                    self.runs.append({**run, "variant": variant})
                return run["value"]
        if key not in self.prepared:
            config = kdnas.load_config(raw)
            started = time.perf_counter()
            self.prepared[key] = (kdnas.prepare_students(config), config.data.metric)
            self.prepare_seconds[variant] = round(time.perf_counter() - started, 1)
            self.configs[variant] = config.model_dump(mode="json")
        students, metric = self.prepared[key]
        started = time.perf_counter()
        report = kdnas.train_student(students, parse_student(arch), seed=seed, trial_number=len(self.runs))
        record = kdnas.StudentRecord.from_attrs(report.attrs)
        self.runs.append(
            {
                "variant": variant,
                "config_key": key,
                "arch": record.arch_summary,
                "arch_spec": arch,
                "seed": seed,
                "value": report.value,
                "latency_ms": report.latency_ms,
                "init": init_of(record),
                "learning_rate": record.learning_rate,
                "train_rows": record.train_rows.to_attrs() if record.train_rows else None,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        with self.journal.open("a") as handle:
            handle.write(json.dumps(self.runs[-1]) + "\n")
        logging.info(
            "%s %s seed %d: %s %.4f (%.0f s)",
            variant,
            record.arch_summary,
            seed,
            metric,
            report.value,
            self.runs[-1]["seconds"],
        )
        return report.value

    def compare(
        self, better: tuple[str, dict], worse: tuple[str, dict], archs: list[str], seeds: list[int], target: float
    ) -> dict[str, Any]:
        """Mean gain (points) of variant ``better`` over ``worse`` per architecture and overall."""
        per_arch = []
        for arch in archs:
            ours = [self.train(better[0], better[1], arch, s) for s in seeds]
            theirs = [self.train(worse[0], worse[1], arch, s) for s in seeds]
            per_arch.append(
                {
                    "arch": arch,
                    better[0]: statistics.mean(ours),
                    worse[0]: statistics.mean(theirs),
                    "gain_points": 100 * (statistics.mean(ours) - statistics.mean(theirs)),
                }
            )
        gain = statistics.mean(a["gain_points"] for a in per_arch)
        return {"per_arch": per_arch, "mean_gain_points": gain, "target_points": target, "meets_target": gain >= target}


def init_of(record: Any) -> str | None:
    """How a student started (``inherited``, ``partial``, ``random``), None when its record does not say."""
    return record.init.init if record.init else None


def front_against_teacher(study: Any) -> dict[str, Any]:
    """(a): the most accurate front student at ≥ ``SPEEDUP``× lower latency than the best teacher."""
    teacher = max(kdnas.StudyRecord.of(study).teachers or [], key=lambda t: t.value)
    records = {t.number: kdnas.StudentRecord.of(t) for t in study.get_trials(deepcopy=False)}
    rows = [
        {
            "trial": t.number,
            "arch": records[t.number].arch_summary,
            "value": t.values[0],
            "latency_ms": t.values[1],
            "init": init_of(records[t.number]),
        }
        for t in kdnas.pareto_front(study)
    ]
    section: dict[str, Any] = {
        "study": study.study_name,
        "teacher": {"name": teacher.name, "value": teacher.value, "latency_ms": teacher.latency_ms},
        "front": rows,
        "best_at_speedup": None,
        "meets_target": False,
    }
    try:
        best = kdnas.best_under_budget(study, latency_ms=teacher.latency_ms / SPEEDUP)
    except LookupError:
        return section
    gap = 100 * (teacher.value - best.values[0])
    section["best_at_speedup"] = {
        "trial": best.number,
        "arch": records[best.number].arch_summary,
        "value": best.values[0],
        "latency_ms": best.values[1],
        "gap_points": gap,
        "latency_ratio": teacher.latency_ms / best.values[1],
    }
    section["meets_target"] = gap <= 2.0
    return section


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, name=NAME, train_samples=2000, output_dir="bench-p3")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["a", "b", "c", "d", "layers", "text", "hidden", "copies"],
        default=["b", "c", "d", "a"],
    )
    parser.add_argument("--teacher-samples", type=int, default=20000, help="MiniLM's fine-tuning examples")
    parser.add_argument("--teacher-epochs", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=2, help="student epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of (b)-(d)")
    parser.add_argument("--archs", nargs=3, default=ARCHS, help="(b)/(c) students as layers,heads,head_dim,ffn_ratio")
    parser.add_argument(
        "--layers",
        choices=["uniform", "importance"],
        default="uniform",
        help="student.inherit.layers for every student",
    )
    parser.add_argument("--trials", type=int, default=8, help="(a) search trials")
    parser.add_argument(
        "--unused-train-rows",
        type=int,
        default=0,
        help="a seeded sample of this many of the training rows beyond --train-samples joins the transfer set, "
        "unlabelled, beside the augmented copies (data.transfer.unused_train_rows, max_samples; 0: none)",
    )
    parser.add_argument("--per-epoch", type=int, default=0, help="data.transfer.per_epoch (0: the whole set)")
    parser.add_argument(
        "--augment-copies", type=int, help="(text) data.transfer.augment_copies (default: kdnas's, 4 for files)"
    )
    parser.add_argument("--text-rows", type=int, nargs="+", default=[0, 16000, 32000], help="(text) unused rows")
    parser.add_argument("--text-arch", default="4,6,32,2", help="(text) the student, as layers,heads,head_dim,ffn")
    parser.add_argument("--more-copies", type=int, default=16, help="(copies) augmented copies of the sampled arm")
    parser.add_argument("--hidden-weight", type=float, default=1.0, help="(hidden) kd.intermediate.weight")
    parser.add_argument("--threads", type=int, default=1, help="torch threads and Ray CPUs per search trial")
    args = parser.parse_args(argv)
    args.output_dir = str(Path(args.output_dir).resolve())
    data = require_sst2(NAME, args.data)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    result.pop("machine", None)
    teacher = fitted_teacher(data, args, "minilm", seed=0)
    result.update({"benchmark": NAME, "targets": TARGETS, "teacher": teacher, "args": vars(args)})
    runs, summary = Runs(Path(args.output_dir) / "p3-runs.jsonl"), []
    with_transfer = student_raw(data, args, [teacher])
    for part in args.parts:
        started = time.perf_counter()
        if part == "a":
            raw = student_raw(
                data,
                args,
                [teacher],
                search={
                    "study_name": f"p3a-{time.strftime('%Y%m%d-%H%M%S')}",
                    "n_trials": args.trials,
                    "max_concurrent_trials": 1,
                },
            )
            section = front_against_teacher(kdnas.run_search(kdnas.load_config(raw)))
            ray.shutdown()
            best = section["best_at_speedup"]
            summary.append(
                f"(a) {best['arch']} {best['value']:.4f} vs teacher {section['teacher']['value']:.4f}: "
                f"{best['gap_points']:+.1f} pts at {best['latency_ratio']:.1f}x"
                if best
                else "(a) no student at >= 4x"
            )
            section["config"] = raw
        elif part == "b":
            random_init = student_raw(data, args, [teacher], student={"inherit": {"enabled": False}})
            section = runs.compare(("inherited", with_transfer), ("random", random_init), args.archs, args.seeds, 3.0)
            summary.append(f"(b) inherited - random {section['mean_gain_points']:+.2f} pts")
        elif part == "c":
            hard = student_raw(data, args, [teacher], kd={"alpha": 1.0}, data={"transfer": {"augment_copies": 0}})
            section = runs.compare(("transfer", with_transfer), ("hard_labels", hard), args.archs, args.seeds, 1.0)
            summary.append(f"(c) transfer - hard labels {section['mean_gain_points']:+.2f} pts")
        elif part == "text":
            per_rows = []
            for rows in args.text_rows:
                transfer: dict[str, Any] = {"unused_train_rows": True, "max_samples": rows} if rows else {}
                if args.augment_copies is not None:
                    transfer["augment_copies"] = args.augment_copies
                raw = student_raw(data, args, [teacher], data={"transfer": transfer})
                value = runs.train(f"text-{rows}", raw, args.text_arch, args.seeds[0])
                per_rows.append(
                    {"unused_rows": rows, "value": value, "gap_points": 100 * (teacher["dev_accuracy"] - value)}
                )
            section = {"arch": args.text_arch, "seed": args.seeds[0], "per_rows": per_rows}
            summary.append("(text) " + ", ".join(f"{r['unused_rows']}: {r['value']:.4f}" for r in per_rows))
        elif part == "hidden":
            transfer = {"unused_train_rows": True, "max_samples": max(args.text_rows)}
            logit = student_raw(data, args, [teacher], data={"transfer": transfer})
            final = {"enabled": True, "layer_map": "final", "weight": args.hidden_weight, "attention": 0.0}
            hidden = student_raw(
                data, args, [teacher], data={"transfer": transfer}, kd={"intermediate": {**final, "embedding": 0.0}}
            )
            section = runs.compare(("hidden_final", hidden), ("logits_only", logit), [args.text_arch], args.seeds, 0.0)
            summary.append(f"(hidden) last-layer hidden KD - logits only {section['mean_gain_points']:+.2f} pts")
        elif part == "copies":
            default = student_raw(data, args, [teacher], data={"transfer": {"augment_copies": DEFAULT_COPIES}})
            more = {"augment_copies": args.more_copies, "per_epoch": DEFAULT_COPIES * args.train_samples}
            sampled = student_raw(data, args, [teacher], data={"transfer": more})
            names = (f"copies_{args.more_copies}_sampled", f"copies_{DEFAULT_COPIES}")
            section = runs.compare((names[0], sampled), (names[1], default), [args.text_arch], args.seeds, 0.5)
            section["prepare_seconds"] = {name: runs.prepare_seconds.get(name) for name in names}
            summary.append(f"(copies) {names[0]} - {names[1]} {section['mean_gain_points']:+.2f} pts")
        elif part == "layers":
            importance = student_raw(data, args, [teacher], student={"inherit": {"layers": "importance"}})
            uniform = student_raw(data, args, [teacher], student={"inherit": {"layers": "uniform"}})
            section = runs.compare(("importance", importance), ("uniform", uniform), args.archs[1:], args.seeds, 0.0)
            summary.append(f"(layers) importance - uniform {section['mean_gain_points']:+.2f} pts")
        else:
            second = fitted_teacher(data, args, "minilm-seed1", seed=1)
            better = max((teacher, second), key=lambda t: t["dev_accuracy"])
            pair = student_raw(data, args, [teacher, second])
            alone = student_raw(data, args, [better])
            section = runs.compare(("two_teachers", pair), ("better_alone", alone), [args.archs[1]], args.seeds, 0.5)
            section["teachers"] = [teacher, second]
            summary.append(f"(d) 2 teachers - {better['name']} alone {section['mean_gain_points']:+.2f} pts")
        section["seconds"] = round(time.perf_counter() - started, 1)
        if out.exists():  # parts run by another command meanwhile are kept
            result = {**json.loads(out.read_text()), **{k: v for k, v in result.items() if k in ("teacher", "args")}}
        result[part] = section
        fresh = {r["variant"] for r in runs.runs}
        result["runs"] = [r for r in result.get("runs", []) if r.get("variant") not in fresh]
        result["runs"] += [{k: v for k, v in r.items() if k != "config_key"} for r in runs.runs]
        result.setdefault("configs", {}).update(runs.configs)
        write_result(out, result)
    print(
        f"{NAME}: teacher {teacher['dev_accuracy']:.4f} ({teacher['train_examples']} examples, "
        f"{teacher['fit_seconds']} s); " + "; ".join(summary) + f" -> {out}"
    )


if __name__ == "__main__":
    main()
