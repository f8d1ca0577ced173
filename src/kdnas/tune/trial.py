"""One student trial, runnable without Ray: build the arch and time it against the budgets, then train it by KD from
the cached teacher logits (:class:`~kdnas.tune.student_run.StudentRun`), or serve the weights its trained twin saved,
and save it."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kdnas.outputs import student_digest
from kdnas.student import StudentArch
from kdnas.student.batches import predict_logits
from kdnas.student.precision import resolve_precision
from kdnas.student.space import PRECISION_PARAM
from kdnas.study.records import TrainedTwin, TrialReport, TrialTicket
from kdnas.study.student_record import Node, StudentRecord
from kdnas.tune.served import load_trained_twin, score_served
from kdnas.tune.student_run import Checkpoint, Report, StudentRun
from kdnas.tune.trial_inputs import MeasuredStudent, TrialInputs, build_and_measure, student_dir


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
    run = StudentRun(params, arch, student, inputs, torch.device(device), cost, report, checkpoint, resume)
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
