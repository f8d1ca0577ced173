"""One student's training in a trial (:class:`StudentRun`): its loss, its judgement after each epoch and at the rungs
inside one, its checkpoints, and its restart after a collapsed first epoch."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kdnas.config import KDConfig
from kdnas.distill.distillation import Distillation
from kdnas.distill.intermediate import IntermediateDistiller, expose_attention
from kdnas.outputs import missing_student_files, student_digest
from kdnas.student import StudentArch
from kdnas.student.batches import predict_logits
from kdnas.student.metrics import majority_level
from kdnas.student.precision import resolve_precision
from kdnas.student.space import kd_recipe
from kdnas.student.training import evaluation_of, train
from kdnas.study.records import CurvePoint, TrialReport
from kdnas.study.student_record import (
    InitRecord,
    KDRecipe,
    Restart,
    SliceMetric,
    StudentRecord,
    TrainRows,
)
from kdnas.tune.rungs import mid_epoch_steps
from kdnas.tune.served import score_served
from kdnas.tune.trial_inputs import MeasuredStudent, TrialInputs, epoch_rows, initialise, learning_rate, training_rows

logger = logging.getLogger(__name__)


Report = Callable[[dict[str, Any]], None]
Checkpoint = Callable[[dict[str, Any], dict[str, Any]], None]
"""``checkpoint(metrics, state)``: report ``metrics`` together with the resumable training ``state``."""


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


class StudentRun:
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
