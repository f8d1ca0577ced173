"""SearchSpace: Optuna define-by-run sampling of StudentArch with fixed choices per parameter name."""

from __future__ import annotations

from typing import Any

import optuna

from kdnas.config import SpaceConfig
from kdnas.space.arch import StudentArch


class SearchSpace:
    """Samples students from a :class:`SpaceConfig`.

    Width is never sampled: it is ``heads × head_dim``, so each Optuna categorical keeps one fixed choice list
    (TPE needs that) and every sampled combination is a valid transformer.
    """

    def __init__(self, config: SpaceConfig) -> None:
        self.config = config

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Sample one student's parameters on ``trial`` (define-by-run)."""
        c = self.config
        return {
            "num_layers": trial.suggest_int("num_layers", c.depth.min, c.depth.max),
            "num_heads": trial.suggest_categorical("num_heads", c.heads),
            "head_dim": trial.suggest_categorical("head_dim", c.head_dim),
            "ffn_ratio": trial.suggest_categorical("ffn_ratio", c.ffn_ratio),
        }
