"""kdnas: search small student transformers and teach each one with several teachers at once.

The public API (the CLI's commands as functions; see the README's "Python API")::

    config = kdnas.load_config("examples/demo.yaml", ["search.n_trials=4"])  # a YAML file or a dict, + --set overrides
    study = kdnas.run_search(config)                                         # kdnas search
    study = kdnas.load_study(config.storage_url, config.search.study_name)   # any Optuna storage URL
    front = kdnas.pareto_front(study)                                        # kdnas report
    kdnas.export_trial(study, kdnas.knee_point(front), "export/knee")        # kdnas export --knee

One student outside a search, trained and measured as a trial does::

    students = kdnas.prepare_students(config)           # teachers fitted, their logits cached, the task tokenised
    report = kdnas.train_student(students, {"num_layers": 2, "num_heads": 4, "head_dim": 32, "ffn_ratio": 2}, seed=1)
    report.value, report.latency_ms, report.attrs       # a kdnas.TrialReport: what the study would record

Teachers and data: ``load_task``, ``teacher_reference``, ``teacher_fit_record``; the device latency is measured on:
``device_name``. Reading a study's trials beyond the
front: ``feasible_completed``, ``hypervolume``, ``is_repeat``, ``training_seconds``; Tune's own view of them:
``tune_results``. What a trial and the study record, typed: ``StudentRecord.of(trial)``, ``StudyRecord.of(study)``.
Serving: ``latency_table`` (architectures in each runtime and precision), ``score_served`` (a student's ONNX graphs
written and scored).

``import kdnas`` is light: each name's module is imported on first use, so reading a study never imports torch,
Ray or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_HOMES = {
    "load_config": "kdnas.config",
    "fit_teachers": "kdnas.teachers.fitting",
    "run_search": "kdnas.tune.driver",
    "load_study": "kdnas.study.storage",
    "pareto_front": "kdnas.study.front",
    "knee_point": "kdnas.study.front",
    "best_under_budget": "kdnas.study.front",
    "write_report": "kdnas.readers.report",
    "export_trial": "kdnas.readers.export",
    "retime_study": "kdnas.tune.retime",
    "fastest_round": "kdnas.tune.retime",
    "make_scheduler": "kdnas.tune.scheduler",
    "ParetoStopping": "kdnas.tune.scheduler",
    "make_searcher": "kdnas.tune.searcher",
    # one student outside a search
    "prepare_students": "kdnas.tune.students",
    "train_student": "kdnas.tune.students",
    "TrialReport": "kdnas.study.records",
    "StudentArch": "kdnas.student",
    "measure_architecture": "kdnas.tune.retime",
    # teachers and data
    "load_task": "kdnas.data",
    "teacher_reference": "kdnas.teachers.logits",
    "device_name": "kdnas.latency.timing",
    "teacher_fit_record": "kdnas.teachers.fitting",
    # reading a study's trials
    "feasible_completed": "kdnas.study.front",
    "hypervolume": "kdnas.study.front",
    "pareto_ranks": "kdnas.study.dominance",
    "is_repeat": "kdnas.study.repeats",
    "training_seconds": "kdnas.study.repeats",
    "tune_results": "kdnas.study.records",
    "latency_table": "kdnas.tune.runtimes",
    "score_served": "kdnas.tune.served",
    "StudentRecord": "kdnas.study.student_record",
    "StudyRecord": "kdnas.study.study_record",
}
"""Each public name → the module that defines it."""

__all__ = [
    "ParetoStopping",
    "StudentArch",
    "StudentRecord",
    "StudyRecord",
    "TrialReport",
    "best_under_budget",
    "device_name",
    "export_trial",
    "fastest_round",
    "feasible_completed",
    "fit_teachers",
    "hypervolume",
    "is_repeat",
    "knee_point",
    "latency_table",
    "load_config",
    "load_study",
    "load_task",
    "make_scheduler",
    "make_searcher",
    "measure_architecture",
    "pareto_front",
    "pareto_ranks",
    "prepare_students",
    "retime_study",
    "run_search",
    "score_served",
    "teacher_fit_record",
    "teacher_reference",
    "train_student",
    "training_seconds",
    "tune_results",
    "write_report",
]

if TYPE_CHECKING:
    from kdnas.config import load_config
    from kdnas.data import load_task
    from kdnas.latency.timing import device_name
    from kdnas.readers.export import export_trial
    from kdnas.readers.report import write_report
    from kdnas.student import StudentArch
    from kdnas.study.dominance import pareto_ranks
    from kdnas.study.front import best_under_budget, feasible_completed, hypervolume, knee_point, pareto_front
    from kdnas.study.records import TrialReport, tune_results
    from kdnas.study.repeats import is_repeat, training_seconds
    from kdnas.study.storage import load_study
    from kdnas.study.student_record import StudentRecord
    from kdnas.study.study_record import StudyRecord
    from kdnas.teachers.fitting import fit_teachers, teacher_fit_record
    from kdnas.teachers.logits import teacher_reference
    from kdnas.tune.driver import run_search
    from kdnas.tune.retime import fastest_round, measure_architecture, retime_study
    from kdnas.tune.runtimes import latency_table
    from kdnas.tune.scheduler import ParetoStopping, make_scheduler
    from kdnas.tune.searcher import make_searcher
    from kdnas.tune.served import score_served
    from kdnas.tune.students import prepare_students, train_student


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'kdnas' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
