"""Progress a person can read: long steps say where they are, a search says where it stands."""

from __future__ import annotations

import logging

import optuna
import pytest
import torch
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from kdnas import progress as progress_mod
from kdnas.progress import Progress, duration
from kdnas.student.batches import Encoded
from kdnas.student.training import train
from kdnas.study.front import study_summary, summary_line
from kdnas.tune import reporter as search_progress
from kdnas.tune.reporter import SearchProgress


def test_duration_reads_like_a_clock():
    assert [duration(s) for s in (0, 12.4, 241, 3720)] == ["0s", "12s", "4m01s", "1h02m"]


def test_a_long_step_logs_its_count_rate_and_time_left(caplog, monkeypatch):
    monkeypatch.setattr(progress_mod, "interactive", lambda: False)
    data = Encoded(torch.randint(0, 50, (40, 6)), torch.ones(40, 6, dtype=torch.long), None, torch.randint(0, 2, (40,)))
    model = torch.nn.Sequential()  # the loss below trains a bare parameter: only the loop is under test
    weight = torch.nn.Parameter(torch.ones(1))
    caplog.set_level(logging.INFO, logger="kdnas")
    with Progress("fitting teacher t", "step", every_s=0.0) as progress:
        train(
            model,
            data,
            loss_fn=lambda m, b, y, i, f: (weight - 2).pow(2).sum(),
            epochs=2,
            batch_size=10,
            learning_rate=0.1,
            extra_parameters=[weight],
            on_step=lambda step, total, loss: progress.advance(step, total, loss=loss),
        )
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fitting teacher t: step")]
    assert len(lines) == 8 and lines[0].startswith("fitting teacher t: step 1/8 (12%), loss 1, ")
    assert "about" in lines[0] and "left" in lines[0] and lines[-1].startswith("fitting teacher t: step 8/8 (100%)")


def test_on_a_terminal_a_long_step_draws_a_bar(capsys, monkeypatch):
    monkeypatch.setattr(progress_mod, "interactive", lambda: True)
    with Progress("teacher t logits on train", "text") as progress:
        progress.advance(64, 100)
        progress.advance(100, 100)
    assert "teacher t logits on train" in capsys.readouterr().err


def test_the_study_summary_counts_states_repeats_and_the_front():
    study = optuna.create_study(directions=["maximize", "minimize"])
    distributions = {"num_layers": IntDistribution(1, 4)}
    for number, (state, values) in enumerate(
        [
            (TrialState.COMPLETE, [0.8, 2.0]),
            (TrialState.COMPLETE, [0.9, 4.0]),
            (TrialState.PRUNED, None),
            (TrialState.FAIL, None),
        ]
    ):
        study.add_trial(
            create_trial(state=state, values=values, params={"num_layers": number + 1}, distributions=distributions)
        )
    study.add_trial(
        create_trial(
            values=[0.8, 2.0], params={"num_layers": 1}, distributions=distributions, user_attrs={"duplicate_of": 0}
        )
    )
    summary = study_summary(study)
    assert summary == {
        "trials": 5,
        "complete": 2,
        "reused": 1,
        "pruned": 1,
        "failed": 1,
        "running": 0,
        "front": 2,
        "hypervolume": pytest.approx((4.4 - 2.0) * 0.8 + (4.4 - 4.0) * 0.1),
    }
    assert summary_line(summary).startswith("2 complete, 1 pruned, 1 failed, 0 running, 1 reused · front 2 · ")


def test_the_search_status_gives_the_time_left_capped_by_the_time_budget(monkeypatch):
    study = optuna.create_study(directions=["maximize", "minimize"])
    distributions = {"num_layers": IntDistribution(1, 4)}
    clock = iter([100.0, 130.0, 0.0])
    monkeypatch.setattr(search_progress.time, "monotonic", lambda: next(clock))
    progress = SearchProgress(study, "accuracy", n_trials=10, time_budget_s=60.0)  # started at t=100
    for number in range(2):
        study.add_trial(
            create_trial(
                values=[0.7 + number / 10, 2.0 + number], params={"num_layers": number + 1}, distributions=distributions
            )
        )
    status = progress.status()  # t=130: 2 done in 30 s, 8 left at that rate is 2 min, but only 30 s of budget
    assert status.startswith("2/10 done · 2 complete, 0 pruned, 0 failed, 0 running, 0 reused · front 2 · ")
    assert status.endswith("· 30s, about 30s left")
    assert progress.seconds_left(2, 30.0) == 30.0
    unbounded = SearchProgress(optuna.create_study(directions=["maximize", "minimize"]), "accuracy", n_trials=10)
    assert unbounded.seconds_left(2, 30.0) == pytest.approx(120.0)
