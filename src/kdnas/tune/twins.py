"""PrecisionTwins: with a searched ``latency.precision``, a student the study already trained in another precision is
served in the sampled one without training again. The suggestion carries its trained twin (that trial's number and
record); the trial loads its weights, then times and scores them in its own precision
(:func:`kdnas.tune.trial.serve_trained_twin`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from kdnas.student.space import PRECISION_PARAM
from kdnas.study.records import TrainedTwin
from kdnas.study.repeats import student_key
from kdnas.study.student_record import StudentRecord
from kdnas.tune.study_policy import StudyPolicy


def _trained_student(params: Mapping[str, Any]) -> str:
    """The key of the student ``params`` describe whatever precision serves it."""
    return student_key({name: value for name, value in params.items() if name != PRECISION_PARAM})


class PrecisionTwins(StudyPolicy):
    """Finds, in ``study``, a COMPLETE trial that trained (under the same ``recipe``) the student a new trial sampled,
    served in another precision."""

    def twin_of(self, ot_trial: optuna.Trial) -> TrainedTwin | None:
        """The earliest trial that trained ``ot_trial``'s student in another precision and saved it, if any."""
        precision = ot_trial.params.get(PRECISION_PARAM)
        if precision is None:
            return None
        wanted = _trained_student(ot_trial.params)
        for trial in self._study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            record = StudentRecord.of(trial)
            trained_here = record.weights_of is None and record.repeat_of is None and record.student_path
            if (
                trained_here
                and record.recipe == self._recipe
                and trial.params.get(PRECISION_PARAM) != precision
                and _trained_student(trial.params) == wanted
            ):
                return TrainedTwin(number=trial.number, attrs=dict(trial.user_attrs))
        return None
