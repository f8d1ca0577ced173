"""One training loop for teachers (cross-entropy) and students (distillation): AdamW, linear warm-up/decay."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from transformers import get_linear_schedule_with_warmup

from kdnas.objectives.batches import Encoded, batch_at, index_batches, predict_logits
from kdnas.objectives.metrics import score

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(student_logits, labels, row_index) -> scalar``; ``row_index`` selects cached teacher targets."""


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, labels)


def evaluate(
    model: torch.nn.Module, data: Encoded, metric: str, *, batch_size: int = 64, device: torch.device | str = "cpu"
) -> float:
    """``metric`` of ``model``'s predictions on ``data``."""
    preds = predict_logits(model, data, batch_size=batch_size, device=device).argmax(dim=-1)
    return score(metric, preds.tolist(), data.labels.tolist())


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
) -> None:
    """Train ``model`` for ``epochs`` passes over ``data`` (a fractional last pass is allowed).

    ``on_epoch(epoch)`` runs after each full epoch (1-based), e.g. to evaluate and report.
    Raises :class:`NonFiniteLossError` as soon as a loss is NaN or infinite.
    """
    device = torch.device(device)
    model.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(data) / batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * epochs))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    step = 0
    for epoch in range(1, math.ceil(epochs) + 1):
        model.train()
        for index in index_batches(len(data), batch_size, shuffle=True, generator=generator):
            if step >= total_steps:
                break
            logits = model(**batch_at(data, index, device)).logits
            loss = loss_fn(logits, data.labels[index].to(device), index)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"non-finite loss {loss.item()} at step {step} (epoch {epoch})")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        if on_epoch is not None:
            on_epoch(epoch)
