"""Where an export may go: an empty directory, an earlier export of the same trial, or anything with --overwrite,
whose files are then replaced; never the student's own directory."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import create_trial

from conftest import save_tiny_student
from kdnas.config import ConfigError
from kdnas.readers.export import RECORD_FILE, export_trial


@pytest.fixture
def study(tmp_path):
    study = optuna.create_study(study_name="s", directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "latency_ms"])
    student = save_tiny_student(tmp_path / "student")
    for number in range(2):
        study.add_trial(
            create_trial(
                values=[0.8 + number / 10, 1.0 + number],
                params={"num_layers": number + 1},
                distributions={"num_layers": IntDistribution(1, 4)},
                user_attrs={"arch_summary": f"L{number + 1}", "params": 1000, "student_path": str(student)},
            )
        )
    return study


def test_an_export_is_refused_over_another_model_and_replaces_it_with_overwrite(study, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "pytorch_model.bin").write_text("another model")
    with pytest.raises(ConfigError, match=r"is not empty \(pytorch_model.bin\): pass --overwrite"):
        export_trial(study, study.trials[0], out)
    assert (out / "pytorch_model.bin").read_text() == "another model"
    export_trial(study, study.trials[0], out, overwrite=True)
    assert not (out / "pytorch_model.bin").exists()  # nothing of the model it replaced stays
    assert json.loads((out / RECORD_FILE).read_text())["trial"] == 0


def test_the_same_trial_exports_again_in_place_but_another_trial_is_refused(study, tmp_path):
    out = tmp_path / "out"
    export_trial(study, study.trials[0], out)
    (out / "vocab.txt").unlink()
    export_trial(study, study.trials[0], out)  # re-export of the same trial: refreshed
    assert (out / "vocab.txt").is_file()
    with pytest.raises(ConfigError, match="pass --overwrite"):
        export_trial(study, study.trials[1], out)


def test_an_export_never_goes_into_the_students_own_directory(study, tmp_path):
    with pytest.raises(ConfigError, match="is where trial 0's student is saved"):
        export_trial(study, study.trials[0], tmp_path / "student", overwrite=True)
    assert (tmp_path / "student" / "model.safetensors").is_file()


def test_a_student_changed_since_its_trial_is_refused_and_nothing_is_exported(study, tmp_path):
    from kdnas.outputs import student_digest

    student = tmp_path / "student"
    trained = optuna.create_study(directions=["maximize", "minimize"])
    trained.add_trial(
        create_trial(
            values=[0.8, 1.0],
            params={"num_layers": 1},
            distributions={"num_layers": IntDistribution(1, 4)},
            user_attrs={"arch_summary": "L1", "student_path": str(student), "student_sha256": student_digest(student)},
        )
    )
    export_trial(trained, trained.trials[0], tmp_path / "first")  # unchanged: exported and loaded
    (student / "model.safetensors").write_bytes((student / "model.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ConfigError, match=r"^trial 0: the student saved in .* is not the one it trained \(SHA-256 "):
        export_trial(trained, trained.trials[0], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_export_that_does_not_load_is_refused_and_removed(study, tmp_path):
    weights = tmp_path / "student" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a trial from before kdnas recorded the student's hash
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"^the exported student in .*out does not load: "):
        export_trial(study, study.trials[0], out)
    assert list(out.iterdir()) == []


def test_study_names_map_to_distinct_directories_inside_output_dir():
    from kdnas.config import SearchConfig

    plain = SearchConfig(study_name="p3a-2026.12_06")
    assert plain.study_dir == "p3a-2026.12_06"  # a plain name is its own directory, as before
    dirs = {name: SearchConfig(study_name=name).study_dir for name in ("s", "s/", "../../x", "my study", "..")}
    assert len(set(dirs.values())) == len(dirs)
    assert all("/" not in d and d not in (".", "..") and not d.startswith(".") for d in dirs.values())
    assert dirs["my study"].startswith("my-study-")
    with pytest.raises(ValueError, match="leading or trailing spaces"):
        SearchConfig(study_name="s ")
