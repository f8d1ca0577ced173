"""The names of what a trial records, defined once, and the typed records built on them.

The keys a worker reports to Tune and the attrs the study keeps are named here. Each record is a frozen dataclass
that alone knows its stored layout: :class:`TrialReport` (a worker's report, laid out as a Tune result),
:class:`TrialTicket` (what the searcher adds to a Tune config), and the :class:`AttrRecord` views of what the study
keeps (:mod:`kdnas.study.student_record`: a trial's attrs; :mod:`kdnas.study.study_record`: the study's). No other
module reads a record by key.

Light on purpose (no torch, Ray or transformers): readers of a study (report, export, ``kdnas trials``, the
dashboard) import their records from here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from optuna.trial import TrialState

if TYPE_CHECKING:
    from kdnas.config import KDNASConfig

# Keys of a worker's Tune result (``search/trial.py`` reports them, ``search/searcher.py`` stores them).
LATENCY_KEY = "latency_ms"
"""The student's measured latency: the second objective."""
EPOCH_KEY = "epoch"
"""The epoch a result was reported after (the scheduler's time attribute)."""
LABEL_PROBABILITY_KEY = "kdnas_label_probability"
"""The mean probability the student gives each eval example's label (what early stopping judges students by)."""
LABEL_PROBABILITY_SE_KEY = "kdnas_label_probability_se"
"""The standard error of :data:`LABEL_PROBABILITY_KEY`."""
COMPLETED_KEY = "kdnas_completed"
"""True on the result of a student that finished training."""
ERROR_KEY = "kdnas_error"
"""A failure inside the trial, as one line."""
ATTRS_KEY = "kdnas_attrs"
"""The user attrs the trial's Optuna record gets (JSON in a string)."""
INFEASIBLE_KEY = "kdnas_infeasible"
"""Why a student over a budget was not trained."""
CONSTRAINTS_KEY = "kdnas_constraints"
"""The student's Optuna constraints (feasible when ≤ 0), JSON in a string."""
TRIAL_NUMBER_KEY = "kdnas_trial_number"
"""The Optuna trial number, in a Tune trial's config."""
PROMOTED_KEY = "kdnas_promoted"
"""True in the Tune config of a trial promoted to full training (see :data:`PROMOTED_ATTR`): never stopped early."""
TRAINED_TWIN_KEY = "kdnas_trained_twin"
"""In the Tune config of a trial whose student the study already trained in another served precision (a searched
``latency.precision``): that trial's number and record; the student is measured and scored, not trained again."""

# Optuna trial user attrs.
FAILURE_ATTR = "failure_reason"
"""Why a FAIL trial failed."""
FAILURE_TRACEBACK_ATTR = "failure_traceback"
"""Where a FAIL trial's error was raised: its worker's traceback (the last 4,000 characters); ``kdnas trials --state
fail`` prints it (a worker's own log stays on its node)."""
PRUNED_ATTR = "pruned_reason"
"""Why a PRUNED trial stopped (infeasible, stopped early, time budget, a repeat of a student still training)."""
RESTARTS_ATTR = "restarts"
"""How often Tune restarted the trial from its checkpoint."""
RETRY_ATTR = "retry_of"
"""On a trial enqueued again after its driver was lost: the number of the trial it retries."""
RECIPE_ATTR = "recipe"
"""Hash of the configuration the trial's student was (or is being) trained under."""
REPEAT_OF_ATTR = "duplicate_of"
"""On a repeat: the number of the trial whose student it is."""
WEIGHTS_OF_ATTR = "weights_of"
"""On a student served in another precision than the trial that trained it (a searched ``latency.precision``): that
trial's number. Its weights, recipe and training record are that trial's; its latency and served metric its own."""
PROMOTED_ATTR = "promoted_from"
"""On a trial that trains in full a student the study had stopped early (once a run has tried every student of the
space): the number of the trial that stopped."""
STOPPED_EARLY_REASON = "stopped early after epoch"
"""How the reason of a student stopped early by the scheduler begins."""
PARAMS_CONSTRAINT = "params"
"""The constraint (and attr) of the student's parameter count."""

# The user attrs of a student's record (a trial's ``TrialReport.attrs``), as the README's "Storage" table lists them.
ARCH_ATTR = "arch"
"""The architecture as ``StudentArch.to_dict()``."""
ARCH_SUMMARY_ATTR = "arch_summary"
"""The architecture in one short line, e.g. ``L2-H128-A4-F256``."""
ENCODER_PARAMS_ATTR = "encoder_params"
"""The encoder's parameter count (the total is :data:`PARAMS_CONSTRAINT`)."""
FLOPS_ATTR = "flops"
"""The encoder's FLOPs at the latency sequence length."""
LATENCY_ATTR = "latency"
"""The latency measurement in detail (median, p90, IQR, device, threads, batch, sequence length, runs, cached)."""
INIT_ATTR = "init"
"""How the student was initialised: sliced out of a teacher (which layers, heads, neurons) or random, and why."""
LEARNING_RATE_ATTR = "learning_rate"
"""The learning rate the student trained with."""
TRAIN_ROWS_ATTR = "train_rows"
"""The rows it trained on: ``{"labelled": n, "transfer": m}``."""
KD_ATTR = "kd"
"""The distillation recipe as applied (combiner, weights, temperature, intermediate layers)."""
TEACHERS_ATTR = "teachers"
"""The names of the teachers it learnt from."""
EPOCHS_TRAINED_ATTR = "epochs_trained"
"""Epochs it trained (0 for a student over a budget; fewer than configured for one stopped early)."""
TRAIN_DEVICE_ATTR = "train_device"
"""The device it trained on."""
TRAIN_PRECISION_ATTR = "train_precision"
"""The precision it trained and was evaluated in: ``fp32``, ``bf16`` or ``fp16`` (``training.precision`` resolved)."""
NODE_ATTR = "node"
"""The Ray node it was measured and trained on: ``{"id", "ip", "hostname"}``."""
TRAIN_STARTED_ATTR = "train_started_at"
"""When (Unix time) its training started, after it was built and measured."""
TRAIN_FINISHED_ATTR = "train_finished_at"
"""When (Unix time) its training, the evaluation after each epoch and saving it finished."""
STUDENT_PATH_ATTR = "student_path"
"""The directory the trained student was saved to."""
STUDENT_DIGEST_ATTR = "student_sha256"
"""SHA-256 of the saved student's files (:data:`STUDENT_FILES`): what an export checks it ships."""
LEARNING_CURVE_ATTR = "learning_curve"
"""Each evaluation during training, in order: ``[epochs, metric, seconds, label probability, its standard error]``
(epochs trained, a fraction at a rung inside an epoch; the task metric; training seconds so far, evaluations
included; the mean probability given each eval example's label, :class:`~kdnas.student.training.Evaluation`;
a point may hold only the first three: its label probability is then unknown). A student stopped early has the
points up to its stop: how well early points rank final ones is what early stopping rests on."""
SLICE_METRIC_ATTR = "slice_metric"
"""The student as initialised, scored before any training: ``{"value": metric, "label_probability": mean,
"seconds": to compute}`` (a cheap signal of how well it will rank after training)."""
RESTART_ATTR = "restart"
"""On a student whose predictions collapsed after its first epoch and that trained again from its initial weights at
half the learning rate: ``{"reason", "after_epoch", "metric"}`` and the first attempt's :data:`LEARNING_RATE_ATTR`
and :data:`LEARNING_CURVE_ATTR`; the trial's own are the second attempt's."""
COLLAPSED_ATTR = "collapsed"
"""On a student whose last evaluation had collapsed (one class predicted for every eval example, or the metric no
better than the majority class's): why. Such a student is kept off the Pareto front and never exported by choice."""
SERVED_ATTR = "served"
"""With ``latency.runtime: onnxruntime``: the student scored as served (``runtime``, ``precision``, ``metric``: the
trial's value; per precision ``{"metric", "agreement", "drop"}`` beside the PyTorch predictions; with int8,
``int8_exceeds_tolerance``; ``seconds``). Its ONNX graphs lie beside its saved files."""

# Optuna trial system attrs and study user attrs.
DRIVER_ATTR = "kdnas:driver"
"""System attr: the driver process that runs the trial."""
HEARTBEAT_ATTR = "kdnas:heartbeat"
"""System attr: when (Unix time, the driver's clock) the trial's driver last recorded that it still runs the trial."""
FINGERPRINT_ATTR = "fingerprint"
"""Study user attr: what makes its students comparable (a flat ``{key: value}`` dict)."""
TASK_ATTR = "task"
"""Study user attr: the task (``{"name": …, "metric": …, "label_names": […]}``)."""
STUDY_TEACHERS_ATTR = "teachers"
"""Study user attr: each teacher's reference record (name, model, metric value, ``latency_ms``, ``params``)."""
INHERITANCE_ATTR = "inheritance"
"""Study user attr: the teacher students are sliced out of, its shape, layer rule and importance ranking (or None)."""
TRANSFER_ATTR = "transfer"
"""Study user attr: the transfer set's size, sources and fingerprint (or None without one)."""
CONFIG_ATTR = "config"
"""Study user attr: the kdnas config the study was created with (``dump_config``, the storage URL masked)."""
RETIMED_ATTR = "retimed"
"""Study user attr: latencies measured again on one node after the search (``kdnas retime``): ``students``
(trial number → ms), ``teachers`` (name → ms), and where, when and how they were taken."""

STUDENT_FILES = ("config.json", "model.safetensors")
"""The files of a saved student."""


# --- typed views of stored records ----------------------------------------------------------------------------------

_PLACE = "kdnas.place"


@dataclass(frozen=True)
class _Place:
    """Where an :class:`AttrRecord` field is stored (``key``; None: the field's name), how its stored value is read
    and written, and whether it is written when None (its writer always records it, None included)."""

    key: str | None
    read: Callable[[Any], Any]
    write: Callable[[Any], Any]
    always: bool


def _as_is(value: Any) -> Any:
    return value


def stored(key: str | None = None, *, always: bool = False) -> Any:
    """A field stored as it is under ``key`` (default: the field's name)."""
    return field(default=None, metadata={_PLACE: _Place(key, _as_is, _as_is, always)})


def nested(record: type[AttrRecord], key: str | None = None, *, always: bool = False) -> Any:
    """A field stored as ``record``'s layout under ``key`` (default: the field's name)."""
    return field(default=None, metadata={_PLACE: _Place(key, record.from_attrs, _layout, always)})


def converted(read: Callable[[Any], Any], write: Callable[[Any], Any], key: str | None = None) -> Any:
    """A field stored under ``key`` (default: the field's name) as ``write(value)``, read back as ``read(stored)``."""
    return field(default=None, metadata={_PLACE: _Place(key, read, write, False)})


def nested_list(record: type[AttrRecord], key: str | None = None) -> Any:
    """A field stored as a list of ``record`` layouts under ``key`` (default: the field's name)."""

    def read(values: list[Mapping[str, Any]]) -> list[AttrRecord]:
        return [record.from_attrs(value) for value in values]

    return converted(read, _layouts, key)


def _layout(record: AttrRecord) -> dict[str, Any]:
    return record.to_attrs()


def _layouts(records: list[AttrRecord]) -> list[dict[str, Any]]:
    return [record.to_attrs() for record in records]


_PLACES: dict[type, tuple[tuple[str, str, _Place], ...]] = {}


def _places(cls: type) -> tuple[tuple[str, str, _Place], ...]:
    """Each stored field of the record class ``cls``: its name, its key and its place (worked out once)."""
    places = _PLACES.get(cls)
    if places is None:
        declared = [(f.name, f.metadata[_PLACE]) for f in fields(cls) if _PLACE in f.metadata]
        places = _PLACES[cls] = tuple((name, place.key or name, place) for name, place in declared)
    return places


@dataclass(frozen=True)
class AttrRecord:
    """A typed view of a JSON record kdnas stores (a trial's or the study's user attrs, a part of one, a file).

    Each field is declared with the key it is stored under (:func:`stored`, :func:`nested`, :func:`nested_list`,
    :func:`converted`) and is None when its key is absent: a record from an older kdnas reads with None for what it
    lacks. ``extra`` keeps, as they are, the keys the type does not name and the Nones it would not write back, so
    that ``to_attrs(from_attrs(stored)) == stored``: the layout readers such as optuna-dashboard see never changes.
    """

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any] | None) -> Self:
        """The record stored as ``attrs`` (None: an empty record)."""
        rest = dict(attrs or {})
        values = {}
        for name, key, place in _places(cls):
            if key not in rest:
                continue
            value = rest[key]
            if value is not None:
                values[name] = place.read(value)
            if value is not None or place.always:  # a None it would not write stays in extra
                del rest[key]
        return cls(**values, extra=rest)

    def to_attrs(self) -> dict[str, Any]:
        """The record as it is stored: each field that is not None (or is written always) under its key."""
        written = {}
        for name, key, place in _places(type(self)):
            value = getattr(self, name)
            if value is not None:
                written[key] = place.write(value)
            elif place.always:
                written[key] = None
        return {**self.extra, **written}


@dataclass(frozen=True)
class Outcome:
    """How a trial is told to Optuna: its state, values, user attrs, reason (PRUNED or FAIL) and constraints."""

    state: TrialState
    values: list[float] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    constraints: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialReport:
    """What a trial's worker reports: after each epoch, and once more at its end.

    ``value`` is the task metric on the eval split and ``latency_ms`` the student's measured latency (the study's two
    objectives; NaN when not measured), ``epoch`` the epochs trained so far (None before the first; a fraction at a rung
    inside an epoch), ``label_probability`` the mean probability the student gives the eval split's labels and its
    standard error (what early stopping judges by; None when not evaluated). The last report of a student that trained
    its full budget is ``completed``; one that failed carries ``error`` (one line), one over a latency or size budget
    (measured, never trained) ``infeasible`` (why). ``attrs`` are the user attrs its Optuna trial gets (see the
    ``*_ATTR`` names), ``constraints`` its budget constraints (feasible when ≤ 0).

    It travels through Ray Tune as a flat dict (:meth:`to_result`, :meth:`from_result`). The keys Tune's scheduler
    and the searcher read are plain scalars: the metric under the task's metric name, :data:`LATENCY_KEY`,
    :data:`EPOCH_KEY` (the scheduler's time attribute). ``attrs`` and ``constraints`` travel as JSON strings, not
    nested dicts: Tune flattens every result (``ray.tune.utils.flatten_dict``) before its scheduler and searcher see
    it, so nested dicts would arrive as one key per leaf (``kdnas_attrs/latency/median_ms``) with empty dicts (no
    constraints) dropped, and its CSV logger fixes a trial's columns at its first result, so the attrs only the last
    report has would be cut from ``progress.csv``. A JSON string stays one value, read back whole.
    """

    value: float = math.nan
    latency_ms: float = math.nan
    epoch: float | None = None
    completed: bool = False
    error: str | None = None
    infeasible: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    constraints: dict[str, float] = field(default_factory=dict)
    label_probability: tuple[float, float] | None = None

    def to_result(self, metric: str) -> dict[str, Any]:
        """The Tune result of this report, with the metric under the name ``metric``.

        The metric and latency are always there (Tune wants every reported objective); the other keys only when they
        say something, and the constraints with every final report (completed or infeasible), even when there are
        none.
        """
        result: dict[str, Any] = {metric: self.value, LATENCY_KEY: self.latency_ms}
        if self.epoch is not None:
            result[EPOCH_KEY] = self.epoch
        if self.label_probability is not None:
            result[LABEL_PROBABILITY_KEY], result[LABEL_PROBABILITY_SE_KEY] = self.label_probability
        if self.completed:
            result[COMPLETED_KEY] = True
        if self.error is not None:
            result[ERROR_KEY] = self.error
        if self.infeasible is not None:
            result[INFEASIBLE_KEY] = self.infeasible
        if self.constraints or self.completed or self.infeasible is not None:
            result[CONSTRAINTS_KEY] = json.dumps(self.constraints)
        if self.attrs:
            result[ATTRS_KEY] = json.dumps(self.attrs)
        return result

    @classmethod
    def from_result(cls, result: Mapping[str, Any] | None, metric: str) -> TrialReport:
        """The report in a Tune result (or in none: an empty report), its metric read under the name ``metric``.

        Keys Tune adds (``time_total_s``, ``config``, …) are ignored; a missing or non-numeric metric or latency
        reads as NaN.
        """
        result = result or {}
        epoch = result.get(EPOCH_KEY)
        return cls(
            value=_number(result.get(metric)),
            latency_ms=_number(result.get(LATENCY_KEY)),
            epoch=None if epoch is None else epoch_count(epoch),
            label_probability=_label_probability(result),
            completed=bool(result.get(COMPLETED_KEY)),
            error=str(result[ERROR_KEY]) if ERROR_KEY in result else None,
            infeasible=str(result[INFEASIBLE_KEY]) if INFEASIBLE_KEY in result else None,
            attrs=_json_dict(result.get(ATTRS_KEY)),
            constraints=_json_dict(result.get(CONSTRAINTS_KEY)),
        )


def _label_probability(result: Mapping[str, Any]) -> tuple[float, float] | None:
    if LABEL_PROBABILITY_KEY not in result:
        return None
    return _number(result[LABEL_PROBABILITY_KEY]), _number(result.get(LABEL_PROBABILITY_SE_KEY))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _json_dict(value: Any) -> dict[str, Any]:
    """A dict sent as JSON text (or, from a caller that kept it, as a dict); empty when absent."""
    if value is None:
        return {}
    return dict(json.loads(value) if isinstance(value, str) else value)


def tune_results(config: KDNASConfig) -> dict[int, dict[str, Any]]:
    """The last result Ray Tune recorded for each trial of ``config``'s search, by Optuna trial number.

    Read from the ``result.json`` files of the Tune experiment ``search.study_dir`` under ``search.storage_path``
    (default ``<output_dir>/ray_results``; a local path), so each holds Tune's own keys (``time_total_s``,
    ``training_iteration``, ``config``, …) beside the trial's report (:meth:`TrialReport.from_result` reads that).
    A trial Tune ran more than once (a resumed search) gives its latest result.
    """
    storage = config.search.storage_path or Path(config.output_dir).resolve() / "ray_results"
    results: dict[int, dict[str, Any]] = {}
    for path in sorted(
        (Path(storage) / config.search.study_dir).glob("*/result.json"), key=lambda p: p.stat().st_mtime
    ):
        last = None
        for line in path.read_text().splitlines():
            if line.strip():
                last = json.loads(line)
        number = (last or {}).get("config", {}).get(TRIAL_NUMBER_KEY)
        if last is not None and number is not None:
            results[int(number)] = last
    return results


def epoch_count(value: Any) -> float:
    """An epoch count as kdnas reports it: an int when whole (1, 2, …), else the fraction (0.25)."""
    epoch = float(value)
    return int(epoch) if epoch.is_integer() else epoch


@dataclass(frozen=True)
class Retrained:
    """A trial's architecture trained again with the study's recipe (``export --retrain``), and what it scored."""

    path: Path
    value: float
    latency_ms: float
    attrs: dict[str, Any]  # its user attrs (:class:`~kdnas.study.student_record.StudentRecord`'s layout)


@dataclass(frozen=True)
class CurvePoint:
    """One evaluation of a student during training, as its :data:`LEARNING_CURVE_ATTR` holds it (a list, so that
    the study stays readable without kdnas): epochs trained, the task metric, training seconds so far, and the mean
    label probability with its standard error (None in a point that has only the first three)."""

    epochs: float
    metric: float
    seconds: float
    label_probability: float | None = None
    label_probability_se: float | None = None

    @classmethod
    def from_attr(cls, point: list[float]) -> CurvePoint:
        """The point a learning curve holds as ``point`` (its numbers as they are: ``to_attr`` gives it back)."""
        return cls(*point[:5])

    def to_attr(self) -> list[float]:
        """The point as a learning curve holds it."""
        optional = [x for x in (self.label_probability, self.label_probability_se) if x is not None]
        return [self.epochs, self.metric, self.seconds, *optional]


def curve(key: str) -> Any:
    """An :class:`AttrRecord` field holding a learning curve: :class:`CurvePoint` s stored as lists under ``key``."""
    return converted(_read_curve, _write_curve, key)


def _read_curve(points: list[list[float]]) -> list[CurvePoint]:
    return [CurvePoint.from_attr(point) for point in points]


def _write_curve(points: list[CurvePoint]) -> list[list[float]]:
    return [point.to_attr() for point in points]


@dataclass(frozen=True)
class TrainedTwin(AttrRecord):
    """The trained student a trial serves in its own precision (:data:`TRAINED_TWIN_KEY`): the trial that trained it
    and that trial's user attrs."""

    number: int | None = stored()
    attrs: dict[str, Any] | None = stored()


@dataclass(frozen=True)
class TrialTicket(AttrRecord):
    """What the searcher adds to a student's Tune config: the number of its Optuna trial, and True on a student
    promoted to full training (see :data:`PROMOTED_KEY`). The student's parameters are the config's other keys
    (``extra``)."""

    number: int | None = stored(TRIAL_NUMBER_KEY)
    promoted: bool | None = stored(PROMOTED_KEY)
    trained_twin: TrainedTwin | None = nested(TrainedTwin, TRAINED_TWIN_KEY)
