"""Teacher combiners: how K teachers' logits become one soft target per example.

A combiner maps teacher logits ``[K, B, C]`` (and the batch's labels) to per-example teacher weights ``[B, K]``;
:func:`combined_target` turns those into the soft target ``Σ_k w_k·softmax(z_k / T)``.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Combiner(Protocol):
    """Weights of each teacher for each example of a batch."""

    def weights(self, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return ``[B, K]`` non-negative weights summing to 1 per example."""
        ...


class MeanCombiner:
    """Every teacher counts the same (TextBrewer's multi-teacher rule, on probabilities)."""

    def weights(self, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        k, b = teacher_logits.shape[:2]
        return teacher_logits.new_full((b, k), 1.0 / k)


def combined_target(
    combiner: Combiner, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The combined teachers' probabilities ``[B, C]`` at ``temperature``."""
    probs = torch.softmax(teacher_logits.float() / temperature, dim=-1)  # [K, B, C]
    weights = combiner.weights(teacher_logits, labels)  # [B, K]
    return torch.einsum("bk,kbc->bc", weights.to(probs.dtype), probs)


def make_combiner(name: str) -> Combiner:
    """The combiner called ``name`` in the config."""
    if name == "mean":
        return MeanCombiner()
    raise ValueError(f"unknown teacher combiner {name!r}")
