"""Train a recorded trial's student again, from the study alone (for ``kdnas export --retrain``)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import optuna

from kdnas.config import ConfigError, build_config
from kdnas.data import load_task
from kdnas.export import Retrained
from kdnas.records import ATTRS_KEY, INFEASIBLE_KEY, LATENCY_KEY
from kdnas.search.inputs import prepare_inputs, transfer_set
from kdnas.search.trial import run_trial, student_dir
from kdnas.teachers.fitting import fit_teachers
from kdnas.teachers.loading import driver_device
from kdnas.teachers.logits import teacher_reference

logger = logging.getLogger(__name__)


def retrain_student(study: optuna.Study, trial: optuna.trial.FrozenTrial, *, epochs: int | None = None) -> Retrained:
    """Train ``trial``'s architecture again with the study's recorded recipe (optionally for ``epochs``).

    The student is saved under ``<output_dir>/students/<study>/retrained/``; returned with its own metric, latency
    and attrs.
    """
    recorded = study.user_attrs.get("config")
    if recorded is None:
        raise ConfigError(f"study {study.study_name!r} has no recorded kdnas config to retrain from")
    raw = {**recorded, "search": {**recorded["search"], "storage": None}}
    if epochs is not None:
        raw["training"] = {**raw["training"], "epochs": epochs}
    config = build_config(raw)
    task = load_task(config.data)
    fit_teachers(config, task)
    transfer = transfer_set(config, task)
    _, teacher_logits = teacher_reference(config, task, Path(config.output_dir) / "cache", transfer)
    inputs = prepare_inputs(config, task, teacher_logits, transfer)
    inputs = replace(inputs, students_dir=str(Path(inputs.students_dir) / "retrained"))
    logger.info("retraining trial %d (%s epochs)", trial.number, config.training.epochs)
    result = run_trial(trial.params, inputs, trial_number=trial.number, device=driver_device(), report=lambda _: None)
    if INFEASIBLE_KEY in result:  # e.g. measured slower than latency.budget_ms on this machine
        raise ConfigError(f"trial {trial.number} retrained: {result[INFEASIBLE_KEY]}")
    return Retrained(
        student_dir(inputs, trial.number), result[inputs.metric], result[LATENCY_KEY], json.loads(result[ATTRS_KEY])
    )
