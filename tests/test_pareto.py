"""Pareto analysis on hand-made studies: front, hypervolume, knee, budgets (no training)."""

import json

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from conftest import save_tiny_student
from kdnas.study.front import (
    best_under_budget,
    hypervolume,
    hypervolume_history,
    hypervolume_reference,
    knee_point,
    pareto_front,
)


def _study(points, *, constraints=None, states=None, storage=None):
    study = optuna.create_study(directions=["maximize", "minimize"], storage=storage)
    with pytest.warns(optuna.exceptions.ExperimentalWarning):
        study.set_metric_names(["accuracy", "latency_ms"])
    for i, (acc, lat) in enumerate(points):
        state = (states or {}).get(i, TrialState.COMPLETE)
        system_attrs = {}
        if constraints and i in constraints:
            system_attrs["constraints"] = [constraints[i]]
        study.add_trial(
            create_trial(
                state=state,
                values=[acc, lat] if state == TrialState.COMPLETE else None,
                params={"num_layers": i + 1},
                distributions={"num_layers": IntDistribution(1, 20)},
                user_attrs={"params": 1000 * (i + 1), "arch_summary": f"L{i + 1}"},
                system_attrs=system_attrs,
            )
        )
    return study


def test_hypervolume_by_hand():
    # reference (0, 10): (0.5, 2) covers 8 × 0.5 = 4; (0.8, 6) adds 4 × 0.3 = 1.2; (0.4, 5) is dominated
    assert hypervolume([(0.5, 2.0), (0.8, 6.0), (0.4, 5.0)], (0.0, 10.0)) == pytest.approx(5.2)
    assert hypervolume([(0.5, 12.0)], (0.0, 10.0)) == 0.0
    assert hypervolume([], (0.0, 10.0)) == 0.0


def test_front_excludes_pruned_failed_and_infeasible_and_history_grows():
    study = _study(
        [(0.5, 2.0), (0.9, 1.0), (0.8, 6.0), (0.95, 3.0), (0.99, 0.5)],
        constraints={3: 1.5},  # trial 3 is infeasible
        states={4: TrialState.PRUNED},
    )
    assert [t.number for t in pareto_front(study)] == [1]
    assert hypervolume_reference(study) == (0.0, pytest.approx(6.6))
    history = hypervolume_history(study, (0.0, 10.0))
    assert [n for n, _ in history] == [0, 1, 2, 3, 4]
    values = [v for _, v in history]
    assert values == sorted(values)
    assert values[-1] == pytest.approx(9 * 0.9)


def test_knee_and_budgets():
    study = _study([(0.60, 1.0), (0.85, 2.0), (0.88, 6.0), (0.90, 10.0)])
    assert knee_point(pareto_front(study)).number == 1
    assert best_under_budget(study).number == 3
    assert best_under_budget(study, latency_ms=5.0).number == 1
    assert best_under_budget(study, params=1000).number == 0
    with pytest.raises(LookupError, match="latency ≤ 0.5 ms"):
        best_under_budget(study, latency_ms=0.5)
    with pytest.raises(ValueError, match="empty"):
        knee_point([])


def test_the_knee_lies_above_the_line_between_the_fronts_ends():
    # scaled: trial 1 at (0.44, 0.07) lies far below the line from (0, 0) to (1, 1), trial 2 at (0.78, 0.93) above it
    study = _study([(0.60, 1.0), (0.62, 5.0), (0.88, 8.0), (0.90, 10.0)])
    assert knee_point(pareto_front(study)).number == 2
    concave = _study([(0.60, 1.0), (0.62, 5.0), (0.64, 8.0), (0.90, 10.0)])  # every point below: no knee
    assert knee_point(pareto_front(concave)).number == 3


def test_kd_summary_labels_recipes_compactly():
    from kdnas.config import KDConfig
    from kdnas.readers.report import kd_summary

    assert kd_summary(KDConfig(combiner="mean").model_dump(mode="json")) == "mean T=2 α=0.5"
    ramped = KDConfig(
        combiner="weighted",
        teacher_weights=[3, 1],
        temperature={"start": 4, "end": 1},
        intermediate={"enabled": True, "layer_map": "emd", "weight": 0.5},
    )
    assert kd_summary(ramped.model_dump(mode="json")) == "weighted[3.0, 1.0] T=4→1 α=0.5 + EMD (β=0.5)"
    uniform = KDConfig(combiner="mean", intermediate={"enabled": True})
    assert kd_summary(uniform.model_dump(mode="json")) == "mean T=2 α=0.5 + layers uniform (β=0.1)"
    assert kd_summary({}) == ""
    assert kd_summary({"combiner": "gradient"}) == "gradient"  # older or partial records


def test_a_repeated_student_is_one_point_of_the_front_listing_its_trials(tmp_path):
    from kdnas.readers.report import write_report
    from kdnas.study.front import front_rows

    study = _study([(0.8, 2.0), (0.9, 5.0)])
    original = study.trials[0]
    study.add_trial(
        create_trial(
            values=original.values,
            params=original.params,
            distributions=original.distributions,
            user_attrs={**original.user_attrs, "duplicate_of": 0},
        )
    )
    assert [t.number for t in study.best_trials] == [0, 1, 2]
    assert [t.number for t in pareto_front(study)] == [0, 1]
    assert [(r["trial"], r["repeats"]) for r in front_rows(study, "accuracy")] == [(0, "2"), (1, "")]
    assert best_under_budget(study, latency_ms=3.0).number == 0
    summary = json.loads(write_report(study, tmp_path, "accuracy")["json"].read_text())
    assert [(p["trial"], p["trials"]) for p in summary["front"]] == [(0, [0, 2]), (1, [1])]


def test_dashboard_notes_follow_the_front_and_spare_a_persons_note():
    from optuna_dashboard import get_note, save_note

    from kdnas.readers.launcher import NOTE_HEAD, write_front_notes

    storage = optuna.storages.InMemoryStorage()
    study = _study([(0.8, 2.0), (0.9, 5.0), (0.5, 6.0)], storage=storage)

    def notes():
        return [get_note(optuna.trial.Trial(study, t._trial_id)) for t in study.get_trials()]

    save_note(optuna.trial.Trial(study, study.trials[2]._trial_id), "mine")
    assert write_front_notes(study, storage) == 2
    assert [n.startswith(NOTE_HEAD) for n in notes()] == [True, True, False] and notes()[2] == "mine"
    study.add_trial(
        create_trial(
            values=[0.95, 1.0],
            params={"num_layers": 4},
            distributions={"num_layers": IntDistribution(1, 20)},
            user_attrs={"params": 4000},
        )
    )
    assert write_front_notes(study, storage) == 1
    assert notes()[:3] == ["", "", "mine"] and notes()[3].startswith(NOTE_HEAD) and "--trial 3" in notes()[3]


def test_report_notes_importances_it_cannot_trust(tmp_path):
    from kdnas.readers.report import importance_figures, write_report

    assert importance_figures(_study([]), "accuracy") == (
        [],
        "Parameter importances for accuracy and latency_ms are missing or unreliable with 0 completed trial(s).",
    )
    one = _study([(0.8, 2.0)])
    page = write_report(one, tmp_path, "accuracy")["html"].read_text()
    assert (
        '<p id="importance-note"><b>Note:</b> Parameter importances for accuracy and latency_ms are missing or '
        "unreliable with 1 completed trial(s).</p>"
    ) in page
    figures, note = importance_figures(_study([(0.5, 2.0), (0.9, 1.0), (0.8, 6.0), (0.7, 3.0)]), "accuracy")
    assert len(figures) == 2 and note == ""


def test_export_of_a_retrained_student_reports_its_own_results(tmp_path):
    from kdnas.readers.export import export_trial, model_card, trial_record
    from kdnas.study.records import Retrained

    study = _study([(0.8, 2.0)])
    student = save_tiny_student(tmp_path / "retrained")
    retrained = Retrained(
        student, 0.6543, 2.5, {"arch_summary": "L1", "epochs_trained": 1, "student_path": str(student)}
    )
    out = export_trial(study, study.trials[0], tmp_path / "out", retrained=retrained)
    record = json.loads((out / "kdnas_trial.json").read_text())
    assert record["retrained"] and record["objectives"] == {"accuracy": 0.6543, "latency_ms": 2.5}
    assert record["trial_objectives"] == {"accuracy": 0.8, "latency_ms": 2.0}
    assert record["user_attrs"] == {"arch_summary": "L1", "epochs_trained": 1}
    assert record["trial_user_attrs"] == {"params": 1000, "arch_summary": "L1"}
    card = (out / "README.md").read_text()
    assert "| 0.6543 | 2.500 ms |" in card and "**Retrained**" in card and "accuracy 0.8000 at 2.000 ms" in card
    assert str(tmp_path) not in card + (out / "kdnas_trial.json").read_text()
    saved = trial_record(study, study.trials[0])
    assert not saved.retrained and saved.objectives == record["trial_objectives"]
    assert "trial_objectives" not in saved.to_attrs() and "**Retrained**" not in model_card(saved)


def test_the_report_draws_each_trained_students_learning_curve(tmp_path):
    from kdnas.readers.report import learning_curves_figure, write_report

    study = _study([(0.8, 2.0), (0.7, 3.0), (0.9, 5.0)])
    assert learning_curves_figure(study, "accuracy") is None  # a study from before curves were recorded
    curves = {0: [[1, 0.7, 2.0], [2, 0.8, 4.0]], 1: [[1, 0.6, 2.5], [2, 0.7, 5.0]], 2: [[1, 0.85, 4.0]]}
    study = optuna.create_study(directions=["maximize", "minimize"])
    for number, (values, state) in enumerate(
        [([0.8, 2.0], TrialState.COMPLETE), ([0.7, 3.0], TrialState.COMPLETE), (None, TrialState.PRUNED)]
    ):
        study.add_trial(
            create_trial(
                state=state,
                values=values,
                params={"num_layers": number + 1},
                distributions={"num_layers": IntDistribution(1, 20)},
                user_attrs={"arch_summary": f"L{number + 1}", "learning_curve": curves[number]},
            )
        )
    study.add_trial(  # a repeat trained nothing: no curve of its own
        create_trial(
            values=[0.8, 2.0],
            params={"num_layers": 1},
            distributions={"num_layers": IntDistribution(1, 20)},
            user_attrs={"arch_summary": "L1", "learning_curve": curves[0], "duplicate_of": 0},
        )
    )
    figure = learning_curves_figure(study, "accuracy")
    assert [(trace.name, list(trace.y), trace.showlegend) for trace in figure.data] == [
        ("trial 0 L1", [0.7, 0.8], True),
        ("finished", [0.6, 0.7], True),
        ("stopped early", [0.85], True),
    ]
    assert figure.data[2].line.dash == "dash" and list(figure.data[2].marker.symbol) == ["x"]
    assert 'id="learning-curves"' in write_report(study, tmp_path, "accuracy")["html"].read_text()
