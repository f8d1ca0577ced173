"""Serve a study with optuna-dashboard (127.0.0.1 unless told otherwise), Pareto students annotated."""

from __future__ import annotations

import socket

import optuna
from optuna_dashboard import get_note, run_server, save_note

from kdnas.config import ConfigError
from kdnas.study.front import pareto_front
from kdnas.study.storage import open_existing_storage
from kdnas.study.student_record import LatencyDetail, StudentRecord

NOTE_HEAD = "**Pareto front**"
"""How kdnas's note starts: only such a note is cleared from a trial off the front (others are a person's)."""


def _front_note(trial: optuna.trial.FrozenTrial, metric: str) -> str:
    """The Markdown note optuna-dashboard shows on a Pareto-front trial."""
    record = StudentRecord.of(trial)
    lat = record.latency or LatencyDetail()
    return (
        f"{NOTE_HEAD} · `{_known(record.arch_summary)}`\n\n"
        f"{metric} {trial.values[0]:.4f} · {trial.values[1]:.3f} ms median on {_known(lat.device_name)} "
        f"({_known(lat.threads)} thread(s), batch {_known(lat.batch_size)}, seq {_known(lat.seq_len)}) · "
        f"{(record.params or 0) / 1e6:.2f}M params\n\n"
        f"`kdnas export --trial {trial.number}`"
    )


def _known(value: object) -> str:
    """``value`` in a note: ``?`` when it was not recorded."""
    return "?" if value is None else str(value)


def write_front_notes(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """Put a note on every Pareto-front trial of ``study`` (held in ``storage``) and clear kdnas's note from the
    trials that left the front (saved empty, the public way to clear one); return how many trials are on the front."""
    metric = (study.metric_names or ["metric"])[0]
    front = {t.number for t in pareto_front(study)}
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        trial = optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number))
        note = get_note(trial)
        if frozen.number in front:
            wanted = _front_note(frozen, metric)
        else:
            wanted = "" if note.startswith(NOTE_HEAD) else note
        if note != wanted:
            save_note(trial, wanted)
    return len(front)


def check_can_listen(host: str, port: int) -> None:
    """Refuse a port outside 1..65535, or an address this machine cannot listen on (e.g. a port in use)."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: a port is a number from 1 to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            probe.bind(address)
    except OSError as err:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {err.strerror or err} (choose another --port or --host)"
        ) from None


def serve_dashboard(storage_url: str, study_name: str, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Annotate ``study_name``'s Pareto front, then run optuna-dashboard on ``storage_url`` until interrupted."""
    storage = open_existing_storage(storage_url)
    write_front_notes(optuna.load_study(study_name=study_name, storage=storage), storage)
    try:
        run_server(storage, host=host, port=port)
    except OSError as err:  # e.g. the port was taken since it was checked
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
