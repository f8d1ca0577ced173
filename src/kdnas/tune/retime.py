"""Re-time a finished study on one node, so that its front compares like with like.

During a search each student is timed on whichever node trained it, at whatever moment it started. ``kdnas retime``
measures every distinct architecture of the study's feasible completed students and every teacher again, in one
process, alone on its node (:mod:`kdnas.latency.isolation`), in interleaved rounds (so a slow spell of the
machine touches every model alike), and records each model's fastest round (its median) in the study's ``retimed``
attr; the front, the report and export then read those latencies (:func:`kdnas.study.front.feasible_completed`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import UTC, datetime

import optuna
import torch
from transformers import PreTrainedTokenizerBase

from kdnas.config import ConfigError, KDNASConfig, LatencyConfig
from kdnas.latency.cache import ATTEMPTS, measure_trusted
from kdnas.latency.timing import LatencyResult
from kdnas.student import StudentArch
from kdnas.study.front import search_feasible_completed, study_summary
from kdnas.study.records import RETIMED_ATTR
from kdnas.study.student_record import StudentRecord
from kdnas.study.study_record import Retimed, RetimeSettings, StudyRecord
from kdnas.teachers.loading import load_teacher, load_tokenizer

logger = logging.getLogger(__name__)

_ROUNDS = 3
"""Measurements of each model, interleaved with the others'; the fastest of their medians is recorded."""


def fastest_round(medians_ms: list[float]) -> float:
    """The latency ``kdnas retime`` records from a model's rounds: the fastest round's median. Other work on the
    machine only ever adds time, so a slow round is one a busy spell touched (``timeit`` takes the best of its
    repeats for the same reason); within a round the median already discounts single slow runs."""
    return min(medians_ms)


def student_model(
    config: KDNASConfig, arch: StudentArch, tokenizer: PreTrainedTokenizerBase, num_labels: int = 2
) -> torch.nn.Module:
    """``arch`` built as the search builds its students, for the students' ``tokenizer`` (weights do not change
    latency)."""
    return arch.build(tokenizer, num_labels, max_positions=max(config.data.max_seq_length, config.latency_seq_len))


def measure_architecture(config: KDNASConfig, arch: StudentArch, num_labels: int = 2) -> LatencyResult:
    """Latency of ``arch`` under ``config.latency``, as a search measures it: isolated on this node unless
    ``latency.isolate`` is off, and taken again while contended (see
    :func:`~kdnas.latency.cache.measure_trusted`)."""
    tokenizer = load_tokenizer(config.student.tokenizer)
    model = student_model(config, arch, tokenizer, num_labels)
    return measure_trusted(model, vocab_size=len(tokenizer), settings=config.latency, seq_len=config.latency_seq_len)[0]


def retime_study(study: optuna.Study, config: KDNASConfig, *, rounds: int = _ROUNDS) -> Retimed:
    """Measure the study's students (each distinct architecture once per round) and teachers again with
    ``config.latency`` on this node; record each model's :func:`fastest_round` in the ``retimed`` study attr and
    return it."""
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, got {rounds}")
    started = time.perf_counter()
    trials_by_form, models = _models_to_time(study, config)
    medians, contended = _timed_rounds(models, config, rounds)
    latency = {name: fastest_round([r.median_ms for r in results]) for name, results in medians.items()}
    first = next(iter(medians.values()))[0] if medians else None
    record = replace(
        _where_and_how(config, rounds, first),
        students={
            str(number): latency[_student_name(arch, precision, config)]
            for (arch, precision), numbers in trials_by_form.items()
            for number in numbers
        },
        teachers={t.name: latency[f"teacher {t.name}"] for t in config.teachers},
        seconds=round(time.perf_counter() - started, 1),
        contended=contended,
    )
    before = study_summary(study)  # the search's latencies, or an earlier re-timing's
    study.set_user_attr(RETIMED_ATTR, record.to_attrs())
    retimed = study_summary(study)
    logger.info(
        "retimed %d students (%d architectures) and %d teachers on %s in %.0f s: front %d, hypervolume %.4g with "
        "these latencies, as the report shows it (before this re-timing: front %d, hypervolume %.4g)",
        len(record.students or {}),
        len(trials_by_form),
        len(record.teachers or {}),
        record.host,
        record.seconds,
        retimed["front"],
        retimed["hypervolume"],
        before["front"],
        before["hypervolume"],
    )
    if contended:
        logger.info(
            "retime: %d of %d measurements were disturbed by other work on %s in all %d attempts (the fastest was "
            "kept): latencies from a busy machine vary; `kdnas retime` on a quiet one compares more closely",
            contended,
            rounds * len(models),
            record.host,
            ATTEMPTS,
        )
    return record


def _where_and_how(config: KDNASConfig, rounds: int, first: LatencyResult | None) -> Retimed:
    """Where and how a re-timing measured (its ``first`` measurement says where): when, on which host and device,
    whether alone on the node, with which settings, and which of each model's rounds it keeps."""
    settings = config.latency
    return Retimed(
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        host=first.host if first else "",
        device=first.device if first else settings.device,
        device_name=first.device_name if first else "",
        isolated=settings.isolate,
        settings=RetimeSettings(
            batch_size=settings.batch_size,
            threads=settings.threads,
            warmup=settings.warmup,
            runs=settings.runs,
            min_run_time_s=settings.min_run_time_s,
            seq_len=config.latency_seq_len,
            rounds=rounds,
            runtime=settings.runtime,
            precision=",".join(settings.precisions),
        ),
        kept="fastest",  # of each model's rounds (fastest_round)
    )


_Form = tuple[StudentArch, str]
"""A student architecture and the precision it is served in."""


def _student_name(arch: StudentArch, precision: str, config: KDNASConfig) -> str:
    """The name a student form is timed under: its architecture, and its precision when the study searches it."""
    return f"student {arch.summary}" + (f" {precision}" if config.latency.searches_precision else "")


def _models_to_time(
    study: optuna.Study, config: KDNASConfig
) -> tuple[dict[_Form, list[int]], dict[str, tuple[torch.nn.Module, int, LatencyConfig]]]:
    """The study's distinct students (architecture and served precision, with the trials of each) and every model to
    time, by name, with its vocabulary size and settings: one freshly built student per form, in its precision, and
    the configured teachers, in the first configured precision (as the search timed them)."""
    task = StudyRecord.of(study).task
    num_labels = len((task.label_names if task else None) or [0, 1])
    trials_by_form: dict[_Form, list[int]] = {}
    for trial in search_feasible_completed(study):
        record = StudentRecord.of(trial)
        if record.arch is not None:
            precision = (record.latency.precision if record.latency else None) or config.latency.precisions[0]
            trials_by_form.setdefault((StudentArch.from_dict(record.arch), precision), []).append(trial.number)
    models: dict[str, tuple[torch.nn.Module, int, LatencyConfig]] = {}
    tokenizer = load_tokenizer(config.student.tokenizer)
    for arch, precision in trials_by_form:
        model = student_model(config, arch, tokenizer, num_labels)
        models[_student_name(arch, precision, config)] = (model, len(tokenizer), config.latency.served_in(precision))
    for teacher_config in config.teachers:
        teacher = load_teacher(config, teacher_config, num_labels, timing_only=True)
        models[f"teacher {teacher.name}"] = (teacher.model, len(teacher.tokenizer), config.latency.served_in())
    return trials_by_form, models


def _timed_rounds(
    models: dict[str, tuple[torch.nn.Module, int, LatencyConfig]], config: KDNASConfig, rounds: int
) -> tuple[dict[str, list[LatencyResult]], int]:
    """Each model timed once per round with its settings, the models interleaved; the results by name, and how many
    measurements were still disturbed after every attempt (their fastest was kept)."""
    medians: dict[str, list[LatencyResult]] = {name: [] for name in models}
    contended = 0
    for round_number in range(rounds):
        for name, (model, vocab_size, settings) in models.items():
            result, trusted = measure_trusted(
                model, vocab_size=vocab_size, settings=settings, seq_len=config.latency_seq_len
            )
            medians[name].append(result)
            contended += not trusted
        logger.info("retime: round %d/%d of %d models done", round_number + 1, rounds, len(models))
    return medians, contended
