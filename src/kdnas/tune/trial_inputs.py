"""What every trial of a study shares (:class:`TrialInputs`), and the steps before a student trains: building and
timing it against the budgets, its initialisation, learning rate and training rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from kdnas.config import INHERITED_LEARNING_RATE, RANDOM_LEARNING_RATE, KDConfig, KDNASConfig, Ramp
from kdnas.latency.cache import measure_cached
from kdnas.latency.timing import LatencyResult
from kdnas.student import StudentArch
from kdnas.student.batches import Encoded, head
from kdnas.student.inheritance import InheritanceSource, inherit
from kdnas.student.training import EpochRows
from kdnas.study.records import LATENCY_KEY, PARAMS_CONSTRAINT
from kdnas.study.student_record import (
    InitRecord,
    LatencyDetail,
    StudentRecord,
)
from kdnas.teachers.loading import load_tokenizer


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
