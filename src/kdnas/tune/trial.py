"""One student trial, runnable without Ray: build the arch, time it, distil it from cached teacher logits, save it.

Also the public way to train one student outside a search (:func:`prepare_students`, :func:`train_student`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from kdnas.config import INHERITED_LEARNING_RATE, RANDOM_LEARNING_RATE, KDConfig, KDNASConfig, Ramp
from kdnas.distill.distillation import Distillation
from kdnas.distill.intermediate import IntermediateDistiller, expose_attention
from kdnas.latency.cache import measure_cached
from kdnas.latency.timing import LatencyResult
from kdnas.outputs import missing_student_files, student_digest
from kdnas.student import StudentArch
from kdnas.student.batches import Encoded, head, predict_logits
from kdnas.student.inheritance import InheritanceSource, inherit
from kdnas.student.metrics import majority_level
from kdnas.student.precision import resolve_precision
from kdnas.student.space import PRECISION_PARAM, kd_recipe
from kdnas.student.training import EpochRows, evaluation_of, train
from kdnas.study.records import LATENCY_KEY, PARAMS_CONSTRAINT, CurvePoint, TrainedTwin, TrialReport, TrialTicket
from kdnas.study.student_record import (
    InitRecord,
    KDRecipe,
    LatencyDetail,
    Node,
    Restart,
    SliceMetric,
    StudentRecord,
    TrainRows,
)
from kdnas.teachers.loading import load_tokenizer
from kdnas.tune.rungs import mid_epoch_steps
from kdnas.tune.served import load_trained_twin, score_served

logger = logging.getLogger(__name__)

Report = Callable[[dict[str, Any]], None]
Checkpoint = Callable[[dict[str, Any], dict[str, Any]], None]
"""``checkpoint(metrics, state)``: report ``metrics`` together with the resumable training ``state``."""


@dataclass(frozen=True)
class TrialInputs:
    """What every trial of a study shares; built once by the driver (Ray ships it through its object store)."""

    config: KDNASConfig
    metric: str
    label_names: tuple[str, ...]
    train: Encoded
    eval: Encoded
    teacher_names: tuple[str, ...]
    teacher_logits: torch.Tensor  # [K, N_train, C], row-aligned with ``train``
    students_dir: str  # absolute
    intermediate_teachers: tuple[tuple[str, PreTrainedModel], ...] = ()  # those sharing the student's tokenizer
    latency_cache_dir: str | None = None  # absolute; None: measure every student afresh
    inherit: InheritanceSource | None = None  # the teacher students are sliced out of; None: random init
    transfer_rows: int = 0  # the last rows of ``train``: the transfer set (unlabelled, KD only)
    teacher_values: tuple[float, ...] = ()  # the teachers' metric on ``eval``; (): not known

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def student_dir(inputs: TrialInputs, trial_number: int) -> Path:
    """Where the student of Optuna trial ``trial_number`` is saved."""
    return Path(inputs.students_dir) / f"trial-{trial_number:04d}"


def budget_constraints(config: KDNASConfig, latency_ms: float, params: int) -> dict[str, float]:
    """Optuna constraints (feasible when ≤ 0) for the configured budgets: latency and total parameter count."""
    budget, max_params = config.latency.budget_ms, config.student.max_params
    latency = {} if budget is None else {LATENCY_KEY: latency_ms - budget}
    size = {} if max_params is None else {PARAMS_CONSTRAINT: float(params - max_params)}
    return {**latency, **size}


def over_budget(config: KDNASConfig, latency_ms: float, params: int) -> str:
    """What a student exceeds, e.g. ``latency 3.2 ms > budget 1 ms`` (empty when it is feasible)."""
    budget, max_params = config.latency.budget_ms, config.student.max_params
    over = []
    if budget is not None and latency_ms > budget:
        over.append(f"latency {latency_ms:.3g} ms > budget {budget:g} ms")
    if max_params is not None and params > max_params:
        over.append(f"{params:,} parameters > student.max_params {max_params:,}")
    return "; ".join(over)


@dataclass(frozen=True)
class MeasuredStudent:
    """A freshly built student with its cost (arch, parameters, FLOPs, measured latency) and budget constraints."""

    model: PreTrainedModel
    tokenizer: Any
    latency: LatencyResult
    cost: StudentRecord
    constraints: dict[str, float]
    over_budget: str  # empty when feasible


def build_and_measure(arch: StudentArch, inputs: TrialInputs) -> MeasuredStudent:
    """Build ``arch`` as an HF classifier and measure it (latency cached), before any training."""
    config = inputs.config
    tokenizer = load_tokenizer(config.student.tokenizer)
    torch.manual_seed(config.training.seed)
    max_positions = max(config.data.max_seq_length, config.latency_seq_len)
    model = arch.build(tokenizer, inputs.num_labels, max_positions=max_positions)
    model.config.id2label = dict(enumerate(inputs.label_names))
    model.config.label2id = {name: i for i, name in enumerate(inputs.label_names)}
    latency = measure_cached(
        model,
        model_key={"arch": arch.to_dict(), "vocab_size": len(tokenizer), "num_labels": inputs.num_labels},
        vocab_size=len(tokenizer),
        settings=config.latency,
        seq_len=config.latency_seq_len,
        cache_dir=Path(inputs.latency_cache_dir) if inputs.latency_cache_dir else None,
    )
    params = sum(p.numel() for p in model.parameters())
    cost = StudentRecord(
        arch=arch.to_dict(),
        arch_summary=arch.summary,
        params=params,
        encoder_params=sum(p.numel() for p in model.bert.encoder.parameters()),
        flops=arch.encoder_flops(config.latency_seq_len),
        latency=LatencyDetail.from_attrs(latency.to_dict()),
    )
    constraints = budget_constraints(config, latency.median_ms, params)
    over = over_budget(config, latency.median_ms, params)
    return MeasuredStudent(model, tokenizer, latency, cost, constraints, over)


def initialise(model: PreTrainedModel, inputs: TrialInputs) -> dict[str, Any]:
    """Slice ``model`` out of the inheritance teacher (in place), or leave it random; the record says which."""
    if inputs.inherit is None:
        reason = (
            "student.inherit.enabled is false"
            if not inputs.config.student.inherit.enabled
            else "no BERT teacher uses the students' vocabulary"
        )
        return {"init": "random", "random": {"all": reason}}
    return inherit(model, inputs.inherit)


def learning_rate(config: KDNASConfig, params: dict[str, Any], init: dict[str, Any]) -> float:
    """The sampled learning rate, else ``training.learning_rate``, else the default for the student's init (its
    :class:`~kdnas.study.student_record.InitRecord`'s layout, as :func:`initialise` returns it)."""
    if "learning_rate" in params:
        return float(params["learning_rate"])
    if config.training.learning_rate is not None:
        return config.training.learning_rate
    return RANDOM_LEARNING_RATE if InitRecord.from_attrs(init).init == "random" else INHERITED_LEARNING_RATE


def training_rows(kd: KDConfig, inputs: TrialInputs) -> Encoded:
    """The rows a student trains on: labelled and transfer rows, or labelled only when it learns no KD (α = 1)."""
    no_kd = not isinstance(kd.alpha, Ramp) and kd.alpha >= 1.0 and not kd.intermediate.enabled
    if no_kd and inputs.transfer_rows:
        return head(inputs.train, len(inputs.train) - inputs.transfer_rows)
    return inputs.train


def epoch_rows(config: KDNASConfig, inputs: TrialInputs, rows: Encoded) -> EpochRows | None:
    """Each epoch's rows when ``data.transfer.per_epoch`` samples the transfer set (None: every row every epoch)."""
    per_epoch = config.data.transfer.per_epoch
    labelled = len(inputs.train) - inputs.transfer_rows
    if per_epoch is None or len(rows) - labelled <= per_epoch:
        return None
    return EpochRows(labelled, per_epoch)


def _intermediate(
    kd: KDConfig, arch: StudentArch, model: torch.nn.Module, inputs: TrialInputs, device: torch.device
) -> IntermediateDistiller | None:
    """The intermediate-layer distiller of this trial's recipe, or None when intermediate KD is off."""
    if not kd.intermediate.enabled:
        return None
    wanted = kd.intermediate.teachers
    teachers = [(name, m) for name, m in inputs.intermediate_teachers if wanted is None or name in wanted]
    distiller = IntermediateDistiller(
        kd.intermediate, student_hidden=arch.hidden_size, student_layers=arch.num_layers, teachers=teachers
    )
    return distiller.to_device(device)


class _Collapsed(Exception):
    """A student's predictions collapsed after its first epoch (the message says how)."""


def slice_metric(model: torch.nn.Module, inputs: TrialInputs, device: torch.device, precision: str) -> SliceMetric:
    """The student as initialised (sliced out of the teacher, or random), scored on the eval split before training."""
    started = time.perf_counter()
    logits = predict_logits(model, inputs.eval, device=device, precision=precision)
    scored = evaluation_of(logits, inputs.eval.labels, inputs.metric)
    return SliceMetric(
        value=scored.value,
        label_probability=round(scored.label_probability[0], 6),
        seconds=round(time.perf_counter() - started, 3),
    )


def _collapse_is_telling(inputs: TrialInputs) -> bool:
    """Whether a student at the majority level has collapsed: some teacher scores above always predicting the eval
    split's most frequent label (or the teachers' scores are not known). On a task no teacher learned, that level is
    the task's, not the student's failure."""
    if not inputs.teacher_values:
        return True
    floor = majority_level(inputs.metric, inputs.eval.labels.tolist())
    return any(value > floor + 1e-9 for value in inputs.teacher_values)


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CPU random state, and the device's when it is a GPU (dropout there draws from its own generator)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _distillation(
    kd: KDConfig, arch: StudentArch, model: torch.nn.Module, inputs: TrialInputs, device: torch.device
) -> Distillation:
    """The trial's loss, afresh: the cached teacher logits and, with intermediate KD, new projections."""
    intermediate = _intermediate(kd, arch, model, inputs, device)
    return Distillation(kd, inputs.teacher_logits.to(device), intermediate, labels=inputs.train.labels)


def run_trial(
    params: dict[str, Any],
    inputs: TrialInputs,
    *,
    trial_number: int,
    device: torch.device | str,
    report: Report,
    checkpoint: Checkpoint | None = None,
    resume: dict[str, Any] | None = None,
    node: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train one student with multi-teacher logit KD, reporting a :class:`~kdnas.study.records.TrialReport` (as a Tune
    result, :meth:`~kdnas.study.records.TrialReport.to_result`) after each epoch, and at each early-stopping rung inside
    an epoch (:func:`~kdnas.tune.rungs.mid_epoch_steps`); the last report is returned.

    Each report has the metric, latency, epoch and the attrs so far (kept if a scheduler stops the student there); the
    last is ``completed`` with the full attrs (arch, params, FLOPs, latency details, KD recipe, initialisation,
    learning rate, rows trained on, training times, student path) and the budget constraints. A student over a
    latency or size budget is measured, not trained: its only report is ``infeasible`` (the reason).
    Errors propagate to the caller.
    With ``checkpoint``, each report but the last goes through it with the training state; ``resume`` (such a
    state) continues training after its epoch. ``node`` (where it runs) joins every report's attrs.
    With a searched ``latency.precision`` the student is timed and served in the sampled ``precision``; one whose
    trained twin ``params`` name (:class:`~kdnas.study.records.TrialTicket`) is not trained: it is that trial's
    student, measured and scored in this precision (:func:`serve_trained_twin`).
    """
    inputs = served_in(inputs, params)
    arch = StudentArch.from_dict(params)
    student = build_and_measure(arch, inputs)
    cost = student.cost if node is None else replace(student.cost, node=Node.from_attrs(node))
    if student.over_budget:  # latency first: an infeasible student is never trained
        measured = TrialReport(
            math.nan,
            student.latency.median_ms,
            epoch=0,
            infeasible=f"infeasible, not trained: {student.over_budget}",
            attrs=replace(cost, epochs_trained=0).to_attrs(),
            constraints=student.constraints,
        )
        report(measured.to_result(inputs.metric))
        return measured.to_result(inputs.metric)
    twin = TrialTicket.from_attrs(params).trained_twin
    if twin is not None:
        served = serve_trained_twin(
            student, cost, twin, inputs, student_dir(inputs, trial_number), torch.device(device)
        )
        report(served.to_result(inputs.metric))
        return served.to_result(inputs.metric)
    run = _StudentRun(params, arch, student, inputs, torch.device(device), cost, report, checkpoint, resume)
    run.train(trial_number)
    trained = run.save(student_dir(inputs, trial_number), student.tokenizer, student.constraints)
    report(trained.to_result(inputs.metric))
    return trained.to_result(inputs.metric)


def served_in(inputs: TrialInputs, params: dict[str, Any]) -> TrialInputs:
    """``inputs`` with the latency settings of the precision the student is served in: the sampled one when the
    search samples it, else the configured one."""
    latency = inputs.config.latency
    if PRECISION_PARAM not in params and not latency.searches_precision:
        return inputs
    settings = latency.served_in(params.get(PRECISION_PARAM))
    return replace(inputs, config=inputs.config.model_copy(update={"latency": settings}))


def serve_trained_twin(
    student: MeasuredStudent,
    cost: StudentRecord,
    twin: TrainedTwin,
    inputs: TrialInputs,
    out: Path,
    device: torch.device,
) -> TrialReport:
    """The completed report of ``student`` (built and measured in this trial's precision, ``cost``) given the weights
    its ``twin`` trained: saved to ``out`` and scored as served in this precision; its record is the twin's training
    record with this trial's cost, served metric and files, and ``weights_of`` naming the twin."""
    trained = load_trained_twin(student.model, twin)
    precision = resolve_precision(inputs.config.training.precision, device)
    logits = predict_logits(student.model, inputs.eval, device=device, precision=precision)
    student.model.save_pretrained(out)
    student.tokenizer.save_pretrained(out)
    served = score_served(student.model, out, inputs.eval, inputs.metric, logits, inputs.config.latency)
    record = replace(
        trained,
        **{name: getattr(cost, name) for name in ("arch", "arch_summary", "params", "encoder_params", "flops")},
        latency=cost.latency,
        node=cost.node,
        served=served,
        student_path=str(out),
        student_sha256=student_digest(out),
        train_started_at=None,
        train_finished_at=None,
        weights_of=twin.number,
        restarts=None,
        retry_of=None,
        repeat_of=None,
        promoted_from=None,
    )
    value = float(served.metric if served.metric is not None else math.nan)
    attrs = record.to_attrs()
    return TrialReport(
        value, student.latency.median_ms, trained.epochs_trained, True, attrs=attrs, constraints=student.constraints
    )


class _StudentRun:
    """One student's training in a trial: judged after each epoch and at the rungs inside one, checkpointed, and
    trained again once, from its initial weights at half the rate, when it collapsed after its first epoch."""

    def __init__(
        self,
        params: dict[str, Any],
        arch: StudentArch,
        student: MeasuredStudent,
        inputs: TrialInputs,
        device: torch.device,
        cost: StudentRecord,
        report: Report,
        checkpoint: Checkpoint | None,
        resume: dict[str, Any] | None,
    ) -> None:
        config = inputs.config
        self.arch, self.model, self.inputs, self.device, self.cost = arch, student.model, inputs, device, cost
        self.report, self.checkpoint, self.resume = report, checkpoint, resume
        self.latency_ms = student.latency.median_ms
        self.init = initialise(self.model, inputs)
        self.precision = resolve_precision(config.training.precision, device)
        self.sliced = slice_metric(self.model, inputs, device, self.precision)
        self.initial_weights = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
        self.initial_rng = _rng_state(device)  # a restart draws what the first attempt drew: only its rate differs
        self.started_at = time.time()
        self.kd, self.training = kd_recipe(config.kd, params), config.training
        self.rows = training_rows(self.kd, inputs)
        self.sampled = epoch_rows(config, inputs, self.rows)
        restarted = (resume or {}).get("restart")  # the first attempt, as the checkpoint of a restart holds it
        self.restart = Restart.from_attrs(restarted) if restarted is not None else None
        self.detect_collapse = config.training.detect_collapse and _collapse_is_telling(inputs)
        self.rate = learning_rate(config, params, self.init) / (2 if self.restart else 1)
        self.distillation = _distillation(self.kd, arch, self.model, inputs, device)
        if resume is not None and "loss" in resume:
            self.distillation.load_state(resume["loss"])
        self.latest = TrialReport(latency_ms=self.latency_ms)
        self.eval_logits: torch.Tensor | None = None  # the last evaluation's: what a served student is compared with
        self.last_state: dict[str, Any] = {}
        self.curve = [CurvePoint.from_attr(point) for point in (resume or {}).get("curve", [])]
        # trained before a restart, as its checkpoint recorded
        self.seconds_before = self.curve[-1].seconds if self.curve else 0.0
        self.mid_epoch = mid_epoch_steps(config, len(self.rows) if self.sampled is None else len(self.sampled))

    def progress(self, epoch: float) -> StudentRecord:
        """The record of the student trained so far (what a scheduler stopping it here keeps)."""
        return replace(
            self.cost,
            init=InitRecord.from_attrs(self.init),
            slice_metric=self.sliced,
            learning_rate=self.rate,
            epochs_trained=epoch,
            learning_curve=list(self.curve),
            restart=self.restart,
        )

    def judge(self, epoch: float) -> TrialReport:
        """Evaluate the student after ``epoch`` epochs: the report a scheduler may stop it on."""
        inputs, metric = self.inputs, self.inputs.metric
        logits = predict_logits(self.model, inputs.eval, device=self.device, precision=self.precision)
        self.eval_logits = logits
        scored = evaluation_of(logits, inputs.eval.labels, metric, inputs.label_names)
        value, probability = scored.value, scored.label_probability
        if not math.isfinite(value):
            raise FloatingPointError(f"{metric} is {value} after epoch {epoch:g}")
        seconds = round(self.seconds_before + time.time() - self.started_at, 3)
        self.curve.append(CurvePoint(epoch, value, seconds, *(round(x, 6) for x in probability)))
        collapsed = (scored.collapsed if self.detect_collapse else None) or None
        attrs = replace(self.progress(epoch), collapsed=collapsed).to_attrs()
        return TrialReport(value, self.latency_ms, epoch, attrs=attrs, label_probability=probability)

    def on_epoch(self, epoch: int) -> None:
        self.latest = self.judge(epoch)
        collapsed = StudentRecord.from_attrs(self.latest.attrs).collapsed
        if epoch == 1 and self.restart is None and collapsed is not None:
            raise _Collapsed(collapsed)  # before its report: Tune sees the restart's epoch 1
        restart = {"restart": self.restart.to_attrs()} if self.restart else {}
        state = {**self.last_state, "curve": [point.to_attr() for point in self.curve], **restart}
        if epoch < self.training.epochs and self.checkpoint is not None:
            self.checkpoint(self.latest.to_result(self.inputs.metric), state)
        elif epoch < self.training.epochs:
            self.report(self.latest.to_result(self.inputs.metric))

    def on_step(self, step: int, total_steps: int, loss: float) -> None:
        rung = self.mid_epoch.get(step)  # a rung inside an epoch: reported without a checkpoint (a retry redoes it)
        if rung is not None and not (self.restart is not None and rung <= 1):  # a restart's epoch-1 rungs were reported
            self.latest = self.judge(rung)
            self.report(self.latest.to_result(self.inputs.metric))

    def keep_state(self, state: dict[str, Any]) -> None:
        self.last_state.update(state, loss=self.distillation.state())

    def train(self, trial_number: int) -> None:
        """Train for ``training.epochs``, once more from the initial weights at half the rate after a collapse."""
        wants_attentions = (
            self.distillation.intermediate is not None and self.distillation.intermediate.wants_attentions
        )
        restore_attention = expose_attention(self.model) if wants_attentions else None
        while True:
            try:
                self._train_once()
                break
            except _Collapsed as collapsed:
                logger.warning(
                    "trial %d: %s after epoch 1; it trains again at half the learning rate", trial_number, collapsed
                )
                self.restart = Restart(
                    reason=str(collapsed),
                    after_epoch=1,
                    metric=self.latest.value,
                    learning_rate=self.rate,
                    learning_curve=list(self.curve),
                )
                self.rate, self.curve[:] = self.rate / 2, []
                self.model.load_state_dict(self.initial_weights)
                _set_rng_state(self.initial_rng, self.device)
                self.distillation = _distillation(self.kd, self.arch, self.model, self.inputs, self.device)
        if restore_attention is not None:
            restore_attention()

    def _train_once(self) -> None:
        training = self.training
        train(
            self.model,
            self.rows,
            loss_fn=self.distillation,
            extra_parameters=self.distillation.parameters(),
            epochs=training.epochs,
            batch_size=training.batch_size,
            learning_rate=self.rate,
            weight_decay=training.weight_decay,
            warmup_ratio=training.warmup_ratio,
            seed=training.seed,
            device=self.device,
            on_epoch=self.on_epoch,
            on_step=self.on_step if self.mid_epoch else None,
            state=self.resume,
            on_state=None if self.checkpoint is None else self.keep_state,
            precision=self.precision,
            epoch_rows=self.sampled,
        )

    def save(self, out: Path, tokenizer: Any, constraints: dict[str, float]) -> TrialReport:
        """Save the trained student to ``out``; its last report, ``completed``, with every attr a trial records."""
        self.model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        missing = missing_student_files(out)
        if missing:  # save_pretrained only logs when ``out`` is not a usable directory
            raise OSError(f"the student was not saved to {out}: missing {', '.join(missing)}")
        inputs, latest = self.inputs, self.latest
        rows = TrainRows(
            labelled=len(inputs.train) - inputs.transfer_rows,
            transfer=len(self.rows) - len(inputs.train) + inputs.transfer_rows,
            transfer_per_epoch=self.sampled.draw if self.sampled else None,
        )
        record = replace(
            self.progress(self.training.epochs),
            train_rows=rows,
            kd=KDRecipe.from_attrs(self.distillation.record()),
            teachers=list(inputs.teacher_names),
            train_device=str(self.device),
            train_precision=self.precision,
            train_started_at=self.started_at,
            train_finished_at=time.time(),
            student_path=str(out),
            student_sha256=student_digest(out),
            collapsed=StudentRecord.from_attrs(latest.attrs).collapsed,
        )
        settings = inputs.config.latency
        if settings.runtime == "onnxruntime" and self.eval_logits is not None:
            served = score_served(self.model, out, inputs.eval, inputs.metric, self.eval_logits, settings)
            record, latest = replace(record, served=served), replace(latest, value=float(served.metric or math.nan))
        return replace(latest, completed=True, attrs=record.to_attrs(), constraints=constraints)
