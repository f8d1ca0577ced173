"""The elastic network of a study (``student.inherit.elastic``): trained once before the first trial, cached, and the
source every student is then sliced from (:mod:`kdnas.teachers.elastic`)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from kdnas.outputs import write_json_atomically
from kdnas.student import StudentArch
from kdnas.student.space import kd_recipe
from kdnas.study.study_record import ElasticLoss, ElasticRecord, RanOn
from kdnas.teachers.elastic import ElasticResult, sorted_source, train_elastic
from kdnas.teachers.loading import load_tokenizer
from kdnas.teachers.logits import save_atomically
from kdnas.teachers.tasks import run_step, where
from kdnas.tune.fingerprint import config_fingerprint
from kdnas.tune.one_layer import digest
from kdnas.tune.trial_inputs import TrialInputs, training_rows

logger = logging.getLogger(__name__)


def elastic_inputs(inputs: TrialInputs, cache_dir: Path) -> TrialInputs:
    """``inputs`` whose students are sliced out of the study's elastic network (trained here, or on a Ray cluster as
    a Ray task with ``search.resources_per_teacher``, unless cached); as they are when ``student.inherit.elastic`` is
    off or there is no inheritance source."""
    source, config = inputs.inherit, inputs.config
    if source is None or not config.student.inherit.elastic.enabled:
        return inputs
    file = Path(cache_dir) / f"{source.teacher}-elastic-{_cache_key(inputs)}.safetensors"
    record_file = file.with_suffix(".json")
    if file.is_file() and record_file.is_file():
        state, record = load_file(file), ElasticRecord.from_attrs(json.loads(record_file.read_text()))
        logger.info("elastic network: read from the cache (%s)", file.name)
    else:
        shipped = replace(inputs, intermediate_teachers=())  # a Ray task gets what it needs
        result = run_step(config, "elastic network", _train_study_elastic, shipped)
        record = replace(result.record, cache_file=file.name)
        save_atomically(result.state, file, ran_on=record.ran_on.to_attrs() if record.ran_on else None)
        write_json_atomically(record_file, record.to_attrs())
        state = result.state
        loss = record.loss or ElasticLoss()
        logger.info(
            "elastic network: %d steps in %.0f s, loss %.4g -> %.4g",
            record.steps,
            record.seconds,
            loss.first,
            loss.last,
        )
    return replace(inputs, inherit=replace(sorted_source(source), state=state, elastic=record))


def _train_study_elastic(inputs: TrialInputs, *, device: torch.device | str = "cpu") -> ElasticResult:
    """Train the elastic network of ``inputs``'s study: its inheritance source sorted, on its training rows with its
    logit-KD recipe (sampled KD choices and intermediate KD left out)."""
    config, source = inputs.config, inputs.inherit
    if source is None:
        raise ValueError("the elastic network needs an inheritance source")
    kd = kd_recipe(config.kd, {})
    tokenizer = load_tokenizer(config.student.tokenizer)
    max_positions = max(config.data.max_seq_length, config.latency_seq_len)

    def build(arch: StudentArch) -> Any:
        return arch.build(tokenizer, inputs.num_labels, max_positions=max_positions)

    result = train_elastic(
        sorted_source(source),
        training_rows(kd, inputs),
        inputs.teacher_logits,
        space=config.student.space,
        kd=kd,
        settings=config.student.inherit.elastic,
        build=build,
        batch_size=config.training.batch_size,
        seed=config.training.seed,
        precision=config.training.precision,
        device=device,
    )
    return replace(result, record=replace(result.record, ran_on=RanOn.from_attrs(where(device))))


def _cache_key(inputs: TrialInputs) -> str:
    """What the elastic network depends on: the teachers, KD, training and inheritance settings (the elastic ones
    included), the importance ranking (its file is keyed by the teacher's weights and the data), the one-layer
    choice, the space, the rows and the seed."""
    source = inputs.inherit
    fingerprint = {k: v for k, v in config_fingerprint(inputs.config).items() if not k.startswith("latency.")}
    content: dict[str, Any] = {
        "fingerprint": fingerprint,
        "seed": inputs.config.training.seed,
        "importance": source.cache_file if source else None,
        "one_layer": source.one_layer_index if source else None,
        "space": inputs.config.student.space.model_dump(mode="json"),
        "train": digest(inputs.train),
        "transfer_rows": inputs.transfer_rows,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]
