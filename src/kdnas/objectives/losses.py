"""Logit distillation loss (Hinton et al.): hard-label CE mixed with temperature-softened KL."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(
    student_logits: torch.Tensor,
    target_probs: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """``alpha·CE(y, s) + (1 − alpha)·T²·KL(target ‖ softmax(s/T))`` with ``batchmean`` reduction.

    ``target_probs`` are the (combined) teachers' probabilities at temperature ``T``. ``alpha = 1`` is plain
    cross-entropy training without distillation (``target_probs`` may then be None).
    """
    hard = F.cross_entropy(student_logits, labels)
    if alpha >= 1.0:
        return hard
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    soft = F.kl_div(log_student, target_probs, reduction="batchmean") * temperature**2
    return alpha * hard + (1.0 - alpha) * soft
