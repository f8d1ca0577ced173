"""Export a trial's student as a Hugging Face model directory with a model card and its search record."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from kdnas.config import ConfigError
from kdnas.outputs import missing_student_files, student_digest
from kdnas.readers.report import collapse_notes, init_summary
from kdnas.readers.served import check_graphs_load, latency_form, run_check, serving_section
from kdnas.study.front import retimed, study_teachers
from kdnas.study.records import LATENCY_KEY, Retrained
from kdnas.study.student_record import LatencyDetail, StudentRecord, TrainRows
from kdnas.study.study_record import ExportedTrial, StudyRecord, TaskRecord, TeacherReference

RECORD_FILE = "kdnas_trial.json"


def _without_path(record: StudentRecord) -> StudentRecord:
    return replace(record, student_path=None)


def trial_record(study: optuna.Study, trial: FrozenTrial, retrained: Retrained | None = None) -> ExportedTrial:
    """The exported student's search record, without local paths.

    With ``retrained``, ``objectives`` and ``user_attrs`` are the retrained student's own; the trial's are kept as
    ``trial_objectives`` and ``trial_user_attrs`` (as the search recorded them). Without it, the latency is the
    re-timed one where the study was re-timed (``kdnas retime``), and ``search_latency_ms`` the search's.
    """
    recorded = study.get_trials(deepcopy=False)[trial.number]  # the values the search recorded
    trial = retimed(study, [recorded])[0]
    names = study.metric_names or ["metric", LATENCY_KEY]
    attrs = _without_path(StudentRecord.of(trial))
    exported = ExportedTrial(
        study=study.study_name,
        trial=trial.number,
        retrained=retrained is not None,
        repeats=[t.number for t in study.get_trials(deepcopy=False) if StudentRecord.of(t).repeat_of == trial.number],
        objectives=dict(zip(names, trial.values if retrained is None else (retrained.value, retrained.latency_ms))),
        params=trial.params,
        user_attrs=attrs if retrained is None else _without_path(StudentRecord.from_attrs(retrained.attrs)),
        task=StudyRecord.of(study).task,
        teachers=[
            TeacherReference(name=t.name, model=t.model, value=t.value, latency_ms=t.latency_ms, params=t.params)
            for t in study_teachers(study)
        ],
    )
    if retrained is not None:
        return replace(exported, trial_objectives=dict(zip(names, recorded.values)), trial_user_attrs=attrs)
    if trial.values != recorded.values:
        return replace(exported, search_latency_ms=recorded.values[1])
    return exported


def model_card(record: ExportedTrial) -> str:
    """A Hugging Face README.md for the exported student."""
    attrs = record.user_attrs or StudentRecord()
    metric = list(record.objectives or {})[0]
    served = serving_section(attrs.served, metric, attrs.latency or LatencyDetail(), attrs.arch_summary or "")
    return _card_results(record) + served + _card_training(record)


def _card_results(record: ExportedTrial) -> str:
    """The model card's head: what the student is, its results and how its latency was measured."""
    attrs = record.user_attrs or StudentRecord()
    objectives = record.objectives or {}
    metric, latency_name = list(objectives)
    lat, task = attrs.latency or LatencyDetail(), record.task or TaskRecord()
    value, latency_ms, params = objectives[metric], objectives[latency_name], (attrs.params or 0) / 1e6
    notes = "".join(f"\n\n**Note**: {note}." for note in collapse_notes(attrs))
    if attrs.weights_of is not None:
        precision = attrs.served.precision if attrs.served else "its precision"
        notes += (
            f"\n\n**Trained by trial {attrs.weights_of}**: these are the weights that trial trained; this trial "
            f"measured and scored them served in {precision} (the study searched the precision)."
        )
    retrained = ""
    if record.retrained:
        before = record.trial_objectives or {}
        retrained = (
            f"\n\n**Retrained**: the trial's saved weights were gone, so its architecture was trained again "
            f"with the study's recipe; the results below are this student's own (the trial scored {metric} "
            f"{before[metric]:.4f} at {before[latency_name]:.3f} ms)."
        )
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [kdnas, knowledge-distillation, neural-architecture-search]
---
# kdnas student {attrs.arch_summary or ""}

A BERT-style student found by kdnas (study `{record.study}`, trial {record.trial}) and distilled from
{len(record.teachers or [])} teacher(s).{retrained}{notes}

## Results
| task | {metric} | latency (median) | parameters |
|---|---|---|---|
| {_known(task.name)} | {value:.4f} | {latency_ms:.3f} ms | {params:.2f}M |

Latency: measured in {latency_form(lat)} on {_known(lat.device_name)} ({_known(lat.device)}),
{_known(lat.threads)} thread(s), batch {_known(lat.batch_size)}, sequence length {_known(lat.seq_len)}, median of
{_known(lat.runs)} runs after {_known(lat.warmup)} warm-up runs.
"""


def _card_training(record: ExportedTrial) -> str:
    """The model card's body: architecture, teachers, initialisation, distillation recipe, and how to use it."""
    attrs = record.user_attrs or StudentRecord()
    metric = list(record.objectives or {})[0]
    teachers = "\n".join(
        f"| {t.name} | {t.model} | {t.value:.4f} | {t.latency_ms:.3f} | {(t.params or 0) / 1e6:.1f}M |"
        for t in record.teachers or []
    )
    rows = attrs.train_rows or TrainRows()
    kd = attrs.kd.to_attrs() if attrs.kd else {}
    return f"""
## Architecture
```json
{json.dumps(attrs.arch or {}, indent=2, sort_keys=True)}
```

## Teachers
| teacher | model | {metric} | latency (ms) | parameters |
|---|---|---|---|---|
{teachers}

## Initialisation
{init_summary(attrs.init) or "not recorded"}; learning rate {_known(attrs.learning_rate)}; trained on
{_known(rows.labelled)} labelled and {rows.transfer or 0} transfer examples (the transfer set
through the teachers' soft labels only).

## Distillation recipe
{_known(attrs.epochs_trained)} epoch(s) with:
```json
{json.dumps(kd, indent=2, sort_keys=True)}
```

## Use
```python
from transformers import pipeline
classifier = pipeline("text-classification", model="path/to/this/directory")
```
The full search record is in `{RECORD_FILE}`.
"""


def _known(value: object) -> str:
    """``value`` in a model card: ``?`` when it was not recorded."""
    return "?" if value is None else str(value)


def saved_student(trial: FrozenTrial) -> Path | None:
    """The directory of the trial's saved student, or None when its weights are missing."""
    path = StudentRecord.of(trial).student_path
    if path and not missing_student_files(Path(path)):
        return Path(path)
    return None


def _check_student_unchanged(trial: FrozenTrial, source: Path, recorded: str | None) -> None:
    """Refuse a saved student whose files are not the ones its trial trained (``recorded``: the digest the trial
    recorded; students from before kdnas recorded one are not checked)."""
    if recorded is None:
        return
    found = student_digest(source)
    if found != recorded:
        raise ConfigError(
            f"trial {trial.number}: the student saved in {source} is not the one it trained (SHA-256 "
            f"{found[:12]}…, recorded {recorded[:12]}…): its files changed since; add --retrain to train this "
            "architecture again with the trial's recipe"
        )


_LOAD_CHECK = """
import sys
from transformers import pipeline
pipeline("text-classification", model=sys.argv[1], tokenizer=sys.argv[1], device="cpu")("does the export load?")
"""


def _check_loads(out_dir: Path) -> None:
    """Load the exported directory with ``pipeline("text-classification")`` and classify one text, in a fresh
    Python process as a user's would (this one stays free of torch); raise :class:`ConfigError` with the last line
    of what fails."""
    run_check(_LOAD_CHECK, [str(out_dir)], f"the exported student in {out_dir} does not load")


def check_export_target(study: optuna.Study, trial: FrozenTrial, out_dir: Path, overwrite: bool) -> None:
    """Refuse to export into a directory that holds files other than an earlier export of this same trial, unless
    ``overwrite`` (the files there are then replaced)."""
    if not out_dir.is_dir() or overwrite:
        return
    held = sorted(f.name for f in out_dir.iterdir())
    if not held:
        return
    record_file = out_dir / RECORD_FILE
    try:
        earlier = ExportedTrial.from_attrs(json.loads(record_file.read_text()) if record_file.is_file() else {})
    except (OSError, ValueError):
        earlier = ExportedTrial()
    if earlier.study == study.study_name and earlier.trial == trial.number:
        return
    shown = ", ".join(held[:4]) + (", …" if len(held) > 4 else "")
    raise ConfigError(f"--out {out_dir} is not empty ({shown}): pass --overwrite to replace what it holds")


def export_trial(
    study: optuna.Study,
    trial: FrozenTrial,
    out_dir: str | Path,
    *,
    retrained: Retrained | None = None,
    overwrite: bool = False,
) -> Path:
    """Copy the trial's student (weights, config, tokenizer) to ``out_dir`` with a model card and its record.

    ``retrained`` (a student trained again from the trial) is exported instead of the saved one, with its own results.
    A directory that holds anything but an earlier export of this trial is refused unless ``overwrite``, which
    replaces the files it holds. The student must be the one the trial trained (its recorded SHA-256), and the
    exported directory must load as ``pipeline()`` loads it; else nothing is left in ``out_dir``.
    """
    if trial.state != TrialState.COMPLETE:
        raise ConfigError(f"trial {trial.number} is {trial.state.name}, not COMPLETE: it has no student to export")
    source = retrained.path if retrained else saved_student(trial)
    if source is None:
        raise ConfigError(
            f"trial {trial.number}: the saved student weights are missing "
            f"({StudentRecord.of(trial).student_path or 'no path recorded'}); add --retrain to train this "
            "architecture again with the trial's recipe"
        )
    out_dir = Path(out_dir)
    if out_dir.resolve() == source.resolve():
        raise ConfigError(f"--out {out_dir} is where trial {trial.number}'s student is saved: export it elsewhere")
    recorded = (StudentRecord.from_attrs(retrained.attrs) if retrained else StudentRecord.of(trial)).student_sha256
    _check_student_unchanged(trial, source, recorded)
    check_export_target(study, trial, out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():  # an earlier export, or what --overwrite replaces: none of its files stays
        if stale.is_file() or stale.is_symlink():
            stale.unlink()
    for file in source.iterdir():
        if file.is_file():
            shutil.copy2(file, out_dir / file.name)
    try:
        if recorded is not None and student_digest(out_dir) != recorded:
            raise ConfigError(f"the copy of trial {trial.number}'s student in {out_dir} differs from {source}")
        _check_loads(out_dir)
        check_graphs_load(out_dir)
    except ConfigError:
        for written in out_dir.iterdir():  # nothing unusable is left looking like an export
            if written.is_file():
                written.unlink()
        raise
    record = trial_record(study, trial, retrained)
    (out_dir / RECORD_FILE).write_text(json.dumps(record.to_attrs(), indent=2, sort_keys=True))
    (out_dir / "README.md").write_text(model_card(record))
    return out_dir
