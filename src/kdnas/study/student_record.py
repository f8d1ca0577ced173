"""A trial's record: the user attrs its Optuna trial carries (:class:`StudentRecord`, with typed parts where they are
structured) and the system attrs that say which driver runs it (:class:`TrialClaim`).

Typed views of the stored layout (:class:`~kdnas.study.records.AttrRecord`): a study stays plain JSON for Optuna and
optuna-dashboard, and a trial from an older kdnas reads with None for what it lacks.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial

from kdnas.study.records import (
    ARCH_ATTR,
    ARCH_SUMMARY_ATTR,
    COLLAPSED_ATTR,
    DRIVER_ATTR,
    ENCODER_PARAMS_ATTR,
    EPOCHS_TRAINED_ATTR,
    FAILURE_ATTR,
    FAILURE_TRACEBACK_ATTR,
    FLOPS_ATTR,
    HEARTBEAT_ATTR,
    INIT_ATTR,
    KD_ATTR,
    LATENCY_ATTR,
    LEARNING_CURVE_ATTR,
    LEARNING_RATE_ATTR,
    NODE_ATTR,
    PARAMS_CONSTRAINT,
    PROMOTED_ATTR,
    PRUNED_ATTR,
    RECIPE_ATTR,
    REPEAT_OF_ATTR,
    RESTART_ATTR,
    RESTARTS_ATTR,
    RETRY_ATTR,
    SERVED_ATTR,
    SLICE_METRIC_ATTR,
    STUDENT_DIGEST_ATTR,
    STUDENT_PATH_ATTR,
    TEACHERS_ATTR,
    TRAIN_DEVICE_ATTR,
    TRAIN_FINISHED_ATTR,
    TRAIN_PRECISION_ATTR,
    TRAIN_ROWS_ATTR,
    TRAIN_STARTED_ATTR,
    WEIGHTS_OF_ATTR,
    AttrRecord,
    CurvePoint,
    converted,
    curve,
    nested,
    stored,
)


@dataclass(frozen=True)
class LatencyDetail(AttrRecord):
    """A latency measurement (``LatencyResult.to_dict()``): a student's :data:`LATENCY_ATTR`, a teacher's
    ``latency``."""

    median_ms: float | None = stored()
    p90_ms: float | None = stored()
    iqr_ms: float | None = stored()
    device: str | None = stored()
    device_name: str | None = stored()
    threads: int | None = stored()
    batch_size: int | None = stored()
    seq_len: int | None = stored()
    runs: int | None = stored()
    warmup: int | None = stored()
    min_run_time_s: float | None = stored()
    isolated: bool | None = stored()
    host: str | None = stored()
    cached: bool | None = stored()
    p10_ms: float | None = stored()
    runtime: str | None = stored()
    precision: str | None = stored()
    runtime_version: str | None = stored()
    cpu_flags: str | None = stored()


@dataclass(frozen=True)
class Node(AttrRecord):
    """The Ray node a student was measured and trained on (:data:`NODE_ATTR`)."""

    id: str | None = stored()
    ip: str | None = stored()
    hostname: str | None = stored()


@dataclass(frozen=True)
class SliceMetric(AttrRecord):
    """The student as initialised, scored before training (:data:`SLICE_METRIC_ATTR`): the task metric, the mean
    label probability, and the seconds scoring took."""

    value: float | None = stored()
    label_probability: float | None = stored()
    seconds: float | None = stored()


@dataclass(frozen=True)
class RampRecord(AttrRecord):
    """A value scheduled from ``start`` to ``end`` over training (a ramped α, temperature or intermediate weight)."""

    start: float | None = stored()
    end: float | None = stored()


def _read_schedule(value: Any) -> float | RampRecord:
    return RampRecord.from_attrs(value) if isinstance(value, Mapping) else value


def _write_schedule(value: float | RampRecord) -> Any:
    return value.to_attrs() if isinstance(value, RampRecord) else value


def _scheduled(key: str | None = None) -> Any:
    """A field holding a constant or a :class:`RampRecord`."""
    return converted(_read_schedule, _write_schedule, key)


@dataclass(frozen=True)
class IntermediateRecipe(AttrRecord):
    """The intermediate-layer KD part of a recipe: whether it is on, its layer map and its weight."""

    enabled: bool | None = stored()
    layer_map: str | list[int] | None = stored()
    weight: float | RampRecord | None = _scheduled()


@dataclass(frozen=True)
class KDRecipe(AttrRecord):
    """The distillation recipe as applied (:data:`KD_ATTR`): the config's ``kd`` section (its other keys in
    ``extra``), with the learned teacher weights and intermediate layer maps where used."""

    combiner: str | None = stored()
    teacher_weights: list[float] | None = stored()
    learned_teacher_weights: list[float] | None = stored()
    temperature: float | RampRecord | None = _scheduled()
    alpha: float | RampRecord | None = _scheduled()
    intermediate: IntermediateRecipe | None = nested(IntermediateRecipe)


@dataclass(frozen=True)
class InitRecord(AttrRecord):
    """How a student was initialised (:data:`INIT_ATTR`): ``init`` (``inherited``, ``partial`` or ``random``), the
    teacher it was sliced out of (``elastic``: of its elastic network), the layer rule and teacher layers taken, and
    ``random``: each part left random with why. What else was taken (heads, channels) is in ``extra``."""

    init: str | None = stored()
    teacher: str | None = stored()
    rule: str | None = stored()
    elastic: bool | None = stored()
    layers: list[int] | None = stored()
    random: dict[str, str] | None = stored()


@dataclass(frozen=True)
class Restart(AttrRecord):
    """A student trained again from its initial weights at half the rate after its first epoch collapsed
    (:data:`RESTART_ATTR`): why, after which epoch, its metric then, and the first attempt's rate and curve."""

    reason: str | None = stored()
    after_epoch: int | None = stored()
    metric: float | None = stored()
    learning_rate: float | None = stored(LEARNING_RATE_ATTR)
    learning_curve: list[CurvePoint] | None = curve(LEARNING_CURVE_ATTR)


@dataclass(frozen=True)
class TrainRows(AttrRecord):
    """The rows a student trained on (:data:`TRAIN_ROWS_ATTR`): labelled, transfer, and the transfer rows drawn
    each epoch when ``data.transfer.per_epoch`` samples them."""

    labelled: int | None = stored()
    transfer: int | None = stored()
    transfer_per_epoch: int | None = stored()


@dataclass(frozen=True)
class ServedScore(AttrRecord):
    """A student scored in one served precision: its metric, the share of rows it predicts as PyTorch does, and its
    drop below the PyTorch metric."""

    metric: float | None = stored()
    agreement: float | None = stored()
    drop: float | None = stored()


@dataclass(frozen=True)
class Served(AttrRecord):
    """A student scored as it is served (:data:`SERVED_ATTR`, ``latency.runtime: onnxruntime``): the runtime, the
    precision it is served in and that precision's ``metric`` (the trial's value), each precision's
    :class:`ServedScore`, whether int8 fell past ``latency.int8_tolerance``, and the seconds it took."""

    runtime: str | None = stored()
    precision: str | None = stored()
    metric: float | None = stored()
    fp32: ServedScore | None = nested(ServedScore)
    int8: ServedScore | None = nested(ServedScore)
    int8_exceeds_tolerance: bool | None = stored()
    seconds: float | None = stored()


@dataclass(frozen=True)
class StudentRecord(AttrRecord):
    """The user attrs of a trial (see the ``*_ATTR`` names in :mod:`kdnas.study.records` and the README's "Storage"
    table): the student's cost, how it was initialised and trained, where it is saved, and what became of its trial."""

    arch: dict[str, int] | None = stored(ARCH_ATTR)
    arch_summary: str | None = stored(ARCH_SUMMARY_ATTR)
    params: int | None = stored(PARAMS_CONSTRAINT)
    encoder_params: int | None = stored(ENCODER_PARAMS_ATTR)
    flops: int | None = stored(FLOPS_ATTR)
    latency: LatencyDetail | None = nested(LatencyDetail, LATENCY_ATTR)
    node: Node | None = nested(Node, NODE_ATTR)
    init: InitRecord | None = nested(InitRecord, INIT_ATTR)
    slice_metric: SliceMetric | None = nested(SliceMetric, SLICE_METRIC_ATTR)
    learning_rate: float | None = stored(LEARNING_RATE_ATTR)
    epochs_trained: float | None = stored(EPOCHS_TRAINED_ATTR)
    learning_curve: list[CurvePoint] | None = curve(LEARNING_CURVE_ATTR)
    restart: Restart | None = nested(Restart, RESTART_ATTR)
    collapsed: str | None = stored(COLLAPSED_ATTR)
    served: Served | None = nested(Served, SERVED_ATTR)
    train_rows: TrainRows | None = nested(TrainRows, TRAIN_ROWS_ATTR)
    kd: KDRecipe | None = nested(KDRecipe, KD_ATTR)
    teachers: list[str] | None = stored(TEACHERS_ATTR)
    train_device: str | None = stored(TRAIN_DEVICE_ATTR)
    train_precision: str | None = stored(TRAIN_PRECISION_ATTR)
    train_started_at: float | None = stored(TRAIN_STARTED_ATTR)
    train_finished_at: float | None = stored(TRAIN_FINISHED_ATTR)
    student_path: str | None = stored(STUDENT_PATH_ATTR)
    student_sha256: str | None = stored(STUDENT_DIGEST_ATTR)
    recipe: str | None = stored(RECIPE_ATTR)
    repeat_of: int | None = stored(REPEAT_OF_ATTR)
    promoted_from: int | None = stored(PROMOTED_ATTR)
    weights_of: int | None = stored(WEIGHTS_OF_ATTR)
    retry_of: int | None = stored(RETRY_ATTR)
    restarts: int | None = stored(RESTARTS_ATTR)
    pruned_reason: str | None = stored(PRUNED_ATTR)
    failure_reason: str | None = stored(FAILURE_ATTR)
    failure_traceback: str | None = stored(FAILURE_TRACEBACK_ATTR)

    @classmethod
    def of(cls, trial: FrozenTrial) -> StudentRecord:
        """The record of ``trial`` (its user attrs)."""
        return cls.from_attrs(trial.user_attrs)

    @property
    def label(self) -> str:
        """The student in one short line: its architecture, and ``int8`` when it is served quantised (e.g.
        ``L2-H128-A4-F256 int8``)."""
        served = " int8" if self.served is not None and self.served.precision == "int8" else ""
        return (self.arch_summary or "?") + served

    @property
    def reason(self) -> str | None:
        """Why the trial failed, else why it was pruned (None for neither)."""
        return self.failure_reason or self.pruned_reason


@dataclass(frozen=True)
class DriverId(AttrRecord):
    """A search driver: its host and process id (:data:`DRIVER_ATTR`)."""

    host: str | None = stored()
    pid: int | None = stored()

    @classmethod
    def current(cls) -> DriverId:
        """This process, as the driver of the trials it runs."""
        return cls(host=socket.gethostname(), pid=os.getpid())


@dataclass(frozen=True)
class TrialClaim(AttrRecord):
    """The system attrs kdnas keeps on a trial (Optuna's own are in ``extra``): the driver that runs it and when that
    driver last recorded that it still does (Unix time, the driver's clock)."""

    driver: DriverId | None = nested(DriverId, DRIVER_ATTR)
    heartbeat: float | None = stored(HEARTBEAT_ATTR)

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialClaim:
        """The claim on ``trial`` (from its system attrs)."""
        return cls.from_attrs(trial.system_attrs)
