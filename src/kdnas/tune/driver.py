"""The search driver, a pipeline read top-down in :func:`run_search`: pre-flight checks, prepare what every trial
shares (:mod:`kdnas.tune.prepare`), open the study, run the students as Ray Tune trials, finish."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from ray import tune

from kdnas.config import KDNASConfig, dump_config
from kdnas.latency.serving import check_runtime
from kdnas.latency.timing import resolve_device
from kdnas.outputs import writable_dir
from kdnas.resources import ResourceWait, check_local_resources
from kdnas.student import SearchSpace
from kdnas.study.orphans import counts_toward_budget, reconcile_orphans, trials_left
from kdnas.study.records import (
    LATENCY_KEY,
)
from kdnas.study.storage import (
    HEARTBEAT_INTERVAL_S,
    check_comparable,
    check_writable,
    create_or_load_study,
    find_study,
    mask_url,
    open_storage,
    open_storage_if_exists,
    record_once,
)
from kdnas.study.study_record import Inheritance, StudyRecord, TaskRecord, TeacherReference, TransferRecord
from kdnas.teachers import tasks as teacher_tasks
from kdnas.tune import local_ray
from kdnas.tune.deadline import DeadlineStopper
from kdnas.tune.fingerprint import config_fingerprint, space_conflicts
from kdnas.tune.inputs import inheritance_record
from kdnas.tune.local_ray import init_ray
from kdnas.tune.prepare import Prepared, prepare
from kdnas.tune.reporter import SearchProgress
from kdnas.tune.retime import retime_study
from kdnas.tune.rungs import rungs_in_warmup
from kdnas.tune.samplers import make_sampler
from kdnas.tune.scheduler import ParetoStopping, make_scheduler
from kdnas.tune.searcher import KDNASSearch, make_searcher
from kdnas.tune.trainable import SearchBookkeeping, student_trainable
from kdnas.tune.trial_inputs import TrialInputs

logger = logging.getLogger(__name__)


def run_search(
    config: KDNASConfig,
    *,
    scheduler: tune.schedulers.TrialScheduler | None = None,
    trainable: Callable[[dict[str, Any], TrialInputs], None] | None = None,
    storage: RDBStorage | None = None,
) -> optuna.Study:
    """Run the whole search described by ``config`` and return the study: pre-flight checks, :func:`prepare` the
    inputs every trial shares, open the study, run the students as Ray Tune trials, finish.

    ``scheduler`` is an optional Ray Tune scheduler (students it stops early are recorded as PRUNED); ``trainable``
    runs one trial in a Ray worker (by default :func:`~kdnas.tune.trainable.student_trainable`); ``storage`` is an
    already-open Optuna storage the study is searched in (and its URL recorded, password masked) instead of
    ``config.storage_url``, which is then never opened.
    """
    output_dir, storage, existing = preflight(config, storage)
    prepared = prepare(config, study=existing)
    storage = storage or open_storage(config.storage_url)
    study = open_study(config, storage, prepared, output_dir)
    remaining = _trials_to_run(config, study, storage)
    if remaining:
        _run_trials(config, study, storage, prepared, remaining, scheduler, trainable or student_trainable, output_dir)
        if config.latency.retime:
            retime_study(study, config)
    return study


def preflight(
    config: KDNASConfig, storage: RDBStorage | None = None
) -> tuple[Path, RDBStorage | None, optuna.Study | None]:
    """Checks that need no data, before any work: the latency device and runtime, ``output_dir``, resources, the storage
    (``storage`` when given, else ``config.storage_url``), and a study of the same name comparable with ``config``.
    Returns the output directory, the storage when it exists already, and the study when it does."""
    check_runtime(config.latency, resolve_device(config.latency.device))  # the latency device and runtime exist
    output_dir = writable_dir(Path(config.output_dir).resolve(), "output_dir")
    local_ray.stop_leftovers(output_dir)  # of a local Ray whose driver was killed
    check_local_resources(config)
    teacher_tasks.check_local(config)
    if storage is None:
        check_writable(config.storage_url)
        storage = open_storage_if_exists(config.storage_url)
    existing = find_study(storage, config.search.study_name) if storage else None
    conflicts = space_conflicts(existing, config) if existing else []
    check_comparable(existing, config, config_fingerprint(config), conflicts)
    return output_dir, storage, existing


def open_study(config: KDNASConfig, storage: RDBStorage, prepared: Prepared, output_dir: Path) -> optuna.Study:
    """Create (or load) the study once its inputs are checked, and record them in it: the teachers' references, the
    inheritance source, the transfer set, the task and the configuration (with ``storage``'s URL, password masked)."""
    url = storage.url
    study = create_or_load_study(config, storage, prepared.fingerprint)
    logger.info("study %r in %s", config.search.study_name, mask_url(url))
    recorded = dump_config(config)
    recorded["search"]["storage"] = mask_url(url)
    transfer, task = prepared.transfer, prepared.task
    record = StudyRecord(
        teachers=[TeacherReference.from_attrs(reference) for reference in prepared.references],
        inheritance=Inheritance.from_attrs(inheritance_record(prepared.inputs.inherit, output_dir / "cache")),
        transfer=TransferRecord(size=len(transfer), sources=transfer.sources, fingerprint=transfer.fingerprint())
        if transfer
        else None,
        task=TaskRecord(name=task.name, metric=task.metric, label_names=list(task.label_names)),
        config=recorded,
    )
    record_once(study, record.to_attrs())
    return study


def _trials_to_run(config: KDNASConfig, study: optuna.Study, storage: RDBStorage) -> int:
    """Fail and re-enqueue trials a lost driver left RUNNING, then say how many trials this run has left to run."""
    orphans = reconcile_orphans(study, storage)
    if orphans:
        logger.info("resumed: %d trial(s) left RUNNING by a lost driver were failed and re-enqueued", orphans)
    remaining = trials_left(study, config.search.n_trials)
    if remaining == 0:
        held = sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))
        logger.info(
            "the study already holds %d finished trial(s), search.n_trials is %d: nothing to run",
            held,
            config.search.n_trials,
        )
    return remaining


def _run_trials(
    config: KDNASConfig,
    study: optuna.Study,
    storage: RDBStorage,
    prepared: Prepared,
    remaining: int,
    scheduler: tune.schedulers.TrialScheduler | None,
    trainable: Callable[[dict[str, Any], TrialInputs], None],
    output_dir: Path,
) -> None:
    """Run ``remaining`` students as Ray Tune trials, then record what the run left unfinished."""
    search = config.search
    size = SearchSpace.of(config).size()
    logger.info("search space: %d distinct students", size)
    if search.n_trials > size:
        logger.warning(
            "search.n_trials (%d) is more than the %d students the space holds: the search ends when "
            "it has trained them all",
            search.n_trials,
            size,
        )
    init_ray(search.ray_address, output_dir)
    scheduler = scheduler if scheduler is not None else _default_scheduler(config, len(prepared.inputs.eval))
    searcher = make_searcher(
        config,
        storage,
        sampler=make_sampler(config, len(study.get_trials(deepcopy=False))),
        stop_reasons=scheduler.stop_reasons if isinstance(scheduler, ParetoStopping) else None,
    )
    progress = SearchProgress(study, prepared.task.metric, search.n_trials, search.time_budget_s)
    tuner = _make_tuner(config, trainable, prepared.inputs, searcher, scheduler, progress, remaining, output_dir)
    started = time.perf_counter()
    if search.time_budget_s is not None:
        searcher.deadline = time.monotonic() + search.time_budget_s
    with progress:
        tuner.fit()
    seconds = time.perf_counter() - started
    if searcher.exhausted:
        logger.warning("the search ended before its trial budget: %s", searcher.exhausted)
    cut = searcher.finish_out_of_time()
    if cut:
        logger.info(
            "search.time_budget_s (%g s) ran out: %d unfinished student(s) recorded as PRUNED",
            search.time_budget_s,
            cut,
        )
    leftovers = reconcile_orphans(study, storage)  # e.g. a trial whose creation lost its connection half-way
    if leftovers:
        logger.info("%d trial(s) were left RUNNING and are failed; run the search again to fill the budget", leftovers)
    logger.info("search finished in %.0f s: %s", seconds, progress.status(final=True))


def _default_scheduler(config: KDNASConfig, eval_rows: int) -> tune.schedulers.TrialScheduler | None:
    """The configured early stopping (None when off), with a warning when it would judge students inside the
    learning-rate warm-up."""
    scheduler = make_scheduler(config, LATENCY_KEY, eval_rows)
    early = rungs_in_warmup(config)
    if scheduler is not None and early:
        logger.warning(
            "early stopping judges students after %s epoch(s), inside the learning-rate warm-up (its first "
            "%.2g epochs): before they trained at their learning rate. A later search.early_stopping.grace_epochs "
            "or a lower training.warmup_ratio judges them on more",
            ", ".join(f"{rung:g}" for rung in early),
            config.training.warmup_ratio * config.training.epochs,
        )
    return scheduler


def _make_tuner(
    config: KDNASConfig,
    trainable: Callable[[dict[str, Any], TrialInputs], None],
    inputs: TrialInputs,
    searcher: KDNASSearch,
    scheduler: tune.schedulers.TrialScheduler | None,
    progress: SearchProgress,
    remaining: int,
    output_dir: Path,
) -> tune.Tuner:
    """The Ray Tune run of ``remaining`` trials: each ``trainable`` with ``inputs`` and the configured resources."""
    search = config.search
    resources = {"cpu": search.resources_per_trial.cpu, "gpu": search.resources_per_trial.gpu}
    # keeping one checkpoint per trial forces an experiment snapshot at each epoch; that is cheap here, so Tune's
    # warning about it would only be noise on every search
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    return tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, inputs=inputs), resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=remaining,
            max_concurrent_trials=search.max_concurrent_trials,
            reuse_actors=True,  # a trial's worker imports torch and kdnas once, not once per trial
        ),
        run_config=tune.RunConfig(
            name=search.study_dir,
            storage_path=search.storage_path or str(output_dir / "ray_results"),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            stop=DeadlineStopper(searcher),  # search.time_budget_s, on the searcher's clock
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[
                progress,
                SearchBookkeeping(searcher, HEARTBEAT_INTERVAL_S / 2),
                ResourceWait(search.resource_wait_s, resources),
            ],
            verbose=0,
        ),
    )
