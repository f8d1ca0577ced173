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
    cross-entropy training without distillation (``target_probs`` may then be None). Rows labelled ``-100``
    (transfer examples) take no part in the cross-entropy, which averages over the labelled rows (0 without any).
    """
    labelled = labels != -100
    hard = F.cross_entropy(student_logits[labelled], labels[labelled]) if labelled.any() else student_logits.sum() * 0
    if alpha >= 1.0:
        return hard
    assert target_probs is not None, "distillation (alpha < 1) needs the teachers' target probabilities"
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    soft = F.kl_div(log_student, target_probs, reduction="batchmean") * temperature**2
    return alpha * hard + (1.0 - alpha) * soft
