"""Which teacher layer a one-layer student inherits, chosen once per study by training one.

``uniform`` spreads a student over its teacher, first and last layer included; a one-layer student can hold only one
of the two, and which serves it better depends on the task: on one carried by words (SST-2) they come within a point
of each other, on one that needs composition (the demo's negation and clause rules) the last layer won by 5 to 40
points. So before the first trial, the space's largest one-layer student is trained briefly (the study's logit-KD
recipe and learning rate, at most :data:`_CALIBRATION_STEPS` steps) from the teacher's first and from its last layer,
and every one-layer student of the study takes the layer whose student scored higher on the validation set, the set
every trial is ranked on (a tie keeps the first). The choice and both scores are cached beside the teacher's
importance and recorded in the study's ``inheritance`` user_attr; ``student.inherit.one_layer: first | last`` names
the layer instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kdnas.config import SpaceConfig, TrainingConfig
from kdnas.distill.distillation import Distillation
from kdnas.outputs import write_json_atomically
from kdnas.progress import Progress
from kdnas.student import StudentArch
from kdnas.student.batches import Encoded
from kdnas.student.inheritance import InheritanceSource, OneLayerChoice
from kdnas.student.precision import resolve_precision
from kdnas.student.space import kd_recipe
from kdnas.student.training import evaluate, steps_per_epoch, train
from kdnas.study.study_record import OneLayer
from kdnas.teachers.loading import load_tokenizer
from kdnas.teachers.tasks import run_step, where
from kdnas.tune.fingerprint import config_fingerprint
from kdnas.tune.trial_inputs import TrialInputs, initialise, learning_rate, training_rows

logger = logging.getLogger(__name__)

_CALIBRATION_STEPS = 400
"""The most optimisation steps each calibration student trains (one epoch when the data is smaller)."""


def one_layer_student(space: SpaceConfig, teacher_head_dim: int) -> StudentArch | None:
    """The space's largest one-layer student (most heads, largest FFN; the teacher's head size when the space has
    it), or None when the space has no one-layer students."""
    if space.depth.min > 1:
        return None
    head_dim = teacher_head_dim if teacher_head_dim in space.head_dim else max(space.head_dim)
    return StudentArch(num_layers=1, num_heads=max(space.heads), head_dim=head_dim, ffn_ratio=max(space.ffn_ratio))


def choose_one_layer(inputs: TrialInputs, cache_dir: Path) -> TrialInputs:
    """``inputs`` with the teacher layer its one-layer students inherit (:class:`OneLayerChoice`) decided: named by
    ``student.inherit.one_layer``, or, when it is ``auto``, calibrated (read from the cache when it was before; on a
    Ray cluster, run as a Ray task with ``search.resources_per_teacher``). Inputs without an inheritance source, with
    another layer rule or without one-layer students come back as they are."""
    source, config = inputs.inherit, inputs.config
    if source is None or source.rule != "uniform" or source.num_layers < 2:
        return inputs
    arch = one_layer_student(config.student.space, source.head_dim)
    if arch is None:
        return inputs
    wanted = config.student.inherit.one_layer
    if wanted != "auto":
        choice = OneLayerChoice(layer=0 if wanted == "first" else source.num_layers - 1, rule=wanted)
        return replace(inputs, inherit=replace(source, one_layer=choice))
    file = Path(cache_dir) / f"{source.teacher}-one-layer-{_cache_key(inputs, arch)}.json"
    if file.is_file():
        choice = _read(file)
    else:
        # a Ray task gets what it needs: no intermediate teachers (models do not survive the object store)
        shipped = replace(inputs, intermediate_teachers=())
        choice = run_step(config, f"one-layer calibration ({arch.summary})", calibrate_one_layer, shipped, arch)
        write_json_atomically(file, choice.record())
    scores = OneLayer.from_attrs(choice.record()).scores_line(inputs.metric)
    logger.info("one-layer students inherit teacher %s's layer %d (%s)", source.teacher, choice.layer, scores)
    return replace(inputs, inherit=replace(source, one_layer=choice))


def calibrate_one_layer(
    inputs: TrialInputs, arch: StudentArch, *, device: torch.device | str = "cpu", steps: int = _CALIBRATION_STEPS
) -> OneLayerChoice:
    """Train ``arch`` (one layer) from the inheritance teacher's first and from its last layer with the study's
    logit-KD recipe (intermediate KD left out) for at most ``steps`` steps each (same rows, same seed) and return
    the layer whose student scored higher on the validation set (a tie: the first). A candidate whose training
    fails (a non-finite or diverging loss) is recorded in ``failed`` and not chosen; if both fail, the first layer is
    kept and the trials meet the same recipe, and fail, with their own reasons."""
    source = inputs.inherit
    if source is None or arch.num_layers != 1:
        raise ValueError("one-layer calibration needs an inheritance source and a one-layer student")
    config, device = inputs.config, torch.device(device)
    kd, training = kd_recipe(config.kd, {}), config.training
    rows = training_rows(kd, inputs)
    per_epoch = steps_per_epoch(len(rows), training.batch_size)
    epochs, trained = min(1.0, steps / per_epoch), min(steps, per_epoch)
    precision = resolve_precision(training.precision, device)
    tokenizer = load_tokenizer(config.student.tokenizer)
    max_positions = max(config.data.max_seq_length, config.latency_seq_len)
    scores: dict[int, float] = {}
    failed: dict[int, str] = {}
    for layer in dict.fromkeys((0, source.num_layers - 1)):
        torch.manual_seed(training.seed)
        model = arch.build(tokenizer, inputs.num_labels, max_positions=max_positions)
        candidate = replace(inputs, inherit=replace(source, one_layer=OneLayerChoice(layer=layer, rule="auto")))
        init = initialise(model, candidate)
        distillation = Distillation(kd, inputs.teacher_logits.to(device), None, labels=inputs.train.labels)
        rate = learning_rate(config, {}, init)
        error = _train_candidate(model, rows, distillation, epochs, rate, training, layer, device, precision)
        if error is not None:
            failed[layer] = error
            continue
        value = evaluate(model, inputs.eval, inputs.metric, device=device, precision=precision)
        if math.isfinite(value):
            scores[layer] = value
        else:
            failed[layer] = f"{inputs.metric} is {value}"
    best = max(scores, key=lambda layer: (scores[layer], -layer), default=0)
    return OneLayerChoice(
        layer=best,
        rule="auto",
        scores=scores,
        failed=failed,
        student=arch.summary,
        steps=trained,
        ran_on=where(device),
    )


def _train_candidate(
    model: torch.nn.Module,
    rows: Encoded,
    distillation: Distillation,
    epochs: float,
    rate: float,
    training: TrainingConfig,
    layer: int,
    device: torch.device,
    precision: str,
) -> str | None:
    """Train one calibration candidate (inheriting teacher layer ``layer``); why its training failed, else None."""
    with Progress(f"one-layer calibration, teacher layer {layer}", "step") as progress:
        try:
            train(
                model,
                rows,
                loss_fn=distillation,
                extra_parameters=distillation.parameters(),
                epochs=epochs,
                batch_size=training.batch_size,
                learning_rate=rate,
                weight_decay=training.weight_decay,
                warmup_ratio=training.warmup_ratio,
                seed=training.seed,
                device=device,
                on_step=lambda step, total, loss: progress.advance(step, total, loss=loss),
                precision=precision,
            )
        except FloatingPointError as err:  # NonFiniteLossError, DivergedError
            return f"{type(err).__name__}: {err}"
    return None


def _cache_key(inputs: TrialInputs, arch: StudentArch) -> str:
    """What the choice depends on: the teachers, KD and training recipe, the inheritance source (its importance file
    is keyed by the teacher's weights and the data), the rows, the calibration student and its budget."""
    source: InheritanceSource | None = inputs.inherit
    fingerprint = {k: v for k, v in config_fingerprint(inputs.config).items() if not k.startswith("latency.")}
    content: dict[str, Any] = {
        "fingerprint": fingerprint,
        "seed": inputs.config.training.seed,
        "importance": source.cache_file if source else None,
        "train": digest(inputs.train),
        "eval": digest(inputs.eval),
        "transfer_rows": inputs.transfer_rows,
        "student": arch.to_dict(),
        "steps": _CALIBRATION_STEPS,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def digest(data: Encoded) -> str:
    """A content hash of tokenised rows (their ids and labels)."""
    digest = hashlib.sha256()
    for tensor in (data.input_ids, data.labels):
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _read(file: Path) -> OneLayerChoice:
    """The choice a calibration cached in ``file`` (:meth:`OneLayerChoice.record`'s layout)."""
    record = OneLayer.from_attrs(json.loads(file.read_text()))
    return OneLayerChoice(
        layer=int(record.layer or 0),
        rule=record.rule or "auto",
        scores={int(k): float(v) for k, v in (record.scores or {}).items()},
        failed={int(k): v for k, v in (record.failed or {}).items()},
        student=record.student or "",
        steps=int(record.steps or 0),
        ran_on=record.ran_on.to_attrs() if record.ran_on else None,
    )
