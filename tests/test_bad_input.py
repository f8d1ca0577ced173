"""Bad input through the CLI: one clear line naming the culprit, exit code 2, and the study left untouched."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from kdnas.cli import main
from kdnas.objectives.teachers import _train_tokenizer, load_tokenizer
from kdnas.config import ScratchConfig
from kdnas.space import StudentArch

TINY_DATA = ["--set", "data.demo_train_size=40", "--set", "data.demo_eval_size=20", "--set", "data.transfer.demo_size=20"]


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
    (root / "no-label.csv").write_text("sentence,target\nit was good,1\nit was bad,0\n")
    (root / "empty.csv").write_text("sentence,label\n")
    (root / "ok.csv").write_text("sentence,label\nit was good,1\nit was bad,0\n")
    return {"root": root}


def _teacher(path: str) -> list[str]:
    name = Path(path).name
    return ["--set", f"teachers=[{{name: {name}, model: {path}}}]"]


def _files(train: str, root: Path) -> list[str]:
    return ["--set", "data.source=files", "--set", f"data.train_file={root / train}",
            "--set", f"data.validation_file={root / 'ok.csv'}"]


CASES = {
    "unknown config key": (["search", "--set", "search.n_trails=3"], "search.n_trails: unknown key"),
    "wrong type": (["search", "--set", "training.epochs=many"], "training.epochs: Input should be a valid integer"),
    "wrong type of section": (["search", "--set", "latency=fast"], "latency: Input should be a valid dictionary"),
    "empty choice list": (["search", "--set", "student.space.heads=[]"],
                          "student.space.heads: List should have at least 1 item"),
    "inverted range": (["search", "--set", "student.space.depth={min: 3, max: 1}"],
                       "student.space.depth: min (3) is greater than max (1)"),
    "heads not dividing the width": (["search", "--set",
                                      "teachers=[{name: t, scratch: {hidden: 30, heads: 4}, fit: {}}]"],
                                     "scratch.hidden (30) must be divisible by scratch.heads (4)"),
    "depth 0": (["search", "--set", "student.space.depth={min: 0, max: 2}"],
                "student.space.depth.min: Input should be greater than or equal to 1"),
    "zero trials": (["search", "--n-trials", "0"], "search.n_trials: Input should be greater than or equal to 1"),
    "negative time budget": (["search", "--time-budget-s", "-5"], "search.time_budget_s: Input should be greater than 0"),
    "missing config file": (["search", "--config", "/nonexistent/kdnas.yaml"],
                            "cannot read config /nonexistent/kdnas.yaml"),
    "missing teacher path": (["search", *_teacher("/nonexistent/teacher")],
                             "teacher 'teacher': cannot load /nonexistent/teacher"),
    "teacher with another label count": (["search", "TEACHER:three-labels"],
                                         "teacher 'three-labels' predicts 3 labels but the task has 2"),
    "dataset without the label column": (["search", "FILES:no-label.csv"],
                                         "data.label_column 'label' is not a column of"),
    "empty dataset": (["search", "FILES:empty.csv"], "data.train_file: "),
    "unknown metric": (["search", "--set", "data.metric=bleu"], "data.metric: Input should be 'accuracy', 'f1'"),
    "bad storage URL": (["search", "--storage", "notadb://nowhere"], "cannot open storage notadb://nowhere"),
    "study with other objective directions": (["search", "--study-name", "other-directions"],
                                              "study 'other-directions' already exists with objectives"),
    "latency budget below every student (search)": (
        ["search", "TEACHER:own-tokenizer", "--set", "latency.budget_ms=1e-6"],
        "no student of student.space fits the budget: even the smallest, L1-H64-A2-F64, has latency ",
    ),
    "latency budget below every student (export)": (["export", "--latency-budget-ms", "1e-9"],
                                                    "no completed student within latency ≤ 1e-09 ms"),
    "export of a FAIL trial": (["export", "--trial", "1"], "trial 1 is FAIL, not COMPLETE"),
    "unknown study": (["report", "--study-name", "nope"], "no study 'nope' in sqlite:///"),
    "missing transfer file": (["search", "--set", "data.transfer.files=[/nonexistent/transfer.csv]"],
                              "data.transfer.files: no such file: /nonexistent/transfer.csv"),
    "inheritance from a teacher without the students' vocabulary": (
        ["search", "TEACHER:own-tokenizer", "--set", "student.inherit.teacher=own-tokenizer"],
        "student.inherit.teacher: teacher 'own-tokenizer' does not use the students' vocabulary",
    ),
    "augmentation without a teacher of the students' vocabulary": (
        ["search", "TEACHER:own-tokenizer", "--set", "data.transfer.augment_copies=2"],
        "data.transfer.augment_copies: no teacher uses the students' vocabulary",
    ),
    "calibration size 0": (["search", "--set", "student.inherit.calibration_size=0"],
                           "student.inherit.calibration_size: Input should be greater than or equal to 1"),
    "tokenizer mismatch with intermediate KD on": (
        ["search", "TEACHER:own-tokenizer", "--set", "kd.intermediate.enabled=true",
         "--set", "kd.intermediate.teachers=[own-tokenizer]"],
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
    study.add_trial(create_trial(params={"num_layers": 2}, distributions=layers, values=[0.8, 1.5],
                                 user_attrs={"arch_summary": "L2-H32-A2-F32"}))
    study.add_trial(create_trial(params={"num_layers": 1}, distributions=layers, state=TrialState.FAIL,
                                 user_attrs={"failure_reason": "NonFiniteLossError: non-finite loss nan"}))
    optuna.create_study(storage=url, study_name="other-directions", directions=["minimize", "minimize"])
    return url


def _snapshot(url: str) -> list:
    storage = optuna.storages.RDBStorage(url)
    snapshot = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = [(t.number, t.state, t.values, t.params, t.user_attrs, t.system_attrs) for t in study.trials]
        snapshot.append((summary.study_name, study.directions, study.user_attrs, trials))
    return snapshot


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_the_culprit_exit_2_study_untouched(case, files, existing_study, tmp_path,
                                                                         capsys):
    args, expected = CASES[case]
    root = files["root"]
    expanded = []
    for arg in args[1:]:
        if arg.startswith("TEACHER:"):
            expanded += _teacher(str(root / arg.removeprefix("TEACHER:")))
        elif arg.startswith("FILES:"):
            expanded += _files(arg.removeprefix("FILES:"), root)
        else:
            expanded.append(arg)
    common = ["--output-dir", str(tmp_path / "run"), *TINY_DATA]
    if "--storage" not in expanded:
        common += ["--storage", existing_study]
    if "--study-name" not in expanded:
        common += ["--study-name", "existing"]
    before = _snapshot(existing_study)
    capsys.readouterr()

    code = main([args[0], *expanded, *common])

    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kdnas: error: ")]
    assert code == 2
    assert len(errors) == 1 and expected in errors[0], errors
    assert _snapshot(existing_study) == before
