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
``tune_results``.

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
    "run_search": "kdnas.search.runner",
    "load_study": "kdnas.search.study",
    "pareto_front": "kdnas.dashboards.pareto",
    "knee_point": "kdnas.dashboards.pareto",
    "best_under_budget": "kdnas.dashboards.pareto",
    "write_report": "kdnas.dashboards.report",
    "export_trial": "kdnas.export",
    "retime_study": "kdnas.search.retime",
    "fastest_round": "kdnas.search.retime",
    "make_scheduler": "kdnas.search.scheduler",
    "ParetoStopping": "kdnas.search.scheduler",
    "make_searcher": "kdnas.search.searcher",
    # one student outside a search
    "prepare_students": "kdnas.search.trial",
    "train_student": "kdnas.search.trial",
    "TrialReport": "kdnas.records",
    "StudentArch": "kdnas.space",
    "measure_architecture": "kdnas.search.retime",
    # teachers and data
    "load_task": "kdnas.data",
    "teacher_reference": "kdnas.teachers.logits",
    "device_name": "kdnas.objectives.latency",
    "teacher_fit_record": "kdnas.teachers.fitting",
    # reading a study's trials
    "feasible_completed": "kdnas.dashboards.pareto",
    "hypervolume": "kdnas.dashboards.pareto",
    "is_repeat": "kdnas.search.duplicates",
    "training_seconds": "kdnas.search.duplicates",
    "tune_results": "kdnas.records",
}
"""Each public name → the module that defines it."""

__all__ = [
    "ParetoStopping",
    "StudentArch",
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
    "load_config",
    "load_study",
    "load_task",
    "make_scheduler",
    "make_searcher",
    "measure_architecture",
    "pareto_front",
    "prepare_students",
    "retime_study",
    "run_search",
    "teacher_fit_record",
    "teacher_reference",
    "train_student",
    "training_seconds",
    "tune_results",
    "write_report",
]

if TYPE_CHECKING:
    from kdnas.config import load_config
    from kdnas.dashboards.pareto import best_under_budget, feasible_completed, hypervolume, knee_point, pareto_front
    from kdnas.dashboards.report import write_report
    from kdnas.data import load_task
    from kdnas.export import export_trial
    from kdnas.objectives.latency import device_name
    from kdnas.records import TrialReport, tune_results
    from kdnas.search.duplicates import is_repeat, training_seconds
    from kdnas.search.retime import fastest_round, measure_architecture, retime_study
    from kdnas.search.runner import run_search
    from kdnas.search.scheduler import ParetoStopping, make_scheduler
    from kdnas.search.searcher import make_searcher
    from kdnas.search.study import load_study
    from kdnas.search.trial import prepare_students, train_student
    from kdnas.space import StudentArch
    from kdnas.teachers.fitting import fit_teachers, teacher_fit_record
    from kdnas.teachers.logits import teacher_reference


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
