"""Where an export may go: an empty directory, an earlier export of the same trial, or anything with --overwrite,
whose files are then replaced; never the student's own directory."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import create_trial

from kdnas.config import ConfigError
from kdnas.export import RECORD_FILE, export_trial


@pytest.fixture
def study(tmp_path):
    study = optuna.create_study(study_name="s", directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "latency_ms"])
    student = tmp_path / "student"
    student.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        (student / name).write_text("{}")
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
