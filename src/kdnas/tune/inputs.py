"""What every trial of a search shares, prepared once by the driver: the tokenised task and transfer set, the teachers'
logits, the intermediate-KD teachers and the inheritance source; budgets no student could meet are refused."""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch

from kdnas.config import ConfigError, KDNASConfig
from kdnas.data import TaskData
from kdnas.data.augment import augment_texts
from kdnas.data.transfer import TransferSet, check_transfer_size, load_transfer_texts
from kdnas.latency.cache import latency_cache_dir
from kdnas.student.batches import concat, encode
from kdnas.student.inheritance import InheritanceSource, inheritance_source
from kdnas.student.space import smallest_student
from kdnas.study.study_record import Inheritance, RanOn
from kdnas.teachers.importance import importance_file, teacher_importance
from kdnas.teachers.loading import load_tokenizer
from kdnas.teachers.logits import ran_on
from kdnas.teachers.roles import inheritance_teacher, intermediate_teachers, vocabulary_teachers
from kdnas.teachers.tasks import run_step
from kdnas.tune.trial_inputs import TrialInputs, build_and_measure

logger = logging.getLogger(__name__)


UNLABELLED = -100
"""The label of a transfer example: cross-entropy ignores it, KD does not."""


def inheritance(config: KDNASConfig, task: TaskData, cache_dir: Path) -> InheritanceSource | None:
    """The inheritance teacher's weights and importance (ranked once on a seeded calibration subset, cached; ranked
    here on a local Ray, as a Ray task with ``search.resources_per_teacher`` on a cluster)."""
    teacher = inheritance_teacher(config, task)
    if teacher is None:
        return None
    inherit, texts = config.student.inherit, task.texts("train")
    rows = sorted(random.Random(config.data.seed).sample(range(len(texts)), min(inherit.calibration_size, len(texts))))
    max_length = config.data.max_seq_length
    calibration = encode(teacher.tokenizer, [texts[i] for i in rows], [0] * len(rows), max_length)
    cache_dir = Path(cache_dir).resolve()
    importance, file = run_step(
        config,
        f"teacher {teacher.name} importance",
        teacher_importance,
        config,
        next(t for t in config.teachers if t.name == teacher.name),
        task,
        calibration,
        max_length,
        cache_dir,
        cached=importance_file(teacher, task, calibration, max_length, cache_dir).exists(),
        here={"teacher": teacher},
    )
    teacher.model.to("cpu")  # type: ignore[arg-type]  # typeshed: functools.wraps on a method drops self
    return inheritance_source(
        teacher.name, teacher.model, importance, inherit.layers, calibration=len(rows), cache_file=file.name
    )


def inheritance_record(inherit: InheritanceSource | None, cache_dir: Path) -> dict[str, Any] | None:
    """What the study records of the inheritance source (:class:`~kdnas.study.study_record.Inheritance`'s layout;
    None without one), with where the teacher's importance was ranked (``ran_on``)."""
    if inherit is None:
        return None
    file = Path(cache_dir) / inherit.cache_file
    ranked = ran_on(file) if inherit.cache_file and file.is_file() else None
    record = Inheritance.from_attrs(inherit.record())
    return replace(record, ran_on=RanOn.from_attrs(ranked) if ranked else None).to_attrs()


def transfer_set(config: KDNASConfig, task: TaskData, found: TransferSet | None = None) -> TransferSet | None:
    """The configured transfer texts (``found``, loaded when not given) plus augmented copies of the training texts;
    None when there are none.

    Augmentation draws neighbours from the input embeddings of a teacher that tokenises like the students
    (``student.inherit.teacher`` when it is one); without such a teacher, automatic augmentation is skipped with a
    warning and configured augmentation is an error.
    """
    settings, copies = config.data.transfer, config.data.augment_copies
    found = load_transfer_texts(config.data, task) if found is None else found
    check_transfer_size(config.data, task, found, copies, len(config.teachers))
    augmented: list = []
    teachers = (
        sorted(vocabulary_teachers(config, task), key=lambda t: t.name != config.student.inherit.teacher)
        if copies
        else []
    )
    if copies and not teachers:
        problem = f"no teacher uses the students' vocabulary (student.tokenizer {config.student.tokenizer!r})"
        if settings.augment_copies is not None:
            raise ConfigError(f"data.transfer.augment_copies: {problem} to draw word neighbours from")
        logger.warning("no augmented transfer set: %s", problem)
    elif copies:
        # transformers types the input embeddings as nn.Module
        embeddings = cast(torch.nn.Embedding, teachers[0].model.get_input_embeddings()).weight.detach()
        augmented = augment_texts(
            task.texts("train"),
            load_tokenizer(config.student.tokenizer),
            embeddings,
            copies=copies,
            replace_prob=settings.replace_prob,
            neighbours=settings.neighbours,
            seed=config.data.seed,
        )
    if not found.texts and not augmented:
        return None
    sources = {**found.sources, **({"augmented": len(augmented)} if augmented else {})}
    transfer = TransferSet(found.texts + augmented, sources)
    logger.info("transfer set: %d texts (%s)", len(transfer), ", ".join(f"{k} {v}" for k, v in sources.items()))
    return transfer


def prepare_inputs(
    config: KDNASConfig,
    task: TaskData,
    teacher_logits: torch.Tensor,
    transfer: TransferSet | None = None,
    teacher_values: tuple[float, ...] = (),
) -> TrialInputs:
    """Tokenise the task (and the transfer set, unlabelled) for students once, for every trial; load the
    intermediate-KD teachers and the inheritance source. ``teacher_values`` are the teachers' metric on the eval
    split (what tells a collapsed student from a task no teacher learned)."""
    tokenizer = load_tokenizer(config.student.tokenizer)
    max_length = config.data.max_seq_length
    train = encode(tokenizer, task.texts("train"), task.labels("train"), max_length)
    if transfer:
        train = concat(train, encode(tokenizer, transfer.texts, [UNLABELLED] * len(transfer), max_length))
    return TrialInputs(
        config=config,
        metric=task.metric,
        label_names=task.label_names,
        train=train,
        eval=encode(tokenizer, task.texts("eval"), task.labels("eval"), max_length),
        teacher_names=tuple(t.name for t in config.teachers),
        teacher_logits=teacher_logits,
        students_dir=str((Path(config.output_dir) / "students" / config.search.study_dir).resolve()),
        intermediate_teachers=intermediate_teachers(config, task),
        latency_cache_dir=str(latency_cache_dir(config)) if config.latency.cache else None,
        inherit=inheritance(config, task, Path(config.output_dir) / "cache"),
        transfer_rows=len(transfer) if transfer else 0,
        teacher_values=teacher_values,
    )


def check_budgets_reachable(inputs: TrialInputs) -> None:
    """Refuse a latency or size budget that even the space's smallest student exceeds (every trial would be wasted)."""
    config = inputs.config
    if config.latency.budget_ms is None and config.student.max_params is None:
        return
    arch = smallest_student(config.student.space)
    over = build_and_measure(arch, inputs).over_budget
    if over:
        raise ConfigError(f"no student of student.space fits the budget: even the smallest, {arch.summary}, has {over}")
