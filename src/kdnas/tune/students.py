"""Students outside a search (the public API): prepare what a search shares once, then train students one at a time
exactly as its trials do, without Ray."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kdnas.config import KDNASConfig
from kdnas.data import TaskData, load_task
from kdnas.outputs import writable_dir
from kdnas.study.records import TrialReport
from kdnas.teachers.fitting import fit_teachers
from kdnas.teachers.logits import teacher_reference
from kdnas.tune.elastic_phase import elastic_inputs
from kdnas.tune.inputs import prepare_inputs, transfer_set
from kdnas.tune.one_layer import choose_one_layer
from kdnas.tune.trial import TrialInputs, run_trial


def prepare_students(config: KDNASConfig, task: TaskData | None = None) -> TrialInputs:
    """What a search prepares once before its first trial, for :func:`train_student` to train students with.

    Loads ``config``'s task (unless ``task`` is given), fits the teachers that are not fitted yet, builds the transfer
    set, reads the teachers' logits from ``<output_dir>/cache`` (computing and caching them when missing), tokenises
    the task for the students and loads the intermediate-KD teachers and the inheritance source (with the teacher
    layer one-layer students take, :func:`~kdnas.tune.one_layer.choose_one_layer`, and the elastic network when
    ``student.inherit.elastic`` is on, :func:`~kdnas.tune.elastic_phase.elastic_inputs`).
    """
    output_dir = writable_dir(Path(config.output_dir).resolve(), "output_dir")
    task = load_task(config.data) if task is None else task
    fit_teachers(config, task)
    transfer = transfer_set(config, task)
    references, teacher_logits = teacher_reference(config, task, output_dir / "cache", transfer)
    values = tuple(reference["value"] for reference in references)
    inputs = choose_one_layer(prepare_inputs(config, task, teacher_logits, transfer, values), output_dir / "cache")
    return elastic_inputs(inputs, output_dir / "cache")


def train_student(
    students: KDNASConfig | TrialInputs,
    params: Mapping[str, Any],
    *,
    seed: int | None = None,
    trial_number: int = 0,
    device: torch.device | str = "cpu",
) -> TrialReport:
    """Train and measure one student without Ray, exactly as a search's trial does, and return its record.

    ``students`` is a config (then prepared here) or what :func:`prepare_students` returned for one (prepare once,
    train many). ``params`` are the student's parameters as the search samples them (``num_layers``, ``num_heads``,
    ``head_dim``, ``ffn_ratio``, and any value of a ``kd.space`` or ``training.space``); ``seed`` replaces
    ``training.seed``. The student is saved to ``<output_dir>/students/<search.study_name>/trial-<trial_number>``
    (the record's ``student_path`` attr). A student over a budget is measured, not trained: its record says why
    (``infeasible``). Errors are raised.
    """
    inputs = students if isinstance(students, TrialInputs) else prepare_students(students)
    if seed is not None:
        config = inputs.config
        training = config.training.model_copy(update={"seed": seed})
        inputs = replace(inputs, config=config.model_copy(update={"training": training}))
    result = run_trial(dict(params), inputs, trial_number=trial_number, device=device, report=lambda _: None)
    return TrialReport.from_result(result, inputs.metric)
