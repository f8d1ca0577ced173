"""The student's training loss: hard labels, the combined teachers' soft targets, and intermediate layers.

``loss = α·CE(y, s) + (1 − α)·T²·KL(Σ_k w_k·softmax(z_k/T) ‖ softmax(s/T)) + β·L_intermediate``, with ``α``,
``T`` and ``β`` constants or linear ramps over training. Teacher logits come from the per-study cache.
"""

from __future__ import annotations

from typing import Any

import torch

from kdnas.config import KDConfig
from kdnas.distill.combiners import combined_target, learned_teacher_weights, make_combiner
from kdnas.distill.intermediate import IntermediateDistiller
from kdnas.distill.losses import kd_loss
from kdnas.distill.schedules import value_at


class Distillation:
    """A :data:`~kdnas.student.training.LossFn` for one student."""

    def __init__(
        self,
        kd: KDConfig,
        teacher_logits: torch.Tensor,
        intermediate: IntermediateDistiller | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        """``labels`` (the training rows', ``-100`` for transfer rows) fit the ``learned`` combiner's weights."""
        self.kd = kd
        self.learned_weights = None
        if kd.combiner == "learned":
            if labels is None:
                raise ValueError("kd.combiner 'learned' needs the training labels")
            self.learned_weights = learned_teacher_weights(teacher_logits, labels)
        self.combiner = make_combiner(kd, self.learned_weights)
        self.teacher_logits = teacher_logits  # [K, N, C], on the training device
        self.intermediate = intermediate

    def parameters(self) -> list[torch.nn.Parameter]:
        """The loss's own trainable parameters (intermediate projections), optimised with the student."""
        return list(self.intermediate.parameters()) if self.intermediate is not None else []

    def __call__(
        self,
        model: torch.nn.Module,
        batch: dict[str, torch.Tensor],
        labels: torch.Tensor,
        index: torch.Tensor,
        progress: float,
    ) -> torch.Tensor:
        inter = self.intermediate
        outputs = model(
            **batch,
            output_hidden_states=inter is not None,
            output_attentions=inter is not None and inter.wants_attentions,
        )
        alpha = value_at(self.kd.alpha, progress)
        temperature = value_at(self.kd.temperature, progress)
        logits = outputs.logits
        if alpha < 1.0:
            teacher_logits = self.teacher_logits[:, index.to(self.teacher_logits.device)]
            target = combined_target(self.combiner, teacher_logits, labels, logits, temperature)
        else:
            target = None
        loss = kd_loss(logits, target, labels, alpha=alpha, temperature=temperature)
        if inter is not None:
            beta = value_at(self.kd.intermediate.weight, progress)
            if beta > 0:
                loss = loss + beta * inter(outputs, batch)
        return loss

    def state(self) -> dict[str, Any]:
        """The loss's own non-parameter state (EMD layer weights), to checkpoint with the training state."""
        return {"emd": self.intermediate.emd_state() if self.intermediate is not None else {}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state`."""
        if self.intermediate is not None:
            self.intermediate.load_emd_state(state.get("emd", {}))

    def record(self) -> dict[str, Any]:
        """What the trial's ``kd`` user_attr records: the recipe, plus layer maps / EMD weights when used."""
        recipe = self.kd.model_dump(mode="json", exclude={"space"})
        if self.learned_weights is not None:
            recipe["learned_teacher_weights"] = [round(w, 4) for w in self.learned_weights.tolist()]
        if self.intermediate is not None:
            recipe["intermediate_teachers"] = self.intermediate.record()
        return recipe
