"""Warm start: initialise a BERT student from a teacher's layers, DistilBERT-style, where the shapes allow it.

A student can be warm-started from a BERT-family teacher that uses the student's vocabulary and has the student's
width. Embeddings, pooler and classifier are copied when their shapes match (position embeddings: the student's
first rows). Each student layer ``i`` takes teacher layer ``layer_map(...)[i]``: its attention when the head counts
also match (the same matrices split into other heads would compute another function), its FFN when the
intermediate sizes match. Everything else keeps its random initialisation; the returned record says what was
copied and why anything was not.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

LayerRule = Literal["uniform", "first", "last"]

_LAYER_KEY = re.compile(r"^bert\.encoder\.layer\.(\d+)\.(.+)$")


def layer_map(student_layers: int, teacher_layers: int, rule: LayerRule) -> list[int]:
    """The teacher layer (0-based) each student layer is copied from.

    ``uniform`` spreads the student over the teacher including its first and last layer (rounded
    ``linspace(0, T−1, S)``: DistilBERT's ``[0, 2, 4, 7, 9, 11]`` for 6 of 12); ``first`` and ``last`` take the
    teacher's bottom or top ``S`` layers.
    """
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"cannot map {student_layers} student layers onto {teacher_layers} teacher layers")
    if rule == "first":
        return list(range(student_layers))
    if rule == "last":
        return list(range(teacher_layers - student_layers, teacher_layers))
    if student_layers == 1:
        return [0]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [math.floor(i * step + 0.5) for i in range(student_layers)]


@dataclass(frozen=True)
class WarmStartSource:
    """A teacher's weights and shape, shipped to every trial; ``unusable`` says why no student can use them."""

    teacher: str
    rule: LayerRule
    hidden_size: int = 0
    num_layers: int = 0
    num_heads: int = 0
    intermediate_size: int = 0
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    unusable: str | None = None


def warm_start_source(
    name: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    student_tokenizer: PreTrainedTokenizerBase,
    rule: LayerRule,
) -> WarmStartSource:
    """Take what students need from teacher ``name`` (its CPU state dict), or record why it cannot serve."""
    config = model.config
    if config.model_type != "bert":
        return WarmStartSource(name, rule, unusable=f"teacher {name!r} is a {config.model_type} model, not BERT")
    if tokenizer.get_vocab() != student_tokenizer.get_vocab():
        return WarmStartSource(name, rule, unusable=f"teacher {name!r} does not use the students' vocabulary")
    state = {key: value.detach().to("cpu").clone() for key, value in model.state_dict().items()}
    return WarmStartSource(
        name, rule, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
        config.intermediate_size, state,
    )


def _blocker(student: PreTrainedModel, source: WarmStartSource) -> str | None:
    config = student.config
    if source.unusable:
        return source.unusable
    if config.hidden_size != source.hidden_size:
        return f"student width {config.hidden_size} differs from teacher {source.teacher!r}'s {source.hidden_size}"
    if config.num_hidden_layers > source.num_layers:
        return f"the student has {config.num_hidden_layers} layers, teacher {source.teacher!r} only {source.num_layers}"
    return None


def _group(key: str) -> str:
    if key.startswith("bert.embeddings."):
        return "embeddings"
    if key.startswith("bert.pooler."):
        return "pooler"
    if key.startswith("classifier."):
        return "classifier"
    return "attention" if ".attention." in key else "ffn"


@torch.no_grad()
def apply_warm_start(student: PreTrainedModel, source: WarmStartSource) -> dict[str, Any]:
    """Copy ``source``'s matching weights into ``student`` in place; return the record of what was copied."""
    record: dict[str, Any] = {"teacher": source.teacher, "rule": source.rule, "applied": False}
    blocker = _blocker(student, source)
    if blocker:
        return {**record, "reason": blocker}
    config = student.config
    mapping = layer_map(config.num_hidden_layers, source.num_layers, source.rule)
    skipped: dict[str, str] = {}
    if config.num_attention_heads != source.num_heads:
        skipped["attention"] = f"{config.num_attention_heads} heads, the teacher {source.num_heads}"
    if config.intermediate_size != source.intermediate_size:
        skipped["ffn"] = f"FFN size {config.intermediate_size}, the teacher {source.intermediate_size}"
    plan: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for key, param in student.state_dict().items():  # tensors sharing the parameters' storage
        group = _group(key)
        if group in skipped:
            continue
        layer = _LAYER_KEY.match(key)
        teacher_key = f"bert.encoder.layer.{mapping[int(layer[1])]}.{layer[2]}" if layer else key
        value = source.state.get(teacher_key)
        if value is None:
            skipped[group] = f"the teacher has no {teacher_key}"
            continue
        if key.endswith("position_embeddings.weight") and param.shape[0] <= value.shape[0]:
            value = value[: param.shape[0]]  # the student's positions are the teacher's first ones
        if value.shape != param.shape:
            skipped[group] = f"{key} has shape {tuple(param.shape)}, the teacher's {tuple(value.shape)}"
            continue
        plan.setdefault(group, []).append((param, value))
    copied = [group for group in ("embeddings", "attention", "ffn", "pooler", "classifier")
              if group in plan and group not in skipped]  # a group is copied whole or not at all
    for group in copied:
        for param, value in plan[group]:
            param.copy_(value)
    return {**record, "applied": bool(copied), "layer_map": mapping, "copied": copied, "skipped": skipped}
