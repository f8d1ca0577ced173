"""Students outside a search (the public API): prepare what a search shares once, then train students one at a time
exactly as its trials do, without Ray."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from kdnas.config import KDNASConfig
from kdnas.data import TaskData
from kdnas.study.records import TrialReport
from kdnas.tune.prepare import prepare
from kdnas.tune.trial import run_trial
from kdnas.tune.trial_inputs import TrialInputs


def prepare_students(config: KDNASConfig, task: TaskData | None = None) -> TrialInputs:
    """What a search prepares once before its first trial (:func:`~kdnas.tune.prepare.prepare`, with the same
    checks), for :func:`train_student` to train students with: the task (``config``'s unless ``task`` is given),
    the fitted teachers and their cached logits, the transfer set, the inheritance source. Budgets no student of the
    space meets are not refused here: :func:`train_student` measures such a student and records why it was not
    trained."""
    return prepare(config, task=task, budgets_reachable=False).inputs  # a student over a budget is measured


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
