"""Which teachers serve which role: those that tokenise like the students take part in intermediate KD, lend
their embeddings to augmentation and their weights to the students."""

from __future__ import annotations

import logging
from typing import Any

from transformers import PreTrainedTokenizerBase

from kdnas.config import ConfigError, KDNASConfig
from kdnas.data import TaskData
from kdnas.teachers.loading import Teacher, load_teacher, load_tokenizer

logger = logging.getLogger(__name__)


def shares_tokenizer(
    student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase, sample_texts: list[str] | list[tuple[str, str]]
) -> bool:
    """Whether ``teacher`` tokenises like ``student`` (same vocabulary, same ids on ``sample_texts``).

    Intermediate KD compares states position by position, so only such teachers can take part in it.
    """
    if student.get_vocab() != teacher.get_vocab():
        return False
    if sample_texts and isinstance(sample_texts[0], tuple):
        first, second = [t[0] for t in sample_texts], [t[1] for t in sample_texts]
        return student(first, second)["input_ids"] == teacher(first, second)["input_ids"]
    return student(list(sample_texts))["input_ids"] == teacher(list(sample_texts))["input_ids"]


def vocabulary_teachers(config: KDNASConfig, task: TaskData) -> list[Teacher]:
    """The teachers that tokenise like the students (same vocabulary, same ids on a sample of the task)."""
    student_tokenizer = load_tokenizer(config.student.tokenizer)
    sample = task.texts("train")[:64]
    teachers = [load_teacher(config, t, task.num_labels, task.label_names) for t in config.teachers]
    return [t for t in teachers if shares_tokenizer(student_tokenizer, t.tokenizer, sample)]


def inheritance_teacher(config: KDNASConfig, task: TaskData) -> Teacher | None:
    """The teacher students inherit from: ``student.inherit.teacher``, else the first BERT teacher with the
    students' vocabulary (None, with a warning, when there is none; an error when the named one cannot serve)."""
    inherit = config.student.inherit
    if not inherit.enabled:
        return None
    shared = {t.name: t for t in vocabulary_teachers(config, task)}
    if inherit.teacher is not None:
        teacher = shared.get(inherit.teacher)
        if teacher is None:
            raise ConfigError(
                f"student.inherit.teacher: teacher {inherit.teacher!r} does not use the students' "
                f"vocabulary (student.tokenizer {config.student.tokenizer!r})"
            )
        if teacher.model.config.model_type != "bert":
            raise ConfigError(
                f"student.inherit.teacher: teacher {inherit.teacher!r} is a "
                f"{teacher.model.config.model_type} model; students inherit from BERT teachers only"
            )
        return teacher
    teacher = next((t for t in shared.values() if t.model.config.model_type == "bert"), None)
    if teacher is None:
        logger.warning("no teacher is a BERT model with the students' vocabulary: students start from random weights")
    return teacher


def _uses_intermediate_kd(config: KDNASConfig) -> bool:
    """Whether any trial of this search may train with intermediate-layer KD (fixed on, or sampled)."""
    return config.kd.intermediate.enabled or any(c != "off" for c in config.kd.space.intermediate or [])


def intermediate_teachers(config: KDNASConfig, task: TaskData) -> tuple[tuple[str, Any], ...]:
    """The teachers taking part in intermediate KD: those sharing the student's tokenizer.

    A teacher named in ``kd.intermediate.teachers`` with another tokenizer is an error; by default such teachers
    take part in logit KD only, with a warning.
    """
    if not _uses_intermediate_kd(config):
        return ()
    student_tokenizer = load_tokenizer(config.student.tokenizer)
    named = config.kd.intermediate.teachers
    sample = task.texts("train")[:64]
    chosen = []
    for teacher_cfg in config.teachers:
        if named is not None and teacher_cfg.name not in named:
            continue
        teacher = load_teacher(config, teacher_cfg, task.num_labels, task.label_names)
        if shares_tokenizer(student_tokenizer, teacher.tokenizer, sample):
            chosen.append((teacher.name, teacher.model))
        elif named is not None:
            raise ConfigError(
                f"kd.intermediate.teachers: teacher {teacher_cfg.name!r} does not share the student's tokenizer "
                f"({config.student.tokenizer!r}), so it cannot take part in intermediate KD"
            )
        else:
            logger.warning(
                "teacher %s has another tokenizer than the student: it takes part in logit KD only", teacher_cfg.name
            )
    if not chosen:
        raise ConfigError(
            f"intermediate KD is on but no teacher shares the student's tokenizer ({config.student.tokenizer!r})"
        )
    logger.info("intermediate KD teachers (run on the fly in every trial): %s", ", ".join(n for n, _ in chosen))
    return tuple(chosen)
