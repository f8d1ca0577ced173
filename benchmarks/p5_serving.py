"""P5 serving runtimes: the same students in PyTorch eager, ONNX Runtime fp32 and ONNX Runtime int8 (#36).

A demo search (kdnas's defaults: PyTorch eager latency) is run or resumed; then every trained student is loaded from
its saved files, timed in each form as a search times students (``kdnas.measure_architecture`` with
``latency.runtime`` / ``latency.precision`` set, isolated, contended measurements retaken) and scored as served
(``kdnas.score_served``: its ONNX graphs on the evaluation set, fp32 and int8). Reported per student: the latency
ratios (ORT fp32 ÷ eager, int8 ÷ ORT fp32), the int8 accuracy change and fp32 agreement with PyTorch; per form: the
front, its hypervolume (one reference point for all) and its knee. Targets: the int8 front dominates the eager front,
and the eager front's knee student served in int8 is within 0.5 point of its eager metric at ≥ 1.5× lower latency;
the ONNX fp32 graphs agree with PyTorch on ≥ 99.5 % of rows.

    python benchmarks/p5_serving.py [--trials 8] [--time-budget-s 900] [--output-dir runs/p5-serving] [--out FILE]
    python benchmarks/p5_serving.py --task sst2 --archs 1,4,64,2 2,4,64,2 3,4,64,2 4,4,64,2 [--data DIR]

``--task sst2`` (or ``banking77``) reads the task beside the checkout (see ``_common.task_config``; skipped cleanly
without it); ``--archs`` trains those students (``kdnas.train_student``, as a search's trials) instead of searching.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kdnas
from _common import REPO, TASK_DATA, parse_student, task_config, write_result

NAME = "p5_serving"
FORMS = {"eager": ("torch", "fp32"), "ort_fp32": ("onnxruntime", "fp32"), "ort_int8": ("onnxruntime", "int8")}
TARGET_POINTS, TARGET_SPEEDUP, TARGET_AGREEMENT = 0.005, 1.5, 0.995


def in_form(config: Any, runtime: str, precision: str) -> Any:
    """``config`` with its latency taken in ``runtime`` and ``precision``."""
    return kdnas.load_config(
        config.model_dump(mode="json"), [f"latency.runtime={runtime}", f"latency.precision={precision}"]
    )


def torch_logits(model: torch.nn.Module, data: Any) -> torch.Tensor:
    """The PyTorch student's logits on every row of ``data``, 64 rows at a time."""
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(data), 64):
            rows = slice(start, start + 64)
            types = None if data.token_type_ids is None else data.token_type_ids[rows]
            out.append(
                model(
                    input_ids=data.input_ids[rows], attention_mask=data.attention_mask[rows], token_type_ids=types
                ).logits
            )
    return torch.cat(out)


def student_row(trial: Any, configs: dict[str, Any], students: Any, metric: str) -> dict[str, Any]:
    """One student (a trial: ``number``, ``values``, ``user_attrs``) in each form: latency, metric, and the ratios
    between forms."""
    record = kdnas.StudentRecord.from_attrs(trial.user_attrs)
    arch = kdnas.StudentArch.from_dict(record.arch or {})
    model = AutoModelForSequenceClassification.from_pretrained(record.student_path)
    with tempfile.TemporaryDirectory() as directory:
        served = kdnas.score_served(
            model,
            Path(directory),
            students.eval,
            metric,
            torch_logits(model, students.eval),
            configs["ort_int8"].latency,
        )
    latency = {form: kdnas.measure_architecture(config, arch).median_ms for form, config in configs.items()}
    value = {"eager": trial.values[0], "ort_fp32": served.fp32.metric, "ort_int8": served.int8.metric}
    return {
        "trial": trial.number,
        "arch": arch.summary,
        "latency_ms": {form: round(ms, 4) for form, ms in latency.items()},
        "value": value,
        "ort_fp32_speedup": round(latency["eager"] / latency["ort_fp32"], 3),
        "int8_speedup_over_fp32": round(latency["ort_fp32"] / latency["ort_int8"], 3),
        "int8_change_points": round(100 * (value["ort_int8"] - value["eager"]), 2),
        "fp32_agreement": served.fp32.agreement,
        "int8_agreement": served.int8.agreement,
    }


def trained_students(config: Any, students: Any, archs: list[str] | None) -> list[Any]:
    """The students to serve: ``archs`` trained one by one as a search's trials are, else the trained students of a
    search over ``config`` (run or resumed)."""
    if not archs:
        study = kdnas.run_search(config)
        return [t for t in kdnas.feasible_completed(study) if not kdnas.is_repeat(t)]
    reports = [kdnas.train_student(students, parse_student(arch), trial_number=n) for n, arch in enumerate(archs)]
    return [
        SimpleNamespace(number=n, values=[r.value, r.latency_ms], user_attrs=r.attrs) for n, r in enumerate(reports)
    ]


def fronts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each form's front (trial numbers), hypervolume against one reference point, and knee."""
    reference = (0.0, 1.1 * max(row["latency_ms"]["eager"] for row in rows))
    result = {}
    for form in FORMS:
        points = {row["trial"]: (row["value"][form], row["latency_ms"][form]) for row in rows}
        ranks = kdnas.pareto_ranks(points)
        front = [SimpleNamespace(number=n, values=list(points[n])) for n, rank in ranks.items() if rank == 0]
        knee = kdnas.knee_point(sorted(front, key=lambda t: t.values[1]))
        result[form] = {
            "front": sorted(t.number for t in front),
            "hypervolume": round(kdnas.hypervolume(list(points.values()), reference), 5),
            "knee": {"trial": knee.number, "value": knee.values[0], "latency_ms": knee.values[1]},
        }
    return {"reference": reference, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["demo", *TASK_DATA], default="demo")
    parser.add_argument("--archs", nargs="+", help="train these students (layers,heads,head_dim,ffn_ratio) instead")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--time-budget-s", type=float, default=900)
    parser.add_argument("--data", help="the task's folder (default ../shared/data/<task> beside the checkout)")
    parser.add_argument("--output-dir")
    parser.add_argument("--out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    suffix = "" if args.task == "demo" else f"_{args.task}"
    output_dir = args.output_dir or str(REPO / "runs" / f"p5-serving{suffix}")
    config = task_config(NAME, args.task, data=args.data, train_samples=None, output_dir=output_dir)
    config = kdnas.load_config(
        config.model_dump(mode="json"),
        [f"search.n_trials={args.trials}", f"search.time_budget_s={args.time_budget_s}"],
    )
    students = kdnas.prepare_students(config)
    metric = config.data.metric
    configs = {form: in_form(config, *runtime) for form, runtime in FORMS.items()}
    trained = trained_students(config, students, args.archs)
    rows = [student_row(t, configs, students, metric) for t in trained]
    summary = fronts(rows)
    knee = next(row for row in rows if row["trial"] == summary["eager"]["knee"]["trial"])
    int8_points = {row["trial"]: (row["value"]["ort_int8"], row["latency_ms"]["ort_int8"]) for row in rows}
    eager_front = [
        (row["value"]["eager"], row["latency_ms"]["eager"]) for row in rows if row["trial"] in summary["eager"]["front"]
    ]
    payload = {
        "task": args.task,
        **({"archs": args.archs} if args.archs else {}),
        "trials": len(rows),
        "cpu_flags": kdnas.measure_architecture(configs["ort_int8"], kdnas.StudentArch(1, 2, 32, 1)).cpu_flags,
        "students": rows,
        "median_ort_fp32_speedup": statistics.median(r["ort_fp32_speedup"] for r in rows),
        "median_int8_speedup_over_fp32": statistics.median(r["int8_speedup_over_fp32"] for r in rows),
        "median_int8_change_points": statistics.median(r["int8_change_points"] for r in rows),
        "min_fp32_agreement": min(r["fp32_agreement"] for r in rows),
        "fronts": summary,
        "int8_front_dominates_eager_front": all(
            any(kdnas.pareto_ranks({0: point, 1: other})[0] == 1 for other in int8_points.values())
            for point in eager_front
        ),
        "knee_target": {
            "student": knee["arch"],
            "int8_change_points": knee["int8_change_points"],
            "int8_speedup_over_eager": round(knee["latency_ms"]["eager"] / knee["latency_ms"]["ort_int8"], 2),
            "met": knee["int8_change_points"] >= -100 * TARGET_POINTS
            and knee["latency_ms"]["eager"] / knee["latency_ms"]["ort_int8"] >= TARGET_SPEEDUP,
        },
        "agreement_target_met": min(r["fp32_agreement"] for r in rows) >= TARGET_AGREEMENT,
    }
    print(write_result(args.out or REPO / "benchmarks" / "results" / f"{NAME}{suffix}.json", payload))


if __name__ == "__main__":
    main()
