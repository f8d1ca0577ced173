"""The typed records read what a study holds and give it back unchanged.

A study is written here with the layout today's writers give it (a trial's attrs as ``tune/trial.py`` and the
searcher record them, the study's as the driver and ``kdnas retime`` do), stored in SQLite and read back: each
record reads as what was written and writes back the very JSON it was read from. A study from an older kdnas, which
lacks the newer keys, still reads, and the readers (report, export, retrain) read it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from kdnas.config import KDConfig, KDNASConfig, dump_config
from kdnas.study.records import CurvePoint, TrialTicket
from kdnas.study.student_record import DriverId, StudentRecord, TrialClaim
from kdnas.study.study_record import ExportedTrial, StudyRecord, TeacherFit

ARCH = {"num_layers": 2, "num_heads": 2, "head_dim": 16, "ffn_ratio": 2, "hidden_size": 32, "intermediate_size": 64}
LATENCY = {  # LatencyResult.to_dict()
    "median_ms": 1.25,
    "p90_ms": 1.5,
    "iqr_ms": 0.125,
    "device": "cpu",
    "device_name": "Some CPU",
    "threads": 1,
    "batch_size": 1,
    "seq_len": 24,
    "runs": 30,
    "warmup": 5,
    "min_run_time_s": 0.25,
    "isolated": True,
    "host": "node-a",
    "cached": False,
    "p10_ms": None,  # read from a cache written before kdnas recorded it
}
WHERE = {
    "id": None,
    "ip": "10.0.0.1",
    "hostname": "node-a",
    "device": "cpu",
    "device_name": "Some CPU",
    "ray_task": False,
}
COST = {  # build_and_measure, with the node run_trial adds
    "arch": ARCH,
    "arch_summary": "L2-H32-A2-F64",
    "params": 123456,
    "encoder_params": 23456,
    "flops": 345678,
    "latency": LATENCY,
    "node": {"id": "f00d", "ip": "10.0.0.1", "hostname": "node-a"},
}
INHERITED = {  # student.inheritance.inherit
    "teacher": "minilm",
    "rule": "uniform",
    "init": "inherited",
    "layers": [0, 5],
    "heads": [[0, 1], [1, 0]],
    "hidden_channels": 32,
    "ffn_neurons": [64, 64],
    "random": {},
}
CURVE = [[0.5, 0.61, 1.5, 0.55, 0.012], [1, 0.7, 3.25, 0.6, 0.011], [2, 0.8, 6.5, 0.66, 0.01]]
PROGRESS = {  # StudentRun.progress
    **COST,
    "init": INHERITED,
    "slice_metric": {"value": 0.5, "label_probability": 0.502, "seconds": 0.125},
    "learning_rate": 0.0003,
    "epochs_trained": 2,
    "learning_curve": CURVE,
    "restart": {
        "reason": "predicts one class for every example",
        "after_epoch": 1,
        "metric": 0.5,
        "learning_rate": 0.0006,
        "learning_curve": [[1, 0.5, 3.0, 0.5, 0.01]],
    },
}
RECIPE = "0123456789abcdef"


def trained_attrs() -> dict:
    """A COMPLETE trial's attrs as ``StudentRun.save`` and the searcher record them."""
    kd = KDConfig().model_dump(mode="json", exclude={"space"})
    return {
        **PROGRESS,
        "train_rows": {"labelled": 160, "transfer": 32, "transfer_per_epoch": 16},
        "kd": {**kd, "learned_teacher_weights": [0.6, 0.4]},
        "teachers": ["minilm", "gpt2"],
        "train_device": "cpu",
        "train_precision": "fp32",
        "train_started_at": 1700000000.5,
        "train_finished_at": 1700000012.25,
        "student_path": "/runs/students/s/trial-0000",
        "student_sha256": "ab" * 32,
        "recipe": RECIPE,
    }


def today_trials() -> list[optuna.trial.FrozenTrial]:
    """One trial of each kind a search leaves, its attrs laid out as today's writers lay them out."""
    trained = trained_attrs()
    repeat = {k: v for k, v in trained.items() if k not in ("train_started_at", "train_finished_at")}
    stopped = {**COST, **{k: PROGRESS[k] for k in ("init", "slice_metric", "learning_rate")}, "recipe": RECIPE}
    stopped.update(epochs_trained=0.5, learning_curve=CURVE[:1], pruned_reason="stopped early after epoch 0.5: …")
    claim = {"kdnas:heartbeat": 1700000100.0, "kdnas:driver": {"host": "node-a", "pid": 4242}}
    kinds = [
        (TrialState.COMPLETE, [0.8, 1.25], trained, claim),
        (TrialState.COMPLETE, [0.8, 1.25], {**repeat, "duplicate_of": 0}, {}),
        (TrialState.PRUNED, None, stopped, claim),
        (TrialState.PRUNED, None, {**COST, "epochs_trained": 0, "pruned_reason": "infeasible, not trained: …"}, claim),
        (TrialState.FAIL, None, {"failure_traceback": "Traceback …", "failure_reason": "ValueError: x"}, claim),
        (TrialState.FAIL, None, {"recipe": RECIPE, "failure_reason": "driver lost: …", "restarts": 1}, claim),
        (TrialState.WAITING, None, {"retry_of": 5}, {}),
        (TrialState.COMPLETE, [0.82, 1.25], {**trained, "promoted_from": 2, "collapsed": "predicts one class"}, claim),
    ]
    return [
        create_trial(
            state=state,
            values=values,
            params={"num_layers": 2},
            distributions={"num_layers": IntDistribution(1, 4)},
            user_attrs=attrs,
            system_attrs=system,
        )
        for state, values, attrs, system in kinds
    ]


def today_study_attrs(config: KDNASConfig) -> dict:
    """The study's attrs as the driver (``open_study``), the fingerprint check and ``kdnas retime`` write them."""
    teacher = {"name": "minilm", "model": "minilm", "value": 0.85, "latency_ms": 4.5, "latency": LATENCY}
    one_layer = {"layer": 5, "rule": "auto", "scores": {"0": 0.61, "5": 0.7}, "failed": {}, "student": "L1-H32"}
    elastic = {
        "epochs": 0.5,
        "steps": 4,
        "learning_rate": 0.0005,
        "random_students": 2,
        "students": ["L1-H16-A2-F16", "L3-H32-A4-F64"],
        "rows": 192,
        "loss": {"first": 0.7, "last": 0.4},
        "precision": "fp32",
        "seconds": 1.5,
        "ran_on": WHERE,
        "cache_file": "minilm-elastic-0123.safetensors",
    }
    settings = {"batch_size": 1, "threads": 1, "warmup": 5, "runs": 30, "min_run_time_s": 0.25}
    return {
        "fingerprint": {"data.metric": "accuracy", "teachers": "abc"},
        "teachers": [
            {**teacher, "params": 22_000_000, "ran_on": {"fit": {**WHERE, "precision": "fp32"}, "logits": WHERE}},
            {**teacher, "name": "bert", "model": "bert", "params": 1, "ran_on": {"fit": None, "logits": None}},
        ],
        "inheritance": {
            "teacher": "minilm",
            "layers": "uniform",
            "calibration_size": 256,
            "cache_file": "minilm-importance-0123.safetensors",
            "shape": {"layers": 6, "heads": 12, "head_dim": 32, "ffn": 1536},
            "importance": {"layers": [0.1, 0.2], "heads": [[0.1]], "neurons_per_layer": 1536, "channels": 384},
            "one_layer": {**one_layer, "steps": 40, "ran_on": WHERE},
            "elastic": elastic,
            "ran_on": WHERE,
        },
        "transfer": {"size": 32, "sources": {"demo": 32}, "fingerprint": "cafe"},
        "task": {"name": "demo", "metric": "accuracy", "label_names": ["negative", "positive"]},
        "config": {**dump_config(config), "search": {**dump_config(config)["search"], "storage": "sqlite:///***"}},
        "retimed": {
            "at": "2025-01-01T00:00:00+00:00",
            "host": "node-a",
            "device": "cpu",
            "device_name": "Some CPU",
            "isolated": True,
            "settings": {**settings, "seq_len": 24, "rounds": 3},
            "kept": "fastest",
            "students": {"0": 1.0, "1": 1.0, "7": 1.0},
            "teachers": {"minilm": 4.0, "bert": 9.0},
            "seconds": 12.5,
            "contended": 0,
        },
    }


def stored_study(path: Path, trials: list, attrs: dict) -> optuna.Study:
    """``trials`` and study ``attrs`` written to a SQLite study at ``path``, loaded back as a reader loads it."""
    storage = f"sqlite:///{path}"
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["accuracy", "latency_ms"])
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for trial in trials:
        study.add_trial(trial)
    return optuna.load_study(study_name="s", storage=storage)


def as_json(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def test_a_study_written_today_reads_through_the_typed_records_and_writes_back_unchanged(tmp_path):
    written = today_trials()
    study = stored_study(tmp_path / "study.db", written, today_study_attrs(KDNASConfig()))
    for before, trial in zip(written, study.trials):
        record, claim = StudentRecord.of(trial), TrialClaim.of(trial)
        assert as_json(record.to_attrs()) == as_json(before.user_attrs) == as_json(trial.user_attrs)
        assert StudentRecord.from_attrs(record.to_attrs()) == record
        assert claim.to_attrs() == trial.system_attrs and TrialClaim.from_attrs(claim.to_attrs()) == claim
    study_record = StudyRecord.of(study)
    assert as_json(study_record.to_attrs()) == as_json(study.user_attrs) == as_json(today_study_attrs(KDNASConfig()))
    assert StudyRecord.from_attrs(study_record.to_attrs()) == study_record

    trained, repeat, stopped = (StudentRecord.of(t) for t in study.trials[:3])
    assert trained.latency and trained.latency.median_ms == 1.25 and trained.latency.p10_ms is None
    assert trained.node and trained.node.hostname == "node-a" and trained.init and trained.init.layers == [0, 5]
    assert trained.learning_curve == [CurvePoint(*point) for point in CURVE]
    assert trained.restart and trained.restart.learning_rate == 0.0006 and trained.restart.after_epoch == 1
    assert trained.kd and trained.kd.combiner == "learned" and trained.kd.learned_teacher_weights == [0.6, 0.4]
    assert trained.train_rows and trained.train_rows.transfer_per_epoch == 16 and trained.recipe == RECIPE
    assert repeat.repeat_of == 0 and repeat.train_started_at is None and stopped.pruned_reason.startswith("stopped")
    assert TrialClaim.of(study.trials[0]).driver == DriverId(host="node-a", pid=4242)
    assert StudentRecord.of(study.trials[6]).retry_of == 5 and StudentRecord.of(study.trials[7]).promoted_from == 2
    assert study_record.task and study_record.task.label_names == ["negative", "positive"]
    assert study_record.inheritance and study_record.inheritance.one_layer and study_record.inheritance.elastic
    scores = study_record.inheritance.one_layer.scores_line("accuracy")
    assert scores == "layer 0: accuracy 0.6100, layer 5: accuracy 0.7000"
    assert [t.latency_ms for t in study_record.retimed_teachers()] == [4.0, 9.0]
    assert study_record.retimed_students() == {0: 1.0, 1: 1.0, 7: 1.0}
    assert study_record.teachers and study_record.teachers[1].ran_on and study_record.teachers[1].ran_on.fit is None


def test_records_built_in_code_write_the_layout_their_writers_wrote():
    ticket = TrialTicket(number=3, promoted=True)
    assert ticket.to_attrs() == {"kdnas_trial_number": 3, "kdnas_promoted": True}
    assert TrialTicket.from_attrs({"num_layers": 2, "kdnas_trial_number": 3}).number == 3
    assert StudentRecord(retry_of=4).to_attrs() == {"retry_of": 4}
    assert StudyRecord().to_attrs() == {"inheritance": None, "transfer": None}  # the driver records both, None too
    fit = {  # teachers/fitting.py: kdnas_teacher.json
        "name": "gpt2",
        "model": "gpt2",
        "fit": {"epochs": 1.0},
        "scratch": None,
        "task": "demo",
        "task_fingerprint": "beef",
        "max_seq_length": 24,
        "seed": 0,
        "metric": "accuracy",
        "value": 0.75,
        "fit_seconds": 1.5,
        "ran_on": {**WHERE, "precision": "fp32"},
    }
    record = TeacherFit.from_attrs(fit)
    assert record.to_attrs() == fit and TeacherFit.from_attrs(record.to_attrs()) == record
    assert record.settings() == TeacherFit.from_attrs({**fit, "value": 0.5, "seed": 1, "ran_on": None}).settings()


def test_an_exported_record_reads_back_as_it_was_written(tmp_path):
    from kdnas.readers.export import model_card, trial_record

    study = stored_study(tmp_path / "study.db", today_trials(), today_study_attrs(KDNASConfig()))
    exported = trial_record(study, study.trials[0])
    stored = json.loads(json.dumps(exported.to_attrs()))
    assert ExportedTrial.from_attrs(stored) == exported and ExportedTrial.from_attrs(stored).to_attrs() == stored
    assert exported.objectives == {"accuracy": 0.8, "latency_ms": 1.0} and exported.search_latency_ms == 1.25
    assert exported.repeats == [1] and "student_path" not in stored["user_attrs"]
    card = model_card(exported)
    assert "| demo | 0.8000 | 1.000 ms | 0.12M |" in card and "restarted at half the learning rate" in card
    assert "Some CPU (cpu),\n1 thread(s), batch 1, sequence length 24, median of\n30 runs after 5 warm-up runs." in card


def test_a_study_from_an_older_kdnas_without_the_newer_keys_still_reads(tmp_path):
    from kdnas.readers.export import model_card, trial_record
    from kdnas.readers.report import trial_rows, write_report
    from kdnas.study.front import front_rows, study_teachers
    from kdnas.tune.retrain import recorded_one_layer

    old_attrs = {"arch": ARCH, "arch_summary": "L2-H32-A2-F64", "params": 123456, "latency": {"median_ms": 1.25}}
    old_attrs.update(kd={"combiner": "mean", "temperature": 2.0}, init={"init": "random"}, student_path="/gone")
    space = {"num_layers": IntDistribution(1, 4)}
    trials = [
        create_trial(values=[0.8, 1.25], params={"num_layers": 2}, distributions=space, user_attrs=old_attrs),
        create_trial(values=[0.7, 0.5], params={"num_layers": 1}, distributions=space),
    ]
    study_attrs = {
        "teachers": [{"name": "minilm", "model": "minilm", "value": 0.85, "latency_ms": 4.5, "params": 1}],
        "inheritance": {"teacher": "minilm", "layers": "uniform"},  # no one_layer, elastic, ran_on
        "retimed": {"at": "then", "host": "h", "device_name": "cpu", "settings": {"rounds": 2}, "students": {"0": 1.0}},
    }  # no task, transfer, config, fingerprint; a retiming without "kept" or "teachers"
    study = stored_study(tmp_path / "old.db", trials, study_attrs)
    record, bare = StudentRecord.of(study.trials[0]), StudentRecord.of(study.trials[1])
    assert record.learning_curve is None and record.slice_metric is None and record.node is None
    assert bare == StudentRecord() and TrialClaim.of(study.trials[1]) == TrialClaim()
    study_record = StudyRecord.of(study)
    assert study_record.task is None and study_record.inheritance and study_record.inheritance.one_layer is None
    assert study_record.retimed and study_record.retimed.kept is None and study_teachers(study)[0].latency_ms == 4.5
    assert recorded_one_layer(study) == "first"
    assert [row["trial"] for row in front_rows(study, "accuracy")] == [1, 0]
    rows = trial_rows(study, "accuracy")
    assert rows[0]["kd"] == "mean T=2" and rows[0]["init"] == "random" and rows[1]["arch"] == ""
    assert "the median of 2 interleaved rounds" in write_report(study, tmp_path / "r", "accuracy")["html"].read_text()
    card = model_card(trial_record(study, study.trials[0]))
    assert "| ? | 0.8000 | 1.000 ms | 0.12M |" in card and "measured in PyTorch, fp32 on ? (?),\n? thread(s)" in card
