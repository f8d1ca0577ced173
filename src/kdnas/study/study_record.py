"""The study's records: its user attrs (:class:`StudyRecord`: the task, the teachers' references, the inheritance
source, the transfer set, the re-timing, the fingerprint and config), a teacher's fit (:class:`TeacherFit`, saved
beside the fitted teacher) and the search record an export ships (:class:`ExportedTrial`).

Typed views of the stored layout (:class:`~kdnas.study.records.AttrRecord`): a study stays plain JSON for Optuna and
optuna-dashboard, and a study from an older kdnas reads with None for what it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import optuna

from kdnas.study.records import (
    CONFIG_ATTR,
    FINGERPRINT_ATTR,
    INHERITANCE_ATTR,
    RETIMED_ATTR,
    STUDY_TEACHERS_ATTR,
    TASK_ATTR,
    TRANSFER_ATTR,
    AttrRecord,
    nested,
    nested_list,
    stored,
)
from kdnas.study.student_record import LatencyDetail, StudentRecord


@dataclass(frozen=True)
class TaskRecord(AttrRecord):
    """The study's task (:data:`TASK_ATTR`): its name, metric and label names."""

    name: str | None = stored()
    metric: str | None = stored()
    label_names: list[str] | None = stored()


@dataclass(frozen=True)
class RanOn(AttrRecord):
    """Where a step ran (``kdnas.teachers.tasks.where``): the node (Ray node id, IP, hostname), the device, whether
    as a Ray task, and for a teacher's fit the precision it trained in."""

    id: str | None = stored()
    ip: str | None = stored()
    hostname: str | None = stored()
    device: str | None = stored()
    device_name: str | None = stored()
    ray_task: bool | None = stored()
    precision: str | None = stored()


@dataclass(frozen=True)
class TeacherRanOn(AttrRecord):
    """Where a teacher was fitted (None: used as it is) and where its logits were computed (None: a cache file
    from before kdnas recorded it)."""

    fit: RanOn | None = nested(RanOn, always=True)
    logits: RanOn | None = nested(RanOn, always=True)


@dataclass(frozen=True)
class TeacherReference(AttrRecord):
    """A teacher's reference point (an item of :data:`STUDY_TEACHERS_ATTR`): its metric on the eval split, measured
    latency (median, and in detail), parameter count, and where it was fitted and labelled."""

    name: str | None = stored()
    model: str | None = stored()
    value: float | None = stored()
    latency_ms: float | None = stored()
    latency: LatencyDetail | None = nested(LatencyDetail)
    params: int | None = stored()
    ran_on: TeacherRanOn | None = nested(TeacherRanOn)


@dataclass(frozen=True)
class TeacherFit(AttrRecord):
    """A teacher's fit, saved beside it (``kdnas_teacher.json``): its settings (:meth:`settings`), the task it was
    fitted on, the training seed it drew its batches with, its metric on the eval split, how long it took and where
    it ran."""

    name: str | None = stored()
    model: str | None = stored()
    fit: dict[str, Any] | None = stored(always=True)
    scratch: dict[str, Any] | None = stored(always=True)
    task: str | None = stored()
    task_fingerprint: str | None = stored()
    max_seq_length: int | None = stored()
    seed: int | None = stored()
    metric: str | None = stored()
    value: float | None = stored()
    fit_seconds: float | None = stored()
    ran_on: RanOn | None = nested(RanOn)

    def settings(self) -> TeacherFit:
        """What makes this fit: the teacher, its fit settings, the task and tokenisation (a saved fit with equal
        settings needs no refit); not its outcome, nor its seed (a study resumed or searched again with another
        ``training.seed`` keeps its fitted teachers)."""
        return TeacherFit(
            name=self.name,
            model=self.model,
            fit=self.fit,
            scratch=self.scratch,
            task=self.task,
            task_fingerprint=self.task_fingerprint,
            max_seq_length=self.max_seq_length,
        )


@dataclass(frozen=True)
class OneLayer(AttrRecord):
    """The teacher layer one-layer students take (``one_layer`` of the inheritance record, and its cache file): the
    layer, the rule (``auto``: chosen by the calibration's scores), each candidate layer's score or error, the
    calibration student and its steps, where it ran."""

    layer: int | None = stored()
    rule: str | None = stored()
    scores: dict[str, float] | None = stored()
    failed: dict[str, str] | None = stored()
    student: str | None = stored()
    steps: int | None = stored()
    ran_on: RanOn | None = nested(RanOn, always=True)

    def scores_line(self, metric: str) -> str:
        """The calibration's outcome per teacher layer, e.g. ``layer 0: accuracy 0.5017, layer 5: accuracy 0.6950``
        (a failed candidate: its error)."""
        scored = [f"layer {layer}: {metric} {value:.4f}" for layer, value in (self.scores or {}).items()]
        failed = [f"layer {layer}: {reason}" for layer, reason in (self.failed or {}).items()]
        return ", ".join(scored + failed)


@dataclass(frozen=True)
class ElasticLoss(AttrRecord):
    """The elastic network's loss at its first step and over its last steps."""

    first: float | None = stored()
    last: float | None = stored()


@dataclass(frozen=True)
class ElasticRecord(AttrRecord):
    """What the study's elastic network's training did (``elastic`` of the inheritance record, and its cache file)."""

    epochs: float | None = stored()
    steps: int | None = stored()
    learning_rate: float | None = stored()
    random_students: int | None = stored()
    students: list[str] | None = stored()
    rows: int | None = stored()
    loss: ElasticLoss | None = nested(ElasticLoss)
    precision: str | None = stored()
    seconds: float | None = stored()
    ran_on: RanOn | None = nested(RanOn)
    cache_file: str | None = stored()


@dataclass(frozen=True)
class Inheritance(AttrRecord):
    """The teacher students are sliced out of (:data:`INHERITANCE_ATTR`): its name, layer rule (``layers``), shape
    and importance ranking (its calibration size and cache file), the layer one-layer students take, the elastic
    network and where the ranking ran."""

    teacher: str | None = stored()
    layers: str | None = stored()
    calibration_size: int | None = stored()
    cache_file: str | None = stored()
    shape: dict[str, int] | None = stored()
    importance: dict[str, Any] | None = stored()
    one_layer: OneLayer | None = nested(OneLayer, always=True)
    elastic: ElasticRecord | None = nested(ElasticRecord, always=True)
    ran_on: RanOn | None = nested(RanOn, always=True)


@dataclass(frozen=True)
class TransferRecord(AttrRecord):
    """The transfer set (:data:`TRANSFER_ATTR`): its size, the texts each source gave, its content fingerprint."""

    size: int | None = stored()
    sources: dict[str, int] | None = stored()
    fingerprint: str | None = stored()


@dataclass(frozen=True)
class RetimeSettings(AttrRecord):
    """How ``kdnas retime`` measured: the latency settings, sequence length, rounds, runtime and precision."""

    batch_size: int | None = stored()
    threads: int | None = stored()
    warmup: int | None = stored()
    runs: int | None = stored()
    min_run_time_s: float | None = stored()
    seq_len: int | None = stored()
    rounds: int | None = stored()
    runtime: str | None = stored()
    precision: str | None = stored()


@dataclass(frozen=True)
class Retimed(AttrRecord):
    """Latencies measured again on one node after the search (:data:`RETIMED_ATTR`): each student's (trial number
    as a string → ms) and teacher's (name → ms), where, when and how, which of each model's rounds was kept
    (``fastest``; None: the median, as an older kdnas kept), and how many measurements stayed contended."""

    at: str | None = stored()
    host: str | None = stored()
    device: str | None = stored()
    device_name: str | None = stored()
    isolated: bool | None = stored()
    settings: RetimeSettings | None = nested(RetimeSettings)
    kept: str | None = stored()
    students: dict[str, float] | None = stored()
    teachers: dict[str, float] | None = stored()
    seconds: float | None = stored()
    contended: int | None = stored()


@dataclass(frozen=True)
class StudyRecord(AttrRecord):
    """The study's user attrs, written once when a search opens it (the re-timing: by ``kdnas retime``)."""

    fingerprint: dict[str, Any] | None = stored(FINGERPRINT_ATTR)
    task: TaskRecord | None = nested(TaskRecord, TASK_ATTR)
    teachers: list[TeacherReference] | None = nested_list(TeacherReference, STUDY_TEACHERS_ATTR)
    inheritance: Inheritance | None = nested(Inheritance, INHERITANCE_ATTR, always=True)
    transfer: TransferRecord | None = nested(TransferRecord, TRANSFER_ATTR, always=True)
    config: dict[str, Any] | None = stored(CONFIG_ATTR)
    retimed: Retimed | None = nested(Retimed, RETIMED_ATTR)

    @classmethod
    def of(cls, study: optuna.Study) -> StudyRecord:
        """The record of ``study`` (its user attrs)."""
        return cls.from_attrs(study.user_attrs)

    def retimed_teachers(self) -> list[TeacherReference]:
        """The teachers' references, each ``latency_ms`` the re-timed one where the study was re-timed."""
        latencies = (self.retimed.teachers if self.retimed else None) or {}
        return [replace(t, latency_ms=latencies.get(t.name or "", t.latency_ms)) for t in self.teachers or []]

    def retimed_students(self) -> dict[int, float]:
        """Trial number → the latency ``kdnas retime`` measured (empty when the study was not re-timed)."""
        latencies = (self.retimed.students if self.retimed else None) or {}
        return {int(number): latency for number, latency in latencies.items()}


@dataclass(frozen=True)
class ExportedTrial(AttrRecord):
    """The search record an export ships (``kdnas_trial.json``), without local paths: the study and trial, its
    objectives and parameters, its record, the study's task and teachers, and the trials that repeat it.

    Of a retrained student, ``objectives`` and ``user_attrs`` are its own and the trial's are kept as
    ``trial_objectives`` and ``trial_user_attrs``; of a re-timed study's trial, ``search_latency_ms`` is the latency
    the search measured."""

    study: str | None = stored()
    trial: int | None = stored()
    retrained: bool | None = stored()
    repeats: list[int] | None = stored()
    objectives: dict[str, float] | None = stored()
    params: dict[str, Any] | None = stored()
    user_attrs: StudentRecord | None = nested(StudentRecord)
    task: TaskRecord | None = nested(TaskRecord, TASK_ATTR, always=True)
    teachers: list[TeacherReference] | None = nested_list(TeacherReference)
    trial_objectives: dict[str, float] | None = stored()
    trial_user_attrs: StudentRecord | None = nested(StudentRecord)
    search_latency_ms: float | None = stored()
