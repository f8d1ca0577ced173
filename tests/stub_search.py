"""The real search driver (KDNASSearch, Ray Tune, the study) with trivial trials and no teachers.

As a script: ``python stub_search.py kdnas-arguments…`` runs ``kdnas`` with :func:`use_stub_trials` applied.
"""

from __future__ import annotations

import sys

import ray.cloudpickle
import torch
from ray import tune

from kdnas.study.records import ARCH_SUMMARY_ATTR, TRIAL_NUMBER_KEY, TrialReport
from kdnas.tune import driver as runner
from kdnas.tune import inputs
from kdnas.tune import prepare as prepare_mod
from kdnas.tune.trial_inputs import TrialInputs

if __name__ != "__main__":
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/


def stub_student(config: dict, inputs: TrialInputs) -> None:
    """A trial that reports a made-up finished student at once."""
    number = config[TRIAL_NUMBER_KEY]
    attrs = {ARCH_SUMMARY_ATTR: f"L{config['num_layers']}", "stub": True}
    made_up = TrialReport(0.5 + number / 1e4, 1.0 + config["num_layers"], epoch=1, completed=True, attrs=attrs)
    tune.report(made_up.to_result(inputs.metric))


def use_stub_trials(monkeypatch=None) -> None:
    """Make ``run_search`` skip teachers and the final re-timing and run :func:`stub_student` trials (``monkeypatch``
    undoes it)."""
    stubs = {
        (prepare_mod, "fit_teachers"): lambda *a, **k: [],
        (prepare_mod, "teacher_reference"): lambda *a, **k: ([], torch.zeros(1, 1, 2)),
        (inputs, "inheritance"): lambda *a, **k: None,
        (prepare_mod, "transfer_set"): lambda *a, **k: None,
        (runner, "student_trainable"): stub_student,
        (runner, "retime_study"): lambda *a, **k: None,  # no teachers to time, no real students
    }
    for (module, name), value in stubs.items():
        if monkeypatch is None:
            setattr(module, name, value)
        else:
            monkeypatch.setattr(module, name, value)


if __name__ == "__main__":
    from kdnas.cli import main

    use_stub_trials()
    sys.exit(main(sys.argv[1:]))
