"""A real tiny search on local Ray into a SQLite study, then report and export from the study alone."""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
from optuna.trial import TrialState
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from conftest import wait_for
from kdnas.readers.export import export_trial
from kdnas.readers.report import write_report
from kdnas.study.front import (
    best_under_budget,
    knee_point,
    non_dominated,
    pareto_front,
    search_feasible_completed,
)
from kdnas.study.repeats import folded

pytestmark = pytest.mark.slow


def test_search_records_complete_trials_with_values_and_attrs(searched):
    config, study = searched
    trials = [t for t in study.get_trials() if "duplicate_of" not in t.user_attrs]  # repeats: not trained again
    assert len(trials) == 3
    assert study.metric_names == ["accuracy", "latency_ms"]
    for t in trials:
        assert t.state == TrialState.COMPLETE, t.user_attrs
        accuracy, latency = t.values
        assert 0.0 <= accuracy <= 1.0 and latency > 0
        attrs = t.user_attrs
        assert {"arch", "params", "flops", "latency", "student_path", "kd", "teachers"} <= set(attrs)
        assert attrs["latency"]["median_ms"] == latency and attrs["latency"]["threads"] == 1
        assert attrs["arch"]["num_layers"] == t.params["num_layers"]
        assert attrs["teachers"] == ["minilm", "gpt2"]
        assert attrs["node"]["hostname"] == socket.gethostname() and attrs["node"]["ip"]
        assert attrs["node"]["id"] in {node["NodeID"] for node in ray.nodes()}  # the Ray node it ran on
    teachers = study.user_attrs["teachers"]
    assert [t["name"] for t in teachers] == ["minilm", "gpt2"] and all(t["latency_ms"] > 0 for t in teachers)
    for t in teachers:  # where it was fitted and its logits computed: in the driver (a cluster's are Ray tasks)
        assert {t["ran_on"][step]["hostname"] for step in ("fit", "logits")} == {socket.gethostname()}
        assert t["ran_on"]["fit"]["device"] == t["ran_on"]["logits"]["device"] == "cpu"
    assert study.user_attrs["config"]["search"]["storage"] == config.storage_url  # no password to mask in SQLite
    retimed = study.user_attrs["retimed"]  # latency.retime: the driver timed students and teachers again, alone
    assert set(retimed["students"]) == {str(t.number) for t in study.trials if t.state == TrialState.COMPLETE}
    assert set(retimed["teachers"]) == {"minilm", "gpt2"} and retimed["isolated"]
    assert retimed["host"] == socket.gethostname() and retimed["settings"]["rounds"] == 3


def test_students_inherit_and_learn_from_the_transfer_set_and_the_study_says_so(searched):
    from kdnas.readers.report import trial_rows

    config, study = searched
    inheritance, transfer = study.user_attrs["inheritance"], study.user_attrs["transfer"]
    assert inheritance["teacher"] == "minilm" and inheritance["calibration_size"] == 160
    assert inheritance["ran_on"]["hostname"] == socket.gethostname()  # where the importance was ranked
    assert len(inheritance["importance"]["heads"]) == 6 and len(inheritance["importance"]["layers"]) == 6
    one_layer = inheritance["one_layer"]  # the layer one-layer students take, chosen by two short trainings
    assert (
        one_layer["rule"] == "auto"
        and set(one_layer["scores"]) == {"0", "5"}
        and one_layer["student"] == "L1-H32-A2-F64"
    )
    assert one_layer["scores"][str(one_layer["layer"])] == max(one_layer["scores"].values())
    assert transfer["size"] == 32 and transfer["sources"] == {"demo": 32}
    rows = {row["trial"]: row for row in trial_rows(study, "accuracy")}
    for t in study.trials:
        init = t.user_attrs["init"]
        assert init["init"] == "partial" and init["teacher"] == "minilm"  # head size 8/16, MiniLM's is 32
        assert init["random"] == {"attention": f"head size {t.params['head_dim']}, the teacher 32"}
        assert (
            len(init["layers"]) == t.params["num_layers"]
            and init["hidden_channels"] == t.user_attrs["arch"]["hidden_size"]
        )
        if t.params["num_layers"] == 1:
            assert init["layers"] == [one_layer["layer"]]
        assert t.user_attrs["learning_rate"] == 6e-4
        assert t.user_attrs["train_rows"] == {"labelled": 160, "transfer": 32}
        assert len(t.user_attrs["kd"]["learned_teacher_weights"]) == 2
        assert rows[t.number]["init"].startswith("partial from minilm (layers ")


def test_rerun_reuses_teachers_logits_and_latency_and_runs_nothing(searched, monkeypatch):
    from kdnas.teachers import fitting, importance, logits
    from kdnas.tune import one_layer
    from kdnas.tune.driver import run_search

    def must_not_run(*args, **kwargs):
        raise AssertionError("a teacher ran again")

    config, study = searched
    monkeypatch.setattr(logits, "predict_logits", must_not_run)
    monkeypatch.setattr(fitting, "train", must_not_run)
    monkeypatch.setattr(importance, "activation_importance", must_not_run)
    monkeypatch.setattr(one_layer, "calibrate_one_layer", must_not_run)
    recorded = study.user_attrs
    again = run_search(config)
    assert [(t.number, t.values) for t in again.trials] == [(t.number, t.values) for t in study.trials]
    assert again.user_attrs == recorded  # a rerun never overwrites what the study recorded


def test_report_and_export_round_trip(searched, tmp_path):
    config, study = searched
    paths = write_report(study, tmp_path / "report", "accuracy")
    page = paths["html"].read_text()
    assert "Pareto front" in page and '<script src="http' not in page and len(page) > 1_000_000  # plotly.js inline
    one_layer = study.user_attrs["inheritance"]["one_layer"]
    assert (
        f"Students are sliced out of minilm (layer rule uniform); one-layer students take its layer "
        f"{one_layer['layer']}, chosen by {one_layer['steps']} training steps of L1-H32-A2-F64 from each end (layer 0: "
    ) in page
    summary = json.loads(paths["json"].read_text())
    assert [p["trial"] for p in summary["front"]] == [t.number for t in pareto_front(study)]
    assert summary["hypervolume"] > 0 and summary["reference_point"]["accuracy"] == 0.0

    trial = best_under_budget(study)
    out = export_trial(study, trial, tmp_path / "student")
    assert {"config.json", "model.safetensors", "README.md", "kdnas_trial.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    text = "".join(p.read_text(errors="ignore") for p in out.iterdir() if p.suffix in {".json", ".md"})
    assert str(config.output_dir) not in text, "exported files must not leak local paths"
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == trial.params["num_layers"]
    with torch.inference_mode():
        logits = model(**tokenizer(["the film was not good"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)
    classify = pipeline("text-classification", model=str(out))
    assert classify("the acting was truly wonderful")[0]["label"] in {"negative", "positive"}
    assert knee_point(pareto_front(study)).state == TrialState.COMPLETE


def test_cli_reports_and_exports_from_the_study(searched, tmp_path):
    config, study = searched
    base = [sys.executable, "-m", "kdnas.cli"]
    where = ["--output-dir", config.output_dir, "--study-name", config.search.study_name]
    report = subprocess.run(base + ["report", *where], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert "Pareto front" in report.stdout
    out = tmp_path / "exported"
    export = subprocess.run(
        base + ["export", *where, "--knee", "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert export.returncode == 0, export.stderr
    assert (out / "model.safetensors").is_file()
    fastest = min(pareto_front(study), key=lambda t: t.values[1])
    budget = min(t.user_attrs["params"] for t in study.trials)
    within = [t for t in study.trials if t.user_attrs["params"] <= budget]
    smallest = max(within, key=lambda t: (t.values[0], -t.values[1]))
    for selector, expected in (
        (["--latency-budget-ms", str(fastest.values[1])], fastest.number),
        (["--param-budget", str(budget)], smallest.number),
        (["--trial", "1"], 1),
    ):
        chosen = subprocess.run(
            base + ["export", *where, *selector, "--out", str(tmp_path / "by-selector"), "--overwrite"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert chosen.returncode == 0, chosen.stderr
        record = json.loads((tmp_path / "by-selector" / "kdnas_trial.json").read_text())
        assert record["trial"] == expected, (selector, chosen.stdout)
    missing = subprocess.run(
        base + ["export", *where, "--latency-budget-ms", "0.000001"], capture_output=True, text=True, timeout=300
    )
    assert missing.returncode == 2 and "no completed student within latency" in missing.stderr


def test_dashboard_serves_the_study_on_localhost(searched):
    import socket
    import urllib.request

    config, study = searched
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kdnas.cli",
            "dashboard",
            "--output-dir",
            config.output_dir,
            "--study-name",
            config.search.study_name,
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        answers: list[dict] = []

        def answered() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    answers.append(json.loads(response.read()))
            except OSError:
                return False
            return True

        wait_for(answered, 60, "optuna-dashboard to answer")
        body = answers[0]
        summary = next(s for s in body["study_summaries"] if s["study_name"] == config.search.study_name)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=10) as r:
            detail = json.loads(r.read())
        assert detail["objective_names"] == ["accuracy", "latency_ms"]
        assert len(detail["trials"]) == len(study.trials)
        front = {t.number for t in pareto_front(study)}
        for trial in detail["trials"]:
            note = trial["note"]["body"]
            if trial["number"] in front:
                assert (
                    note.startswith("**Pareto front**")
                    and study.trials[trial["number"]].user_attrs["arch_summary"] in note
                )
            else:
                assert note == ""
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_stock_optuna_cli_reads_the_study(searched):
    config, study = searched
    optuna_cli = Path(sys.executable).with_name("optuna")
    proc = subprocess.run(
        [
            str(optuna_cli),
            "best-trials",
            "--study-name",
            config.search.study_name,
            "--storage",
            config.storage_url,
            "-f",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    front = json.loads(proc.stdout)
    trials = study.get_trials()
    originals = {trials[t["number"]].user_attrs.get("duplicate_of", t["number"]) for t in front}  # repeat: original
    # Optuna reads the values recorded during the search; kdnas's own front reads the re-timed latency (`retimed`)
    assert originals == {t.number for t, _ in folded(non_dominated(search_feasible_completed(study)))}
    assert all({"accuracy", "latency_ms"} <= set(t["values"]) for t in front)


def test_export_with_missing_weights_says_so_then_retrains(searched, tmp_path):
    config, study = searched
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    trial = next((t for t in complete if t.params["num_layers"] == 1), complete[0])  # one-layer: the recorded layer
    saved = Path(trial.user_attrs["student_path"])
    hidden = tmp_path / "hidden-student"
    shutil.move(saved, hidden)
    try:
        base = [
            sys.executable,
            "-m",
            "kdnas.cli",
            "export",
            "--output-dir",
            config.output_dir,
            "--study-name",
            config.search.study_name,
            "--trial",
            str(trial.number),
            "--out",
            str(tmp_path / "out"),
        ]
        refused = subprocess.run(base, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2
        assert "saved student weights are missing" in refused.stderr and "--retrain" in refused.stderr
        retrained = subprocess.run(base + ["--retrain", "--epochs", "1"], capture_output=True, text=True, timeout=600)
        assert retrained.returncode == 0, retrained.stderr[-2000:]
        assert "retraining trial" in retrained.stderr and "one-layer" not in retrained.stderr  # the recorded layer
        model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
        assert model.config.num_hidden_layers == trial.params["num_layers"]
        record = json.loads((tmp_path / "out" / "kdnas_trial.json").read_text())
        assert record["retrained"] and record["trial_objectives"] == dict(zip(study.metric_names, trial.values))
        assert record["user_attrs"]["epochs_trained"] == 1 and record["trial_user_attrs"]["epochs_trained"] == 2
        assert record["user_attrs"]["init"]["layers"] == trial.user_attrs["init"]["layers"]  # the same teacher layers
        value, latency_ms = record["objectives"]["accuracy"], record["objectives"]["latency_ms"]
        assert latency_ms == record["user_attrs"]["latency"]["median_ms"]
        assert f"accuracy={value:.4f}, latency={latency_ms:.3f} ms" in retrained.stdout
        assert f"| {value:.4f} | {latency_ms:.3f} ms |" in (tmp_path / "out" / "README.md").read_text()
        retrained_dir = Path(config.output_dir) / "students" / config.search.study_name / "retrained"
        assert (retrained_dir / f"trial-{trial.number:04d}").is_dir()
    finally:
        shutil.move(hidden, saved)
