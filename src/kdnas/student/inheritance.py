"""Inheritance: slice any sampled student out of a BERT teacher (Minitron / DynaBERT style).

A student of ``L`` layers, ``A`` heads of size ``d`` and FFN size ``F`` takes ``L`` teacher layers (uniformly
spread, or the most important), in each the ``A`` most important heads and the ``F`` most important FFN neurons,
and everywhere the ``A·d`` most important hidden channels: embeddings (word, position, token type), every matrix
and LayerNorm, pooler and classifier. Importance comes from
``kdnas.teachers.importance.activation_importance``, computed once per study. Where a shape cannot inherit
(another head size, more heads, layers, channels or neurons than the teacher has), the affected part keeps its
random initialisation and the record says why. A student of the teacher's full shape is an exact copy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from kdnas.study.study_record import ElasticRecord

LayerRule = Literal["uniform", "skip", "importance", "first", "last"]


@dataclass(frozen=True)
class Importance:
    """Scores of a BERT teacher's parts; higher is more important."""

    layers: torch.Tensor  # [L]
    heads: torch.Tensor  # [L, H]
    neurons: torch.Tensor  # [L, F]
    channels: torch.Tensor  # [D]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The scores by name (for a safetensors file)."""
        return {"layers": self.layers, "heads": self.heads, "neurons": self.neurons, "channels": self.channels}

    def summary(self) -> dict[str, Any]:
        """A small JSON-able record: layer scores, head scores, and the sizes ranked."""
        return {
            "layers": [round(v, 6) for v in self.layers.tolist()],
            "heads": [[round(v, 6) for v in row] for row in self.heads.tolist()],
            "neurons_per_layer": int(self.neurons.shape[1]),
            "channels": int(self.channels.shape[0]),
        }


def importance_from_tensors(tensors: dict[str, torch.Tensor]) -> Importance:
    """The inverse of :meth:`Importance.tensors`."""
    return Importance(tensors["layers"], tensors["heads"], tensors["neurons"], tensors["channels"])


def inheritance_layer_map(
    student_layers: int,
    teacher_layers: int,
    rule: LayerRule,
    layer_scores: torch.Tensor | None = None,
    one_layer: int = 0,
) -> list[int]:
    """The teacher layer each student layer is sliced from: a layer map (see :mod:`kdnas.student`), 0-based and
    ascending.

    ``uniform`` spreads the student over the teacher, first and last layer included (rounded
    ``linspace(0, T−1, S)``: DistilBERT's ``[0, 2, 4, 7, 9, 11]`` for 6 of 12); a one-layer student cannot hold
    both ends and takes teacher layer ``one_layer``. ``skip`` takes the top layer of each of ``S`` equal blocks
    (``⌈(i+1)·T/S⌉ − 1``: TinyBERT's and PKD-skip's map, ``[2, 5]`` for 2 of 6), so the student ends on the teacher's
    last layer and starts above its first. ``importance`` takes the ``S`` layers with the highest ``layer_scores``;
    ``first`` and ``last`` the bottom or top ``S``.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"cannot map {student_layers} student layers onto {teacher_layers} teacher layers")
    if rule == "first":
        return list(range(student_layers))
    if rule == "last":
        return list(range(teacher_layers - student_layers, teacher_layers))
    if rule == "skip":
        return [math.ceil((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]
    if rule == "importance":
        if layer_scores is None:
            raise ValueError("layer rule 'importance' needs layer scores")
        return sorted(_top_k(layer_scores, student_layers))
    if student_layers == 1:
        if not 0 <= one_layer < teacher_layers:
            raise ValueError(f"teacher layer {one_layer} is not one of the teacher's {teacher_layers} layers")
        return [one_layer]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [math.floor(i * step + 0.5) for i in range(student_layers)]


def _top_k(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` highest ``scores``, ascending (ties: the lower index)."""
    order = sorted(range(scores.shape[0]), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


@dataclass(frozen=True)
class OneLayerChoice:
    """The teacher layer a one-layer student takes under ``uniform``, and how it was chosen: ``scores`` maps each
    candidate layer to the validation metric a short training of ``student`` from it reached, ``failed`` a candidate
    whose training failed to the error (both empty when the configuration named the layer)."""

    layer: int
    rule: str  # auto (chosen by the scores), first, last
    scores: dict[int, float] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    student: str = ""
    steps: int = 0
    ran_on: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """A JSON-able record (layer keys as strings)."""
        return {
            "layer": self.layer,
            "rule": self.rule,
            "scores": {str(k): round(v, 6) for k, v in self.scores.items()},
            "failed": {str(k): v for k, v in self.failed.items()},
            "student": self.student,
            "steps": self.steps,
            "ran_on": self.ran_on,
        }


@dataclass(frozen=True)
class InheritanceSource:
    """A teacher's weights, shape and importance, shipped to every trial."""

    teacher: str
    rule: LayerRule
    num_layers: int
    num_heads: int
    head_dim: int
    intermediate_size: int
    max_positions: int
    importance: Importance
    state: dict[str, torch.Tensor] = field(repr=False)
    calibration: int = 0  # examples the importance was ranked on
    cache_file: str = ""
    one_layer: OneLayerChoice | None = None  # None: one-layer students take the first layer
    elastic: ElasticRecord | None = None  # the elastic network's training record, when ``state`` holds its weights

    @property
    def one_layer_index(self) -> int:
        """The teacher layer a one-layer student takes under ``uniform``."""
        return 0 if self.one_layer is None else self.one_layer.layer

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_dim

    def record(self) -> dict[str, Any]:
        """What the study records: the teacher, its shape, the layer rule and the importance ranking."""
        return {
            "teacher": self.teacher,
            "layers": self.rule,
            "calibration_size": self.calibration,
            "cache_file": self.cache_file,
            "shape": {
                "layers": self.num_layers,
                "heads": self.num_heads,
                "head_dim": self.head_dim,
                "ffn": self.intermediate_size,
            },
            "importance": self.importance.summary(),
            "one_layer": None if self.one_layer is None else self.one_layer.record(),
            "elastic": None if self.elastic is None else self.elastic.to_attrs(),
        }


def inheritance_source(
    name: str,
    model: PreTrainedModel,
    importance: Importance,
    rule: LayerRule,
    *,
    calibration: int = 0,
    cache_file: str = "",
) -> InheritanceSource:
    """What students need from BERT teacher ``name``: its CPU state dict, shape and importance."""
    config = model.config
    state = {key: value.detach().to("cpu").clone() for key, value in model.state_dict().items()}
    return InheritanceSource(
        teacher=name,
        rule=rule,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        head_dim=config.hidden_size // config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        max_positions=config.max_position_embeddings,
        importance=importance,
        state=state,
        calibration=calibration,
        cache_file=cache_file,
    )


def _rows(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + j for h in heads for j in range(head_dim)], dtype=torch.long)


@torch.no_grad()
def inherit(student: PreTrainedModel, source: InheritanceSource) -> dict[str, Any]:
    """Copy the selected rows and columns of ``source``'s weights into ``student`` in place; return the record.

    The record holds ``init`` (``inherited``: every weight from the teacher; ``partial``; ``random``), the teacher,
    the layer rule, the teacher layers taken, the heads taken per layer, the numbers of hidden channels and FFN
    neurons taken, and ``random``: the parts left random with the reason.
    """
    config = student.config
    width, layers = config.hidden_size, config.num_hidden_layers
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    ffn, positions = config.intermediate_size, config.max_position_embeddings
    record: dict[str, Any] = {"teacher": source.teacher, "rule": source.rule}
    if source.elastic is not None:
        record["elastic"] = True
    if width > source.hidden_size:
        return {
            **record,
            "init": "random",
            "random": {"all": f"student width {width} exceeds teacher {source.teacher!r}'s {source.hidden_size}"},
        }
    importance, t = source.importance, source.state
    channels = torch.tensor(_top_k(importance.channels, width), dtype=torch.long)
    random: dict[str, str] = {}
    targets = student.state_dict()  # tensors sharing the parameters' storage
    _copy_embeddings_and_head(targets, source, channels, positions, random)
    if layers > source.num_layers:
        random["encoder"] = f"{layers} layers, teacher {source.teacher!r} only {source.num_layers}"
        return {**record, "init": "partial", "hidden_channels": width, "random": random}
    chosen_layers = inheritance_layer_map(
        layers, source.num_layers, source.rule, importance.layers, source.one_layer_index
    )
    if head_dim != source.head_dim:
        random["attention"] = f"head size {head_dim}, the teacher {source.head_dim}"
    elif heads > source.num_heads:
        random["attention"] = f"{heads} heads, the teacher {source.num_heads}"
    if ffn > source.intermediate_size:
        random["ffn"] = f"FFN size {ffn}, the teacher {source.intermediate_size}"
    chosen_heads, neurons_taken = [], 0
    for i, j in enumerate(chosen_layers):
        picked, neurons_taken = _copy_layer(targets, t, i, j, channels, importance, (heads, head_dim, ffn), random)
        if picked is not None:
            chosen_heads.append(picked)
    return {
        **record,
        "init": "partial" if random else "inherited",
        "layers": chosen_layers,
        "heads": chosen_heads,
        "hidden_channels": width,
        "ffn_neurons": neurons_taken,
        "random": random,
    }


def _copy_embeddings_and_head(
    targets: dict[str, torch.Tensor],
    source: InheritanceSource,
    channels: torch.Tensor,
    positions: int,
    random: dict[str, str],
) -> None:
    """Copy the embeddings, the pooler and the classifier's ``channels`` from ``source`` into ``targets``; what cannot
    be copied (more positions or another label count than the teacher's) is noted in ``random``."""
    t = source.state
    targets["bert.embeddings.word_embeddings.weight"].copy_(t["bert.embeddings.word_embeddings.weight"][:, channels])
    types = "bert.embeddings.token_type_embeddings.weight"
    targets[types].copy_(t[types][:, channels])
    if positions <= source.max_positions:
        key = "bert.embeddings.position_embeddings.weight"
        targets[key].copy_(t[key][:positions, channels])
    else:
        random["position_embeddings"] = f"{positions} positions, the teacher {source.max_positions}"
    for name in ("weight", "bias"):
        targets[f"bert.embeddings.LayerNorm.{name}"].copy_(t[f"bert.embeddings.LayerNorm.{name}"][channels])
    if "bert.pooler.dense.weight" in t and "bert.pooler.dense.weight" in targets:
        targets["bert.pooler.dense.weight"].copy_(t["bert.pooler.dense.weight"][channels][:, channels])
        targets["bert.pooler.dense.bias"].copy_(t["bert.pooler.dense.bias"][channels])
    if t["classifier.weight"].shape[0] == targets["classifier.weight"].shape[0]:
        targets["classifier.weight"].copy_(t["classifier.weight"][:, channels])
        targets["classifier.bias"].copy_(t["classifier.bias"])
    else:
        labels, teacher_labels = targets["classifier.weight"].shape[0], t["classifier.weight"].shape[0]
        random["classifier"] = f"{labels} labels, the teacher {teacher_labels}"


def _copy_layer(
    targets: dict[str, torch.Tensor],
    t: dict[str, torch.Tensor],
    i: int,
    j: int,
    channels: torch.Tensor,
    importance: Importance,
    shape: tuple[int, int, int],
    random: dict[str, str],
) -> tuple[list[int] | None, int]:
    """Copy teacher layer ``j`` into student layer ``i``: its norms' ``channels`` and, unless ``random`` names them,
    its most important heads and FFN neurons for the student's ``(heads, head_dim, ffn)``. Returns the heads taken
    (None when attention stays random) and the number of neurons taken."""
    heads, head_dim, ffn = shape
    ours, theirs = f"bert.encoder.layer.{i}.", f"bert.encoder.layer.{j}."

    def put(key: str, value: torch.Tensor) -> None:
        targets[ours + key].copy_(value)

    for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
        for name in ("weight", "bias"):
            put(f"{norm}.{name}", t[theirs + f"{norm}.{name}"][channels])
    picked, neurons_taken = None, 0
    if "attention" not in random:
        picked = _top_k(importance.heads[j], heads)
        rows = _rows(picked, head_dim)
        for proj in ("query", "key", "value"):
            weight, bias = f"attention.self.{proj}.weight", f"attention.self.{proj}.bias"
            put(weight, t[theirs + weight][rows][:, channels])
            put(bias, t[theirs + bias][rows])
        put("attention.output.dense.weight", t[theirs + "attention.output.dense.weight"][channels][:, rows])
        put("attention.output.dense.bias", t[theirs + "attention.output.dense.bias"][channels])
    if "ffn" not in random:
        neurons = torch.tensor(_top_k(importance.neurons[j], ffn), dtype=torch.long)
        neurons_taken = len(neurons)
        put("intermediate.dense.weight", t[theirs + "intermediate.dense.weight"][neurons][:, channels])
        put("intermediate.dense.bias", t[theirs + "intermediate.dense.bias"][neurons])
        put("output.dense.weight", t[theirs + "output.dense.weight"][channels][:, neurons])
        put("output.dense.bias", t[theirs + "output.dense.bias"][channels])
    return picked, neurons_taken
