"""Activation importance of a BERT teacher's layers, heads, FFN neurons and hidden channels (Minitron-style).

Forward passes only, over a calibration subset of the training data: an attention head's importance is the mean L2
norm of its context output, an FFN neuron's the mean absolute activation after the non-linearity, a hidden channel's
the mean absolute value of the embedding LayerNorm's and every layer LayerNorm's outputs summed, and a layer's
``1 − cos(input, output)`` of its hidden states (block importance). Means run over real (non-padding) tokens.
Computed once per study and cached beside the teacher logits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel

from kdnas.config import KDNASConfig, TeacherConfig
from kdnas.data import TaskData
from kdnas.student.batches import Encoded, batch_at, index_batches
from kdnas.student.inheritance import Importance, importance_from_tensors
from kdnas.teachers.loading import Teacher, load_teacher
from kdnas.teachers.logits import logits_cache_key, save_atomically
from kdnas.teachers.tasks import where

if TYPE_CHECKING:
    from transformers.models.bert.modeling_bert import BertLayer, BertModel

logger = logging.getLogger(__name__)


def activation_importance(
    model: PreTrainedModel, data: Encoded, *, batch_size: int = 64, device: torch.device | str = "cpu"
) -> Importance:
    """Rank ``model``'s (a ``BertForSequenceClassification``) parts by activation magnitude on ``data``. The model
    is moved to ``device`` before inference mode starts, so it stays trainable."""
    device = torch.device(device)
    model.to(device).eval()  # type: ignore[arg-type]  # typeshed: functools.wraps on a method drops self
    config = model.config
    num_layers, num_heads = config.num_hidden_layers, config.num_attention_heads
    head_dim = config.hidden_size // num_heads
    heads = torch.zeros(num_layers, num_heads, dtype=torch.float64)
    neurons = torch.zeros(num_layers, config.intermediate_size, dtype=torch.float64)
    channels = torch.zeros(config.hidden_size, dtype=torch.float64)
    layers = torch.zeros(num_layers, dtype=torch.float64)
    tokens = 0
    mask: dict[str, torch.Tensor] = {}

    def masked_sum(values: torch.Tensor) -> torch.Tensor:  # [B, T, X] → [X], summed over real tokens
        return (values.double() * mask["m"].unsqueeze(-1)).sum(dim=(0, 1)).cpu()

    def on_context(layer: int):
        def hook(module, args):
            context = args[0]
            norms = context.reshape(*context.shape[:2], num_heads, head_dim).norm(dim=-1)
            heads[layer] += masked_sum(norms)

        return hook

    def on_neurons(layer: int):
        def hook(module, args, output):
            neurons[layer] += masked_sum(output.abs())

        return hook

    def on_channels(module, args, output):
        channels.add_(masked_sum(output.abs()))

    bert = cast("BertModel", model.bert)  # nn.Module attribute access is untyped
    handles = [bert.embeddings.LayerNorm.register_forward_hook(on_channels)]
    for i, block in enumerate(cast("Sequence[BertLayer]", bert.encoder.layer)):
        handles.append(block.attention.output.dense.register_forward_pre_hook(on_context(i)))
        handles.append(block.intermediate.register_forward_hook(on_neurons(i)))
        handles.append(block.attention.output.LayerNorm.register_forward_hook(on_channels))
        handles.append(block.output.LayerNorm.register_forward_hook(on_channels))
    try:
        with torch.inference_mode():
            for index in index_batches(len(data), batch_size, shuffle=False):
                batch = batch_at(data, index, device)
                mask["m"] = batch["attention_mask"].to(torch.float64)
                hidden = model(**batch, output_hidden_states=True).hidden_states
                for i in range(num_layers):
                    cosine = torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 1], dim=-1)
                    layers[i] += masked_sum((1.0 - cosine).unsqueeze(-1))[0]
                tokens += int(batch["attention_mask"].sum())
    finally:
        for handle in handles:
            handle.remove()
    scale = 1.0 / max(tokens, 1)
    return Importance(*(t.mul(scale).float() for t in (layers, heads, neurons, channels)))


def importance_file(teacher: Teacher, task: TaskData, calibration: Encoded, max_length: int, cache_dir: Path) -> Path:
    """The cache file of ``teacher``'s importance on ``calibration`` (keyed like the teacher logits, plus the
    calibration size)."""
    key = logits_cache_key(teacher, task, f"importance-{len(calibration)}", max_length)
    return Path(cache_dir) / f"{teacher.name}-importance-{key}.safetensors"


def teacher_importance(
    config: KDNASConfig,
    teacher_cfg: TeacherConfig,
    task: TaskData,
    calibration: Encoded,
    max_length: int,
    cache_dir: Path,
    *,
    device: torch.device | str,
    teacher: Teacher | None = None,
) -> tuple[Importance, Path]:
    """:func:`_cached_importance` of the teacher ``teacher_cfg`` describes (loaded unless given)."""
    teacher = load_teacher(config, teacher_cfg, task.num_labels, task.label_names) if teacher is None else teacher
    return _cached_importance(teacher, task, calibration, max_length, cache_dir, device)


def _cached_importance(
    teacher: Teacher, task: TaskData, calibration: Encoded, max_length: int, cache_dir: Path, device: torch.device | str
) -> tuple[Importance, Path]:
    """:func:`activation_importance` of ``teacher`` on ``calibration``, computed once and then read from
    ``cache_dir`` (:func:`importance_file`); returns it with its file."""
    file = importance_file(teacher, task, calibration, max_length, cache_dir)
    if file.exists():
        logger.info("teacher importance cache hit: %s (%s)", teacher.name, file.name)
        return importance_from_tensors(load_file(file)), file
    logger.info(
        "teacher importance cache miss: ranking %s's layers, heads, neurons and channels on %d examples",
        teacher.name,
        len(calibration),
    )
    importance = activation_importance(teacher.model, calibration, device=device)
    save_atomically(importance.tensors(), file, ran_on=where(device))
    return importance, file
