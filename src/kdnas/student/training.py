"""One training loop for teachers (cross-entropy) and students (distillation): AdamW, linear warm-up/decay, fp32 or
mixed precision (bf16/fp16 autocast, fp16 with a gradient scaler)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import get_linear_schedule_with_warmup

from kdnas.latency.isolation import training_step
from kdnas.student.batches import Encoded, batch_at, index_batches, predict_logits
from kdnas.student.metrics import collapse_reason, score
from kdnas.student.precision import autocast, grad_scaler, resolve_precision

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor], torch.Tensor, torch.Tensor, float], torch.Tensor]
"""``loss(model, batch, labels, row_index, progress) -> scalar``: runs the forward pass itself.

``row_index`` selects cached teacher targets; ``progress`` (0 → 1 over training) drives schedules.
"""


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class DivergedError(FloatingPointError):
    """An epoch's mean loss grew far above the loss training started from."""


_DIVERGENCE_FACTOR = 10.0
"""An epoch whose mean loss exceeds this multiple of the first step's loss has diverged."""

MAX_SKIPPED_STEPS = 40
"""fp16: this many steps in a row whose gradients were non-finite at every loss scale tried (the scale halves each
time, so down to 2^-40 of where it stood) mean the gradients are non-finite, not merely overflowing fp16."""


def cross_entropy(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor, index: torch.Tensor, progress: float
) -> torch.Tensor:
    """Plain supervised training."""
    return torch.nn.functional.cross_entropy(model(**batch).logits, labels)


def _apply_gradients(
    loss: torch.Tensor,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> bool:
    """Backpropagate ``loss``, clip the (unscaled) gradients to norm 1, step the optimizer and the schedule; True when
    fp16's ``scaler`` skipped the optimizer step because the gradients overflowed (it then lowers its scale)."""
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)  # optimizer.step(), unless fp16 gradients overflowed
    scaler.update()
    skipped = scale is not None and scaler.get_scale() < scale
    with warnings.catch_warnings():  # the schedule counts a skipped step too (torch warns when the first one is)
        if skipped:
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
        schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return skipped


@dataclass(frozen=True)
class Evaluation:
    """A model scored on an evaluation set: the task metric ``value``, and ``label_probability``, the mean probability
    the model gives each example's label (per class then averaged over classes unless the metric is accuracy) with
    that mean's standard error. The probability moves before the predictions do: students still predicting the
    majority class early in training differ in it, not in the metric. ``collapsed`` says why the predictions have
    collapsed to one class or to the majority-class level (:func:`~kdnas.student.metrics.collapse_reason`), else
    None."""

    value: float
    label_probability: tuple[float, float]
    collapsed: str | None = None


def label_probability(logits: torch.Tensor, labels: torch.Tensor, *, balanced: bool) -> tuple[float, float]:
    """The mean softmax probability of each row's label in ``logits`` and its standard error; ``balanced`` averages
    the means of the classes present instead (each weighed equally, as macro-F1 and MCC weigh them)."""
    probs = logits.float().softmax(dim=-1).gather(1, labels[:, None].long())[:, 0].double()
    groups = [probs[labels == c] for c in labels.unique()] if balanced else [probs]
    means = torch.stack([g.mean() for g in groups])
    variances = torch.stack([g.var(correction=1) / len(g) if len(g) > 1 else g.new_tensor(0.0) for g in groups])
    return float(means.mean()), float(variances.sum().sqrt() / len(groups))


def evaluation_of(
    logits: torch.Tensor, labels: torch.Tensor, metric: str, label_names: tuple[str, ...] = ()
) -> Evaluation:
    """A model's ``logits`` on an evaluation set with ``labels``, scored by ``metric`` and by its label probability,
    and checked for collapse (``label_names`` name the class it collapsed to)."""
    probability = label_probability(logits, labels, balanced=metric != "accuracy")
    preds, truth = logits.argmax(dim=-1).tolist(), labels.tolist()
    value = score(metric, preds, truth)
    return Evaluation(value, probability, collapse_reason(metric, value, preds, truth, label_names))


def evaluate(
    model: torch.nn.Module,
    data: Encoded,
    metric: str,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    precision: str = "auto",
) -> float:
    """``metric`` of ``model``'s predictions on ``data`` (the forward pass autocast to ``precision``)."""
    logits = predict_logits(model, data, batch_size=batch_size, device=device, precision=precision)
    return evaluation_of(logits, data.labels, metric).value


@dataclass(frozen=True)
class EpochRows:
    """The rows one epoch trains on: every one of the first ``always`` rows (the labelled ones) and a fresh random
    ``draw`` of the rest (the transfer set), so an epoch's cost is bounded however large the transfer set grows."""

    always: int
    draw: int

    def __len__(self) -> int:
        return self.always + self.draw

    def order(self, rows: int, generator: torch.Generator) -> torch.Tensor:
        """This epoch's row indices into ``rows`` rows, shuffled with ``generator``."""
        drawn = self.always + torch.randperm(rows - self.always, generator=generator)[: self.draw]
        chosen = torch.cat([torch.arange(self.always), drawn])
        return chosen[torch.randperm(len(chosen), generator=generator)]


def steps_per_epoch(rows: int, batch_size: int) -> int:
    """The optimisation steps in one pass over ``rows`` examples (the last batch may be short)."""
    return math.ceil(rows / batch_size)


def train(
    model: torch.nn.Module,
    data: Encoded,
    *,
    loss_fn: LossFn = cross_entropy,
    epochs: float,
    batch_size: int,
    learning_rate: float,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[int], None] | None = None,
    extra_parameters: list[torch.nn.Parameter] | None = None,
    state: dict | None = None,
    on_state: Callable[[dict], None] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    precision: str = "auto",
    epoch_rows: EpochRows | None = None,
) -> None:
    """Train ``model`` for ``epochs`` passes over ``data`` (a fractional last pass is allowed); with ``epoch_rows``,
    each pass is over the rows it draws afresh (e.g. all labelled rows and a sample of the transfer set).

    ``on_epoch(epoch)`` runs after each full epoch (1-based), e.g. to evaluate and report; ``on_state(state)`` just
    before it, with the resumable training state (training passed ``state`` resumes after its epoch); ``on_step(step,
    total_steps, loss)`` after each optimisation step. ``extra_parameters`` (e.g. the loss's own projections) are
    optimised alongside the model's.
    ``precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``; see :func:`~kdnas.student.precision.resolve_precision`)
    autocasts the forward pass and the loss; with fp16 a gradient scaler skips the steps whose gradients overflow (its
    state is part of ``state``). The weights stay float32.
    Raises :class:`NonFiniteLossError` as soon as a loss is NaN or infinite (or, with fp16, when the gradients stay
    non-finite for ``MAX_SKIPPED_STEPS`` steps in a row), :class:`DivergedError` when an epoch's mean loss exceeds
    ``_DIVERGENCE_FACTOR`` × the first step's loss (losses are compared unscaled).
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    model.to(device).train()
    per_epoch = steps_per_epoch(len(data) if epoch_rows is None else len(epoch_rows), batch_size)
    total_steps = max(1, math.ceil(per_epoch * epochs))
    extras = list(extra_parameters or [])
    params = [p for p in model.parameters() if p.requires_grad] + extras
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    generator = torch.Generator().manual_seed(seed)
    run = _Run(model, extras, optimizer, schedule, generator, grad_scaler(precision, device), params, precision, device)
    step, first_epoch, initial_loss = (0, 1, None) if state is None else run.restore(state)
    for epoch in range(first_epoch, math.ceil(epochs) + 1):
        model.train()
        losses = []
        for index in _epoch_batches(len(data), batch_size, epoch_rows, run.generator):
            if step >= total_steps:
                break
            losses.append(run.step(data, index, loss_fn, step, total_steps, epoch))
            initial_loss = losses[0] if initial_loss is None else initial_loss
            step += 1
            if on_step is not None:
                on_step(step, total_steps, losses[-1])
        _check_not_diverged(losses, initial_loss, epoch)
        if on_state is not None:
            on_state(run.state(step, epoch, initial_loss))
        if on_epoch is not None:
            on_epoch(epoch)


def _epoch_batches(
    rows: int, batch_size: int, epoch_rows: EpochRows | None, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """One epoch's batches of row indices: a shuffled pass over all ``rows``, or over the rows ``epoch_rows`` draws."""
    if epoch_rows is None:
        return index_batches(rows, batch_size, shuffle=True, generator=generator)
    return iter(epoch_rows.order(rows, generator).split(batch_size))


def _check_not_diverged(losses: list[float], initial_loss: float | None, epoch: int) -> None:
    """Raise :class:`DivergedError` when the epoch's mean loss exceeds ``_DIVERGENCE_FACTOR`` × the first step's."""
    mean_loss = sum(losses) / max(1, len(losses))
    if initial_loss is not None and mean_loss > _DIVERGENCE_FACTOR * initial_loss:
        raise DivergedError(
            f"training diverged: mean loss {mean_loss:.4g} in epoch {epoch} is over {_DIVERGENCE_FACTOR:g}x "
            f"the initial loss {initial_loss:.4g}"
        )


@dataclass
class _Run:
    """What a training's resumable state is made of: the model, extra parameters, optimiser, schedule, RNGs."""

    model: torch.nn.Module
    extras: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    scaler: torch.amp.GradScaler
    params: list[torch.nn.Parameter]
    precision: str
    device: torch.device
    skipped: int = 0
    """fp16: steps in a row whose gradients overflowed at every loss scale tried."""

    def step(
        self, data: Encoded, index: torch.Tensor, loss_fn: LossFn, step: int, total_steps: int, epoch: int
    ) -> float:
        """One optimisation step on the rows ``index`` of ``data`` (step ``step`` of ``total_steps``); its loss.

        Raises :class:`NonFiniteLossError` on a NaN or infinite loss, or after ``MAX_SKIPPED_STEPS`` fp16 steps in a
        row skipped for non-finite gradients.
        """
        with training_step():  # no latency is measured on this node during a step
            batch = batch_at(data, index, self.device)
            with autocast(self.precision, self.device):
                loss = loss_fn(self.model, batch, data.labels[index].to(self.device), index, step / total_steps)
            if not torch.isfinite(loss):
                mixed = "" if self.precision == "fp32" else f", {self.precision}"
                raise NonFiniteLossError(f"non-finite loss {loss.item()} at step {step} (epoch {epoch}{mixed})")
            value = loss.item()
            overflowed = _apply_gradients(loss, self.params, self.optimizer, self.schedule, self.scaler)
            self.skipped = self.skipped + 1 if overflowed else 0
            if self.skipped >= MAX_SKIPPED_STEPS:
                raise NonFiniteLossError(
                    f"non-finite gradients for {self.skipped} steps in a row at step {step} (epoch {epoch}, fp16, "
                    f"loss scale down to {self.scaler.get_scale():.3g})"
                )
        return value

    def state(self, step: int, epoch: int, initial_loss: float | None) -> dict[str, Any]:
        """The state after ``epoch`` (``step`` steps): what :meth:`restore` resumes from."""
        return {
            "model": self.model.state_dict(),
            "extra": self.extras,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
            "rng": torch.get_rng_state(),
            "step": step,
            "epoch": epoch,
            "initial_loss": initial_loss,
            "scaler": self.scaler.state_dict(),  # empty unless fp16
        }

    def restore(self, state: dict[str, Any]) -> tuple[int, int, float | None]:
        """Load ``state``; the step, the epoch to start and the first step's loss it recorded."""
        self.model.load_state_dict(state["model"])
        with torch.no_grad():
            for param, saved in zip(self.extras, state["extra"]):
                param.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        if self.scaler.is_enabled() and state.get("scaler"):  # absent from fp32 and bf16 states
            self.scaler.load_state_dict(state["scaler"])
        return state["step"], state["epoch"] + 1, state["initial_loss"]
