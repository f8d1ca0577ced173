"""Export a trial's student as a Hugging Face model directory with a model card and its search record."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from kdnas.config import ConfigError
from kdnas.outputs import missing_student_files, student_digest
from kdnas.readers.report import collapse_notes, init_summary
from kdnas.study.front import retimed, study_teachers
from kdnas.study.records import (
    ARCH_ATTR,
    ARCH_SUMMARY_ATTR,
    EPOCHS_TRAINED_ATTR,
    INIT_ATTR,
    KD_ATTR,
    LATENCY_ATTR,
    LATENCY_KEY,
    LEARNING_RATE_ATTR,
    PARAMS_CONSTRAINT,
    REPEAT_OF_ATTR,
    STUDENT_DIGEST_ATTR,
    STUDENT_PATH_ATTR,
    TASK_ATTR,
    TRAIN_ROWS_ATTR,
    Retrained,
)

RECORD_FILE = "kdnas_trial.json"


def _without_paths(attrs: dict) -> dict:
    return {k: v for k, v in attrs.items() if k != STUDENT_PATH_ATTR}


def trial_record(study: optuna.Study, trial: FrozenTrial, retrained: Retrained | None = None) -> dict:
    """The exported student's search record, without local paths.

    With ``retrained``, ``objectives`` and ``user_attrs`` are the retrained student's own; the trial's are kept as
    ``trial_objectives`` and ``trial_user_attrs`` (as the search recorded them). Without it, the latency is the
    re-timed one where the study was re-timed (``kdnas retime``), and ``search_latency_ms`` the search's.
    """
    recorded = study.get_trials(deepcopy=False)[trial.number]  # the values the search recorded
    trial = retimed(study, [recorded])[0]
    names = study.metric_names or ["metric", LATENCY_KEY]
    attrs = _without_paths(trial.user_attrs)
    record = {
        "study": study.study_name,
        "trial": trial.number,
        "retrained": retrained is not None,
        "repeats": [
            t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get(REPEAT_OF_ATTR) == trial.number
        ],
        "objectives": dict(zip(names, trial.values if retrained is None else (retrained.value, retrained.latency_ms))),
        "params": trial.params,
        "user_attrs": attrs if retrained is None else _without_paths(retrained.attrs),
        TASK_ATTR: study.user_attrs.get(TASK_ATTR),
        "teachers": [
            {k: t[k] for k in ("name", "model", "value", "latency_ms", "params")} for t in study_teachers(study)
        ],
    }
    if retrained is not None:
        record.update(trial_objectives=dict(zip(names, recorded.values)), trial_user_attrs=attrs)
    elif trial.values != recorded.values:
        record["search_latency_ms"] = recorded.values[1]
    return record


def model_card(record: dict) -> str:
    """A Hugging Face README.md for the exported student."""
    attrs = record["user_attrs"]
    metric, latency_name = list(record["objectives"])
    value, latency_ms = record["objectives"][metric], record["objectives"][latency_name]
    lat = attrs.get(LATENCY_ATTR, {})
    arch = attrs.get(ARCH_ATTR, {})
    task = record.get(TASK_ATTR) or {}
    teachers = "\n".join(
        f"| {t['name']} | {t['model']} | {t['value']:.4f} | {t['latency_ms']:.3f} | {t['params'] / 1e6:.1f}M |"
        for t in record["teachers"]
    )
    kd = attrs.get(KD_ATTR, {})
    train_rows = attrs.get(TRAIN_ROWS_ATTR, {})
    init = init_summary(attrs.get(INIT_ATTR, {})) or "not recorded"
    notes = "".join(f"\n\n**Note**: {note}." for note in collapse_notes(attrs))
    retrained = ""
    if record.get("retrained"):
        before = record["trial_objectives"]
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
# kdnas student {attrs.get(ARCH_SUMMARY_ATTR, "")}

A BERT-style student found by kdnas (study `{record["study"]}`, trial {record["trial"]}) and distilled from
{len(record["teachers"])} teacher(s).{retrained}{notes}

## Results
| task | {metric} | latency (median) | parameters |
|---|---|---|---|
| {task.get("name", "?")} | {value:.4f} | {latency_ms:.3f} ms | {attrs.get(PARAMS_CONSTRAINT, 0) / 1e6:.2f}M |

Latency: measured on {lat.get("device_name", "?")} ({lat.get("device", "?")}), {lat.get("threads", "?")} thread(s),
batch {lat.get("batch_size", "?")}, sequence length {lat.get("seq_len", "?")}, median of {lat.get("runs", "?")} runs
after {lat.get("warmup", "?")} warm-up runs.

## Architecture
```json
{json.dumps(arch, indent=2, sort_keys=True)}
```

## Teachers
| teacher | model | {metric} | latency (ms) | parameters |
|---|---|---|---|---|
{teachers}

## Initialisation
{init}; learning rate {attrs.get(LEARNING_RATE_ATTR, "?")}; trained on
{train_rows.get("labelled", "?")} labelled and {train_rows.get("transfer", 0)} transfer examples (the transfer set
through the teachers' soft labels only).

## Distillation recipe
{attrs.get(EPOCHS_TRAINED_ATTR, "?")} epoch(s) with:
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


def saved_student(trial: FrozenTrial) -> Path | None:
    """The directory of the trial's saved student, or None when its weights are missing."""
    path = trial.user_attrs.get(STUDENT_PATH_ATTR)
    if path and not missing_student_files(Path(path)):
        return Path(path)
    return None


def check_student_unchanged(trial: FrozenTrial, source: Path, recorded: str | None) -> None:
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


def check_loads(out_dir: Path) -> None:
    """Load the exported directory with ``pipeline("text-classification")`` and classify one text, in a fresh
    Python process as a user's would (this one stays free of torch); raise :class:`ConfigError` with the last line
    of what fails."""
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_CHECK, str(out_dir)], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise ConfigError(f"the exported student in {out_dir} does not load: {lines[-1] if lines else done.returncode}")


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
        earlier = json.loads(record_file.read_text()) if record_file.is_file() else {}
    except (OSError, ValueError):
        earlier = {}
    if earlier.get("study") == study.study_name and earlier.get("trial") == trial.number:
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
            f"({trial.user_attrs.get(STUDENT_PATH_ATTR, 'no path recorded')}); add --retrain to train this "
            "architecture again with the trial's recipe"
        )
    out_dir = Path(out_dir)
    if out_dir.resolve() == source.resolve():
        raise ConfigError(f"--out {out_dir} is where trial {trial.number}'s student is saved: export it elsewhere")
    recorded = (retrained.attrs if retrained else trial.user_attrs).get(STUDENT_DIGEST_ATTR)
    check_student_unchanged(trial, source, recorded)
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
        check_loads(out_dir)
    except ConfigError:
        for written in out_dir.iterdir():  # nothing unusable is left looking like an export
            if written.is_file():
                written.unlink()
        raise
    record = trial_record(study, trial, retrained)
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
    (out_dir / "README.md").write_text(model_card(record))
    return out_dir
