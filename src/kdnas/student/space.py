"""SearchSpace: Optuna define-by-run sampling of StudentArch (and optionally the KD recipe) with fixed choices."""

from __future__ import annotations

from typing import Any

import optuna

from kdnas.config import KDConfig, KDNASConfig, KDSpaceConfig, SpaceConfig, TrainingSpaceConfig
from kdnas.student.arch import StudentArch

KD_PARAMS = {
    "kd_combiner": "combiner",
    "kd_temperature": "temperature",
    "kd_alpha": "alpha",
    "kd_intermediate": "intermediate",
}
"""Optuna parameter name → the ``kd.space`` field it samples."""


PRECISION_PARAM = "precision"
"""The Optuna parameter of the precision a student is served in, when ``latency.precision`` is a searched list."""


class SearchSpace:
    """Samples students from a :class:`SpaceConfig`, KD recipes from a :class:`KDSpaceConfig`, learning rates
    from a :class:`TrainingSpaceConfig` and, with several ``precisions``, the precision each is served in.

    Width is never sampled: it is ``heads × head_dim``, so each Optuna categorical keeps one fixed choice list
    (TPE needs that) and every sampled combination is a valid transformer.
    """

    def __init__(
        self,
        config: SpaceConfig,
        kd_space: KDSpaceConfig | None = None,
        training_space: TrainingSpaceConfig | None = None,
        precisions: list[str] | None = None,
    ) -> None:
        self.config = config
        self.kd_space = kd_space or KDSpaceConfig()
        self.training_space = training_space or TrainingSpaceConfig()
        self.precisions = precisions if precisions and len(precisions) > 1 else None

    @classmethod
    def of(cls, config: KDNASConfig) -> SearchSpace:
        """The space a search over ``config`` samples: its student, KD and training spaces, and its served
        precisions."""
        return cls(config.student.space, config.kd.space, config.training.space, config.latency.precisions)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample one student's parameters on ``trial`` (define-by-run)."""
        c = self.config
        params: dict[str, Any] = {
            "num_layers": trial.suggest_int("num_layers", c.depth.min, c.depth.max),
            "num_heads": trial.suggest_categorical("num_heads", c.heads),
            "head_dim": trial.suggest_categorical("head_dim", c.head_dim),
            "ffn_ratio": trial.suggest_categorical("ffn_ratio", c.ffn_ratio),
        }
        for name, field in KD_PARAMS.items():
            choices = getattr(self.kd_space, field)
            if choices is not None:
                params[name] = trial.suggest_categorical(name, choices)
        if self.training_space.learning_rate is not None:
            params["learning_rate"] = trial.suggest_categorical("learning_rate", self.training_space.learning_rate)
        if self.precisions is not None:
            params[PRECISION_PARAM] = trial.suggest_categorical(PRECISION_PARAM, self.precisions)
        return params

    def size(self) -> int:
        """How many distinct students (architecture × sampled recipe × served precision) the space holds."""
        c = self.config
        count = (c.depth.max - c.depth.min + 1) * len(c.heads) * len(c.head_dim) * len(c.ffn_ratio)
        for field in KD_PARAMS.values():
            count *= len(getattr(self.kd_space, field) or [None])
        return count * len(self.training_space.learning_rate or [None]) * len(self.precisions or [None])


def smallest_student(config: SpaceConfig) -> StudentArch:
    """The space's cheapest student: fewest layers, narrowest width, smallest FFN (the fastest and smallest)."""
    return StudentArch(
        num_layers=config.depth.min,
        num_heads=min(config.heads),
        head_dim=min(config.head_dim),
        ffn_ratio=min(config.ffn_ratio),
    )


def kd_recipe(kd: KDConfig, params: dict[str, Any]) -> KDConfig:
    """``kd`` with the recipe choices sampled in ``params`` (``kd_*`` keys) applied."""
    update: dict[str, Any] = {}
    if "kd_combiner" in params:
        update["combiner"] = params["kd_combiner"]
    if "kd_temperature" in params:
        update["temperature"] = float(params["kd_temperature"])
    if "kd_alpha" in params:
        update["alpha"] = float(params["kd_alpha"])
    if "kd_intermediate" in params:
        choice = params["kd_intermediate"]
        enabled = choice != "off"
        inter = {"enabled": enabled, **({"layer_map": choice} if enabled else {})}
        update["intermediate"] = kd.intermediate.model_copy(update=inter)
    return KDConfig.model_validate({**kd.model_dump(), **update}) if update else kd
