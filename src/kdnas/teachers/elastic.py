"""Train once, slice many: the importance-sorted teacher trained as an elastic network (DynaBERT, Once-for-All).

:func:`sorted_source` reorders a BERT teacher's heads, FFN neurons and hidden channels by importance, most important
first (a permutation: the sorted teacher computes the same function), so the student a shape would inherit is the
prefix of every weight. :func:`train_elastic` then trains those shared weights with the sandwich rule: each step
distils the space's largest and smallest students and ``random_students`` random ones on the same batch from the
cached teacher outputs; each student's gradient lands on the slice of the shared weights it was copied from. Every
student sliced afterwards (:func:`~kdnas.student.inheritance.inherit` on the returned source) starts from weights
trained to work at its own size.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

from kdnas.config import ElasticConfig, KDConfig, SpaceConfig
from kdnas.distill.distillation import Distillation
from kdnas.latency.isolation import training_step
from kdnas.progress import Progress
from kdnas.student import StudentArch
from kdnas.student.batches import Encoded, batch_at, index_batches
from kdnas.student.inheritance import Importance, InheritanceSource, inherit, inheritance_layer_map
from kdnas.student.precision import autocast, resolve_precision
from kdnas.study.study_record import ElasticLoss, ElasticRecord

_LAYER_KEY = "bert.encoder.layer."


def _descending(n: int) -> torch.Tensor:
    """Scores that rank indices 0, 1, … n−1 first to last."""
    return torch.arange(n, 0, -1, dtype=torch.float32)


def _order(scores: torch.Tensor) -> torch.Tensor:
    """Indices from the highest score to the lowest (ties: the lower index first)."""
    return torch.tensor(sorted(range(scores.shape[0]), key=lambda i: (-float(scores[i]), i)), dtype=torch.long)


@torch.no_grad()
def sorted_source(source: InheritanceSource) -> InheritanceSource:
    """``source`` with its weights reordered by importance (heads and FFN neurons per layer, hidden channels
    everywhere) and an importance that ranks every part in index order: the same teacher function, and the same
    students inherited from it, each now the prefix of the weights. Layer scores are kept (the layer rules use them)."""
    t, imp = source.state, source.importance
    channels = _order(imp.channels)
    state = {}
    for key, value in t.items():
        value = value.clone()
        if key.startswith(_LAYER_KEY):
            layer = int(key[len(_LAYER_KEY) :].split(".", 1)[0])
            heads = _order(imp.heads[layer])
            rows = (heads[:, None] * source.head_dim + torch.arange(source.head_dim)).reshape(-1)
            neurons = _order(imp.neurons[layer])
            value = _permute_layer_tensor(key.split(".", 4)[4], value, channels, rows, neurons)
        elif key in ("classifier.weight",) or key.startswith("bert.embeddings.") and value.dim() == 2:
            value = value[:, channels]
        elif key.startswith("bert.embeddings.LayerNorm") or key == "bert.pooler.dense.bias":
            value = value[channels]
        elif key == "bert.pooler.dense.weight":
            value = value[channels][:, channels]
        state[key] = value.contiguous()
    ranked = Importance(
        layers=imp.layers.clone(),
        heads=_descending(imp.heads.shape[1]).expand_as(imp.heads).clone(),
        neurons=_descending(imp.neurons.shape[1]).expand_as(imp.neurons).clone(),
        channels=_descending(imp.channels.shape[0]),
    )
    return replace(source, state=state, importance=ranked)


def _permute_layer_tensor(
    name: str, value: torch.Tensor, channels: torch.Tensor, rows: torch.Tensor, neurons: torch.Tensor
) -> torch.Tensor:
    """One encoder-layer tensor (``name`` after ``bert.encoder.layer.N.``) with its heads, neurons and channels
    reordered."""
    if name.startswith("attention.self."):
        return value[rows][:, channels] if value.dim() == 2 else value[rows]
    if name == "attention.output.dense.weight":
        return value[channels][:, rows]
    if name == "intermediate.dense.weight":
        return value[neurons][:, channels]
    if name == "intermediate.dense.bias":
        return value[neurons]
    if name == "output.dense.weight":
        return value[channels][:, neurons]
    return value[channels]  # the dense biases into the hidden size and both LayerNorms


def sandwich_students(space: SpaceConfig, source: InheritanceSource) -> list[StudentArch]:
    """The space's students that inherit every weight from ``source`` (the teacher's head size, no more layers,
    heads or FFN neurons than it has), smallest to largest."""
    archs = [
        StudentArch(num_layers=layers, num_heads=heads, head_dim=source.head_dim, ffn_ratio=ratio)
        for layers in range(space.depth.min, min(space.depth.max, source.num_layers) + 1)
        for heads in space.heads
        for ratio in space.ffn_ratio
        if source.head_dim in space.head_dim and heads <= source.num_heads
    ]
    fits = [a for a in archs if a.intermediate_size <= source.intermediate_size]
    return sorted(fits, key=lambda a: (a.num_layers * a.hidden_size * (1 + a.ffn_ratio), a.summary))


@dataclass(frozen=True)
class ElasticResult:
    """The elastic network's weights (sorted like the teacher) and what its training did."""

    state: dict[str, torch.Tensor]
    record: ElasticRecord


def _student_key(key: str, layer_map: list[int]) -> str:
    """The shared weight a student's weight ``key`` was sliced from (its layer mapped onto the teacher's)."""
    if not key.startswith(_LAYER_KEY):
        return key
    layer, rest = key[len(_LAYER_KEY) :].split(".", 1)
    return f"{_LAYER_KEY}{layer_map[int(layer)]}.{rest}"


def train_elastic(
    source: InheritanceSource,
    data: Encoded,
    teacher_logits: torch.Tensor,
    *,
    space: SpaceConfig,
    kd: KDConfig,
    settings: ElasticConfig,
    build: Any,
    batch_size: int,
    seed: int,
    precision: str = "auto",
    device: torch.device | str = "cpu",
) -> ElasticResult:
    """Train the sorted ``source``'s weights as an elastic network on ``data`` (labelled rows, then transfer rows
    labelled ``-100``) with the ``kd`` loss against ``teacher_logits``, for ``settings.epochs`` passes.

    ``build(arch)`` returns a fresh student model of ``arch``. Each step distils the largest and smallest of
    :func:`sandwich_students` and ``settings.random_students`` drawn at random, and steps AdamW (``settings.
    learning_rate``, linear warm-up over the first tenth and decay, gradients clipped to norm 1) on the shared
    weights. Raises :class:`ValueError` when no student of the space inherits every weight.
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    precision = "fp32" if precision == "fp16" else precision  # no loss scaling here: fp16 trains in fp32
    archs = _sandwich_or_refuse(space, source)
    network = _SharedWeights(source, build, device, precision)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = Distillation(kd, teacher_logits.to(device), None, labels=data.labels)
    total = max(1, math.ceil(math.ceil(len(data) / batch_size) * settings.epochs))
    optimizer = torch.optim.AdamW(network.shared.values(), lr=settings.learning_rate, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * total), total)
    started, step, losses = time.perf_counter(), 0, []
    with Progress("elastic network", "step") as progress:
        while step < total:
            for index in index_batches(len(data), batch_size, shuffle=True, generator=generator):
                if step >= total:
                    break
                chosen = [archs[-1], archs[0], *(rng.choice(archs) for _ in range(settings.random_students))]
                losses.append(network.distil(chosen, data, index, loss_fn, step / total))
                torch.nn.utils.clip_grad_norm_(network.shared.values(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if not math.isfinite(losses[-1]):
                    raise FloatingPointError(f"elastic network: non-finite loss at step {step}")
                progress.advance(step, total, loss=losses[-1])
    record = ElasticRecord(
        epochs=settings.epochs,
        steps=total,
        learning_rate=settings.learning_rate,
        random_students=settings.random_students,
        students=[a.summary for a in (archs[0], archs[-1])],
        rows=len(data),
        loss=ElasticLoss(first=round(losses[0], 6), last=round(sum(losses[-20:]) / len(losses[-20:]), 6)),
        precision=precision,
        seconds=round(time.perf_counter() - started, 1),
    )
    return ElasticResult({k: p.detach().cpu().contiguous() for k, p in network.shared.items()}, record)


def _sandwich_or_refuse(space: SpaceConfig, source: InheritanceSource) -> list[StudentArch]:
    """:func:`sandwich_students`; raises :class:`ValueError` when there is none."""
    archs = sandwich_students(space, source)
    if not archs:
        raise ValueError(
            f"no student of student.space inherits every weight from teacher {source.teacher!r} "
            f"(head size {source.head_dim}, {source.num_layers} layers, {source.num_heads} heads)"
        )
    return archs


class _SharedWeights:
    """The elastic network: the sorted teacher's weights as trainable parameters, and one model per student shape
    (built once) that steps slice them into."""

    def __init__(self, source: InheritanceSource, build: Any, device: torch.device, precision: str) -> None:
        self.shared = {
            k: torch.nn.Parameter(v.to(device, torch.float32), requires_grad=True) for k, v in source.state.items()
        }
        self.live = replace(source, state={k: p.data for k, p in self.shared.items()})
        self.models: dict[StudentArch, PreTrainedModel] = {}
        self.build, self.device, self.precision = build, device, precision

    def distil(
        self, chosen: list[StudentArch], data: Encoded, index: torch.Tensor, loss_fn: Distillation, progress: float
    ) -> float:
        """Distil each of ``chosen`` on rows ``index``, its gradients added to the shared weights; the mean loss."""
        total = 0.0
        for arch in chosen:
            model = self.models.get(arch)
            if model is None:
                model = self.models[arch] = self.build(arch).to(self.device)
            total += _student_step(model, arch, self.live, self.shared, data, index, loss_fn, progress, self.precision)
        return total / len(chosen)


def _student_step(
    model: PreTrainedModel,
    arch: StudentArch,
    live: InheritanceSource,
    shared: dict[str, torch.nn.Parameter],
    data: Encoded,
    index: torch.Tensor,
    loss_fn: Distillation,
    progress: float,
    precision: str,
) -> float:
    """Slice ``arch`` out of the shared weights, distil it on rows ``index`` and add its gradients to the slices."""
    device = next(iter(shared.values())).device
    inherit(model, live)
    model.train()
    with training_step():
        batch = batch_at(data, index, device)
        with autocast(precision, device):
            loss = loss_fn(model, batch, data.labels[index].to(device), index, progress)
        loss.backward()
    layer_map = inheritance_layer_map(
        arch.num_layers, live.num_layers, live.rule, live.importance.layers, live.one_layer_index
    )
    with torch.no_grad():
        for key, param in model.named_parameters():
            if param.grad is None:
                continue
            target = shared.get(_student_key(key, layer_map))
            if target is None:  # a part the teacher lacks (e.g. a pooler): the student's own
                continue
            if target.grad is None:
                target.grad = torch.zeros_like(target)
            target.grad[tuple(slice(0, n) for n in param.grad.shape)] += param.grad
            param.grad = None
    return float(loss.detach())
