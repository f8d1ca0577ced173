"""Teacher combiners: how K teachers' logits become one soft target per example.

A combiner returns per-example teacher weights ``[B, K]``; :func:`combined_target` turns them into the soft target
``Σ_k w_k·softmax(z_k / T)``. Because the KD loss's gradient with respect to the student logits is linear in the
target, weighting the target is the same as weighting the per-teacher KD losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from kdnas.config import KDConfig


class Combiner(Protocol):
    """Weights of each teacher for each example of a batch."""

    def weights(
        self, teacher_logits: torch.Tensor, labels: torch.Tensor, student_logits: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        """Return ``[B, K]`` non-negative weights summing to 1 per example (never differentiated)."""
        ...


class MeanCombiner:
    """Every teacher counts the same (TextBrewer's multi-teacher rule, on probabilities)."""

    def weights(self, teacher_logits, labels, student_logits, temperature):
        k, b = teacher_logits.shape[:2]
        return teacher_logits.new_full((b, k), 1.0 / k)


class FixedWeightCombiner:
    """Fixed, user-given teacher weights (normalised to sum to 1)."""

    def __init__(self, weights: Sequence[float]) -> None:
        total = float(sum(weights))
        if total <= 0 or any(w < 0 for w in weights):
            raise ValueError("teacher weights must be non-negative with a positive sum")
        self._weights = torch.tensor([w / total for w in weights])

    def weights(self, teacher_logits, labels, student_logits, temperature):
        if teacher_logits.shape[0] != len(self._weights):
            raise ValueError(f"{len(self._weights)} teacher weights for {teacher_logits.shape[0]} teachers")
        return self._weights.to(teacher_logits).expand(teacher_logits.shape[1], -1)


class ConfidenceCombiner:
    """CA-MKD: ``w_k = (1 − softmax_k(CE(z_k, y))) / (K − 1)``, per example; confident correct teachers weigh more."""

    def weights(self, teacher_logits, labels, student_logits, temperature):
        k, b, c = teacher_logits.shape
        if k == 1:
            return teacher_logits.new_ones((b, 1))
        ce = F.cross_entropy(teacher_logits.reshape(k * b, c).float(), labels.repeat(k), reduction="none")
        return (1.0 - torch.softmax(ce.reshape(k, b).T, dim=1)) / (k - 1)


def _project_capped_simplex(v: np.ndarray, cap: float) -> np.ndarray:
    """Euclidean projection of ``v`` onto ``{a : Σa = 1, 0 ≤ a ≤ cap}`` (exact; needs ``cap·len(v) ≥ 1``).

    The projection is ``clip(v − τ, 0, cap)``; ``Σ clip(v − τ, 0, cap)`` is piecewise linear and decreasing in ``τ``
    with breakpoints at ``v`` and ``v − cap``, so ``τ`` is found by interpolating between two breakpoints.
    """
    breaks = np.unique(np.concatenate([v, v - cap]))  # ascending
    mass = np.clip(v[None, :] - breaks[:, None], 0.0, cap).sum(axis=1)  # descending
    i = int(np.searchsorted(-mass, -1.0))  # first breakpoint with mass ≤ 1
    if i == 0:
        tau = breaks[0]
    else:
        lo, hi = breaks[i - 1], breaks[i]
        m_lo, m_hi = mass[i - 1], mass[i]
        tau = hi if m_lo == m_hi else lo + (m_lo - 1.0) * (hi - lo) / (m_lo - m_hi)
    return np.clip(v - tau, 0.0, cap)


def min_norm_weights(gradients: torch.Tensor, cap: float, steps: int = 500) -> torch.Tensor:
    """MGDA with an upper bound: ``argmin_a ‖Σ_k a_k g_k‖²`` over ``{Σa = 1, 0 ≤ a ≤ cap}`` (projected gradient).

    The problem is K×K (the Gram matrix of the teachers' gradients), so it is solved in float64 NumPy: a few
    milliseconds per batch at most.
    """
    gram = (gradients @ gradients.T).double().cpu().numpy()
    k = gram.shape[0]
    alpha = np.full(k, 1.0 / k)
    step = 1.0 / (2 * np.linalg.norm(gram, ord=2) + 1e-12)
    for _ in range(steps):
        updated = _project_capped_simplex(alpha - step * 2 * gram @ alpha, cap)
        if np.abs(updated - alpha).max() < 1e-12:
            alpha = updated
            break
        alpha = updated
    return torch.from_numpy(alpha).to(gradients.dtype)


class GradientSpaceCombiner:
    """AE-KD: weights minimising ‖Σ_k α_k g_k‖ with ``g_k = ∂ℓ_k/∂student logits`` (cheap: on the logits only).

    ``cap`` (AE-KD's tolerance for disagreement, at least 1/K) bounds each weight; the same weights serve the
    whole batch.
    """

    def __init__(self, cap: float = 0.6) -> None:
        self.cap = cap

    def weights(self, teacher_logits, labels, student_logits, temperature):
        k, b = teacher_logits.shape[:2]
        cap = max(self.cap, 1.0 / k)
        student = torch.softmax(student_logits.detach().float() / temperature, dim=-1)  # [B, C]
        teachers = torch.softmax(teacher_logits.float() / temperature, dim=-1)  # [K, B, C]
        # ∂/∂s of T²·KL(p_k ‖ softmax(s/T)) averaged over the batch: T·(q − p_k)/B
        gradients = (temperature * (student.unsqueeze(0) - teachers) / b).reshape(k, -1).double()
        return min_norm_weights(gradients, cap).float().to(teacher_logits.device).expand(b, -1)


def learned_teacher_weights(teacher_logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """Teacher weights ``[K]`` of the mixture ``Σ_k w_k·softmax(z_k)`` that best explains the labels.

    Maximum likelihood by EM over the labelled rows (label ``-100`` rows are skipped): a teacher whose
    probabilities explain the labels worse is down-weighted, teachers of equal quality share the weight.
    """
    labelled = labels != -100
    k = teacher_logits.shape[0]
    if k == 1 or not labelled.any():
        return torch.full((k,), 1.0 / k)
    probs = torch.softmax(teacher_logits[:, labelled.to(teacher_logits.device)].double(), dim=-1)  # [K, N, C]
    index = labels[labelled].to(probs.device).view(1, -1, 1).expand(k, -1, 1)
    likelihood = probs.gather(-1, index).squeeze(-1).clamp_min(1e-12)  # [K, N]
    weights = torch.full((k, 1), 1.0 / k, dtype=torch.float64, device=probs.device)
    for _ in range(steps):
        responsibility = weights * likelihood
        weights = (responsibility / responsibility.sum(dim=0, keepdim=True)).mean(dim=1, keepdim=True)
    return weights.squeeze(1).float().cpu()


def combined_target(
    combiner: Combiner,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    student_logits: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """The combined teachers' probabilities ``[B, C]`` at ``temperature``."""
    probs = torch.softmax(teacher_logits.float() / temperature, dim=-1)  # [K, B, C]
    weights = combiner.weights(teacher_logits, labels, student_logits, temperature)  # [B, K]
    return torch.einsum("bk,kbc->bc", weights.to(probs.dtype), probs)


def make_combiner(kd: KDConfig, learned_weights: torch.Tensor | None = None) -> Combiner:
    """The combiner the KD config names (``learned`` takes the weights of :func:`learned_teacher_weights`)."""
    if kd.combiner == "weighted":
        return FixedWeightCombiner(kd.teacher_weights or [])
    if kd.combiner == "learned":
        if learned_weights is None:
            raise ValueError("the learned combiner needs the teachers' learned weights")
        return FixedWeightCombiner(learned_weights.tolist())
    if kd.combiner == "confidence":
        return ConfidenceCombiner()
    if kd.combiner == "gradient":
        return GradientSpaceCombiner(kd.disagreement_bound)
    return MeanCombiner()
