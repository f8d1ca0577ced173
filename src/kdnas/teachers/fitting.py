"""Fit teachers on the task: fine-tune a pretrained classifier, or train a small one and its tokenizer from scratch."""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import replace
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from kdnas.config import ConfigError, KDNASConfig, ScratchConfig, TeacherConfig
from kdnas.data import TaskData, load_task
from kdnas.progress import Progress
from kdnas.student.batches import encode
from kdnas.student.precision import resolve_precision
from kdnas.student.training import evaluate, train
from kdnas.study.study_record import RanOn, TeacherFit
from kdnas.teachers.loading import ensure_pad_token, resolve_model_ref, teacher_path
from kdnas.teachers.tasks import run_step, where

logger = logging.getLogger(__name__)


RECORD_FILE = "kdnas_teacher.json"


def _train_tokenizer(scratch: ScratchConfig, texts: list[str], max_length: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style) or WordPiece (BERT style) tokenizer trained on the task's texts."""
    if scratch.family == "gpt2":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        special = ["<pad>", "<|endoftext|>"]
        trainer: trainers.Trainer = trainers.BpeTrainer(
            vocab_size=scratch.vocab_size,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="<pad>", eos_token="<|endoftext|>", model_max_length=max_length
        )
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=scratch.vocab_size, special_tokens=special, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def _scratch_model(
    scratch: ScratchConfig, tokenizer: PreTrainedTokenizerBase, task: TaskData, max_length: int
) -> PreTrainedModel:
    # the label maps set the number of labels: ``num_labels`` is derived from ``id2label``
    id2label = dict(enumerate(task.label_names))
    label2id = {n: i for i, n in enumerate(task.label_names)}
    if scratch.family == "gpt2":
        gpt2_config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=max(max_length, 64),
            n_embd=scratch.hidden,
            n_layer=scratch.layers,
            n_head=scratch.heads,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
            id2label=id2label,
            label2id=label2id,
        )
        return GPT2ForSequenceClassification(gpt2_config)
    bert_config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=scratch.hidden,
        num_hidden_layers=scratch.layers,
        num_attention_heads=scratch.heads,
        intermediate_size=4 * scratch.hidden,
        max_position_embeddings=max(max_length, 64),
        pad_token_id=tokenizer.pad_token_id,
        id2label=id2label,
        label2id=label2id,
    )
    return BertForSequenceClassification(bert_config)


def _fit_settings(teacher: TeacherConfig, task: TaskData, max_length: int) -> TeacherFit:
    """The settings of a fit of ``teacher`` on ``task`` (see :meth:`TeacherFit.settings`)."""
    return TeacherFit(
        name=teacher.name,
        model=teacher.model,
        fit=teacher.fit.model_dump(mode="json") if teacher.fit else None,
        scratch=teacher.scratch.model_dump(mode="json") if teacher.scratch else None,
        task=task.name,
        task_fingerprint=task.fingerprint(),
        max_seq_length=max_length,
    )


def _is_fitted(config: KDNASConfig, teacher: TeacherConfig, task: TaskData) -> bool:
    """Whether the teacher's saved fit matches this task and these fit settings."""
    record_path = Path(teacher_path(config, teacher)) / RECORD_FILE
    if not record_path.exists():
        return False
    if teacher.fit is None:
        raise ConfigError(f"teacher {teacher.name!r} has no 'fit' section: it is used as it is")
    saved = TeacherFit.from_attrs(json.loads(record_path.read_text()))
    return saved.settings() == _fit_settings(teacher, task, teacher.fit.max_seq_length or config.data.max_seq_length)


def _fit_teacher(config: KDNASConfig, teacher: TeacherConfig, task: TaskData, device: torch.device) -> TeacherFit:
    """Fine-tune (or train from scratch) one teacher on ``task`` and save it as safetensors with its tokenizer.

    Returns the fit record, including the teacher's metric on the task's evaluation split.
    """
    if teacher.fit is None:
        raise ConfigError(f"teacher {teacher.name!r} has no 'fit' section: it is used as it is")
    fit = teacher.fit
    max_length = fit.max_seq_length or config.data.max_seq_length
    tokenizer: PreTrainedTokenizerBase
    if teacher.scratch is not None:
        train_texts = [t if isinstance(t, str) else f"{t[0]} {t[1]}" for t in task.texts("train")]
        tokenizer = _train_tokenizer(teacher.scratch, train_texts, max_length)
        model = _scratch_model(teacher.scratch, tokenizer, task, max_length)
    else:
        ref = resolve_model_ref(teacher.model)
        tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=teacher.trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            ref,
            num_labels=task.num_labels,
            id2label=dict(enumerate(task.label_names)),
            label2id={n: i for i, n in enumerate(task.label_names)},
            use_safetensors=True,
            trust_remote_code=teacher.trust_remote_code,
        )
        ensure_pad_token(model, tokenizer)
    train_data = encode(tokenizer, task.texts("train"), task.labels("train"), max_length)
    eval_data = encode(tokenizer, task.texts("eval"), task.labels("eval"), max_length)
    logger.info("fitting teacher %s on %d examples (%s epochs)", teacher.name, len(train_data), fit.epochs)
    started = time.perf_counter()
    with Progress(f"fitting teacher {teacher.name}", "step") as progress:
        train(
            model,
            train_data,
            epochs=fit.epochs,
            batch_size=fit.batch_size,
            learning_rate=fit.learning_rate,
            weight_decay=fit.weight_decay,
            seed=config.training.seed,
            device=device,
            on_step=lambda step, total, loss: progress.advance(step, total, loss=loss),
            precision=config.training.precision,
        )
    value = evaluate(model, eval_data, task.metric, device=device, precision=config.training.precision)
    out = Path(teacher_path(config, teacher))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = replace(
        _fit_settings(teacher, task, max_length),
        seed=config.training.seed,
        metric=task.metric,
        value=value,
        fit_seconds=round(time.perf_counter() - started, 1),
        ran_on=RanOn.from_attrs({**where(device), "precision": resolve_precision(config.training.precision, device)}),
    )
    (out / RECORD_FILE).write_text(json.dumps(record.to_attrs(), indent=2))
    logger.info("teacher %s: %s = %.4f, saved to %s", teacher.name, task.metric, value, out)
    return record


def fit_teachers(config: KDNASConfig, task: TaskData | None = None, *, force: bool = False) -> list[TeacherFit]:
    """Fit every teacher with a ``fit`` section whose saved fit does not match the task (or all, with ``force``), as
    ``kdnas teachers fit`` does; ``task`` defaults to the config's. Returns the new fits' records.

    On a Ray cluster (``search.ray_address`` or ``RAY_ADDRESS``) each fit is a Ray task with
    ``search.resources_per_teacher``; otherwise it runs here (:func:`kdnas.teachers.tasks.run_step`). The record
    says where (``ran_on``)."""
    task = load_task(config.data) if task is None else task
    records = []
    for teacher in config.teachers:
        if teacher.fit is None or (_is_fitted(config, teacher, task) and not force):
            continue
        record = run_step(config, f"fitting teacher {teacher.name}", _fit_teacher, config, teacher, task)
        _check_visible(config, teacher, record)
        records.append(record)
    return records


_SHARED_WAIT_S = 60.0
"""How long the driver waits to see a teacher fitted on another node (a network filesystem may show a new file late)."""


def _check_visible(config: KDNASConfig, teacher: TeacherConfig, record: TeacherFit) -> None:
    """Refuse a fit the driver cannot read: fitted on another node into an ``output_dir`` that is not shared."""
    path = Path(teacher_path(config, teacher)) / RECORD_FILE
    deadline = time.monotonic() + _SHARED_WAIT_S
    while _identity(_saved_record(path)) != _identity(record):
        if time.monotonic() > deadline:
            node = record.ran_on or RanOn()
            raise ConfigError(
                f"teacher {teacher.name!r} was fitted on node {node.hostname} ({node.ip}) but {path.parent} "
                f"does not show it on this one ({socket.gethostname()}): on a Ray cluster, output_dir must be on "
                "storage every node sees (NFS, a shared volume)"
            )
        time.sleep(1.0)


def _identity(record: TeacherFit | None) -> tuple[RanOn | None, float | None]:
    """What tells one fit from another of the same teacher: where and how long it ran."""
    return (record.ran_on, record.fit_seconds) if record else (None, None)


def _saved_record(path: Path) -> TeacherFit | None:
    try:
        return TeacherFit.from_attrs(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def teacher_fit_record(config: KDNASConfig, name: str) -> TeacherFit | None:
    """The record teacher ``name``'s last fit saved (its fit settings, task, ``metric``, ``value`` on the eval split,
    ``fit_seconds``, ``ran_on``: node, device, precision and whether it ran as a Ray task); None when it has not been
    fitted (or has no ``fit`` section: it is used as it is)."""
    teacher = next((t for t in config.teachers if t.name == name), None)
    if teacher is None:
        raise KeyError(f"no teacher named {name!r}; teachers are {[t.name for t in config.teachers]}")
    record_path = Path(teacher_path(config, teacher)) / RECORD_FILE
    if teacher.fit is None or not record_path.is_file():
        return None
    return TeacherFit.from_attrs(json.loads(record_path.read_text()))
