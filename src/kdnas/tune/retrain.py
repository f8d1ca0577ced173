"""Train a recorded trial's student again, from the study alone (for ``kdnas export --retrain``)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import optuna

from kdnas.config import ConfigError, build_config
from kdnas.study.records import Retrained
from kdnas.study.study_record import StudyRecord
from kdnas.teachers.loading import driver_device
from kdnas.tune.students import prepare_students, train_student
from kdnas.tune.trial_inputs import student_dir

logger = logging.getLogger(__name__)


def retrain_student(study: optuna.Study, trial: optuna.trial.FrozenTrial, *, epochs: int | None = None) -> Retrained:
    """Train ``trial``'s architecture again with the study's recorded recipe (optionally for ``epochs``).

    The student is saved under ``<output_dir>/students/<study>/retrained/``; returned with its own metric, latency
    and attrs.
    """
    recorded = StudyRecord.of(study).config
    if recorded is None:
        raise ConfigError(f"study {study.study_name!r} has no recorded kdnas config to retrain from")
    raw = {**recorded, "search": {**recorded["search"], "storage": None}}
    if epochs is not None:
        raw["training"] = {**raw["training"], "epochs": epochs}
    one_layer = recorded_one_layer(study)
    if one_layer is not None:  # the layer the study's one-layer students took, not a new calibration
        student = raw.get("student", {})
        raw["student"] = {**student, "inherit": {**student.get("inherit", {}), "one_layer": one_layer}}
    config = build_config(raw)
    inputs = prepare_students(config)
    inputs = replace(inputs, students_dir=str(Path(inputs.students_dir) / "retrained"))
    logger.info("retraining trial %d (%s epochs)", trial.number, config.training.epochs)
    report = train_student(inputs, trial.params, trial_number=trial.number, device=driver_device())
    if report.infeasible is not None:  # e.g. measured slower than latency.budget_ms on this machine
        raise ConfigError(f"trial {trial.number} retrained: {report.infeasible}")
    return Retrained(student_dir(inputs, trial.number), report.value, report.latency_ms, report.attrs)


def recorded_one_layer(study: optuna.Study) -> str | None:
    """``first`` or ``last``: the teacher layer the study's one-layer students inherited (``first`` for a study from
    before the choice was recorded, when they took the first); None when its students did not inherit."""
    record = StudyRecord.of(study).inheritance
    if record is None:
        return None
    if record.one_layer is None:
        return "first"
    return "first" if record.one_layer.layer == 0 else "last"
