"""StudyPolicy: the base of the searcher's policies over a study's trials (repeats, precision twins, promotions)."""

from __future__ import annotations

from typing import Any

import optuna


class StudyPolicy:
    """A policy that reads (and may add to) the trials of ``study`` trained under one ``recipe``
    (:func:`~kdnas.study.repeats.recipe_key`). Pickled without the study, whose storage URL may hold a password."""

    def __init__(self, study: optuna.Study, recipe: str) -> None:
        self._study = study
        self._recipe = recipe

    def __getstate__(self) -> dict[str, Any]:
        """All but the study."""
        return {**self.__dict__, "_study": None}
