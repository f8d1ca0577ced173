"""Latency measured like with like: alone on the node (a node-wide lock between training and timing), and re-timed
on one node after the search (``kdnas retime``), the front, report and export then reading those latencies."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from conftest import wait_for
from kdnas.config import build_config
from kdnas.latency.isolation import LOCK_DIR_ENV, isolated
from kdnas.latency.timing import measure_latency
from kdnas.readers.export import trial_record
from kdnas.readers.report import retime_note, write_report
from kdnas.student import StudentArch
from kdnas.study.front import feasible_completed, front_rows, non_dominated, pareto_front, study_teachers
from kdnas.study.records import ARCH_ATTR, RETIMED_ATTR, STUDY_TEACHERS_ATTR, TASK_ATTR
from kdnas.teachers.loading import load_tokenizer
from kdnas.tune.retime import retime_study, student_model

TRAINER = """
import sys, time
from kdnas.latency.isolation import training_step
end = time.time() + float(sys.argv[1])
with open(sys.argv[2], "w") as out:
    while time.time() < end:
        with training_step():
            start = time.time()
            with training_step():  # a batch inside a step (re-entrant: leaving it keeps the step's lock)
                time.sleep(0.005)
            time.sleep(0.02)
            out.write(f"{start} {time.time()}\\n")
        out.flush()
"""


@pytest.fixture
def lock_dir(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "locks"
    monkeypatch.setenv(LOCK_DIR_ENV, str(directory))
    return directory


def test_no_training_step_of_another_process_runs_inside_an_isolated_block(lock_dir, tmp_path):
    log = tmp_path / "steps.txt"
    trainers = [subprocess.Popen([sys.executable, "-c", TRAINER, "2", str(log.with_suffix(f".{i}"))]) for i in range(2)]
    try:
        for i in range(2):
            wait_for(
                lambda i=i: log.with_suffix(f".{i}").exists() and log.with_suffix(f".{i}").stat().st_size > 0,
                60,
                "steps",
            )
        with isolated() as waited:
            inside = (time.time(), time.sleep(0.3), time.time())
        for trainer in trainers:
            assert trainer.wait(timeout=60) == 0
    finally:
        for trainer in trainers:
            trainer.kill()
    start, _, end = inside
    steps = [
        tuple(map(float, line.split()))
        for i in range(2)
        for line in log.with_suffix(f".{i}").read_text().split("\n")
        if line
    ]
    assert not [(s, e) for s, e in steps if s < end and e > start], "a training step ran during the measurement"
    assert any(s >= end for s, _ in steps), "training resumed after the measurement"
    assert waited < 1.0  # it waited only for the steps in flight, not for the trainers to finish


def test_a_measurement_records_that_it_was_isolated_and_where(lock_dir):
    config = build_config({"output_dir": str(lock_dir.parent / "run")})
    model = student_model(config, StudentArch(1, 2, 8, 1), load_tokenizer(config.student.tokenizer))
    result = measure_latency(model, vocab_size=100, seq_len=8, warmup=1, runs=3, isolate=True)
    assert result.isolated and result.host and result.median_ms > 0
    assert not measure_latency(model, vocab_size=100, seq_len=8, warmup=0, runs=3).isolated


def test_the_front_matches_optunas_on_random_points_with_ties():
    rng = random.Random(3)
    for _ in range(20):
        study = optuna.create_study(directions=["maximize", "minimize"])
        for i in range(rng.randint(1, 25)):
            study.add_trial(
                create_trial(
                    values=[rng.choice([0.5, 0.6, 0.7, 0.8]), rng.choice([1.0, 2.0, 3.0])],
                    params={"x": i},
                    distributions={"x": IntDistribution(0, 100)},
                )
            )
        ours = sorted(t.number for t in non_dominated(study.trials))
        assert ours == sorted(t.number for t in study.best_trials)


def _retimable_study(tmp_path) -> tuple[optuna.Study, object]:
    config = build_config(
        {
            "output_dir": str(tmp_path / "run"),
            "teachers": [{"name": "minilm", "model": "minilm"}],
            "latency": {"warmup": 1, "runs": 3, "min_run_time_s": 0, "seq_len": 16},
        }
    )
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr(TASK_ATTR, {"name": "t", "metric": "accuracy", "label_names": ["a", "b"]})
    study.set_user_attr(
        STUDY_TEACHERS_ATTR, [{"name": "minilm", "model": "minilm", "value": 0.9, "latency_ms": 9.0, "params": 1}]
    )
    archs = [
        StudentArch(1, 2, 8, 1),
        StudentArch(2, 2, 16, 2),
        StudentArch(1, 2, 8, 1),
    ]  # trial 2 repeats trial 0's arch
    for number, (arch, values) in enumerate(zip(archs, [(0.7, 5.0), (0.8, 0.5), (0.6, 1.0)])):
        study.add_trial(
            create_trial(
                values=list(values),
                params={"n": number},
                distributions={"n": IntDistribution(0, 9)},
                user_attrs={ARCH_ATTR: arch.to_dict(), "arch_summary": arch.summary, "params": 1000},
            )
        )
    return study, config


def test_retime_measures_every_architecture_and_teacher_and_the_front_reads_it(tmp_path, lock_dir):
    study, config = _retimable_study(tmp_path)
    # during the "search", trial 1 (L6) was timed at 0.5 ms beside training: it alone is on the front
    assert [t.number for t in pareto_front(study)] == [1]
    record = retime_study(study, config, rounds=2)
    assert set(record.students) == {"0", "1", "2"} and set(record.teachers) == {"minilm"}
    assert record.students["0"] == record.students["2"], "one architecture, one measurement"
    assert record.isolated and record.settings.rounds == 2 and 0 <= record.contended <= 6
    assert study.user_attrs[RETIMED_ATTR] == record.to_attrs()
    latencies = {t.number: t.values[1] for t in feasible_completed(study)}
    assert latencies == {int(n): ms for n, ms in record.students.items()}
    assert study_teachers(study)[0].latency_ms == record.teachers["minilm"]
    # re-timed, L1-H16 (trials 0 and 2) is far faster than L6-H256 (trial 1): now both are on the front
    assert {t.number for t in pareto_front(study)} == {0, 1}
    rows = front_rows(study, "accuracy")
    assert [r["latency_ms"] for r in rows] == [f"{record.students[str(r['trial'])]:.3f}" for r in rows]
    paths = write_report(study, tmp_path / "report", "accuracy")
    assert "re-timed after the search" in paths["html"].read_text()
    assert "the fastest of 2 interleaved rounds" in paths["html"].read_text()
    front = json.loads(paths["json"].read_text())["front"]
    assert {p["trial"]: p["latency_ms"] for p in front} == {0: record.students["0"], 1: record.students["1"]}
    exported = trial_record(study, study.trials[1])
    assert exported.objectives["latency_ms"] == record.students["1"] and exported.search_latency_ms == 0.5
    assert exported.teachers[0].latency_ms == record.teachers["minilm"]
    assert [t.values[1] for t in study.trials] == [5.0, 0.5, 1.0], "the recorded trials are unchanged"
    study.set_user_attr(RETIMED_ATTR, replace(record, kept=None).to_attrs())  # re-timed by an older kdnas
    assert "the median of 2 interleaved rounds" in retime_note(study)


def test_retime_records_each_models_fastest_round_and_counts_the_contended_ones(
    tmp_path, lock_dir, monkeypatch, caplog
):
    from kdnas.latency.timing import LatencyResult
    from kdnas.tune import retime as retime_mod

    study, config = _retimable_study(tmp_path)
    calls = []
    slow_spell = {0: 3.0, 1: 0.5, 2: 1.0, 3: 1.0, 4: 2.5, 5: 4.0}  # call -> median: a busy spell slows some rounds

    def disturbed_every_other_time(model, **kwargs):
        median = slow_spell[len(calls)]
        calls.append(model)
        return LatencyResult(median, 1.1, 0.1, "cpu", "cpu", 1, 1, 16, 30, 1), len(calls) % 2 == 1

    monkeypatch.setattr(retime_mod, "measure_trusted", disturbed_every_other_time)
    with caplog.at_level("INFO", logger="kdnas.tune.retime"):
        record = retime_study(study, config, rounds=2)
    assert len(calls) == 6 and record.contended == 3  # 2 architectures and 1 teacher, twice
    # round 1 times arch a (trials 0, 2), arch b (trial 1), the teacher: 3.0, 0.5, 1.0; round 2: 1.0, 2.5, 4.0
    assert record.students == {"0": 1.0, "1": 0.5, "2": 1.0} and record.teachers == {"minilm": 1.0}
    assert "3 of 6 measurements were disturbed by other work" in caplog.text
    # the last line gives the front the report will show (trial 1 at 0.5 ms below 1.1 × 1.0 ms) and the one the
    # search's progress lines showed (below 1.1 × 5.0 ms, trial 0's latency beside training)
    assert "front 1, hypervolume 0.48 with these latencies, as the report shows it" in caplog.text
    assert "(before this re-timing: front 1, hypervolume 4)" in caplog.text


def test_retime_refuses_zero_rounds(tmp_path):
    study, config = _retimable_study(tmp_path)
    with pytest.raises(Exception, match="rounds must be at least 1"):
        retime_study(study, config, rounds=0)
    assert RETIMED_ATTR not in study.user_attrs
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
