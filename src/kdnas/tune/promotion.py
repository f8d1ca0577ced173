"""Promotion: once a search has tried every student of its space, the students the scheduler stopped early are
trained again in full, the most promising first, as ASHA promotes: a stopped student's result is otherwise final."""

from __future__ import annotations

import enum
import logging

import optuna
from optuna.trial import TrialState

from kdnas.study.records import PROMOTED_ATTR
from kdnas.study.repeats import known_students, promotion_candidates
from kdnas.study.student_record import StudentRecord
from kdnas.tune.study_policy import StudyPolicy

logger = logging.getLogger(__name__)


class SpaceLeft(enum.Enum):
    """What is left of the search space for the next suggestion."""

    UNTRIED = "untried"  # students left to try, or a stopped one just promoted: ask the sampler
    TRAINING = "training"  # every student tried, none to promote, some still training: wait for them
    NONE = "none"  # every student tried and trained, none to promote: the search ends


class Promotion(StudyPolicy):
    """Promotes, in ``study``, the students of ``recipe`` stopped early, once the study holds all ``space_size``
    students of the space (or the sampler keeps proposing students it holds: see :meth:`promote`)."""

    def __init__(self, study: optuna.Study, recipe: str, space_size: int | None = None) -> None:
        super().__init__(study, recipe)
        self._space_size = space_size

    def space_left(self) -> SpaceLeft:
        """What is left of the space (every student untried without ``space_size``); once the study holds every
        student, a stopped one is promoted (enqueued) when there is one."""
        if self._space_size is None:
            return SpaceLeft.UNTRIED
        known = known_students(self._study.get_trials(deepcopy=False), self._recipe)
        if len(known) < self._space_size or self.promote():
            return SpaceLeft.UNTRIED
        if any(t.state == TrialState.RUNNING for t in known.values()):
            return SpaceLeft.TRAINING  # one of them may yet be cut by the time budget
        return SpaceLeft.NONE

    def promote(self) -> bool:
        """Enqueue the most promising student stopped early that no trial promoted yet (see
        :func:`~kdnas.study.repeats.promotion_candidates`) for full training; False when there is none left."""
        candidates = promotion_candidates(self._study.get_trials(deepcopy=False), self._recipe)
        if not candidates:
            return False
        stopped = candidates[0]
        self._study.enqueue_trial(stopped.params, user_attrs={PROMOTED_ATTR: stopped.number})
        logger.info(
            "every student of the space has been tried: the student of trial %d (%s, %s) is trained again, in full",
            stopped.number,
            StudentRecord.of(stopped).arch_summary or "",
            StudentRecord.of(stopped).pruned_reason or "stopped early",
        )
        return True
