"""The search driver: prepare teachers and trial inputs once, then run students as Ray Tune trials into the Optuna
study."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import optuna
import ray
from ray import tune

from kdnas.config import KDNASConfig, dump_config
from kdnas.data import load_task
from kdnas.data.transfer import check_transfer_size, load_transfer_texts
from kdnas.latency.timing import resolve_device
from kdnas.outputs import writable_dir
from kdnas.ray_session import ray_init
from kdnas.resources import ResourceWait, check_local_resources
from kdnas.student import SearchSpace
from kdnas.study.orphans import counts_toward_budget, reconcile_orphans, trials_left
from kdnas.study.records import (
    CONFIG_ATTR,
    INHERITANCE_ATTR,
    LATENCY_KEY,
    STUDY_TEACHERS_ATTR,
    TASK_ATTR,
    TRANSFER_ATTR,
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
from kdnas.teachers import tasks as teacher_tasks
from kdnas.teachers.fitting import fit_teachers
from kdnas.teachers.loading import load_teacher
from kdnas.teachers.logits import teacher_reference
from kdnas.tune import local_ray
from kdnas.tune.elastic_phase import elastic_inputs
from kdnas.tune.fingerprint import (
    config_fingerprint,
    fitted_teachers_fingerprint,
    space_conflicts,
    task_fingerprint,
    transfer_fingerprint,
)
from kdnas.tune.inputs import check_budgets_reachable, inheritance_record, prepare_inputs, transfer_set
from kdnas.tune.one_layer import choose_one_layer
from kdnas.tune.progress import SearchProgress
from kdnas.tune.retime import retime_study
from kdnas.tune.rungs import rungs_in_warmup
from kdnas.tune.samplers import make_sampler
from kdnas.tune.scheduler import ParetoStopping, make_scheduler
from kdnas.tune.searcher import DeadlineStopper, make_searcher
from kdnas.tune.trainable import SearchBookkeeping, student_trainable

logger = logging.getLogger(__name__)


def init_ray(address: str | None, output_dir: Path | None = None) -> None:
    """Connect to the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start a quiet local Ray; with
    ``output_dir``, a local Ray this process starts is recorded there, so that the next search stops what is left
    of it if this driver is killed (:mod:`kdnas.tune.local_ray`)."""
    if address or os.environ.get("RAY_ADDRESS"):
        if not ray.is_initialized():  # joined already to run the teachers (kdnas.teachers.tasks)
            ray_init(address=address)
        return
    ray_init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    if output_dir is not None:
        context = ray.get_runtime_context()
        local_ray.record(output_dir, Path(context.get_temp_dir()) / context.get_session_name())


def run_search(config: KDNASConfig, *, scheduler: tune.schedulers.TrialScheduler | None = None) -> optuna.Study:
    """Run the whole search described by ``config`` and return the study.

    ``scheduler`` is an optional Ray Tune scheduler; students it stops early are recorded as PRUNED.
    """
    resolve_device(config.latency.device)  # fail before any work when the latency device is absent
    output_dir = writable_dir(Path(config.output_dir).resolve(), "output_dir")
    local_ray.stop_leftovers(output_dir)  # of a local Ray whose driver was killed
    check_local_resources(config)
    teacher_tasks.check_local(config)
    url = config.storage_url
    check_writable(url)
    storage = open_storage_if_exists(url)
    existing = find_study(storage, config.search.study_name) if storage else None
    fingerprint = config_fingerprint(config)
    check_comparable(existing, config, fingerprint, space_conflicts(existing, config) if existing else ())

    task = load_task(config.data)
    logger.info(
        "task %s: %d train / %d eval examples, metric %s", task.name, len(task.train), len(task.eval), task.metric
    )
    fingerprint.update(task_fingerprint(task))
    check_comparable(existing, config, fingerprint)
    found = load_transfer_texts(config.data, task)  # a missing transfer file fails before teachers are fitted
    check_transfer_size(config.data, task, found, config.data.augment_copies, len(config.teachers))  # and a huge one
    for teacher in config.teachers:  # a ready teacher's weights and tokenizer are checked before any fitting
        if teacher.fit is None:
            load_teacher(config, teacher, task.num_labels, task.label_names)
    if teacher_tasks.on_cluster(config):  # teachers run as Ray tasks there: join it once the inputs are checked
        init_ray(config.search.ray_address, output_dir)
    fit_teachers(config, task)
    fingerprint.update(fitted_teachers_fingerprint(config))
    check_comparable(existing, config, fingerprint)
    transfer = transfer_set(config, task, found)
    fingerprint.update(transfer_fingerprint(transfer))
    check_comparable(existing, config, fingerprint)
    references, teacher_logits = teacher_reference(config, task, output_dir / "cache", transfer)
    for ref in references:
        logger.info("teacher %s: %s=%.4f latency=%.2f ms", ref["name"], task.metric, ref["value"], ref["latency_ms"])
    inputs = prepare_inputs(config, task, teacher_logits, transfer, tuple(ref["value"] for ref in references))
    check_budgets_reachable(inputs)
    inputs = choose_one_layer(inputs, output_dir / "cache")  # trains: only once the budgets are known reachable
    inputs = elastic_inputs(inputs, output_dir / "cache")
    # the inputs are checked: only now is the study created (or a pre-fingerprint study given its fingerprint)
    storage = storage or open_storage(url)
    study = create_or_load_study(config, storage, fingerprint)
    logger.info("study %r in %s", config.search.study_name, mask_url(url))
    recorded = dump_config(config)
    recorded["search"]["storage"] = mask_url(url)
    record_once(
        study,
        {
            STUDY_TEACHERS_ATTR: references,
            INHERITANCE_ATTR: inheritance_record(inputs.inherit, output_dir / "cache"),
            TRANSFER_ATTR: {"size": len(transfer), "sources": transfer.sources, "fingerprint": transfer.fingerprint()}
            if transfer
            else None,
            TASK_ATTR: {"name": task.name, "metric": task.metric, "label_names": list(task.label_names)},
            CONFIG_ATTR: recorded,
        },
    )

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
        return study

    search = config.search
    space = SearchSpace.of(config)
    logger.info("search space: %d distinct students", space.size())
    if search.n_trials > space.size():
        logger.warning(
            "search.n_trials (%d) is more than the %d students the space holds: the search ends when "
            "it has trained them all",
            search.n_trials,
            space.size(),
        )
    init_ray(search.ray_address, output_dir)
    if scheduler is None:
        scheduler = make_scheduler(config, LATENCY_KEY, len(inputs.eval))
        early = rungs_in_warmup(config)
        if scheduler is not None and early:
            logger.warning(
                "early stopping judges students after %s epoch(s), inside the learning-rate warm-up (its first "
                "%.2g epochs): before they trained at their learning rate. A later search.early_stopping.grace_epochs "
                "or a lower training.warmup_ratio judges them on more",
                ", ".join(f"{rung:g}" for rung in early),
                config.training.warmup_ratio * config.training.epochs,
            )
    searcher = make_searcher(
        config,
        storage,
        sampler=make_sampler(config, len(study.get_trials(deepcopy=False))),
        stop_reasons=scheduler.stop_reasons if isinstance(scheduler, ParetoStopping) else None,
    )
    resources = {"cpu": search.resources_per_trial.cpu, "gpu": search.resources_per_trial.gpu}
    # keeping one checkpoint per trial forces an experiment snapshot at each epoch; that is cheap here, so Tune's
    # warning about it would only be noise on every search
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trainable = tune.with_resources(tune.with_parameters(student_trainable, inputs=inputs), resources)
    progress = SearchProgress(study, task.metric, search.n_trials, search.time_budget_s)
    tuner = tune.Tuner(
        trainable,
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
    if config.latency.retime:
        retime_study(study, config)
    return study
