"""BERT-EMD's many-to-many layer mapping: an optimal-transport flow between student and teacher layers.

Per step, for costs ``D[i, j]`` between student layer ``i`` and teacher layer ``j``: the flow ``F`` is the earth
mover's transport between the student's and the teacher's layer weights (solved by POT on detached costs), the
loss is ``Σ F_ij·D_ij`` (gradients flow through ``D`` only), and the layer weights are then updated by BERT-EMD's
inverse-cost rule: layers that transport cheaply gain weight.
"""

from __future__ import annotations

import numpy as np
import torch

_EPS = 1e-12


def transport_flow(student_weights: np.ndarray, teacher_weights: np.ndarray, cost: torch.Tensor) -> torch.Tensor:
    """The optimal flow ``[M, N]`` moving ``student_weights`` onto ``teacher_weights`` at ``cost`` (no gradient)."""
    import ot  # POT pulls in scikit-learn (about 0.8 s): imported by the students that use EMD only

    flow = ot.emd(student_weights, teacher_weights, cost.detach().double().cpu().numpy())
    return torch.from_numpy(flow).to(cost)


def inverse_cost_weights(flow: torch.Tensor, cost: torch.Tensor, weights: np.ndarray, dim: int) -> np.ndarray:
    """BERT-EMD's update: ``C̄_i = (Σ F·D)_i / w_i``, ``w̄_i = Σ_k C̄_k / C̄_i``, normalised to sum to 1.

    ``dim`` is the axis summed over: 1 for student weights (rows), 0 for teacher weights (columns).
    """
    transported = (flow * cost.detach()).sum(dim=dim).double().cpu().numpy()
    mean_cost = np.maximum(transported / np.maximum(weights, _EPS), _EPS)
    raw = mean_cost.sum() / mean_cost
    return raw / raw.sum()


class EMDLayerMapping:
    """Layer weights of one student–teacher pair and the EMD loss over them, one set per cost kind.

    Kinds are e.g. ``"hidden"`` and ``"attention"``. Unless ``separate``, the kinds' weights are averaged after
    each step (BERT-EMD's default), so both kinds share one notion of which layers matter.
    """

    def __init__(self, student_layers: int, teacher_layers: int, *, separate: bool = False) -> None:
        self.student_layers, self.teacher_layers, self.separate = student_layers, teacher_layers, separate
        self.student_weights: dict[str, np.ndarray] = {}
        self.teacher_weights: dict[str, np.ndarray] = {}

    def _weights(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        if kind not in self.student_weights:
            self.student_weights[kind] = np.full(self.student_layers, 1.0 / self.student_layers)
            self.teacher_weights[kind] = np.full(self.teacher_layers, 1.0 / self.teacher_layers)
        return self.student_weights[kind], self.teacher_weights[kind]

    def loss(self, costs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``Σ_kinds Σ_ij F_ij·D_ij`` for cost matrices ``[M, N]`` per kind; updates the layer weights."""
        total = None
        for kind, cost in costs.items():
            if cost.shape != (self.student_layers, self.teacher_layers):
                raise ValueError(
                    f"{kind} cost is {tuple(cost.shape)}, expected ({self.student_layers}, {self.teacher_layers})"
                )
            student_w, teacher_w = self._weights(kind)
            flow = transport_flow(student_w, teacher_w, cost)
            term = (flow * cost).sum()
            total = term if total is None else total + term
            self.student_weights[kind] = inverse_cost_weights(flow, cost, student_w, dim=1)
            self.teacher_weights[kind] = inverse_cost_weights(flow, cost, teacher_w, dim=0)
        if not self.separate and len(costs) > 1:
            for side in (self.student_weights, self.teacher_weights):
                shared = np.mean([side[kind] for kind in costs], axis=0)
                for kind in costs:
                    side[kind] = shared
        if total is None:
            raise ValueError("no costs given")
        return total

    def state_dict(self) -> dict[str, dict[str, list[float]]]:
        """The current layer weights per kind, as plain lists (for records and checkpoints)."""
        return {
            kind: {"student": self.student_weights[kind].tolist(), "teacher": self.teacher_weights[kind].tolist()}
            for kind in self.student_weights
        }

    def load_state_dict(self, state: dict[str, dict[str, list[float]]]) -> None:
        """Restore layer weights saved by :meth:`state_dict`."""
        for kind, weights in state.items():
            self.student_weights[kind] = np.asarray(weights["student"], dtype=np.float64)
            self.teacher_weights[kind] = np.asarray(weights["teacher"], dtype=np.float64)
