"""What a search prepares once before its first trial — the task, fitted teachers, the transfer set, the teachers'
logits, the inputs every trial shares — with each stage's fingerprint checked as soon as it is known, so that an
incomparable rerun is refused before the work it would waste. :func:`run_search` and the public
:func:`~kdnas.tune.students.prepare_students` both prepare through :func:`prepare`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from kdnas.config import KDNASConfig
from kdnas.data import TaskData, load_task
from kdnas.data.transfer import TransferSet, check_transfer_size, load_transfer_texts
from kdnas.outputs import writable_dir
from kdnas.study.storage import check_comparable
from kdnas.teachers import tasks as teacher_tasks
from kdnas.teachers.fitting import fit_teachers
from kdnas.teachers.loading import load_teacher
from kdnas.teachers.logits import teacher_reference
from kdnas.tune.elastic_phase import elastic_inputs
from kdnas.tune.fingerprint import (
    config_fingerprint,
    fitted_teachers_fingerprint,
    task_fingerprint,
    transfer_fingerprint,
)
from kdnas.tune.inputs import check_budgets_reachable, prepare_inputs, transfer_set
from kdnas.tune.local_ray import init_ray
from kdnas.tune.one_layer import choose_one_layer
from kdnas.tune.trial_inputs import TrialInputs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` made: the inputs every trial shares, and what the study records of them."""

    task: TaskData
    transfer: TransferSet | None
    references: list[dict[str, Any]]  # each teacher's metric and latency on the task, as the study records it
    inputs: TrialInputs
    fingerprint: dict[str, Any]


def prepare(
    config: KDNASConfig,
    *,
    task: TaskData | None = None,
    study: optuna.Study | None = None,
    budgets_reachable: bool = True,
) -> Prepared:
    """Load ``config``'s task (unless ``task`` is given), fit the teachers not fitted yet, build the transfer set,
    compute (or read from ``<output_dir>/cache``) the teachers' logits, and prepare the inputs trials share: the task
    tokenised for students, the intermediate-KD teachers, the inheritance source with the teacher layer one-layer
    students take and, when ``student.inherit.elastic`` is on, the elastic network.

    With ``study``, the configuration, the task, the fitted teachers and the transfer set are each checked to be
    comparable with the study's students before the next stage runs. Bad input (a missing file, a ready teacher that
    cannot serve, a transfer set too large for memory, and with ``budgets_reachable`` budgets no student of the space
    meets) is refused before any training.
    """
    output_dir = writable_dir(Path(config.output_dir).resolve(), "output_dir")
    cache = output_dir / "cache"
    fingerprint = config_fingerprint(config)
    task = load_task(config.data) if task is None else task
    logger.info(
        "task %s: %d train / %d eval examples, metric %s", task.name, len(task.train), len(task.eval), task.metric
    )
    fingerprint.update(task_fingerprint(task))
    check_comparable(study, config, fingerprint)
    found = load_transfer_texts(config.data, task)  # a missing transfer file fails before teachers are fitted
    check_transfer_size(config.data, task, found, config.data.augment_copies, len(config.teachers))  # and a huge one
    for teacher in config.teachers:  # a ready teacher's weights and tokenizer are checked before any fitting
        if teacher.fit is None:
            load_teacher(config, teacher, task.num_labels, task.label_names)
    if teacher_tasks.on_cluster(config):  # teachers run as Ray tasks there: join it once the inputs are checked
        init_ray(config.search.ray_address, output_dir)
    fit_teachers(config, task)
    fingerprint.update(fitted_teachers_fingerprint(config))
    check_comparable(study, config, fingerprint)
    transfer = transfer_set(config, task, found)
    fingerprint.update(transfer_fingerprint(transfer))
    check_comparable(study, config, fingerprint)
    references, teacher_logits = teacher_reference(config, task, cache, transfer)
    for ref in references:
        logger.info("teacher %s: %s=%.4f latency=%.2f ms", ref.name, task.metric, ref.value, ref.latency_ms)
    values = tuple(ref.value for ref in references if ref.value is not None)
    inputs = prepare_inputs(config, task, teacher_logits, transfer, values)
    if budgets_reachable:
        check_budgets_reachable(inputs)
    inputs = choose_one_layer(inputs, cache)  # trains: only once the budgets are known reachable
    inputs = elastic_inputs(inputs, cache)
    return Prepared(task, transfer, [ref.to_attrs() for ref in references], inputs, fingerprint)
