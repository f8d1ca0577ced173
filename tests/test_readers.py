"""Reading a study is light: the commands that only read one never import torch, Ray or transformers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "ray", "transformers", "datasets")

READERS = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import optuna
    from optuna.distributions import IntDistribution
    from optuna.trial import create_trial

    root = Path(sys.argv[1])
    storage = f"sqlite:///{root / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "latency_ms"])
    student = root / "student"
    student.mkdir()
    for name in ("config.json", "model.safetensors"):
        (student / name).write_text("{}")
    for number, (accuracy, latency) in enumerate([(0.8, 1.0), (0.9, 2.0), (0.7, 3.0)]):
        study.add_trial(create_trial(
            values=[accuracy, latency], params={"num_layers": number + 1},
            distributions={"num_layers": IntDistribution(1, 4)},
            user_attrs={"arch_summary": f"L{number + 1}-H64", "params": 1000 * (number + 1),
                        "student_path": str(student), "kd": {}, "init": {}}))

    import kdnas

    api = [kdnas.load_config, kdnas.load_study, kdnas.pareto_front, kdnas.knee_point, kdnas.best_under_budget,
           kdnas.write_report, kdnas.export_trial]  # the public API's readers
    from kdnas.cli import main
    from kdnas.dashboards import launcher  # noqa: F401  (kdnas dashboard's module; serving would block)

    flags = ["--storage", storage, "--study-name", "s", "--output-dir", str(root / "out")]
    codes = [main([command, *flags, *extra]) for command, extra in (
        ("studies", []), ("trials", []), ("report", []), ("export", ["--knee", "--out", str(root / "export")]))]
    print(json.dumps({"codes": codes, "heavy": [m for m in HEAVY if m in sys.modules]}))
""")


def test_report_export_trials_studies_and_the_dashboard_read_a_study_without_the_training_stack(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{READERS}", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"codes": [0, 0, 0, 0], "heavy": []}
    assert (tmp_path / "out" / "report" / "report.html").is_file()
    assert json.loads((tmp_path / "export" / "kdnas_trial.json").read_text())["trial"] in (0, 1)  # the front
