"""Collapsed students: one that predicts one class after its first epoch trains again from its initial weights at half
the learning rate; one still collapsed at the end is recorded so, kept off the Pareto front and never exported by
choice. Every trial also records its slice's metric before training."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch

from conftest import save_tiny_student
from kdnas.config import build_config
from kdnas.student.batches import Encoded
from kdnas.student.metrics import collapse_reason, score
from kdnas.study.records import (
    COLLAPSED_ATTR,
    LEARNING_CURVE_ATTR,
    LEARNING_RATE_ATTR,
    RESTART_ATTR,
    SLICE_METRIC_ATTR,
    TrialReport,
)
from kdnas.tune import student_run
from kdnas.tune.checkpoint import load_state, save_state
from kdnas.tune.trial import run_trial
from kdnas.tune.trial_inputs import TrialInputs

ARCH = {"num_layers": 1, "num_heads": 2, "head_dim": 16, "ffn_ratio": 1}
RATE = 1e-3


def test_collapse_is_one_class_predicted_or_no_better_than_the_majority_class():
    labels = [0, 0, 0, 1, 1]
    assert collapse_reason("accuracy", 0.6, [0] * 5, labels, ("neg", "pos")) == (
        "predicts class 0 (neg) for all 5 eval examples"
    )
    assert "majority class (0.6000)" in collapse_reason("accuracy", 0.6, [0, 0, 1, 1, 0], labels)
    assert collapse_reason("accuracy", 0.8, [0, 0, 0, 0, 1], labels) is None
    assert collapse_reason("mcc", 0.0, [1, 0, 1, 0, 1], labels) is not None  # chance-level MCC
    assert collapse_reason("f1", 0.8, [0, 0, 0, 1, 1], labels) is None
    assert collapse_reason("accuracy", 1.0, [1, 1], [1, 1]) is None  # one class in the labels: cannot tell


def _inputs(
    tmp_path, name: str, *, rate: float = RATE, teacher: torch.Tensor | None = None, teacher_values: tuple = ()
) -> TrialInputs:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, 30000, (32, 8), generator=generator)
    data = Encoded(ids, torch.ones_like(ids), None, (ids[:, 0] > 15000).long())
    raw = {
        "data": {"max_seq_length": 8},
        "training": {"epochs": 2, "batch_size": 8, "learning_rate": rate},
        "latency": {"warmup": 0, "runs": 3, "min_run_time_s": 0, "cache": False},
        "student": {"inherit": {"enabled": False}},
        "kd": {"alpha": 0.0 if teacher is not None else 0.5},
    }
    knows_labels = 3.0 * torch.nn.functional.one_hot(data.labels, 2).float()[None] - 1.5  # a teacher that learnt
    logits = teacher if teacher is not None else knows_labels
    return TrialInputs(
        config=build_config(raw),
        metric="accuracy",
        label_names=("neg", "pos"),
        train=data,
        eval=data,
        teacher_names=("t",),
        teacher_logits=logits,
        students_dir=str(tmp_path / name),
        teacher_values=teacher_values,
    )


def _weights(tmp_path, name: str) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(tmp_path / name / "trial-0000" / "model.safetensors")


def test_a_student_collapsed_after_its_first_epoch_trains_again_from_its_initial_weights_at_half_the_rate(
    tmp_path, monkeypatch
):
    evaluations = []
    real = student_run.evaluation_of

    def first_epoch_collapses(*args, **kwargs):
        scored = real(*args, **kwargs)
        evaluations.append(scored.value)
        if len(evaluations) == 2:  # the slice's score, then epoch 1 of the first attempt
            return student_run.replace(scored, collapsed="predicts class 0 (neg) for all 32 eval examples")
        return scored

    monkeypatch.setattr(student_run, "evaluation_of", first_epoch_collapses)
    reports: list[dict] = []
    run_trial(ARCH, _inputs(tmp_path, "restarted"), trial_number=0, device="cpu", report=reports.append)
    assert [r["epoch"] for r in reports] == [1, 2]  # the collapsed epoch is not reported: Tune sees one training
    record = TrialReport.from_result(reports[-1], "accuracy")
    restart = record.attrs[RESTART_ATTR]
    assert restart["reason"] == "predicts class 0 (neg) for all 32 eval examples" and restart["after_epoch"] == 1
    assert restart[LEARNING_RATE_ATTR] == RATE and record.attrs[LEARNING_RATE_ATTR] == RATE / 2
    assert [point[0] for point in restart[LEARNING_CURVE_ATTR]] == [1]
    assert [point[0] for point in record.attrs[LEARNING_CURVE_ATTR]] == [1, 2]
    first, second = restart[LEARNING_CURVE_ATTR][0], record.attrs[LEARNING_CURVE_ATTR]
    assert first[2] <= second[0][2]  # training seconds count the first attempt too
    assert COLLAPSED_ATTR not in record.attrs

    monkeypatch.setattr(student_run, "evaluation_of", real)
    fresh: list[dict] = []
    run_trial(ARCH, _inputs(tmp_path, "fresh", rate=RATE / 2), trial_number=0, device="cpu", report=fresh.append)
    restarted, plain = _weights(tmp_path, "restarted"), _weights(tmp_path, "fresh")
    assert all(torch.equal(restarted[k], plain[k]) for k in plain)  # the same training as a fresh one at half the rate
    assert fresh[-1]["accuracy"] == reports[-1]["accuracy"]


def test_a_student_still_collapsed_at_the_end_is_recorded_so(tmp_path, monkeypatch):
    real = student_run.evaluation_of

    def always_collapsed(*args, **kwargs):
        return student_run.replace(real(*args, **kwargs), collapsed="predicts class 0 (neg) for all 32 eval examples")

    monkeypatch.setattr(student_run, "evaluation_of", always_collapsed)
    reports: list[dict] = []
    run_trial(ARCH, _inputs(tmp_path, "c"), trial_number=0, device="cpu", report=reports.append)
    record = TrialReport.from_result(reports[-1], "accuracy")
    assert record.completed and [r["epoch"] for r in reports] == [1, 2]
    assert record.attrs[COLLAPSED_ATTR] == "predicts class 0 (neg) for all 32 eval examples"
    assert record.attrs[RESTART_ATTR][LEARNING_RATE_ATTR] == RATE and record.attrs[LEARNING_RATE_ATTR] == RATE / 2


def test_a_student_on_a_task_no_teacher_learned_is_not_told_collapsed(tmp_path):
    always_neg = torch.tensor([8.0, -8.0]).expand(1, 32, 2).clone()  # a teacher that only ever says "neg"
    inputs = _inputs(tmp_path, "c", teacher=always_neg, teacher_values=(0.4375,))  # below the eval majority level
    reports: list[dict] = []
    run_trial(ARCH, inputs, trial_number=0, device="cpu", report=reports.append)
    record = TrialReport.from_result(reports[-1], "accuracy")
    assert record.completed and record.value <= 0.6  # it learnt the teacher's one class: the task's level here
    assert COLLAPSED_ATTR not in record.attrs and RESTART_ATTR not in record.attrs
    assert record.attrs[LEARNING_RATE_ATTR] == RATE


def test_every_trial_records_its_slices_metric_before_training(tmp_path):
    reports: list[dict] = []
    run_trial(ARCH, _inputs(tmp_path, "s"), trial_number=0, device="cpu", report=reports.append)
    sliced = TrialReport.from_result(reports[-1], "accuracy").attrs[SLICE_METRIC_ATTR]
    assert 0 <= sliced["value"] <= 1 and 0 < sliced["label_probability"] < 1 and sliced["seconds"] >= 0
    assert TrialReport.from_result(reports[0], "accuracy").attrs[SLICE_METRIC_ATTR] == sliced  # also if stopped early


READERS = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import optuna
    from optuna.distributions import IntDistribution
    from optuna.trial import create_trial

    from kdnas.cli import main
    from kdnas.study.front import best_under_budget, pareto_front

    root = Path(sys.argv[1])
    storage = f"sqlite:///{root / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "latency_ms"])
    student = root / "student"
    assert (student / "model.safetensors").is_file()  # a real student, saved by the test (torch stays out)
    collapsed = {"collapsed": "predicts class 0 (neg) for all 600 eval examples"}
    for number, (accuracy, latency, extra) in enumerate([(0.5, 0.5, collapsed), (0.9, 2.0, {}), (0.7, 3.0, {})]):
        study.add_trial(create_trial(
            values=[accuracy, latency], params={"num_layers": number + 1},
            distributions={"num_layers": IntDistribution(1, 4)},
            user_attrs={"arch_summary": f"L{number + 1}-H64", "params": 1000, "student_path": str(student),
                        "kd": {}, "init": {}, **extra}))
    flags = ["--storage", storage, "--study-name", "s", "--output-dir", str(root / "out")]
    front = [t.number for t in pareto_front(study)]
    try:
        best_under_budget(study, latency_ms=1.0)
        budget = "found"
    except LookupError as err:
        budget = str(err)
    codes = [main(["export", *flags, "--latency-budget-ms", "1", "--out", str(root / "budget")]),
             main(["export", *flags, "--trial", "0", "--out", str(root / "named")]),
             main(["report", *flags])]
    card = (root / "named" / "README.md").read_text()
    print(json.dumps({"front": front, "budget": budget, "codes": codes, "card": card}))
""")


def test_a_collapsed_student_is_off_the_front_and_exported_only_when_named(tmp_path):
    save_tiny_student(tmp_path / "student")
    done = subprocess.run([sys.executable, "-c", READERS, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["front"] == [1]  # the collapsed trial 0 is faster, yet off the front
    assert outcome["budget"] == "no completed student within latency ≤ 1.0 ms"
    assert outcome["codes"] == [2, 0, 0]
    assert "trials 0 collapsed: name one with --trial" in done.stderr
    assert "warning: trial 0 collapsed (predicts class 0 (neg)" in done.stderr
    assert "collapsed (predicts class 0 (neg) for all 600 eval examples): kept off the Pareto front" in outcome["card"]
    html = (tmp_path / "out" / "report" / "report.html").read_text()
    assert "kept off the Pareto front" in html and "collapsed (off the front)" in html  # table and plot


@pytest.mark.parametrize("metric", ["accuracy", "f1", "mcc"])
def test_a_student_at_the_majority_level_is_collapsed_under_every_metric(metric):
    labels = [0] * 60 + [1] * 40
    assert collapse_reason(metric, -1.0 if metric == "mcc" else 0.0, [1] * 100, labels) is not None
    preds = [0] * 55 + [1] * 5 + [1] * 35 + [0] * 5
    assert collapse_reason(metric, score(metric, preds, labels), preds, labels) is None


def test_a_restarted_student_resumed_from_its_checkpoint_keeps_its_restart_and_half_rate(tmp_path, monkeypatch):
    real = student_run.evaluation_of
    calls = []

    def first_epoch_collapses(*args, **kwargs):
        scored = real(*args, **kwargs)
        calls.append(1)
        return student_run.replace(scored, collapsed="predicts class 0 (neg)") if len(calls) == 2 else scored

    monkeypatch.setattr(student_run, "evaluation_of", first_epoch_collapses)
    saved = tmp_path / "checkpoint"

    def checkpoint(metrics: dict, state: dict) -> None:  # as the trainable does: on disk, at once
        save_state(state, saved)

    reports: list[dict] = []
    inputs = _inputs(tmp_path, "whole")
    run_trial(ARCH, inputs, trial_number=0, device="cpu", report=reports.append, checkpoint=checkpoint)
    resumed: list[dict] = []
    state = load_state(saved)
    assert state["restart"]["reason"] == "predicts class 0 (neg)"
    run_trial(ARCH, _inputs(tmp_path, "resumed"), trial_number=0, device="cpu", report=resumed.append, resume=state)
    record = TrialReport.from_result(resumed[-1], "accuracy")
    assert record.attrs[RESTART_ATTR]["reason"] == "predicts class 0 (neg)"
    assert record.attrs[LEARNING_RATE_ATTR] == RATE / 2 and [r["epoch"] for r in resumed] == [2]
    whole, rest = _weights(tmp_path, "whole"), _weights(tmp_path, "resumed")
    assert all(torch.equal(whole[k], rest[k]) for k in whole)
