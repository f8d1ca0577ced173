"""What makes a study's students comparable, recorded at its creation and checked on every rerun.

The fingerprint holds what defines the two axes and what a student learns from: the data (content hashes), label set,
metric, sequence length, latency settings and device, teachers (a ready one's weights; a fitted one's settings and,
once fitted, its saved weights), student tokenizer, inheritance, KD and training recipe. Budgets, concurrency,
storage and seeds are left out: changing them keeps students comparable. The search space is checked separately,
parameter by parameter, against the distributions the study's trials were sampled from.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, check_distribution_compatibility

from kdnas.config import KDNASConfig
from kdnas.data import TaskData
from kdnas.data.transfer import TransferSet
from kdnas.latency.timing import device_name, resolve_device
from kdnas.student import SearchSpace
from kdnas.student.space import KD_PARAMS
from kdnas.teachers.loading import teacher_identity, teacher_path, weights_digest

_PARAM_KEYS = {
    "num_layers": "student.space.depth",
    "num_heads": "student.space.heads",
    "head_dim": "student.space.head_dim",
    "ffn_ratio": "student.space.ffn_ratio",
    "learning_rate": "training.space.learning_rate",
    **{p: f"kd.space.{f}" for p, f in KD_PARAMS.items()},
}
"""Optuna parameter → the config key that defines its distribution."""


def _flat(prefix: str, values: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            flat.update(_flat(f"{prefix}.{key}", value))
        else:
            flat[f"{prefix}.{key}"] = value
    return flat


def config_fingerprint(config: KDNASConfig) -> dict[str, Any]:
    """The parts of the fingerprint the config alone defines (known before any data is read)."""
    device = resolve_device(config.latency.device)
    latency = config.latency
    return {
        "data.metric": config.data.metric,
        "data.max_seq_length": config.data.max_seq_length,
        "data.transfer.per_epoch": config.data.transfer.per_epoch,
        "latency.device": f"{device.type}: {device_name(device)}",
        "latency.batch_size": latency.batch_size,
        "latency.seq_len": config.latency_seq_len,
        "latency.threads": latency.threads,
        "latency.runtime": latency.runtime,
        "latency.precision": latency.precision,
        "teachers": [teacher_identity(config, t) for t in config.teachers],
        "student.tokenizer": config.student.tokenizer,
        **_flat("student.inherit", config.student.inherit.model_dump(mode="json")),
        **_flat("training", config.training.model_dump(mode="json"), skip=("space", "seed")),
        **_flat("kd", config.kd.model_dump(mode="json"), skip=("space",)),
    }


def task_fingerprint(task: TaskData) -> dict[str, Any]:
    """The task's part: content hashes of its splits and its label set."""
    return {
        "data.train": task.split_fingerprint("train"),
        "data.eval": task.split_fingerprint("eval"),
        "data.labels": list(task.label_names),
    }


def fitted_teachers_fingerprint(config: KDNASConfig) -> dict[str, Any]:
    """The fitted teachers' part, known once they are fitted: a content hash of each one's saved weights, so a
    teacher changed on disk under a study (an export into its directory, an edit) is refused as other data is."""
    fitted = {t.name: weights_digest(str(teacher_path(config, t)))[:16] for t in config.teachers if t.fit is not None}
    return {"teachers.weights": fitted} if fitted else {}


def transfer_fingerprint(transfer: TransferSet | None) -> dict[str, Any]:
    """The transfer set's part: a content hash of its texts (None without one)."""
    return {"data.transfer": transfer.fingerprint() if transfer else None}


def _space_distributions(config: KDNASConfig) -> dict[str, BaseDistribution]:
    """The Optuna distributions the config's search space samples (one define-by-run pass in memory)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        trial = optuna.create_study(directions=["maximize", "minimize"]).ask()
    finally:
        optuna.logging.set_verbosity(verbosity)
    SearchSpace.of(config).suggest(trial)
    return dict(trial.distributions)


def _describe(distribution: BaseDistribution) -> str:
    if isinstance(distribution, CategoricalDistribution):
        return str(list(distribution.choices))
    low, high = getattr(distribution, "low", "?"), getattr(distribution, "high", "?")
    return f"{low}..{high}" + (" (log)" if getattr(distribution, "log", False) else "")


def space_conflicts(study: optuna.Study, config: KDNASConfig) -> list[str]:
    """One line per parameter whose new distribution Optuna cannot sample consistently with the study's trials
    (e.g. another choice list; a changed integer range is fine)."""
    new = _space_distributions(config)
    conflicts: dict[str, str] = {}
    for trial in study.get_trials(deepcopy=False):
        for name, old in trial.distributions.items():
            if name not in new or name in conflicts:
                continue
            try:
                check_distribution_compatibility(old, new[name])
            except ValueError:
                conflicts[name] = f"{_PARAM_KEYS.get(name, name)} {_describe(old)} → {_describe(new[name])}"
    return list(conflicts.values())
