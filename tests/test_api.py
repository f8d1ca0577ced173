"""The public API: ``import kdnas`` names its functions and stays light; the README's example runs as written; one
student trains outside a search; the trial record's Tune form; the benchmarks use nothing else."""

from __future__ import annotations

import ast
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

import kdnas
from conftest import SCRATCH_TEACHER, tiny_raw
from kdnas.config import dump_config

HEAVY = ("torch", "ray", "transformers", "datasets")

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The fenced python block of the README's "Python API" section."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_api_is_what_all_lists():
    assert sorted(kdnas.__all__) == sorted(kdnas._HOMES)
    assert all(callable(getattr(kdnas, name)) for name in kdnas.__all__)
    assert set(kdnas.__all__) <= set(dir(kdnas))
    with pytest.raises(AttributeError, match="no attribute 'no_such_function'"):
        kdnas.no_such_function  # noqa: B018


def test_load_config_takes_a_dict_and_overrides_without_changing_the_dict():
    raw = {"search": {"n_trials": 3}}
    config = kdnas.load_config(raw, ["search.n_trials=5", "kd.temperature=4"])
    assert config.search.n_trials == 5 and config.kd.temperature == 4 and raw == {"search": {"n_trials": 3}}


@pytest.mark.slow
def test_the_readme_example_runs_on_the_tiny_search(searched, monkeypatch, tmp_path, capsys):
    """The example's config file is swapped for the session's tiny search (already run: resuming it runs nothing)."""
    config, study = searched
    real = kdnas.load_config
    monkeypatch.setattr(kdnas, "load_config", lambda source=None, overrides=(): real(dump_config(config), overrides))
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), str(README), "exec"), {"__name__": "readme_example"})
    front = kdnas.pareto_front(study)
    printed = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[1] for line in printed if line.startswith("trial ")] == [str(t.number) for t in front]
    exports = tmp_path / "runs" / "kdnas-demo" / "export"
    best = kdnas.best_under_budget(study)
    for name in ("knee", f"trial-{best.number:04d}"):
        assert (exports / name / "model.safetensors").is_file() and (exports / name / "kdnas_trial.json").is_file()
    assert (tmp_path / "runs" / "kdnas-demo" / "report" / "report.html").is_file()


# --- one student outside a search ----------------------------------------------------------------------------------

ARCH = {"num_layers": 1, "num_heads": 2, "head_dim": 8, "ffn_ratio": 1}


def test_train_student_trains_and_measures_a_student_as_a_trial_does(tmp_path):
    raw = tiny_raw(
        tmp_path / "run",
        teachers=[SCRATCH_TEACHER],
        data={"demo_train_size": 64, "demo_eval_size": 32},
        training={"epochs": 1},
        latency={"warmup": 0, "runs": 3, "min_run_time_s": 0},
    )
    config = kdnas.load_config(raw)
    students = kdnas.prepare_students(config)
    report = kdnas.train_student(students, ARCH, seed=3, trial_number=5)
    assert isinstance(report, kdnas.TrialReport)
    assert report.completed and report.error is None and report.infeasible is None and report.epoch == 1
    assert 0.0 <= report.value <= 1.0 and report.latency_ms > 0 and report.constraints == {}
    attrs = report.attrs
    assert attrs["arch_summary"] == "L1-H16-A2-F16" and attrs["epochs_trained"] == 1 and attrs["teachers"] == ["gpt2"]
    assert attrs["train_rows"] == {"labelled": 64, "transfer": 32}  # the demo's transfer sentences
    assert attrs["init"]["init"] == "random" and attrs["train_device"] == "cpu"
    assert attrs["train_finished_at"] >= attrs["train_started_at"]
    saved = Path(attrs["student_path"])
    assert saved == tmp_path / "run" / "students" / "tiny" / "trial-0005" and (saved / "model.safetensors").is_file()
    assert students.config.training.seed == 0, "the seed is the student's, not the prepared students'"
    # what the searcher reads back from Tune is the same record
    assert kdnas.TrialReport.from_result(report.to_result("accuracy"), "accuracy") == report

    # from a config, prepared on the way (teachers and logits cached by now); over a budget: measured, not trained
    over = kdnas.train_student(kdnas.load_config({**raw, "student": {**raw["student"], "max_params": 1000}}), ARCH)
    assert over.infeasible is not None and over.infeasible.startswith("infeasible, not trained: ")
    assert not over.completed and math.isnan(over.value) and over.latency_ms > 0 and over.epoch == 0
    assert over.constraints["params"] > 0 and over.attrs["epochs_trained"] == 0 and "student_path" not in over.attrs


# --- the trial record ----------------------------------------------------------------------------------------------


def test_a_trial_report_reaches_tune_as_flat_scalars_with_its_attrs_and_constraints_as_json():
    from ray.tune.utils import flatten_dict

    attrs = {"arch_summary": "L1", "latency": {"median_ms": 2.0}}
    reports = {
        "epoch": kdnas.TrialReport(0.7, 2.0, 1, attrs=attrs),
        "completed": kdnas.TrialReport(0.8, 2.0, 2, completed=True, attrs=attrs),
        "infeasible": kdnas.TrialReport(
            math.nan,
            9.0,
            0,
            infeasible="infeasible, not trained: latency",
            attrs=attrs,
            constraints={"latency_ms": 8.0},
        ),
        "error": kdnas.TrialReport(error="FloatingPointError: nan"),
    }
    results = {kind: report.to_result("f1") for kind, report in reports.items()}
    assert {kind: set(result) for kind, result in results.items()} == {  # the keys a worker always reported
        "epoch": {"f1", "latency_ms", "epoch", "kdnas_attrs"},
        "completed": {"f1", "latency_ms", "epoch", "kdnas_attrs", "kdnas_completed", "kdnas_constraints"},
        "infeasible": {"f1", "latency_ms", "epoch", "kdnas_attrs", "kdnas_infeasible", "kdnas_constraints"},
        "error": {"f1", "latency_ms", "kdnas_error"},
    }
    assert (
        json.loads(results["completed"]["kdnas_attrs"]) == attrs and results["completed"]["kdnas_constraints"] == "{}"
    )
    for kind, result in results.items():
        assert flatten_dict(dict(result)) == result, f"Tune's flattening changes the {kind} result"
        back = kdnas.TrialReport.from_result({**result, "time_total_s": 1.0, "config": {"num_layers": 1}}, "f1")
        assert repr(back) == repr(reports[kind])  # repr: NaN != NaN
    assert repr(kdnas.TrialReport.from_result(None, "f1")) == repr(kdnas.TrialReport())
    assert math.isnan(kdnas.TrialReport.from_result({"f1": "n/a", "latency_ms": None}, "f1").value)


def test_tune_results_are_the_last_result_of_each_trial_by_trial_number(tmp_path):
    config = kdnas.load_config({"output_dir": str(tmp_path), "search": {"study_name": "s"}})
    experiment = tmp_path / "ray_results" / "s"
    first = {"accuracy": 0.5, "latency_ms": 1.0, "epoch": 1, "config": {"kdnas_trial_number": 3}}
    last = {**first, "epoch": 2, "kdnas_completed": True, "time_total_s": 4.5}
    for name, lines in (("train_a", [first, last]), ("train_b", [{"epoch": 1, "config": {}}])):
        (experiment / name).mkdir(parents=True)
        (experiment / name / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert kdnas.tune_results(config) == {3: last}
    assert kdnas.TrialReport.from_result(last, "accuracy").completed


def test_the_study_readers_of_the_api_stay_light():
    names = ["TrialReport", "tune_results", "feasible_completed", "hypervolume", "is_repeat", "training_seconds"]
    names += ["StudentRecord", "StudyRecord"]
    code = (
        f"import sys, kdnas\n[getattr(kdnas, n) for n in {names!r}]\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- the benchmarks use the public API only ------------------------------------------------------------------------

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def private_uses(source: str) -> list[str]:
    """What ``source`` takes from kdnas beyond its public API: imports of a ``kdnas.`` module, names imported from
    ``kdnas`` and ``kdnas.<name>`` attributes that are not in ``kdnas.__all__``."""
    public = {*kdnas.__all__, "__version__"}
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if a.name.startswith("kdnas.")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdnas."):
            found.append(f"{node.lineno}: from {node.module} import …")
        elif isinstance(node, ast.ImportFrom) and node.module == "kdnas":
            found += [f"{node.lineno}: from kdnas import {a.name}" for a in node.names if a.name not in public]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "kdnas":
            found += [f"{node.lineno}: kdnas.{node.attr}"] if node.attr not in public else []
    return found


def test_the_benchmarks_use_only_the_public_api():
    scripts = sorted(BENCHMARKS.glob("*.py"))
    assert len(scripts) >= 5
    problems = [f"benchmarks/{path.name}:{use}" for path in scripts for use in private_uses(path.read_text())]
    assert not problems, "benchmarks reach past kdnas's public API:\n" + "\n".join(problems)


def test_the_benchmark_rule_catches_what_it_should():
    source = (
        "import kdnas\nimport kdnas.study.records\nfrom kdnas.tune.trial import run_trial\nfrom kdnas import records\n"
        "from kdnas import train_student\nkdnas.search.trial\nkdnas.train_student\n"
    )
    assert [use.split(": ", 1)[1] for use in private_uses(source)] == [
        "import kdnas.study.records",
        "from kdnas.tune.trial import …",
        "from kdnas import records",
        "kdnas.search",
    ]


def test_every_public_name_is_in_the_readme():
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    assert [name for name in kdnas.__all__ if f"`{name}" not in section] == []
