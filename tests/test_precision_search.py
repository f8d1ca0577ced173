"""Precision as a searched dimension (``latency.precision: [fp32, int8]``): sampled with the architecture, and a
student trained in one precision measured and scored in the other without training again."""

from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file

import kdnas
from conftest import SCRATCH_TEACHER, tiny_raw
from kdnas.config import ConfigError, load_config
from kdnas.student import SearchSpace
from kdnas.study.records import TRAINED_TWIN_KEY, TrainedTwin, TrialReport, TrialTicket
from kdnas.study.student_record import StudentRecord
from kdnas.tune import student_run
from kdnas.tune.fingerprint import config_fingerprint

SEARCHED = {"runtime": "onnxruntime", "precision": ["fp32", "int8"]}
ONE_LAYER = {"num_layers": 1, "num_heads": 2, "head_dim": 8, "ffn_ratio": 1}


def test_a_list_of_precisions_is_searched_and_bad_lists_are_one_line(tmp_path):
    config = load_config({"output_dir": str(tmp_path), "latency": SEARCHED})
    assert config.latency.precisions == ["fp32", "int8"] and config.latency.searches_precision
    assert config.latency.served_in().precision == "fp32" and config.latency.served_in("int8").precision == "int8"
    assert config_fingerprint(config)["latency.precision"] == ["fp32", "int8"]
    with pytest.raises(ValueError, match="one precision"):
        _ = config.latency.single_precision  # a measurement never runs in "both"
    single = load_config({"output_dir": str(tmp_path), "latency": {**SEARCHED, "precision": ["int8"]}}).latency
    assert single.precision == "int8" and not single.searches_precision
    for bad, message in (
        ({**SEARCHED, "precision": ["int8", "int8"]}, "each at least once and only once"),
        ({**SEARCHED, "precision": []}, "each at least once and only once"),
        ({"precision": ["fp32", "int8"]}, "needs latency.runtime 'onnxruntime'"),
        ({**SEARCHED, "precision": ["fp32", "fp16"]}, "latency.precision"),
    ):
        with pytest.raises(ConfigError, match=message) as error:
            load_config({"output_dir": str(tmp_path), "latency": bad})
        assert "\n" not in str(error.value)


def test_the_space_samples_the_precision_with_the_architecture(tmp_path):
    config = load_config({"output_dir": str(tmp_path), "latency": SEARCHED})
    space, plain = SearchSpace.of(config), SearchSpace.of(load_config({"output_dir": str(tmp_path)}))
    assert space.size() == 2 * plain.size()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sampled = {space.suggest(study.ask())["precision"] for _ in range(20)}
    assert sampled == {"fp32", "int8"}
    assert "precision" not in plain.suggest(study.ask())


def test_a_student_trained_in_one_precision_goes_to_the_other_with_its_twin(tmp_path):
    config = load_config({"output_dir": str(tmp_path), "latency": SEARCHED, "search": {"sampler": "random"}})
    storage = optuna.storages.InMemoryStorage()
    searcher = kdnas.make_searcher(config, storage)
    first = searcher.suggest("t1")
    assert TRAINED_TWIN_KEY not in first  # nothing trained yet
    trained = {"student_path": "/students/trial-0000", "epochs_trained": 2, "learning_rate": 6e-4}
    searcher.on_trial_complete("t1", TrialReport(0.8, 1.0, 2, completed=True, attrs=trained).to_result("accuracy"))
    study = optuna.load_study(study_name=config.search.study_name, storage=storage)
    params = {name: value for name, value in first.items() if not name.startswith("kdnas_")}
    other = "int8" if params["precision"] == "fp32" else "fp32"
    study.enqueue_trial({**params, "precision": other})  # the same student in the other precision
    study.enqueue_trial({**params, "precision": other, "num_layers": params["num_layers"] % 4 + 1})  # another
    twin = TrialTicket.from_attrs(searcher.suggest("t2")).trained_twin
    assert twin is not None and twin.number == 0
    assert StudentRecord.from_attrs(twin.attrs).student_path == "/students/trial-0000"
    assert TrialTicket.from_attrs(searcher.suggest("t3")).trained_twin is None  # another architecture: trained


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    raw = tiny_raw(
        tmp_path_factory.mktemp("precision") / "run",
        teachers=[SCRATCH_TEACHER],
        data={"demo_train_size": 64, "demo_eval_size": 32},
        training={"epochs": 1},
        latency={"warmup": 0, "runs": 3, "min_run_time_s": 0, **SEARCHED},
    )
    return kdnas.prepare_students(kdnas.load_config(raw))


@pytest.mark.slow
def test_the_twin_is_served_in_its_own_precision_without_training(students, monkeypatch, tmp_path):
    fp32 = kdnas.train_student(students, {**ONE_LAYER, "precision": "fp32"}, seed=3, trial_number=1)
    assert fp32.attrs["latency"]["precision"] == "fp32" and "int8" not in fp32.attrs["served"]

    def no_training(*args, **kwargs):
        raise AssertionError("a student served from its twin is not trained")

    monkeypatch.setattr(student_run, "train", no_training)
    ticket = {TRAINED_TWIN_KEY: TrainedTwin(number=1, attrs=fp32.attrs).to_attrs()}
    int8 = kdnas.train_student(students, {**ONE_LAYER, "precision": "int8", **ticket}, trial_number=2)
    record, trained = StudentRecord.from_attrs(int8.attrs), StudentRecord.from_attrs(fp32.attrs)
    assert int8.completed and record.weights_of == 1 and record.train_started_at is None
    assert record.latency.precision == "int8" and record.served.precision == "int8" and record.label.endswith("int8")
    assert int8.value == record.served.int8.metric  # ranked by its int8 metric
    assert record.served.fp32.metric == fp32.value  # the same weights: the fp32 graph scores what the twin's did
    assert record.learning_curve == trained.learning_curve and record.kd == trained.kd  # how they were trained
    saved, twin_dir = Path(record.student_path), Path(trained.student_path)
    assert saved != twin_dir and (saved / "model.int8.onnx").is_file() and not (twin_dir / "model.int8.onnx").exists()
    for name, weights in load_file(str(twin_dir / "model.safetensors")).items():
        assert torch.equal(load_file(str(saved / "model.safetensors"))[name], weights)
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(
        optuna.trial.create_trial(
            values=[int8.value, int8.latency_ms], params={}, distributions={}, user_attrs=int8.attrs
        )
    )
    exported = kdnas.export_trial(study, study.trials[0], tmp_path / "export")
    card = (exported / "README.md").read_text()
    assert "**Trained by trial 1**" in card and "served in int8" in card and (exported / "model.int8.onnx").is_file()
    (twin_dir / "config.json").write_text((twin_dir / "config.json").read_text().replace("}", ' , "x": 1}', 1))
    with pytest.raises(ValueError, match="trial 1's student at .* changed since it was trained"):
        kdnas.train_student(students, {**ONE_LAYER, "precision": "int8", **ticket}, trial_number=3)


@pytest.mark.slow
def test_retime_times_each_student_in_its_precision(students, tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "latency_ms"])
    for precision in ("fp32", "int8"):
        params = {**ONE_LAYER, "precision": precision}
        report = kdnas.train_student(students, params, trial_number=5 + len(study.trials))
        distributions = {name: optuna.distributions.CategoricalDistribution([value]) for name, value in params.items()}
        study.add_trial(
            optuna.trial.create_trial(
                values=[report.value, report.latency_ms],
                params=params,
                distributions=distributions,
                user_attrs=report.attrs,
            )
        )
    retimed = kdnas.retime_study(study, students.config, rounds=1)
    assert set(retimed.students) == {"0", "1"} and retimed.settings.precision == "fp32,int8"
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    kdnas.write_report(study, tmp_path, "accuracy")
    page = (tmp_path / "report.html").read_text()
    assert "L1-H16-A2-F16 int8" in page and "fp32 / " in page


@pytest.mark.slow
def test_a_search_over_precisions_trains_each_student_once(tmp_path, ray_session):
    from kdnas.tune.driver import run_search

    space = {"depth": {"min": 1, "max": 1}, "heads": [2], "head_dim": [8], "ffn_ratio": [1]}
    raw = tiny_raw(
        tmp_path / "run",
        teachers=[SCRATCH_TEACHER],
        student={"space": space},
        latency={"warmup": 0, "runs": 3, "min_run_time_s": 0, "isolate": False, "retime": False, **SEARCHED},
        search={"n_trials": 2, "study_name": "precisions", "sampler": "random"},
    )
    study = run_search(kdnas.load_config(raw))
    done = [t for t in study.trials if t.state == TrialState.COMPLETE and "duplicate_of" not in t.user_attrs]
    records = {t.params["precision"]: StudentRecord.of(t) for t in done}
    assert set(records) == {"fp32", "int8"}  # the space's two students, one architecture in two precisions
    trained, served = sorted(records.values(), key=lambda record: record.weights_of is not None)
    assert trained.train_started_at is not None and trained.weights_of is None
    assert served.weights_of is not None and served.train_started_at is None
    assert served.served.fp32.metric == trained.served.fp32.metric


def test_a_served_twin_reads_as_such_in_the_progress_line_and_the_trials_table():
    from types import SimpleNamespace

    from kdnas.readers.report import trial_rows
    from kdnas.tune.reporter import _trial_line

    served = {"precision": "int8", "runtime": "onnxruntime"}
    report = TrialReport(0.9, 0.5, 2, completed=True, attrs={"weights_of": 0, "served": served})
    config = {**ONE_LAYER, "precision": "int8", "kdnas_trial_number": 1, TRAINED_TWIN_KEY: {"number": 0}}
    line = _trial_line(SimpleNamespace(config=config, last_result=report.to_result("accuracy")), "accuracy")
    assert line.startswith("trial 1 L1 A2x8 F×1 int8: accuracy=0.9000") and "trial 0's student, not trained" in line
    study = optuna.create_study(directions=["maximize", "minimize"])
    attrs = {"arch_summary": "L1-H16-A2-F16", "weights_of": 0, "served": served}
    study.add_trial(optuna.trial.create_trial(values=[0.9, 0.5], params={}, distributions={}, user_attrs=attrs))
    pruned = {"arch_summary": "L1-H16-A2-F16", "duplicate_of": 0, "pruned_reason": "the same student as trial 0, …"}
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params={}, distributions={}, user_attrs=pruned))
    rows = trial_rows(study, "accuracy")
    assert (
        rows[0]["arch"] == "L1-H16-A2-F16 int8"
        and rows[0]["reason"] == "trial 0's student, served in int8: not trained again"
    )
    assert rows[1]["reason"] == "the same student as trial 0, …"  # said once
