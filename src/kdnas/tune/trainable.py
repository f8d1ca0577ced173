"""The Ray Tune side of a trial: the trainable that runs one student (checkpointed each epoch, resumed when retried,
the node it ran on recorded) and the driver's callback that keeps its trials' heartbeats fresh."""

from __future__ import annotations

import logging
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
import torch
from ray import tune

from kdnas.devices import assigned_device
from kdnas.study.records import TrialReport, TrialTicket
from kdnas.study.student_record import StudentRecord
from kdnas.tune.checkpoint import load_state, save_state
from kdnas.tune.trial import run_trial
from kdnas.tune.trial_inputs import TrialInputs

if TYPE_CHECKING:
    from kdnas.tune.searcher import KDNASSearch

logger = logging.getLogger(__name__)


def _report_with_checkpoint(metrics: dict[str, Any], state: dict[str, Any]) -> None:
    """Report ``metrics`` to Tune with the training ``state`` as the trial's checkpoint."""
    with tempfile.TemporaryDirectory(prefix="kdnas-state-") as directory:
        save_state(state, Path(directory))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def last_state() -> dict[str, Any] | None:
    """The training state of this Tune trial's last checkpoint (a retried trial's), or None."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return load_state(Path(directory))


def this_node() -> dict[str, str]:
    """The Ray node this process runs on: its id, IP address and hostname."""
    return {
        "id": ray.get_runtime_context().get_node_id(),
        "ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
    }


def student_trainable(config: dict[str, Any], inputs: TrialInputs) -> None:
    """The Ray Tune trainable: one student, checkpointed each epoch and resumed from its last checkpoint when
    retried; any error (a missing GPU included) is reported (with its reason) rather than raised."""
    resources = inputs.config.search.resources_per_trial
    torch.set_num_threads(max(1, int(resources.cpu)))
    number = TrialTicket.from_attrs(config).number
    try:
        if number is None:
            raise ValueError("the trial's Tune config names no Optuna trial (it was not suggested by KDNASSearch)")
        device = assigned_device(resources.gpu, "search.resources_per_trial", "this worker")
        run_trial(
            config,
            inputs,
            trial_number=number,
            device=device,
            report=tune.report,
            checkpoint=_report_with_checkpoint,
            resume=last_state(),
            node=this_node(),
        )
    except Exception as err:  # recorded as FAIL with this reason (and where it was raised) by KDNASSearch
        trace = traceback.format_exc()
        logger.error("trial %s failed:\n%s", number, trace)
        reason = f"{type(err).__name__}: {err}"[:1000]
        failed = TrialReport(error=reason, attrs=StudentRecord(failure_traceback=trace[-4000:]).to_attrs())
        tune.report(failed.to_result(inputs.metric))  # with both objectives, NaN: Tune wants them


class SearchBookkeeping(tune.Callback):
    """Keeps the driver's trials' heartbeats fresh and counts trials restarted after their worker died."""

    def __init__(self, searcher: KDNASSearch, interval_s: float) -> None:
        self.searcher, self.interval_s, self.last_beat = searcher, interval_s, time.monotonic()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self.last_beat >= self.interval_s:
            self.searcher.record_heartbeats()
            self.last_beat = time.monotonic()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        logger.info("trial %s: its worker died; restarting it", TrialTicket.from_attrs(trial.config).number)
        self.searcher.record_restart(trial.trial_id)
