"""Tokenised examples as tensors, and padding-trimmed batches of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from kdnas.latency.isolation import training_step
from kdnas.student.precision import autocast, resolve_precision


@dataclass(frozen=True)
class Encoded:
    """A tokenised split: right-padded ``[N, max_length]`` tensors and ``[N]`` labels."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


ENCODE_CHUNK = 8192
"""Texts tokenised at a time: the tokenizer's Python lists stay this small, so memory follows the tensors."""


def encode(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str | tuple[str, str]],
    labels: Sequence[int],
    max_length: int,
) -> Encoded:
    """Tokenise single sentences or sentence pairs (all one or the other), truncating and right-padding to
    ``max_length``, :data:`ENCODE_CHUNK` texts at a time into tensors allocated once (memory: the tensors)."""
    ids, mask, types = _encode_chunk(tokenizer, texts[:ENCODE_CHUNK], max_length)
    if len(texts) > ENCODE_CHUNK:
        first = (ids, mask, types)
        ids, mask = ids.new_empty(len(texts), ids.shape[1]), mask.new_empty(len(texts), mask.shape[1])
        types = types.new_empty(len(texts), types.shape[1]) if types is not None else None
        for start in range(0, len(texts), ENCODE_CHUNK):
            chunk = first if start == 0 else _encode_chunk(tokenizer, texts[start : start + ENCODE_CHUNK], max_length)
            end = start + len(chunk[0])
            ids[start:end], mask[start:end] = chunk[0], chunk[1]
            if types is not None and chunk[2] is not None:
                types[start:end] = chunk[2]
    return Encoded(
        input_ids=ids,
        attention_mask=mask,
        token_type_ids=types,
        labels=torch.tensor(list(labels), dtype=torch.long),
    )


def _encode_chunk(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str | tuple[str, str]], max_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if texts and isinstance(texts[0], tuple):
        first, second = [t[0] for t in texts], [t[1] for t in texts]
        enc = tokenizer(first, second, truncation=True, max_length=max_length, padding="max_length")
    else:
        enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding="max_length")
    token_types = enc.get("token_type_ids")
    return (
        torch.tensor(enc["input_ids"], dtype=torch.long),
        torch.tensor(enc["attention_mask"], dtype=torch.long),
        torch.tensor(token_types, dtype=torch.long) if token_types is not None else None,
    )


def concat(first: Encoded, second: Encoded) -> Encoded:
    """The rows of ``first`` followed by those of ``second`` (both tokenised alike, to the same length)."""
    types = None
    if first.token_type_ids is not None:
        if second.token_type_ids is None:
            raise ValueError("only the first of the two splits has token type ids: they were tokenised differently")
        types = torch.cat([first.token_type_ids, second.token_type_ids])
    return Encoded(
        input_ids=torch.cat([first.input_ids, second.input_ids]),
        attention_mask=torch.cat([first.attention_mask, second.attention_mask]),
        token_type_ids=types,
        labels=torch.cat([first.labels, second.labels]),
    )


def head(data: Encoded, rows: int) -> Encoded:
    """The first ``rows`` rows of ``data``."""
    types = None if data.token_type_ids is None else data.token_type_ids[:rows]
    return Encoded(data.input_ids[:rows], data.attention_mask[:rows], types, data.labels[:rows])


def batch_at(data: Encoded, index: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    """The model inputs of rows ``index``, with columns past the longest row's last token trimmed."""
    mask = data.attention_mask[index]
    length = max(int(mask.sum(dim=1).max()), 1)
    batch = {"input_ids": data.input_ids[index, :length], "attention_mask": mask[:, :length]}
    if data.token_type_ids is not None:
        batch["token_type_ids"] = data.token_type_ids[index, :length]
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def index_batches(
    n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Row indices of consecutive batches, in order or shuffled with ``generator``."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from order.split(batch_size)


def predict_logits(
    model: torch.nn.Module,
    data: Encoded,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int, int], None] | None = None,
    precision: str = "auto",
) -> torch.Tensor:
    """Logits ``[N, C]`` of ``model`` on every row of ``data``, as float32 on the CPU, in row order; ``on_batch(rows
    done, rows)`` runs after each batch. The forward pass autocasts to ``precision`` (see
    :func:`~kdnas.student.precision.resolve_precision`: ``auto`` is fp32 on the CPU, bf16 or fp16 on CUDA).
    It runs in eval mode and leaves ``model`` in the mode it found it (a model evaluated mid-training trains on), on
    ``device``: moved there before inference mode starts, so a model trained afterwards keeps trainable weights.
    Rows are batched by length, longest first, so each batch is trimmed to rows of nearly its own length (padding
    is masked: the logits are those of row-order batches, up to float rounding)."""
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    precision = resolve_precision(precision, device)
    by_length = torch.argsort(data.attention_mask.sum(dim=1), descending=True, stable=True)
    outputs, done = [], 0
    try:
        with torch.inference_mode():
            for index in by_length.split(batch_size):
                with training_step(), autocast(precision, device):  # no latency is measured on this node meanwhile
                    logits = model(**batch_at(data, index, device)).logits
                outputs.append(logits.float().cpu())
                done += len(index)
                if on_batch is not None:
                    on_batch(done, len(data))
            logits = torch.cat(outputs)
            return torch.empty_like(logits).index_copy_(0, by_length, logits)
    finally:
        model.train(was_training)
