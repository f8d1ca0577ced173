"""Bad input through the CLI: one clear line naming the culprit, exit code 2, and the study left untouched."""

from __future__ import annotations

import socket
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from kdnas.cli import main
from kdnas.config import ScratchConfig, load_config
from kdnas.data import load_task
from kdnas.student import StudentArch
from kdnas.study.records import FINGERPRINT_ATTR
from kdnas.teachers.fitting import _train_tokenizer
from kdnas.teachers.loading import load_tokenizer
from kdnas.tune.fingerprint import config_fingerprint, task_fingerprint

TINY_DATA = [
    "--set",
    "data.demo_train_size=40",
    "--set",
    "data.demo_eval_size=20",
    "--set",
    "data.transfer.demo_size=20",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Teacher directories and data files the cases point at."""
    root = tmp_path_factory.mktemp("bad-input")
    minilm = load_tokenizer("minilm")
    own = _train_tokenizer(ScratchConfig(family="bert", vocab_size=300), ["the film was good", "it was bad"] * 20, 24)
    for name, tokenizer, labels in (("three-labels", minilm, 3), ("own-tokenizer", own, 2)):
        model = StudentArch(1, 2, 8, 1).build(tokenizer, labels, max_positions=64)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    short = StudentArch(1, 2, 8, 1).build(minilm, 2, max_positions=64)
    for name, files in (
        ("short-positions", "all"),
        ("no-tokenizer", "weights"),
        ("truncated", "all"),
        ("foreign-tokenizer", "foreign"),
    ):
        model = StudentArch(1, 2, 8, 1).build(own, 2, max_positions=64) if files == "foreign" else short
        model.save_pretrained(root / name)
        if files != "weights":
            minilm.save_pretrained(root / name)
    happy = StudentArch(1, 2, 8, 1).build(minilm, 2, max_positions=64)
    happy.config.id2label, happy.config.label2id = {0: "happy", 1: "sad"}, {"happy": 0, "sad": 1}
    happy.save_pretrained(root / "happy-sad")
    minilm.save_pretrained(root / "happy-sad")
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    (root / "no-label.csv").write_text("sentence,target\nit was good,1\nit was bad,0\n")
    (root / "three-labels.csv").write_text("sentence,label\nit was good,1\nit was bad,0\nit was so-so,2\n")
    (root / "latin1.tsv").write_bytes("sentence\tlabel\nit was caf\xe9 good\t1\nit was bad\t0\n".encode("latin-1"))
    (root / "ragged.tsv").write_text("sentence\tlabel\nit was good\t1\nit was bad\n")
    (root / "empty.csv").write_text("sentence,label\n")
    (root / "ok.csv").write_text("sentence,label\nit was good,1\nit was bad,0\n")
    (root / "ok.jsonl").write_text('{"sentence": "it was good", "label": 1}\n{"sentence": "it was bad", "label": 0}\n')
    (root / "list-label.jsonl").write_text('{"sentence": "good", "label": 1}\n{"sentence": "bad", "label": [0]}\n')
    (root / "word-labels.jsonl").write_text(
        '{"sentence": "good", "label": "pos"}\n{"sentence": "bad", "label": "neg"}\n'
    )
    (root / "zero.db").write_bytes(b"")
    (root / "twice.yaml").write_text("training:\n  epochs: 3\nsearch:\n  n_trials: 2\ntraining:\n  batch_size: 8\n")
    return {"root": root}


def _teacher(path: str) -> list[str]:
    name = Path(path).name
    return ["--set", f"teachers=[{{name: {name}, model: {path}}}]"]


def _files(spec: str, root: Path) -> list[str]:
    train, _, validation = spec.partition(":")
    return [
        "--set",
        "data.source=files",
        "--set",
        f"data.train_file={root / train}",
        "--set",
        f"data.validation_file={root / (validation or 'ok.csv')}",
    ]


CASES = {
    "unknown config key": (["search", "--set", "search.n_trails=3"], "search.n_trails: unknown key"),
    "wrong type": (["search", "--set", "training.epochs=many"], "training.epochs: Input should be a valid integer"),
    "wrong type of section": (["search", "--set", "latency=fast"], "latency: Input should be a valid dictionary"),
    "empty choice list": (
        ["search", "--set", "student.space.heads=[]"],
        "student.space.heads: List should have at least 1 item",
    ),
    "inverted range": (
        ["search", "--set", "student.space.depth={min: 3, max: 1}"],
        "student.space.depth: min (3) is greater than max (1)",
    ),
    "heads not dividing the width": (
        ["search", "--set", "teachers=[{name: t, scratch: {hidden: 30, heads: 4}, fit: {}}]"],
        "scratch.hidden (30) must be divisible by scratch.heads (4)",
    ),
    "depth 0": (
        ["search", "--set", "student.space.depth={min: 0, max: 2}"],
        "student.space.depth.min: Input should be greater than or equal to 1",
    ),
    "zero trials": (["search", "--n-trials", "0"], "search.n_trials: Input should be greater than or equal to 1"),
    "negative time budget": (
        ["search", "--time-budget-s", "-5"],
        "search.time_budget_s: Input should be greater than 0",
    ),
    "report on a 0-byte study file": (
        ["report", "--storage", "sqlite:///{root}/zero.db"],
        "zero.db is empty (run kdnas search first)",
    ),
    "studies on a 0-byte study file": (
        ["studies", "--storage", "sqlite:///{root}/zero.db"],
        "zero.db is empty (run kdnas search first)",
    ),
    "a config section written twice": (
        ["search", "--config", "{root}/twice.yaml"],
        "twice.yaml: key 'training' appears twice (lines 1 and 5)",
    ),
    "an override with a key written twice": (
        ["search", "--set", "search={n_trials: 2, n_trials: 3}"],
        "key 'n_trials' appears twice (line 1)",
    ),
    "missing config file": (
        ["search", "--config", "/nonexistent/kdnas.yaml"],
        "cannot read config /nonexistent/kdnas.yaml",
    ),
    "missing teacher path": (
        ["search", *_teacher("/nonexistent/teacher")],
        "teacher 'teacher': cannot load /nonexistent/teacher",
    ),
    "teacher with another label count": (
        ["search", "TEACHER:three-labels"],
        "teacher 'three-labels' predicts 3 labels but the task has 2",
    ),
    "dataset without the label column": (
        ["search", "FILES:no-label.csv"],
        "data.label_column 'label' is not a column of",
    ),
    "empty dataset": (["search", "FILES:empty.csv"], "data.train_file: "),
    "unknown metric": (["search", "--set", "data.metric=bleu"], "data.metric: Input should be 'accuracy', 'f1'"),
    "bad storage URL": (["search", "--storage", "notadb://nowhere"], "cannot open storage notadb://nowhere"),
    "study with other objective directions": (
        ["search", "--study-name", "other-directions"],
        "study 'other-directions' already exists with objectives",
    ),
    "latency budget below every student (search)": (
        ["search", "TEACHER:own-tokenizer", "--set", "latency.budget_ms=1e-6"],
        "no student of student.space fits the budget: even the smallest, L1-H64-A2-F64, has latency ",
    ),
    "latency budget below every student (export)": (
        ["export", "--latency-budget-ms", "1e-9"],
        "no completed student within latency ≤ 1e-09 ms",
    ),
    "export of a FAIL trial": (["export", "--trial", "1"], "trial 1 is FAIL, not COMPLETE"),
    "unknown study": (["report", "--study-name", "nope"], "no study 'nope' in sqlite:///"),
    "missing transfer file": (
        ["search", "--set", "data.transfer.files=[/nonexistent/transfer.csv]"],
        "data.transfer.files: no such file: /nonexistent/transfer.csv",
    ),
    "rerun with another dataset": (
        ["search", "--study-name", "fingerprinted", "FILES:ok.csv"],
        "study 'fingerprinted' holds students that this config would not be comparable with: data.train ",
    ),
    "rerun with another latency batch size": (
        ["search", "--study-name", "fingerprinted", "--set", "latency.batch_size=8"],
        "latency.batch_size 1 → 8",
    ),
    "rerun with another sequence length": (
        ["search", "--study-name", "fingerprinted", "--set", "data.max_seq_length=48"],
        "data.max_seq_length 32 → 48",
    ),
    "rerun with other head choices": (
        ["search", "--study-name", "fingerprinted", "--set", "student.space.heads=[2, 4]"],
        "search space student.space.heads [2, 4, 6, 8] → [2, 4]. Keep the study's "
        "settings, or start a new study with --study-name NAME",
    ),
    "label only in the validation file": (
        ["search", "FILES:ok.csv:three-labels.csv"],
        "label(s) ['2'] of the eval split never occur in the train split",
    ),
    "non-UTF-8 TSV": (["search", "FILES:latin1.tsv"], "data.train_file: cannot read "),
    "ragged TSV": (["search", "FILES:ragged.tsv"], "data.label_column 'label' has a missing value in row 1"),
    "sequence length above a teacher's position limit": (
        ["search", "TEACHER:short-positions", "--set", "data.max_seq_length=100"],
        "data.max_seq_length is 100 but teacher 'short-positions' accepts at most 64 tokens",
    ),
    "teacher without a tokenizer": (["search", "TEACHER:no-tokenizer"], "teacher 'no-tokenizer': "),
    "teacher with truncated weights": (["search", "TEACHER:truncated"], "teacher 'truncated': cannot load "),
    "teacher whose label names are not the task's": (
        ["search", "TEACHER:happy-sad"],
        "teacher 'happy-sad': its labels ['happy', 'sad'] are not the task's ['negative', 'positive']",
    ),
    "teacher without a trained classification head": (
        ["search", "--set", "teachers=[{name: bare, model: minilm}]"],
        "teacher 'bare' has no trained classification head (classifier.bias, classifier.weight would be newly",
    ),
    "a label that is a list": (
        ["search", "FILES:ok.jsonl:list-label.jsonl"],
        "list-label.jsonl: class labels are integers or strings",
    ),
    "labels of another type in the validation file": (
        ["search", "FILES:ok.jsonl:word-labels.jsonl"],
        "word-labels.jsonl str",
    ),
    "a label names file that is not there": (
        ["search", "FILES:ok.csv", "--set", "data.label_names=/nonexistent/labels.txt"],
        "data.label_names: cannot read /nonexistent/labels.txt",
    ),
    "label names that miss a label": (
        ["search", "FILES:ok.csv", "--set", "data.label_names=[bad]"],
        "data.label_names: give at least 2 distinct names, got 1",
    ),
    "a study name with a trailing space": (
        ["search", "--study-name", "existing "],
        "search.study_name: 'existing ' has leading or trailing spaces",
    ),
    "teacher whose tokenizer is not its weights'": (
        ["search", "TEACHER:foreign-tokenizer"],
        "does not belong to these weights",
    ),
    "output_dir is a file": (["search", "--output-dir", "{root}/ok.csv"], "output_dir: "),
    "output_dir cannot be created": (["search", "--output-dir", "{root}/ok.csv/run"], "output_dir: cannot write to"),
    "report --out is a file": (["report", "--out", "{root}/ok.csv"], "--out: "),
    "export into a directory holding another model": (
        ["export", "--trial", "0", "--out", "{root}/three-labels"],
        "three-labels is not empty (config.json, model.safetensors, ",  # then the tokenizer's files
    ),
    "export --out is a file": (["export", "--trial", "0", "--out", "{root}/ok.csv"], "--out: "),
    "report without a study database": (
        ["report", "--storage", "sqlite:///{root}/nowhere/study.db"],
        "no study storage at sqlite:///",
    ),
    "studies without a study database": (
        ["studies", "--storage", "sqlite:///{root}/nowhere.db"],
        "no study storage at sqlite:///",
    ),
    "dashboard on a port in use": (["dashboard", "--port", "{busy_port}"], "cannot listen on 127.0.0.1:"),
    "dashboard on port 99999": (["dashboard", "--port", "99999"], "--port 99999: a port is a number from 1 to 65535"),
    "resources a local Ray can never provide": (
        ["search", "--set", "search.resources_per_trial={cpu: 100}"],
        "search.resources_per_trial.cpu is 100 but this machine has",
    ),
    "inheritance from a teacher without the students' vocabulary": (
        ["search", "TEACHER:own-tokenizer", "--set", "student.inherit.teacher=own-tokenizer"],
        "student.inherit.teacher: teacher 'own-tokenizer' does not use the students' vocabulary",
    ),
    "augmentation without a teacher of the students' vocabulary": (
        ["search", "TEACHER:own-tokenizer", "--set", "data.transfer.augment_copies=2"],
        "data.transfer.augment_copies: no teacher uses the students' vocabulary",
    ),
    "augmented copies that would not fit in memory": (
        ["search", "--set", "data.transfer.augment_copies=100000000"],
        "data.transfer: the transfer set would hold 4,000,000,020 texts (20 found + 100000000 augmented copies of 40",
    ),
    "calibration size 0": (
        ["search", "--set", "student.inherit.calibration_size=0"],
        "student.inherit.calibration_size: Input should be greater than or equal to 1",
    ),
    "tokenizer mismatch with intermediate KD on": (
        [
            "search",
            "TEACHER:own-tokenizer",
            "--set",
            "kd.intermediate.enabled=true",
            "--set",
            "kd.intermediate.teachers=[own-tokenizer]",
        ],
        "kd.intermediate.teachers: teacher 'own-tokenizer' does not share the student's tokenizer ('minilm')",
    ),
}


@pytest.fixture
def existing_study(tmp_path: Path) -> str:
    """A SQLite storage holding a kdnas study with a COMPLETE and a FAIL trial, and one with other directions."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="existing", directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "latency_ms"])
    study.set_user_attr("task", {"name": "demo"})
    layers = {"num_layers": IntDistribution(1, 4)}
    study.add_trial(
        create_trial(
            params={"num_layers": 2},
            distributions=layers,
            values=[0.8, 1.5],
            user_attrs={"arch_summary": "L2-H32-A2-F32"},
        )
    )
    study.add_trial(
        create_trial(
            params={"num_layers": 1},
            distributions=layers,
            state=TrialState.FAIL,
            user_attrs={"failure_reason": "NonFiniteLossError: non-finite loss nan"},
        )
    )
    optuna.create_study(storage=url, study_name="other-directions", directions=["minimize", "minimize"])
    fingerprinted = optuna.create_study(storage=url, study_name="fingerprinted", directions=["maximize", "minimize"])
    fingerprinted.set_metric_names(["accuracy", "latency_ms"])
    fingerprinted.set_user_attr(FINGERPRINT_ATTR, _baseline_fingerprint())
    heads = {"num_heads": CategoricalDistribution([2, 4, 6, 8])}
    fingerprinted.add_trial(create_trial(params={"num_heads": 4}, distributions=heads, values=[0.8, 1.5]))
    return url


def _baseline_fingerprint() -> dict:
    """The fingerprint the cases' common arguments give (the demo task at TINY_DATA's sizes)."""
    config = load_config(None, [a for a in TINY_DATA if a != "--set"])
    return {**config_fingerprint(config), **task_fingerprint(load_task(config.data))}


def _snapshot(url: str) -> list:
    storage = optuna.storages.RDBStorage(url)
    snapshot = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = [(t.number, t.state, t.values, t.params, t.user_attrs, t.system_attrs) for t in study.trials]
        snapshot.append((summary.study_name, study.directions, study.user_attrs, trials))
    return snapshot


@pytest.fixture(scope="module")
def busy_port():
    """A port something already listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_the_culprit_exit_2_study_untouched(
    case, files, existing_study, busy_port, tmp_path, capsys
):
    args, expected = CASES[case]
    root = files["root"]
    expanded = []
    for arg in (a.replace("{root}", str(root)).replace("{busy_port}", str(busy_port)) for a in args[1:]):
        if arg.startswith("TEACHER:"):
            expanded += _teacher(str(root / arg.removeprefix("TEACHER:")))
        elif arg.startswith("FILES:"):
            expanded += _files(arg.removeprefix("FILES:"), root)
        else:
            expanded.append(arg)
    common = [*TINY_DATA] if "--output-dir" in expanded else ["--output-dir", str(tmp_path / "run"), *TINY_DATA]
    if "--storage" not in expanded:
        common += ["--storage", existing_study]
    if "--study-name" not in expanded:
        common += ["--study-name", "existing"]
    before, files_before = _snapshot(existing_study), sorted(root.rglob("*"))
    capsys.readouterr()

    code = main([args[0], *expanded, *common])

    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kdnas: error: ")]
    assert code == 2
    assert len(errors) == 1 and expected in errors[0], errors
    assert _snapshot(existing_study) == before
    assert sorted(root.rglob("*")) == files_before  # nothing created beside the inputs (no database, no report)


def _cli(case_args: list[str], root: Path, url: str, tmp_path: Path) -> int:
    return main(
        [
            *case_args,
            *_teacher(str(root / "own-tokenizer")),
            "--output-dir",
            str(tmp_path / "run"),
            *TINY_DATA,
            "--storage",
            url,
        ]
    )


def test_a_study_from_before_fingerprints_resumes_records_one_and_then_refuses_other_data(
    files, existing_study, tmp_path, caplog, capsys
):
    caplog.set_level("INFO", logger="kdnas")
    code = _cli(["search", "--study-name", "existing", "--n-trials", "1"], files["root"], existing_study, tmp_path)
    study = optuna.load_study(study_name="existing", storage=existing_study)
    assert code == 0 and "the study already holds 2 finished trial(s), search.n_trials is 1" in caplog.text
    assert study.user_attrs["task"] == {"name": "demo"}  # never overwritten
    assert study.user_attrs["fingerprint"]["latency.batch_size"] == 1
    before = _snapshot(existing_study)
    capsys.readouterr()
    code = _cli(
        ["search", "--study-name", "existing", "--set", "latency.batch_size=8"], files["root"], existing_study, tmp_path
    )
    assert code == 2 and "latency.batch_size 1 → 8" in capsys.readouterr().err
    assert _snapshot(existing_study) == before


def test_a_fitted_teacher_changed_on_disk_under_a_study_is_refused(files, existing_study, tmp_path, capsys):
    teacher = ["--set", "teachers=[{name: t, scratch: {family: bert, layers: 1, hidden: 16, heads: 2}, fit: {}}]"]
    flags = ["--output-dir", str(tmp_path / "run"), *TINY_DATA, "--storage", existing_study, *teacher]
    assert main(["search", "--study-name", "existing", "--n-trials", "1", *flags]) == 0  # fits t, trains nothing
    study = optuna.load_study(study_name="existing", storage=existing_study)
    assert set(study.user_attrs["fingerprint"]["teachers.weights"]) == {"t"}
    before = _snapshot(existing_study)
    fitted = tmp_path / "run" / "teachers" / "t"
    for file in (files["root"] / "own-tokenizer").iterdir():  # e.g. a student exported into the teacher's directory
        (fitted / file.name).write_bytes(file.read_bytes())
    capsys.readouterr()
    assert main(["search", "--study-name", "existing", "--n-trials", "1", *flags]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kdnas: error: ")]
    assert len(errors) == 1 and "teachers.weights" in errors[0], errors
    assert _snapshot(existing_study) == before


def test_data_edited_in_place_with_its_time_kept_is_refused_on_a_rerun(files, existing_study, tmp_path, capsys):
    import os

    data = tmp_path / "train.csv"
    data.write_text("sentence,label\nit was good,1\nit was bad,0\nit was fine,1\n")
    flags = ["search", "--study-name", "existing", "--n-trials", "1", "--set", "data.source=files"]
    flags += ["--set", f"data.train_file={data}"]
    flags += ["--set", f"data.validation_file={files['root'] / 'ok.csv'}"]
    assert _cli(flags, files["root"], existing_study, tmp_path) == 0  # records the data's fingerprint
    before = _snapshot(existing_study)
    stat = data.stat()
    data.write_text(data.read_text().replace("fine,1", "fine,0"))  # same size and time, as cp -p leaves it
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    capsys.readouterr()
    assert _cli(flags, files["root"], existing_study, tmp_path) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kdnas: error: ")]
    assert len(errors) == 1 and "data.train " in errors[0], errors
    assert _snapshot(existing_study) == before


def test_export_of_a_student_changed_since_its_trial_is_one_line_and_writes_nothing(tmp_path, capsys):
    from conftest import save_tiny_student
    from kdnas.outputs import student_digest

    url = f"sqlite:///{tmp_path / 'study.db'}"
    student = save_tiny_student(tmp_path / "students" / "s" / "trial-0000")
    study = optuna.create_study(storage=url, study_name="s", directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "latency_ms"])
    attrs = {"arch_summary": "L1-H16", "params": 1000, "student_path": str(student)}
    study.add_trial(
        create_trial(
            values=[0.8, 1.0],
            params={"num_layers": 1},
            distributions={"num_layers": IntDistribution(1, 4)},
            user_attrs={**attrs, "student_sha256": student_digest(student)},
        )
    )
    weights = student / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])  # truncated, e.g. a full disk
    before = _snapshot(url)
    capsys.readouterr()
    out = tmp_path / "export"
    code = main(["export", "--storage", url, "--study-name", "s", "--trial", "0", "--out", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kdnas: error: ")]
    assert code == 2 and len(errors) == 1 and "is not the one it trained (SHA-256 " in errors[0], errors
    assert not (out.exists() and any(out.iterdir())) and _snapshot(url) == before  # --out is checked writable first


def test_ctrl_c_while_teachers_run_exits_130_with_the_resume_command_and_creates_no_study(
    files, existing_study, tmp_path, monkeypatch, capsys
):
    from kdnas.tune import prepare

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "teacher_reference", interrupt)
    code = _cli(["search", "--study-name", "fresh"], files["root"], existing_study, tmp_path)
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and errors[-1].startswith(
        "kdnas: error: interrupted; to resume, run the same command again: "
        "kdnas search --study-name fresh --set 'teachers=[{name: "
    )
    assert "fresh" not in [s.study_name for s in optuna.get_all_study_summaries(existing_study)]


def _running_trial(url: str) -> int:
    """Add a RUNNING trial that this process drives to the study ``existing``, its student in training; return its
    number."""
    from kdnas.study.orphans import this_driver
    from kdnas.study.records import DRIVER_ATTR, RECIPE_ATTR

    study = optuna.load_study(study_name="existing", storage=url)
    trial = study.ask({"num_layers": IntDistribution(1, 4)})
    trial.set_user_attr(RECIPE_ATTR, "recipe")
    study._storage.set_trial_system_attr(trial._trial_id, DRIVER_ATTR, this_driver())
    return trial.number


def test_ctrl_c_mid_search_exits_130_and_leaves_no_running_trial(files, existing_study, tmp_path, monkeypatch, capsys):
    from kdnas.tune import driver as runner

    def interrupted_search(config, **kwargs):
        _running_trial(existing_study)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_search", interrupted_search)
    code = main(["search", "--storage", existing_study, "--study-name", "existing", "--output-dir", str(tmp_path)])
    trials = optuna.load_study(study_name="existing", storage=existing_study).trials
    assert code == 130 and "to resume, run the same command again: kdnas search" in capsys.readouterr().err
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]


def test_a_search_whose_trials_all_failed_exits_1_counting_the_reasons(existing_study, tmp_path, monkeypatch, capsys):
    from kdnas.study.records import FAILURE_ATTR, FAILURE_TRACEBACK_ATTR
    from kdnas.tune import driver as runner

    numbers: list[int] = []

    def failing_search(config, **kwargs):
        study = optuna.load_study(study_name="existing", storage=existing_study)
        for _ in range(2):
            number = _running_trial(existing_study)
            numbers.append(number)
            trial_id = study.trials[number]._trial_id
            study._storage.set_trial_user_attr(trial_id, FAILURE_ATTR, "OSError: disk full")
            trace = f'Traceback (most recent call last):\n  File "trial.py", line {number}\nOSError: disk full\n'
            study._storage.set_trial_user_attr(trial_id, FAILURE_TRACEBACK_ATTR, trace)
            study.tell(number, state=TrialState.FAIL)
        return study

    monkeypatch.setattr(runner, "run_search", failing_search)
    code = main(["search", "--storage", existing_study, "--study-name", "existing", "--output-dir", str(tmp_path)])
    errors = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and errors == [
        "kdnas: error: no student completed (2 trial(s): 2× OSError: disk full); see: kdnas trials --state fail"
    ]
    assert main(["trials", "--storage", existing_study, "--study-name", "existing", "--state", "fail"]) == 0
    listed = capsys.readouterr().out  # the table, then where each failed trial's error was raised
    assert "OSError: disk full" in listed.split("\n\n")[0]
    for number in numbers:
        assert (
            f'trial {number}: Traceback (most recent call last):\n  File "trial.py", line {number}\nOSError' in listed
        )


def test_waiting_for_cluster_resources_says_what_is_missing_and_gives_up(monkeypatch):
    from types import SimpleNamespace

    from kdnas import resources
    from kdnas.resources import ResourcesUnavailable, ResourceWait

    now = [0.0]
    monkeypatch.setattr(resources.time, "monotonic", lambda: now[0])
    wait = ResourceWait(10.0, {"cpu": 100.0, "gpu": 0.0})
    pending = [SimpleNamespace(status="PENDING")]
    wait.on_step_begin(0, pending)
    now[0] = 9.0
    wait.on_step_begin(1, [SimpleNamespace(status="RUNNING"), *pending])  # a running trial resets the clock
    now[0] = 18.0
    wait.on_step_begin(2, pending)  # the clock starts again
    now[0] = 27.0
    wait.on_step_begin(3, pending)  # 9 s of the 10: still waiting
    now[0] = 28.5
    with pytest.raises(ResourcesUnavailable, match=r"search.resource_wait_s \(10 s\): a trial needs 100 CPU"):
        wait.on_step_begin(4, pending)


def test_a_latency_measured_under_contention_is_measured_again_and_never_cached(tmp_path, monkeypatch):
    from kdnas.config import LatencyConfig
    from kdnas.latency import cache as latency_cache
    from kdnas.latency.timing import LatencyResult

    def result(median: float, p90: float) -> LatencyResult:
        return LatencyResult(median, p90, 0.1, "cuda", "gpu", 1, 1, 8, 3, 1)

    measured = [result(3.4, 9.0), result(0.7, 2.5), result(0.8, 3.0)]  # every run's p90 far above its median
    monkeypatch.setattr(latency_cache, "measure_configured", lambda *a, **k: measured.pop(0))
    settings = LatencyConfig()
    kwargs = {"model_key": {"arch": "L2"}, "vocab_size": 10, "settings": settings, "seq_len": 8, "cache_dir": tmp_path}
    assert latency_cache.measure_cached(None, **kwargs).median_ms == 0.7 and not measured  # the fastest, 3 tries
    assert list(tmp_path.iterdir()) == []
    measured.append(result(0.7, 0.75))
    assert latency_cache.measure_cached(None, **kwargs).median_ms == 0.7
    assert latency_cache.measure_cached(None, **kwargs).cached


def test_a_search_on_a_study_file_it_cannot_write_is_refused_up_front(existing_study, monkeypatch, capsys):
    from kdnas.study import storage as study_mod

    file = existing_study.removeprefix("sqlite:///")
    monkeypatch.setattr(study_mod.os, "access", lambda path, mode: str(path) != file)  # as for a non-root user
    before = _snapshot(existing_study)
    code = main(["search", "--storage", existing_study, "--study-name", "existing", *TINY_DATA])
    assert code == 2 and f"the study storage {file} is not writable" in capsys.readouterr().err
    assert _snapshot(existing_study) == before


@pytest.mark.slow
def test_sigterm_while_students_train_exits_143_with_the_resume_line_and_leaves_no_running_trial(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["search", "--output-dir", str(tmp_path / "run"), "--storage", url, "--study-name", "term", *TINY_DATA]
    args += ["--set", "teachers=[{name: t, scratch: {family: bert, layers: 1, hidden: 16, heads: 2}, fit: {}}]"]
    args += ["--set", "training.epochs=200", "--n-trials", "2"]  # students that are still training when it arrives
    driver = subprocess.Popen(
        [sys.executable, "-c", "import sys; from kdnas.cli import main; sys.exit(main(sys.argv[1:]))", *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        try:
            trials = optuna.load_study(study_name="term", storage=url).trials
        except KeyError:  # not created yet
            trials = []
        if any(t.state == TrialState.RUNNING for t in trials):
            break
        time.sleep(0.5)
    else:
        driver.kill()
        pytest.fail(f"no trial started training: {driver.stderr.read() if driver.stderr else ''}")
    time.sleep(2)  # inside Tune's loop, with Ray's handlers installed
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 143, err[-2000:]
    assert "kdnas: error: interrupted; to resume, run the same command again: kdnas search" in err
    states = [t.state for t in optuna.load_study(study_name="term", storage=url).trials]
    assert TrialState.RUNNING not in states, states
