"""Security: localhost dashboards, masked storage passwords, safetensors only, no remote code, clean exports."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import torch
from optuna.distributions import IntDistribution
from optuna.trial import create_trial

from kdnas.cli import build_parser, main
from kdnas.config import ConfigError, TeacherConfig, build_config
from kdnas.readers.launcher import serve_dashboard
from kdnas.student import StudentArch
from kdnas.teachers import loading
from kdnas.teachers.loading import load_teacher, load_tokenizer

SRC = Path(__file__).resolve().parents[1] / "src" / "kdnas"
PASSWORD = "s3cret-pw"


def test_dashboard_binds_localhost_unless_told():
    assert build_parser().parse_args(["dashboard"]).host == "127.0.0.1"
    assert build_parser().parse_args(["dashboard", "--host", "0.0.0.0"]).host == "0.0.0.0"
    assert inspect.signature(serve_dashboard).parameters["host"].default == "127.0.0.1"


def test_storage_password_is_masked_in_errors(tmp_path, capsys):
    url = f"postgresql+psycopg2://kdnas:{PASSWORD}@127.0.0.1:9/kdnas"
    for command in (["search"], ["trials"], ["studies"], ["report"], ["export"], ["dashboard"]):
        assert main([*command, "--storage", url, "--output-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "kdnas:***@127.0.0.1:9" in err and PASSWORD not in err


def test_weights_load_from_safetensors_only(tmp_path):
    tokenizer = load_tokenizer("minilm")
    model = StudentArch(1, 2, 8, 1).build(tokenizer, 2, max_positions=64)
    model.config.save_pretrained(tmp_path / "pickled")
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")  # weights as a pickle only
    tokenizer.save_pretrained(tmp_path / "pickled")
    config = build_config({"teachers": [{"name": "pickled", "model": str(tmp_path / "pickled")}]})
    with pytest.raises(ConfigError, match="teacher 'pickled': cannot load"):
        load_teacher(config, config.teachers[0], num_labels=2)
    loaders = re.compile(r"torch\.load\(|pickle\.loads?\(|weights_only\s*=\s*False|use_safetensors\s*=\s*False")
    offenders = [str(f) for f in SRC.rglob("*.py") if loaders.search(f.read_text())]
    assert offenders == []


@pytest.mark.parametrize("trust", [None, True])
def test_remote_code_is_off_unless_enabled(monkeypatch, trust):
    seen = []

    def record(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("stop here")

    monkeypatch.setattr(loading.AutoModelForSequenceClassification, "from_pretrained", record)
    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", record)
    teacher = TeacherConfig(name="t", model="some/model", **({} if trust is None else {"trust_remote_code": trust}))
    config = build_config({"teachers": [teacher.model_dump()]})
    with pytest.raises(ConfigError):
        load_teacher(config, config.teachers[0], num_labels=2)
    with pytest.raises(OSError):
        load_tokenizer("some/tokenizer")
    assert seen == [bool(trust), False]


@pytest.fixture(params=["sqlite", "postgresql"])
def password_url(request, tmp_path):
    """A storage URL (PostgreSQL: with a password in it) and the study name to use there."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'study.db'}"
        return
    url = (
        sqlalchemy.engine.make_url(request.getfixturevalue("postgres_url"))
        .set(password=PASSWORD)
        .render_as_string(hide_password=False)
    )
    yield url
    optuna.delete_study(study_name="secure", storage=url)


def test_exports_reports_and_listings_hold_no_password_or_local_path(password_url, tmp_path, capsys):
    student = tmp_path / "students" / "trial-0000"
    tokenizer = load_tokenizer("minilm")
    model = StudentArch(1, 2, 8, 1).build(tokenizer, 2, max_positions=64)
    model.save_pretrained(student)
    tokenizer.save_pretrained(student)
    study = optuna.create_study(storage=password_url, study_name="secure", directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "latency_ms"])
    study.set_user_attr("task", {"name": "demo", "metric": "accuracy", "label_names": ["0", "1"]})
    study.add_trial(
        create_trial(
            params={"num_layers": 1},
            distributions={"num_layers": IntDistribution(1, 4)},
            values=[0.7, 0.9],
            user_attrs={
                "arch_summary": "L1-H16-A2-F16",
                "student_path": str(student),
                "params": 1000,
                "latency": {"device_name": "cpu"},
                "kd": {"alpha": 0.5},
            },
        )
    )
    common = ["--storage", password_url, "--study-name", "secure", "--output-dir", str(tmp_path / "run")]
    out = tmp_path / "export"
    for command in (
        ["export", "--trial", "0", "--out", str(out)],
        ["report", "--out", str(tmp_path / "report")],
        ["trials"],
        ["studies"],
    ):
        assert main([*command, *common]) == 0
    printed = capsys.readouterr()
    assert PASSWORD not in printed.out + printed.err
    written = [f for d in (out, tmp_path / "report") for f in d.rglob("*") if f.is_file()]
    assert {"model.safetensors", "config.json", "README.md", "kdnas_trial.json"} <= {f.name for f in written}
    local = [str(tmp_path), os.path.expanduser("~"), str(Path.cwd())]
    for file in written:
        if file.suffix in {".json", ".md", ".txt", ".html", ".csv"}:
            text = file.read_text(errors="replace")
            assert PASSWORD not in text, file
            if file.parent == out:
                assert not [p for p in local if p in text], (file, [p for p in local if p in text])


def test_benchmark_results_hold_no_local_absolute_path(tmp_path, monkeypatch):
    import sys

    repo = SRC.parents[1]
    monkeypatch.syspath_prepend(str(repo / "benchmarks"))
    common = __import__("_common")
    monkeypatch.setattr(common, "REPO", tmp_path / "checkout")
    written = common.write_result(
        tmp_path / "r.json",
        {"out": str(tmp_path / "checkout" / "runs" / "x"), "data": str(tmp_path / "shared" / "data")},
    )
    text = written.read_text()
    assert '"out": "./runs/x"' in text and '"data": "../shared/data"' in text and str(tmp_path) not in text
    sys.modules.pop("_common", None)
    assert absolute_paths('{"storage": "sqlite:////work/main/runs/study.db", "x": "/tmp/a", "ok": "./runs"}') == [
        "sqlite:////work/main/runs/study.db",
        "/tmp/a",
    ]
    for result in sorted((repo / "benchmarks" / "results").rglob("*.json")):
        absolute = absolute_paths(result.read_text())
        assert not absolute, (result.name, absolute[:3])


def absolute_paths(text: str) -> list[str]:
    """The JSON strings in ``text`` holding a local absolute path, alone or inside a URL (``sqlite:////work/…``)."""
    return re.findall(r'"((?:[^"]*[:/])?/(?:work|root|home|tmp|Users)/[^"]*)"', text)


@pytest.mark.slow
def test_no_file_a_search_writes_holds_the_storage_password(request, tmp_path):
    """Tune's experiment state (``tuner.pkl``, ``search_gen_state-*.json``, on ``search.storage_path``, often shared
    storage) and every other file under output_dir hold no credential."""
    import kdnas
    from conftest import tiny_raw

    base = request.getfixturevalue("postgres_url")
    url = sqlalchemy.engine.make_url(base).set(password=PASSWORD).render_as_string(hide_password=False)
    raw = tiny_raw(tmp_path / "run", search={"n_trials": 1, "study_name": "secret-search", "storage": url})
    try:
        kdnas.run_search(build_config(raw))
        leaks = [f for f in (tmp_path / "run").rglob("*") if f.is_file() and PASSWORD.encode() in f.read_bytes()]
        assert leaks == []
        assert list((tmp_path / "run" / "ray_results").rglob("tuner.pkl")), "Tune's state is where it was looked for"
    finally:
        optuna.delete_study(study_name="secret-search", storage=url)
