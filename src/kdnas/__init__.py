"""kdnas: search small student transformers and teach each one with several teachers at once.

The public API (the CLI's commands as functions; see the README's "Python API")::

    config = kdnas.load_config("examples/demo.yaml", ["search.n_trials=4"])  # a YAML file or a dict, + --set overrides
    study = kdnas.run_search(config)                                         # kdnas search
    study = kdnas.load_study(config.storage_url, config.search.study_name)   # any Optuna storage URL
    front = kdnas.pareto_front(study)                                        # kdnas report
    kdnas.export_trial(study, kdnas.knee_point(front), "export/knee")        # kdnas export --knee

``import kdnas`` is light: each function's module is imported on first use, so reading a study never imports torch,
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
}
"""Each public function → the module that defines it."""

__all__ = [
    "best_under_budget",
    "export_trial",
    "fit_teachers",
    "knee_point",
    "load_config",
    "load_study",
    "pareto_front",
    "run_search",
    "write_report",
]

if TYPE_CHECKING:
    from kdnas.config import load_config
    from kdnas.dashboards.pareto import best_under_budget, knee_point, pareto_front
    from kdnas.dashboards.report import write_report
    from kdnas.export import export_trial
    from kdnas.search.runner import run_search
    from kdnas.search.study import load_study
    from kdnas.teachers.fitting import fit_teachers


def __getattr__(name: str) -> Any:
    """Import a public function's module on first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'kdnas' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
