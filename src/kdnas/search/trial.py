"""One student trial, runnable without Ray: build the arch, time it, distil it from cached teacher logits, save it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdnas.config import KDNASConfig
from kdnas.objectives.batches import Encoded
from kdnas.objectives.combiners import combined_target, make_combiner
from kdnas.objectives.latency import measure_configured
from kdnas.objectives.losses import kd_loss
from kdnas.objectives.teachers import load_tokenizer
from kdnas.objectives.training import evaluate, train
from kdnas.space import StudentArch

LATENCY_KEY = "latency_ms"
COMPLETED_KEY = "kdnas_completed"
ERROR_KEY = "kdnas_error"
ATTRS_KEY = "kdnas_attrs"
STUDENT_FILES = ("config.json", "model.safetensors")

Report = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrialInputs:
    """What every trial of a study shares; built once by the driver (Ray ships it through its object store)."""

    config: KDNASConfig
    metric: str
    label_names: tuple[str, ...]
    train: Encoded
    eval: Encoded
    teacher_names: tuple[str, ...]
    teacher_logits: torch.Tensor  # [K, N_train, C], row-aligned with ``train``
    students_dir: str  # absolute

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def missing_student_files(directory: Path) -> list[str]:
    """The files a saved student needs that ``directory`` lacks (all of them when it is no directory)."""
    return [name for name in STUDENT_FILES if not (directory / name).is_file()]


def student_dir(inputs: TrialInputs, trial_number: int) -> Path:
    """Where the student of Optuna trial ``trial_number`` is saved."""
    return Path(inputs.students_dir) / f"trial-{trial_number:04d}"


def run_trial(
    params: dict[str, Any], inputs: TrialInputs, *, trial_number: int, device: torch.device | str, report: Report
) -> dict[str, Any]:
    """Train one student with multi-teacher logit KD and report ``{metric, latency_ms, epoch}`` after each epoch.

    The last report also carries ``kdnas_completed`` and ``kdnas_attrs`` (JSON: arch, params, FLOPs, latency
    details, KD recipe, student path), and is returned. Errors propagate to the caller.
    """
    config = inputs.config
    arch = StudentArch.from_dict(params)
    tokenizer = load_tokenizer(config.student.tokenizer)
    torch.manual_seed(config.training.seed)
    max_positions = max(config.data.max_seq_length, config.latency_seq_len)
    model = arch.build(tokenizer, inputs.num_labels, max_positions=max_positions)
    model.config.id2label = dict(enumerate(inputs.label_names))
    model.config.label2id = {name: i for i, name in enumerate(inputs.label_names)}

    latency = measure_configured(
        model, vocab_size=len(tokenizer), settings=config.latency, seq_len=config.latency_seq_len
    )
    device = torch.device(device)
    started_at = time.time()
    kd, training = config.kd, config.training
    combiner = make_combiner(kd)
    teacher_logits = inputs.teacher_logits.to(device)

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        target = combined_target(combiner, teacher_logits[:, index.to(device)], labels, logits, kd.temperature)
        return kd_loss(logits, target, labels, alpha=kd.alpha, temperature=kd.temperature)

    result: dict[str, Any] = {}

    def on_epoch(epoch: int) -> None:
        value = evaluate(model, inputs.eval, inputs.metric, device=device)
        if not math.isfinite(value):
            raise FloatingPointError(f"{inputs.metric} is {value} after epoch {epoch}")
        result.clear()
        result.update({inputs.metric: value, LATENCY_KEY: latency.median_ms, "epoch": epoch})
        if epoch < training.epochs:
            report(dict(result))

    train(
        model,
        inputs.train,
        loss_fn=loss_fn,
        epochs=training.epochs,
        batch_size=training.batch_size,
        learning_rate=training.learning_rate,
        weight_decay=training.weight_decay,
        warmup_ratio=training.warmup_ratio,
        seed=training.seed,
        device=device,
        on_epoch=on_epoch,
    )
    out = student_dir(inputs, trial_number)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    missing = missing_student_files(out)
    if missing:  # save_pretrained only logs when ``out`` is not a usable directory
        raise OSError(f"the student was not saved to {out}: missing {', '.join(missing)}")
    attrs = {
        "arch": arch.to_dict(),
        "arch_summary": arch.summary,
        "params": sum(p.numel() for p in model.parameters()),
        "encoder_params": sum(p.numel() for p in model.bert.encoder.parameters()),
        "flops": arch.encoder_flops(config.latency_seq_len),
        "latency": latency.to_dict(),
        "kd": kd.model_dump(mode="json"),
        "teachers": list(inputs.teacher_names),
        "epochs_trained": training.epochs,
        "train_device": str(device),
        "train_started_at": started_at,
        "train_finished_at": time.time(),
        "student_path": str(out),
    }
    result.update({COMPLETED_KEY: True, ATTRS_KEY: json.dumps(attrs)})
    report(dict(result))
    return result
