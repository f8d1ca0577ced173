"""A self-contained HTML report of a study (plotly.js embedded, opens offline), plus CSV and JSON exports."""

from __future__ import annotations

import csv
import html
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from kdnas.readers.served import latency_form
from kdnas.study.front import (
    front_students,
    hypervolume_history,
    hypervolume_reference,
    pareto_front,
    retimed,
    study_summary,
    study_teachers,
    summary_line,
)
from kdnas.study.records import ARCH_ATTR, LATENCY_KEY, PARAMS_CONSTRAINT
from kdnas.study.student_record import InitRecord, KDRecipe, RampRecord, StudentRecord
from kdnas.study.study_record import StudyRecord


def _hover(t: FrozenTrial, metric: str) -> str:
    record = StudentRecord.of(t)
    return (
        f"trial {t.number}<br>{record.label}<br>"
        f"{metric} {t.values[0]:.4f}<br>latency {t.values[1]:.3f} ms<br>"
        f"params {(record.params or 0) / 1e6:.2f}M"
    )


def _pareto_figure(study: optuna.Study, metric: str, latency_budget_ms: float | None = None) -> go.Figure:
    """Metric vs measured latency: the front opaque and joined, dominated students faded, collapsed students as grey
    crosses (never on the front), teachers as stars."""
    front = pareto_front(study)
    front_numbers = {t.number for t in front}
    complete = retimed(study, study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    why = {t.number: StudentRecord.of(t).collapsed for t in complete}
    collapsed = [t for t in complete if why[t.number] is not None]
    dominated = [t for t in complete if t.number not in front_numbers and why[t.number] is None]
    fig = go.Figure()
    if collapsed:
        notes = [f"collapsed: {why[t.number]}" for t in collapsed]
        marker = {"size": 10, "symbol": "x", "color": "#999999"}
        fig.add_trace(_students_trace(collapsed, metric, "collapsed (off the front)", marker=marker, notes=notes))
    marker = {"size": 9, "color": "#8da0cb", "opacity": 0.35}
    fig.add_trace(_students_trace(dominated, metric, "dominated students", marker=marker))
    line = {"shape": "hv", "width": 1.5}
    marker = {"size": 11, "color": "#d95f02"}
    fig.add_trace(_students_trace(front, metric, "Pareto front", mode="lines+markers", marker=marker, line=line))
    teachers = study_teachers(study)
    if teachers:
        fig.add_trace(
            go.Scatter(
                x=[t.latency_ms for t in teachers],
                y=[t.value for t in teachers],
                mode="markers+text",
                name="teachers",
                marker={"size": 14, "symbol": "star", "color": "#1b9e77"},
                text=[t.name for t in teachers],
                textposition="top center",
                hovertext=[
                    f"teacher {t.name}<br>{metric} {t.value:.4f}<br>latency {t.latency_ms:.3f} ms" for t in teachers
                ],
                hoverinfo="text",
            )
        )
    if latency_budget_ms is not None:
        fig.add_vline(
            x=latency_budget_ms,
            line_dash="dash",
            line_color="#e7298a",
            annotation_text=f"budget {latency_budget_ms} ms",
        )
    fig.update_layout(
        title=f"{study.study_name}: {metric} vs measured latency",
        xaxis_title="latency (ms, median)",
        yaxis_title=metric,
        template="plotly_white",
        height=520,
    )
    fig.update_xaxes(type="log")
    return fig


def _students_trace(
    trials: list[FrozenTrial],
    metric: str,
    name: str,
    *,
    notes: list[str] | None = None,
    mode: str = "markers",
    **style: Any,
) -> go.Scatter:
    """Students as points at (latency, metric), each with its hover text (and ``notes``, one per student)."""
    texts = [_hover(t, metric) for t in trials]
    if notes is not None:
        texts = [f"{text}<br>{note}" for text, note in zip(texts, notes)]
    return go.Scatter(
        x=[t.values[1] for t in trials],
        y=[t.values[0] for t in trials],
        mode=mode,
        name=name,
        text=texts,
        hoverinfo="text",
        **style,
    )


def _hypervolume_figure(history: list[tuple[int, float]], reference: tuple[float, float], metric: str) -> go.Figure:
    """Hypervolume of the feasible front after each finished trial."""
    fig = go.Figure(
        go.Scatter(
            x=[n for n, _ in history],
            y=[v for _, v in history],
            mode="lines+markers",
            name="hypervolume",
            line={"shape": "hv"},
        )
    )
    fig.update_layout(
        title=f"Hypervolume history (reference: {metric} = {reference[0]:g}, latency = {reference[1]:.3f} ms)",
        xaxis_title="trial",
        yaxis_title=f"hypervolume ({metric} × ms)",
        template="plotly_white",
        height=360,
    )
    return fig


def learning_curves_figure(study: optuna.Study, metric: str) -> go.Figure | None:
    """The metric at each evaluation of every student the study trained (its ``learning_curve``): front students
    bold, other finished ones faded, students stopped early dashed, ending in a cross. None when no trial has a
    curve (studies from before curves were recorded)."""
    front = {t.number for t in pareto_front(study)}
    kinds = {  # kind → (line style, marker at the last point)
        "front": ({"width": 3}, "circle"),
        "finished": ({"width": 1, "color": "rgba(120,120,120,0.5)"}, "circle"),
        "stopped early": ({"width": 1, "dash": "dash", "color": "rgba(214,39,40,0.6)"}, "x"),
    }
    fig, shown = go.Figure(), set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        record = StudentRecord.of(t)
        curve = record.learning_curve
        if not curve or record.repeat_of is not None or record.weights_of is not None:  # another trial's curve
            continue
        kind = "front" if t.number in front else "finished" if t.state == TrialState.COMPLETE else "stopped early"
        line, marker = kinds[kind]
        label = f"trial {t.number} {record.label}"
        fig.add_trace(
            go.Scatter(
                x=[point.epochs for point in curve],
                y=[point.metric for point in curve],
                mode="lines+markers",
                line=line,
                marker={"symbol": [marker if i == len(curve) - 1 else "circle" for i in range(len(curve))]},
                name=label if kind == "front" else kind,
                legendgroup=label if kind == "front" else kind,
                showlegend=kind == "front" or kind not in shown,
                hovertemplate=f"{html.escape(label)}<br>epoch %{{x:g}}: {metric} %{{y:.4f}}<extra>{kind}</extra>",
            )
        )
        shown.add(kind)
    if not shown:
        return None
    fig.update_layout(
        title=f"Learning curves: {metric} at each evaluation (stopped students dashed, front students bold)",
        xaxis_title="epochs trained",
        yaxis_title=metric,
        template="plotly_white",
        height=420,
    )
    return fig


def _signed_objective(index: int, sign: float) -> Callable[[FrozenTrial], float]:
    """A trial's ``index``-th objective value times ``sign``."""
    return lambda t: sign * t.values[index]


def importance_figures(study: optuna.Study, metric: str) -> tuple[list[go.Figure], str]:
    """Optuna's parameter importances (its default evaluator, PED-ANOVA), one figure per objective, and a one-sentence
    note naming the objectives whose importances are missing or that Optuna warns are unreliable ("" if none).

    PED-ANOVA ranks what drives a target *down*, so the maximised metric is negated (and its warning saying so dropped).
    """
    completed = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    figures, doubtful = [], []
    for index, (name, sign) in enumerate(((metric, -1.0), (LATENCY_KEY, 1.0))):
        fig, warned = None, False
        if completed:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                try:
                    fig = optuna.visualization.plot_param_importances(
                        study, target=_signed_objective(index, sign), target_name=name
                    )
                except (ValueError, RuntimeError):  # e.g. a constant space
                    pass
            warned = any(issubclass(w.category, UserWarning) and "low `target`" not in str(w.message) for w in caught)
        if fig is None or warned:
            doubtful.append(name)
        if fig is not None:
            fig.update_layout(title=f"Parameter importances for {name}", template="plotly_white", height=320)
            figures.append(fig)
    note = (
        (
            f"Parameter importances for {' and '.join(doubtful)} are missing or unreliable with {completed} "
            "completed trial(s)."
        )
        if doubtful
        else ""
    )
    return figures, note


def _scheduled(value: float | RampRecord) -> str:
    return f"{value.start:g}→{value.end:g}" if isinstance(value, RampRecord) else f"{value:g}"


def kd_summary(recipe: KDRecipe | dict[str, Any] | None) -> str:
    """A short label of a trial's recorded KD recipe (or its stored layout), e.g. ``mean T=2 α=0.5 + EMD (β=1)``."""
    recipe = recipe if isinstance(recipe, KDRecipe) else KDRecipe.from_attrs(recipe)
    if recipe == KDRecipe():
        return ""
    combiner = recipe.combiner or ""
    if combiner == "weighted":
        combiner += str(recipe.teacher_weights)
    elif combiner == "learned" and recipe.learned_teacher_weights is not None:
        combiner += str(recipe.learned_teacher_weights)
    parts = [combiner]
    for name, value in (("T", recipe.temperature), ("α", recipe.alpha)):
        if value is not None:
            parts.append(f"{name}={_scheduled(value)}")
    label = " ".join(parts)
    inter = recipe.intermediate
    if inter is not None and inter.enabled:
        mapping = inter.layer_map
        weight = 1.0 if inter.weight is None else inter.weight
        label += f" + {'EMD' if mapping == 'emd' else f'layers {mapping}'} (β={_scheduled(weight)})"
    return label


def init_summary(record: InitRecord | None) -> str:
    """A short label of how a trial's student was initialised, e.g. ``inherited from minilm (layers 0,5)``."""
    if record is None or record == InitRecord():
        return ""
    if record.init == "random":
        return "random"
    layers = ",".join(str(i) for i in record.layers or [])
    source = f"{record.teacher}'s elastic network" if record.elastic else record.teacher
    label = f"{record.init} from {source}" + (f" (layers {layers})" if layers else "")
    randomised = record.random or {}
    return label + (f"; random: {', '.join(randomised)}" if randomised else "")


def retime_note(study: optuna.Study) -> str:
    """How the study's latencies were taken: during the search, or re-timed afterwards (where, when)."""
    record = StudyRecord.of(study).retimed
    if record is None:
        return " during the search, on the node that trained each student"
    alone = ", alone on the node" if record.isolated else ""
    kept = "fastest" if record.kept == "fastest" else "median"  # a retime record without "kept" kept medians
    rounds = record.settings.rounds if record.settings else None
    return (
        f", re-timed after the search on {record.host} ({record.device_name}{alone}) at {record.at}: "
        f"{len(record.students or {})} students and {len(record.teachers or {})} teachers, the {kept} of "
        f"{rounds} interleaved rounds"
    )


def _runtime_note(study: optuna.Study) -> str:
    """What the study's models were timed in, e.g. `` in ONNX Runtime 1.32.0, int8`` (the fingerprint keeps one
    runtime per study; a searched precision lists each, `` in ONNX Runtime 1.32.0, fp32 / ONNX Runtime 1.32.0,
    int8``); empty before any trial completed."""
    forms = {
        latency_form(latency): None
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if (latency := StudentRecord.of(trial).latency) is not None
    }
    return f" in {' / '.join(sorted(forms))}" if forms else ""


def _inheritance_note(study: optuna.Study, metric: str) -> str:
    """Where the study's students start: the teacher they are sliced out of, its layer rule, and the layer one-layer
    students take (with the calibration's scores when it chose it); empty when the study recorded no teacher."""
    record = StudyRecord.of(study).inheritance
    if record is None:
        return ""
    note = f"Students are sliced out of {record.teacher} (layer rule {record.layers})"
    one_layer = record.one_layer
    if one_layer is None:
        return note + "."
    note += f"; one-layer students take its layer {one_layer.layer}"
    if one_layer.rule != "auto":
        return note + f" (student.inherit.one_layer: {one_layer.rule})."
    scores = one_layer.scores_line(metric)
    return note + f", chosen by {one_layer.steps} training steps of {one_layer.student} from each end ({scores})."


def collapse_notes(record: StudentRecord) -> list[str]:
    """What a trial's record says of collapse: a restart after a collapsed first epoch, a collapse it kept."""
    notes = []
    if record.restart is not None:
        restart = record.restart
        notes.append(f"restarted at half the learning rate: after epoch {restart.after_epoch} it {restart.reason}")
    if record.collapsed is not None:
        notes.append(f"collapsed ({record.collapsed}): kept off the Pareto front")
    return notes


def trial_rows(study: optuna.Study, metric: str) -> list[dict]:
    """One flat row per trial: state, values (latency re-timed where the study was), arch, KD recipe,
    initialisation, failure or pruning reason."""
    rows = []
    retimes = StudyRecord.of(study).retimed_students()
    for t in study.get_trials(deepcopy=False):
        values = t.values or [None, None]
        record = StudentRecord.of(t)
        repeat = record.repeat_of
        told = repeat is not None and record.reason is None  # a PRUNED repeat's reason already says whose it is
        reused = f"the same student as trial {repeat}: its result, not trained again" if told else None
        twin, served = record.weights_of, record.served.precision if record.served else None
        trained_by = f"trial {twin}'s student, served in {served}: not trained again" if twin is not None else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                metric: values[0],
                LATENCY_KEY: retimes.get(t.number, values[1]) if retimes else values[1],
                **({"search_latency_ms": values[1]} if retimes else {}),
                "arch": record.label if record.arch_summary else "",
                **{k: t.params.get(k) for k in ("num_layers", "num_heads", "head_dim", "ffn_ratio")},
                PARAMS_CONSTRAINT: record.params,
                "kd": kd_summary(record.kd),
                "init": init_summary(record.init),
                "slice_metric": record.slice_metric.value if record.slice_metric else None,
                "reason": "; ".join(
                    reason
                    for reason in (
                        record.reason,
                        reused,
                        trained_by,
                        *collapse_notes(record),
                    )
                    if reason
                ),
            }
        )
    return rows


def _table_html(rows: list[dict]) -> str:
    if not rows:
        return "<p>No trials yet.</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row.values()) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def write_report(
    study: optuna.Study,
    out_dir: str | Path,
    metric: str,
    *,
    latency_budget_ms: float | None = None,
    reference: tuple[float, float] | None = None,
) -> dict[str, Path]:
    """Write ``report.html``, ``trials.csv`` and ``pareto.json`` into ``out_dir``; return their paths.

    The hypervolume uses ``reference`` (metric, latency ms), by default ``(0, 1.1 × slowest student)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study, metric)
    reference = reference or hypervolume_reference(study)
    history = hypervolume_history(study, reference)
    paths = {"html": out_dir / "report.html", "csv": out_dir / "trials.csv", "json": out_dir / "pareto.json"}
    paths["html"].write_text(_page(study, metric, rows, reference, history, latency_budget_ms), encoding="utf-8")
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    paths["json"].write_text(json.dumps(_front_summary(study, metric, reference, history), indent=2))
    return paths


def _plots(
    study: optuna.Study,
    metric: str,
    reference: tuple[float, float],
    history: list[tuple[int, float]],
    latency_budget_ms: float | None,
) -> str:
    """The report's figures as HTML (plotly.js embedded once), with a note when importances could not be drawn."""
    figures = {
        "pareto": _pareto_figure(study, metric, latency_budget_ms),
        "hypervolume": _hypervolume_figure(history, reference, metric),
    }
    curves = learning_curves_figure(study, metric)
    if curves is not None:
        figures["learning-curves"] = curves
    importances, note = importance_figures(study, metric)
    for index, fig in enumerate(importances):
        figures[f"importance-{index}"] = fig
    plots = "\n".join(
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=name)
        for i, (name, fig) in enumerate(figures.items())
    )
    return plots + (f'\n<p id="importance-note"><b>Note:</b> {html.escape(note)}</p>' if note else "\n")


def _page(
    study: optuna.Study,
    metric: str,
    rows: list[dict[str, Any]],
    reference: tuple[float, float],
    history: list[tuple[int, float]],
    latency_budget_ms: float | None,
) -> str:
    """The self-contained HTML report."""
    teachers = study_teachers(study)
    teacher_line = "; ".join(
        f"{html.escape(t.name or '')}: {metric} {t.value:.4f} at {t.latency_ms:.2f} ms" for t in teachers
    )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>kdnas · {html.escape(study.study_name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left}}
th{{background:#f4f4f4}}</style></head><body>
<h1>kdnas study {html.escape(study.study_name)}</h1>
<p><b>{len(rows)} trials: {html.escape(summary_line(study_summary(study)))}</b>
(hypervolume up to {metric} {reference[0]:g} and {reference[1]:.3g} ms; a reused trial is a repeat of a student
the study holds, not trained again).</p>
<p>Latency is the measured median forward time{html.escape(_runtime_note(study) + retime_note(study))}; dominated
students are faded.
Teachers (stars), measured the same way: {teacher_line or "none recorded"}.
{html.escape(_inheritance_note(study, metric))}</p>
{_plots(study, metric, reference, history, latency_budget_ms)}
<h2>Trials</h2>
{_table_html(rows)}
</body></html>"""


def _front_summary(
    study: optuna.Study, metric: str, reference: tuple[float, float], history: list[tuple[int, float]]
) -> dict[str, Any]:
    """``pareto.json``: the reference point, the hypervolume and the front's students."""
    front = [
        {
            "trial": t.number,
            "trials": numbers,
            metric: t.values[0],
            LATENCY_KEY: t.values[1],
            PARAMS_CONSTRAINT: record.params,
            ARCH_ATTR: record.arch,
        }
        for t, numbers in front_students(study)
        for record in [StudentRecord.of(t)]
    ]
    return {
        "reference_point": {metric: reference[0], LATENCY_KEY: reference[1]},
        "hypervolume": history[-1][1] if history else 0.0,
        "front": front,
    }
