"""RepeatReuse: a suggested student the study already holds is recorded as a repeat of it, with its result, instead
of being trained again (``search.reuse_duplicates``): with the study's fixed training seed it would learn the same."""

from __future__ import annotations

import logging

import optuna
from optuna.trial import FrozenTrial

from kdnas.study.repeats import known_students, repeat_of, student_key
from kdnas.study.student_record import StudentRecord
from kdnas.tune.outcomes import tell_outcome
from kdnas.tune.study_policy import StudyPolicy

logger = logging.getLogger(__name__)


class RepeatReuse(StudyPolicy):
    """Recognises, in ``study``, the trial holding the student a new trial sampled under the same ``recipe``
    (:func:`~kdnas.study.repeats.recipe_key`; any run or driver), and records the new trial as its repeat."""

    def original_of(self, ot_trial: optuna.Trial) -> FrozenTrial | None:
        """The study's trial holding the student ``ot_trial`` sampled (same parameters and recipe), if any."""
        known = known_students(self._study.get_trials(deepcopy=False), self._recipe)
        original = known.get(student_key(ot_trial.params))
        return original if original is not None and original.number != ot_trial.number else None

    def tell(self, ot_trial: optuna.Trial, original: FrozenTrial) -> None:
        """Record ``ot_trial`` as a repeat of ``original``: its result (COMPLETE or PRUNED), never trained."""
        tell_outcome(ot_trial, repeat_of(original))
        logger.info(
            "trial %d %s: the same student as trial %d, its result reused without training",
            ot_trial.number,
            StudentRecord.of(original).arch_summary or "",
            original.number,
        )
