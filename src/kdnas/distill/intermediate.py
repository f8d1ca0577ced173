"""Intermediate-layer KD: hidden states, attention scores and embeddings, matched by a layer map or by EMD.

Only teachers that share the student's tokenizer take part (the same token positions must line up); they run on
the fly, on the student's batch. Hidden states go through a learned linear projection (student width → teacher
width, one per teacher, shared by its layers as in BERT-EMD). Attention maps are compared as pre-softmax scores:
``log softmax`` equals the scores up to a per-row shift, so row-centred log-probabilities over the unmasked keys
*are* the centred scores; heads are averaged, which lets students and teachers have different head counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import PreTrainedModel

from kdnas.config import IntermediateConfig
from kdnas.distill.emd import EMDLayerMapping


def kd_layer_map(kind: str | Sequence[int], student_layers: int, teacher_layers: int) -> list[int | None]:
    """The teacher layer that teaches each student layer (``None``: none does): a layer map (see
    :mod:`kdnas.student`), 0-based.

    ``uniform``: evenly spread, ending at the last layer (TinyBERT's ``g(m) = m·N/M`` with layers counted from 1);
    ``skip``: every other layer, the 2nd, 4th, … (PKD-skip, DistilBERT's selection); ``last``: the top M layers
    (PKD-last); ``final``: only the student's last layer, taught by the teacher's last (Ko et al. 2023: at small
    data, distilling the last layer alone beats layer-to-layer maps); or an explicit list of 0-based indices (the
    config's ``kd.intermediate.layer_map`` list counts from 1: see :func:`config_layer_map`).
    """
    m, n = student_layers, teacher_layers
    if not isinstance(kind, str):
        chosen = list(kind)
        if len(chosen) != m or not all(0 <= j < n for j in chosen):
            raise ValueError(f"layer map {chosen} must list {m} teacher layer indices between 0 and {n - 1}")
        return list[int | None](chosen)
    if kind == "uniform":
        return [math.ceil(i * n / m) - 1 for i in range(1, m + 1)]
    if kind == "skip":
        return [min(2 * i, n) - 1 for i in range(1, m + 1)]
    if kind == "last":
        return [max(n - m + i, 1) - 1 for i in range(1, m + 1)]
    if kind == "final":
        return [None] * (m - 1) + [n - 1]
    raise ValueError(f"unknown layer map {kind!r}")


def config_layer_map(value: str | Sequence[int]) -> str | list[int]:
    """``kd.intermediate.layer_map`` as :func:`kd_layer_map` takes it: a list in the config names teacher layers by
    their number, counting from 1 (as the README and recorded studies do), so it becomes 0-based indices here."""
    return value if isinstance(value, str) else [j - 1 for j in value]


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of ``[B, L, D]`` states over the positions where ``mask`` ``[B, L]`` is 1."""
    weights = mask.unsqueeze(-1).to(student.dtype)
    squared = (student - teacher.to(student.dtype)).pow(2) * weights
    return squared.sum() / (weights.sum() * student.shape[-1]).clamp_min(1.0)


def attention_scores(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Head-averaged, row-centred attention scores ``[B, L, L]`` from probabilities ``[B, H, L, L]``."""
    keys = mask[:, None, :].to(probs.dtype)  # [B, 1, L]
    scores = probs.clamp_min(1e-9).log().mean(dim=1)  # [B, L, L]
    row_mean = (scores * keys).sum(-1, keepdim=True) / keys.sum(-1, keepdim=True).clamp_min(1.0)
    return (scores - row_mean) * keys


def attention_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE of attention scores over unmasked (query, key) pairs; head counts may differ."""
    pairs = (mask[:, :, None] * mask[:, None, :]).to(student.dtype)
    diff = attention_scores(student, mask) - attention_scores(teacher.to(student.dtype), mask)
    return (diff.pow(2) * pairs).sum() / pairs.sum().clamp_min(1.0)


def expose_attention(model: PreTrainedModel) -> Callable[[], None]:
    """Make ``model`` return its own attention maps while it trains; returns a function that undoes it.

    Only eager attention returns maps, and in training those maps come after attention dropout, which zeroes
    entries (log 0 would swamp the score loss) and rescales the rest; so attention dropout is off meanwhile.
    """
    previous = model.config._attn_implementation
    dropouts = [
        (m, m.p)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Dropout) and name.endswith("attention.self.dropout")
    ]
    model.set_attn_implementation("eager")
    for module, _ in dropouts:
        module.p = 0.0

    def restore() -> None:
        model.set_attn_implementation(previous)
        for module, p in dropouts:
            module.p = p

    return restore


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``KL(teacher ‖ student)`` of head-averaged attention distributions, averaged over unmasked query rows.

    MiniLM's attention transfer; averaging the heads' distributions lets head counts differ.
    """
    rows = mask.to(student.dtype)  # [B, L]
    target = teacher.to(student.dtype).mean(dim=1)  # [B, L, L]
    log_student = student.mean(dim=1).clamp_min(1e-12).log()
    per_row = (target * (target.clamp_min(1e-12).log() - log_student)).sum(-1)  # masked keys have 0 target mass
    return (per_row * rows).sum() / rows.sum().clamp_min(1.0)


class LayerOutputs(Protocol):
    """A model's output run with ``output_hidden_states`` (and ``output_attentions``): its layers' states and maps."""

    @property
    def hidden_states(self) -> Sequence[torch.Tensor]: ...

    @property
    def attentions(self) -> Sequence[torch.Tensor]: ...


@dataclass
class IntermediateTeacher:
    """A teacher taking part in intermediate KD, with its own projection and layer matching."""

    name: str
    model: PreTrainedModel
    layers: list[int | None] | None  # fixed layer map (0-based, per student layer); None when matched by EMD
    emd: EMDLayerMapping | None

    @property
    def layer_map(self) -> list[int | None]:
        """The fixed layer map, which a teacher has exactly when it is not matched by EMD."""
        if self.layers is None:
            raise ValueError(f"teacher {self.name!r} is matched by EMD: it has no fixed layer map")
        return self.layers


class IntermediateDistiller(torch.nn.Module):
    """The intermediate-layer loss of one student against teachers that share its tokenizer.

    Its parameters (the projections) are trained with the student; the teachers stay frozen and are not
    registered as submodules.
    """

    def __init__(
        self,
        config: IntermediateConfig,
        *,
        student_hidden: int,
        student_layers: int,
        teachers: Sequence[tuple[str, PreTrainedModel]],
    ) -> None:
        super().__init__()
        if not teachers:
            raise ValueError("intermediate KD needs at least one teacher sharing the student's tokenizer")
        self.config = config
        self.projections = torch.nn.ModuleDict()
        self.teachers: list[IntermediateTeacher] = []
        for name, model in teachers:
            teacher_layers = model.config.num_hidden_layers
            self.projections[name] = torch.nn.Linear(student_hidden, model.config.hidden_size)
            if config.layer_map == "emd":
                entry = IntermediateTeacher(
                    name, model, None, EMDLayerMapping(student_layers, teacher_layers, separate=config.emd_separate)
                )
            else:
                mapping = kd_layer_map(config_layer_map(config.layer_map), student_layers, teacher_layers)
                entry = IntermediateTeacher(name, model, mapping, None)
            if config.attention > 0:
                model.set_attn_implementation("eager")  # only eager attention returns the maps
            model.eval().requires_grad_(False)
            self.teachers.append(entry)

    @property
    def wants_attentions(self) -> bool:
        return self.config.attention > 0

    def to_device(self, device: torch.device) -> IntermediateDistiller:
        """Move the projections and the frozen teachers to ``device``."""
        self.to(device)
        for teacher in self.teachers:
            teacher.model.to(device)  # type: ignore[arg-type]  # typeshed: functools.wraps on a method drops self
        return self

    def forward(self, student: LayerOutputs, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over teachers of ``embedding·L_emb + hidden·L_hid + attention·L_att`` for this batch.

        ``student`` must hold ``hidden_states`` (and ``attentions`` when the attention weight is positive).
        """
        mask = batch["attention_mask"]
        losses = [self._teacher_loss(teacher, student, batch, mask) for teacher in self.teachers]
        return torch.stack(losses).mean()

    def _teacher_loss(self, teacher: IntermediateTeacher, student: LayerOutputs, batch, mask) -> torch.Tensor:
        cfg = self.config
        with torch.no_grad():
            out = teacher.model(**batch, output_hidden_states=True, output_attentions=self.wants_attentions)
        project = self.projections[teacher.name]
        student_hidden = [project(h) for h in student.hidden_states]  # embeddings, then layers 1..M
        total = student_hidden[0].new_zeros(())
        if cfg.embedding > 0:
            total = total + cfg.embedding * masked_mse(student_hidden[0], out.hidden_states[0], mask)
        if teacher.emd is not None:
            costs = self._cost_matrices(student_hidden, student, out, mask)
            return total + teacher.emd.loss(costs) if costs else total
        pairs = [(i, j) for i, j in enumerate(teacher.layer_map) if j is not None]
        m = len(pairs)
        for i, j in pairs:  # hidden_states[0] are the embeddings: layer i's output is at i + 1
            if cfg.hidden > 0:
                total = total + cfg.hidden * masked_mse(student_hidden[i + 1], out.hidden_states[j + 1], mask) / m
            if cfg.attention > 0:
                total = total + cfg.attention * self._attention_loss(student.attentions[i], out.attentions[j], mask) / m
        return total

    def _attention_loss(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (attention_kl if self.config.attention_loss == "kl" else attention_mse)(student, teacher, mask)

    def _cost_matrices(self, student_hidden, student: LayerOutputs, teacher: LayerOutputs, mask) -> dict:
        cfg, costs = self.config, {}
        m, n = len(student_hidden) - 1, len(teacher.hidden_states) - 1
        if cfg.hidden > 0:
            costs["hidden"] = cfg.hidden * torch.stack(
                [
                    torch.stack(
                        [masked_mse(student_hidden[i], teacher.hidden_states[j], mask) for j in range(1, n + 1)]
                    )
                    for i in range(1, m + 1)
                ]
            )
        if cfg.attention > 0:
            costs["attention"] = cfg.attention * torch.stack(
                [
                    torch.stack(
                        [self._attention_loss(student.attentions[i], teacher.attentions[j], mask) for j in range(n)]
                    )
                    for i in range(m)
                ]
            )
        return costs

    def record(self) -> dict[str, dict]:
        """Per teacher: its fixed layer map (teacher layer numbers counting from 1, as the config writes them), or
        its EMD layer weights (rounded) at the end of training."""
        return {
            t.name: {"layer_map": [None if j is None else j + 1 for j in t.layer_map]}
            if t.emd is None
            else {
                "layer_map": "emd",
                "emd_weights": {
                    kind: {side: [round(w, 4) for w in ws] for side, ws in sides.items()}
                    for kind, sides in t.emd.state_dict().items()
                },
            }
            for t in self.teachers
        }

    def emd_state(self) -> dict[str, dict]:
        """The EMD layer weights of every teacher matched by EMD (to checkpoint; projections are parameters)."""
        return {t.name: t.emd.state_dict() for t in self.teachers if t.emd is not None}

    def load_emd_state(self, state: dict[str, dict]) -> None:
        """Restore EMD layer weights saved by :meth:`emd_state`."""
        for teacher in self.teachers:
            if teacher.emd is not None and teacher.name in state:
                teacher.emd.load_state_dict(state[teacher.name])
