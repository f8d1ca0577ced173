"""The transfer set: unlabelled text that students learn from through the teachers' soft labels.

Sources (``data.transfer``): local files read by the same loaders as the training files (their label column, if
any, is ignored), splits of the task's hub dataset, sentences from the demo generator, the training rows that
``data.max_train_samples`` leaves out (without their labels), and augmented copies of the training sentences
(:mod:`kdnas.data.augment`). Validation texts never enter it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from itertools import islice

from kdnas.config import ConfigError, DataConfig
from kdnas.data.augment import Text
from kdnas.data.demo import _sentences
from kdnas.data.task import TaskData, _column, _hub_split, _kept, _load_file, _load_hub, _splits


@dataclass(frozen=True)
class TransferSet:
    """Transfer texts (strings, or pairs for a sentence-pair task) and how many came from each source."""

    texts: list[Text]
    sources: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> str:
        """A short, stable hash of the texts."""
        return hashlib.sha256(json.dumps(self.texts).encode()).hexdigest()[:16]


def _split_texts(split, text_columns: tuple[str, ...]) -> list[str] | list[tuple[str, str]]:
    columns = [[str(t) for t in _column(split, column, "data.text_columns")] for column in text_columns]
    return columns[0] if len(columns) == 1 else list(zip(*columns))


def _unused_train_texts(cfg: DataConfig, text_columns: tuple[str, ...]) -> list[Text]:
    """The texts of the training rows that ``data.max_train_samples`` leaves out of the task (none without a
    limit): in-domain text whose labels the task does not use."""
    if cfg.max_train_samples is None:
        return []
    texts: list[Text] = [*_split_texts(_splits(cfg)[1], text_columns)]
    kept = set(_kept(len(texts), cfg.max_train_samples, cfg.seed))
    return [text for i, text in enumerate(texts) if i not in kept]


def _demo_transfer_texts(n: int, seed: int, exclude: set[str]) -> list[str]:
    """``n`` demo sentences from their own seeded stream, none of them in ``exclude`` (the validation set)."""
    generated = _sentences(random.Random(f"kdnas-transfer-{seed}"))
    stream = (sentence for sentence, _ in generated if sentence not in exclude)
    return list(islice(stream, n))


def load_transfer_texts(cfg: DataConfig, task: TaskData) -> TransferSet:
    """The unaugmented transfer texts configured in ``cfg.transfer`` (files, hub splits, demo sentences, unused
    training rows).

    Raises :class:`ConfigError` for a missing or unreadable file, an unknown split or a missing text column.
    """
    transfer, columns = cfg.transfer, task.text_columns
    texts: list[Text] = []
    sources: dict[str, int] = {}
    seen: set[Text] = set()  # texts of files and hub splits: a repeated one is dropped

    def distinct(found: list[str] | list[tuple[str, str]]) -> list[Text]:
        kept: list[Text] = []
        for text in found:
            if text not in seen:
                seen.add(text)
                kept.append(text)
        sources["duplicates_dropped"] = sources.get("duplicates_dropped", 0) + len(found) - len(kept)
        return kept

    for path in transfer.files:
        found = distinct(_split_texts(_load_file("data.transfer.files", path), columns))
        texts += found
        sources[f"file:{path}"] = len(found)
    if transfer.splits:
        assert cfg.hub_name is not None
        name = f"{cfg.hub_name}/{cfg.hub_config}" if cfg.hub_config else cfg.hub_name
        splits = _load_hub(cfg.hub_name, cfg.hub_config, name)
        for split in transfer.splits:
            found = distinct(_split_texts(_hub_split(splits, name, "data.transfer.splits", split), columns))
            texts += found
            sources[f"split:{split}"] = len(found)
    if not sources.get("duplicates_dropped"):
        sources.pop("duplicates_dropped", None)
    if cfg.demo_transfer_size:
        exclude = {t for t in task.texts("eval") if isinstance(t, str)}
        texts += _demo_transfer_texts(cfg.demo_transfer_size, cfg.seed, exclude)
        sources["demo"] = cfg.demo_transfer_size
    if transfer.unused_train_rows:
        unused = _unused_train_texts(cfg, columns)
        texts += unused
        sources["unused_train_rows"] = len(unused)
    held_out = set(task.texts("eval"))
    kept = [t for t in texts if t not in held_out]
    if len(kept) < len(texts):
        sources["dropped_validation_texts"] = len(texts) - len(kept)
    if transfer.max_samples is not None and len(kept) > transfer.max_samples:
        kept = random.Random(cfg.seed).sample(kept, transfer.max_samples)
        sources["max_samples"] = transfer.max_samples
    if (transfer.files or transfer.splits or cfg.demo_transfer_size) and not kept:
        raise ConfigError("data.transfer: the transfer sources hold no text outside the validation set")
    return TransferSet(kept, sources)


_MEMORY_SHARE = 0.5
"""The largest share of this machine's memory a transfer set may be estimated to take (``check_transfer_size``)."""


def _machine_memory() -> int:
    """This machine's physical memory in bytes (16 GiB where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def _transfer_estimate(
    cfg: DataConfig, task: TaskData, found: TransferSet, copies: int, teachers: int
) -> tuple[int, int]:
    """(rows, bytes): the transfer set's texts once ``copies`` augmented copies of each training text join
    ``found``, and the memory they take as text, tokenised for students (ids, mask, token types at
    ``data.max_seq_length``) and as the ``teachers``' logits."""
    train = task.texts("train")
    text_bytes = sum(len(str(t)) for t in found.texts) + copies * sum(len(str(t)) for t in train)
    rows = len(found) + copies * len(train)
    per_row = 3 * 8 * cfg.max_seq_length + 4 * teachers * task.num_labels + 56  # + a Python string's overhead
    return rows, text_bytes + rows * per_row


def check_transfer_size(cfg: DataConfig, task: TaskData, found: TransferSet, copies: int, teachers: int) -> None:
    """Refuse, before building it, a transfer set estimated to need more than :data:`_MEMORY_SHARE` of this
    machine's memory, saying the estimate and what to lower."""
    rows, needed = _transfer_estimate(cfg, task, found, copies, teachers)
    limit = _MEMORY_SHARE * _machine_memory()
    if needed > limit:
        raise ConfigError(
            f"data.transfer: the transfer set would hold {rows:,} texts ({len(found):,} found + {copies} augmented "
            f"copies of {len(task.train):,} training texts), about {needed / 2**30:.1f} GiB in memory: more than "
            f"half of this machine's {_machine_memory() / 2**30:.0f} GiB. Lower data.transfer.augment_copies or set "
            "data.transfer.max_samples"
        )
