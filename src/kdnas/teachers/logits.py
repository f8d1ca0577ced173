"""Teacher outputs computed once per study: logits cached on disk (keyed by the teacher's weights, the data and the
tokenisation), and each teacher's reference metric and latency."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kdnas.config import KDNASConfig, TeacherConfig
from kdnas.data import TaskData
from kdnas.data.transfer import TransferSet
from kdnas.latency.cache import latency_cache_dir, measure_cached
from kdnas.outputs import atomic_path
from kdnas.progress import Progress
from kdnas.student.batches import encode, predict_logits
from kdnas.student.metrics import score
from kdnas.study.student_record import LatencyDetail
from kdnas.study.study_record import RanOn, TeacherRanOn, TeacherReference
from kdnas.teachers.fitting import teacher_fit_record
from kdnas.teachers.loading import Teacher, load_teacher, weights_digest
from kdnas.teachers.tasks import run_step, where

logger = logging.getLogger(__name__)


def logits_cache_key(teacher: Teacher, task: TaskData, split: str, max_length: int, content: str = "") -> str:
    """Key of a teacher's cached outputs: its weights, the task's content and split (plus ``content``, the hash of
    texts outside the task such as the transfer set), the tokenisation and any reordering of its labels."""
    parts = [
        weights_digest(teacher.path),
        task.fingerprint(),
        split,
        content,
        str(max_length),
        str(len(teacher.tokenizer)),
    ]
    if teacher.label_order is not None:  # its head reordered to the task's labels
        parts.append(json.dumps(teacher.label_order))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


_RAN_ON_KEY = "kdnas.ran_on"
"""Metadata key of a cache file: where its tensors were computed (:func:`kdnas.teachers.tasks.where`, as JSON)."""


def save_atomically(tensors: dict[str, torch.Tensor], file: Path, ran_on: dict | None = None) -> None:
    """Write a safetensors file so that readers see the whole file or none (:func:`~kdnas.outputs.atomic_path`);
    ``ran_on`` (where the tensors were computed) is kept in the file's metadata."""
    metadata = {_RAN_ON_KEY: json.dumps(ran_on)} if ran_on is not None else None
    with atomic_path(file, ".partial") as partial:
        save_file({name: value.contiguous() for name, value in tensors.items()}, str(partial), metadata=metadata)


def ran_on(file: Path) -> dict | None:
    """Where the tensors of cache file ``file`` were computed (node, device, whether in a Ray task); None for a file
    written before kdnas recorded it."""
    with safe_open(file, "pt") as handle:
        recorded = (handle.metadata() or {}).get(_RAN_ON_KEY)
    return json.loads(recorded) if recorded else None


def logits_file(
    teacher: Teacher, task: TaskData, split: str, max_length: int, cache_dir: Path, content: str = ""
) -> Path:
    """The cache file of a teacher's logits on ``split`` (see :func:`logits_cache_key`)."""
    key = logits_cache_key(teacher, task, split, max_length, content)
    return Path(cache_dir) / f"{teacher.name}-{split}-{key}.safetensors"


LOGITS_CHUNK = 16384
"""Texts a teacher labels between two saves: an interrupted run keeps what it computed, and a rerun goes on from
there."""


def _part_file(file: Path, index: int) -> Path:
    return file.parent / f".{file.stem}.part-{index:05d}.safetensors"


def cached_logits(
    teacher: Teacher,
    task: TaskData,
    split: str,
    max_length: int,
    cache_dir: Path,
    device: torch.device,
    texts: list | None = None,
    content: str = "",
) -> torch.Tensor:
    """The teacher's logits ``[N, C]`` on ``split``, computed once and then read from ``cache_dir``.

    ``texts`` (identified by the hash ``content``) replace the split's own texts, e.g. for the transfer set. They are
    labelled :data:`LOGITS_CHUNK` at a time, each chunk saved as it is done, so an interrupted run loses at most one
    chunk; the chunks become one cache file at the end.
    """
    file = logits_file(teacher, task, split, max_length, cache_dir, content)
    if file.exists():
        logger.info("teacher logits cache hit: %s %s (%s)", teacher.name, split, file.name)
        return load_file(file)["logits"]
    texts = task.texts(split) if texts is None else texts
    starts = range(0, len(texts), LOGITS_CHUNK)
    kept = sum(_part_file(file, i).exists() for i in range(len(starts)))
    logger.info(
        "teacher logits cache miss: %s %s, running the teacher on %d texts%s",
        teacher.name,
        split,
        len(texts),
        f" ({kept} of {len(starts)} chunks kept from an interrupted run)" if kept else "",
    )
    chunks = []
    with Progress(f"teacher {teacher.name} logits on {split}", "text") as progress:
        for index, start in enumerate(starts):
            part = _part_file(file, index)
            chunk = texts[start : start + LOGITS_CHUNK]
            if part.exists():
                chunks.append(load_file(part)["logits"])
            else:
                data = encode(teacher.tokenizer, chunk, [0] * len(chunk), max_length)

                def advance(done: int, total: int, at: int = start) -> None:
                    progress.advance(at + done, len(texts))

                chunks.append(predict_logits(teacher.model, data, device=device, on_batch=advance))
                save_atomically({"logits": chunks[-1]}, part)
            progress.advance(start + len(chunk), len(texts))
    logits = torch.cat(chunks) if chunks else torch.zeros(0, len(task.label_names))
    save_atomically({"logits": logits}, file, ran_on=where(device))
    for index in range(len(starts)):
        _part_file(file, index).unlink(missing_ok=True)
    return logits


def teacher_reference(
    config: KDNASConfig, task: TaskData, cache_dir: Path, transfer: TransferSet | None = None
) -> tuple[list[TeacherReference], torch.Tensor]:
    """Teachers' reference records: eval metric and latency (measured as students are); and their logits
    ``[K, N, C]`` on the train split followed by the ``transfer`` set.

    A teacher whose logits are not all cached computes them here on a local Ray, as a Ray task with
    ``search.resources_per_teacher`` on a cluster (:func:`kdnas.teachers.tasks.run_step`); each reference says where
    the teacher was fitted and its logits computed (``ran_on``)."""
    cache_dir = Path(cache_dir).resolve()
    references, train_logits = [], []
    for teacher_cfg in config.teachers:
        teacher = load_teacher(config, teacher_cfg, task.num_labels, task.label_names)
        max_length = (teacher_cfg.fit.max_seq_length if teacher_cfg.fit else None) or config.data.max_seq_length
        files = [logits_file(teacher, task, split, max_length, cache_dir) for split in ("train", "eval")]
        if transfer:
            files.append(logits_file(teacher, task, "transfer", max_length, cache_dir, transfer.fingerprint()))
        reference, logits = run_step(
            config,
            f"teacher {teacher.name} logits",
            _teacher_outputs,
            config,
            teacher_cfg,
            task,
            cache_dir,
            transfer,
            cached=all(file.exists() for file in files),
            here={"teacher": teacher},
        )
        fit, labelled = teacher_fit_record(config, teacher_cfg.name), ran_on(files[0])
        where_ran = TeacherRanOn(
            fit=fit.ran_on if fit else None, logits=RanOn.from_attrs(labelled) if labelled else None
        )
        references.append(replace(reference, ran_on=where_ran))
        train_logits.append(logits)
    return references, torch.stack(train_logits)


def _teacher_outputs(
    config: KDNASConfig,
    teacher_cfg: TeacherConfig,
    task: TaskData,
    cache_dir: Path,
    transfer: TransferSet | None,
    *,
    device: torch.device,
    teacher: Teacher | None = None,
) -> tuple[TeacherReference, torch.Tensor]:
    """One teacher's reference record (eval metric, latency, parameters) and its logits on the train split followed
    by the ``transfer`` set, run on ``device`` (logits read from ``cache_dir`` when there, else computed and cached);
    the teacher is loaded unless given."""
    teacher = load_teacher(config, teacher_cfg, task.num_labels, task.label_names) if teacher is None else teacher
    max_length = (teacher_cfg.fit.max_seq_length if teacher_cfg.fit else None) or config.data.max_seq_length
    logits = cached_logits(teacher, task, "train", max_length, cache_dir, device)
    if transfer:
        logits = torch.cat(
            [
                logits,
                cached_logits(
                    teacher,
                    task,
                    "transfer",
                    max_length,
                    cache_dir,
                    device,
                    texts=transfer.texts,
                    content=transfer.fingerprint(),
                ),
            ]
        )
    eval_logits = cached_logits(teacher, task, "eval", max_length, cache_dir, device)
    latency = measure_cached(
        teacher.model,
        model_key={
            "teacher": json.loads(teacher.model.config.to_json_string(use_diff=False)),
            "vocab_size": len(teacher.tokenizer),
        },
        vocab_size=len(teacher.tokenizer),
        settings=config.latency.served_in(),  # a searched precision's first: the teachers' speed-ups compare to it
        seq_len=config.latency_seq_len,
        cache_dir=latency_cache_dir(config) if config.latency.cache else None,
    )
    reference = TeacherReference(
        name=teacher.name,
        model=teacher_cfg.model,
        value=score(task.metric, eval_logits.argmax(-1).tolist(), task.labels("eval")),
        latency_ms=latency.median_ms,
        latency=LatencyDetail.from_attrs(latency.to_dict()),
        params=sum(p.numel() for p in teacher.model.parameters()),
    )
    teacher.model.to("cpu")  # type: ignore[arg-type]  # typeshed: functools.wraps on a method drops self
    return reference, logits
