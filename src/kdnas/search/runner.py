"""The search driver: prepare teachers and data once, then run students as Ray Tune trials into the Optuna study."""

from __future__ import annotations

import logging
import math
import os
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune

from kdnas.config import ConfigError, KDNASConfig, build_config, dump_config
from kdnas.data import TaskData, load_task
from kdnas.objectives.batches import encode
from kdnas.objectives.latency import measure_configured, resolve_device
from kdnas.objectives.metrics import score
from kdnas.objectives.teachers import cached_logits, fit_teacher, is_fitted, load_teacher, load_tokenizer
from kdnas.search.searcher import FAILURE_ATTR, TRIAL_NUMBER_KEY, KDNASSearch
from kdnas.search.study import create_or_load_study, mask_url, objective_names, open_storage
from kdnas.search.trial import ERROR_KEY, LATENCY_KEY, TrialInputs, run_trial, student_dir
from kdnas.space import SearchSpace

logger = logging.getLogger(__name__)

DRIVER_LOST = "driver lost: the search driver stopped while this trial ran"
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def driver_device() -> torch.device:
    """The device the driver fits and runs teachers on."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fit_teachers(config: KDNASConfig, task: TaskData, *, force: bool = False) -> list[dict]:
    """Fit every teacher with a ``fit`` section whose saved fit does not match this task (or all, with ``force``)."""
    records = []
    for teacher in config.teachers:
        if teacher.fit is None or (is_fitted(config, teacher, task) and not force):
            continue
        records.append(fit_teacher(config, teacher, task, driver_device()))
    return records


def teacher_reference(config: KDNASConfig, task: TaskData, cache_dir: Path) -> tuple[list[dict], torch.Tensor]:
    """Teachers' eval metric and latency (measured as students are), and their train logits ``[K, N, C]``."""
    device = driver_device()
    references, train_logits = [], []
    for teacher_cfg in config.teachers:
        teacher = load_teacher(config, teacher_cfg, task.num_labels)
        max_length = (teacher_cfg.fit.max_seq_length if teacher_cfg.fit else None) or config.data.max_seq_length
        train_logits.append(cached_logits(teacher, task, "train", max_length, cache_dir, device))
        eval_logits = cached_logits(teacher, task, "eval", max_length, cache_dir, device)
        latency = measure_configured(
            teacher.model, vocab_size=len(teacher.tokenizer), settings=config.latency, seq_len=config.latency_seq_len
        )
        references.append(
            {
                "name": teacher.name,
                "model": teacher_cfg.model,
                "value": score(task.metric, eval_logits.argmax(-1).tolist(), task.labels("eval")),
                "latency_ms": latency.median_ms,
                "latency": latency.to_dict(),
                "params": sum(p.numel() for p in teacher.model.parameters()),
            }
        )
        teacher.model.to("cpu")
    return references, torch.stack(train_logits)


def prepare_inputs(config: KDNASConfig, task: TaskData, teacher_logits: torch.Tensor) -> TrialInputs:
    """Tokenise the task for students once, for every trial."""
    tokenizer = load_tokenizer(config.student.tokenizer)
    max_length = config.data.max_seq_length
    return TrialInputs(
        config=config,
        metric=task.metric,
        label_names=task.label_names,
        train=encode(tokenizer, task.texts("train"), task.labels("train"), max_length),
        eval=encode(tokenizer, task.texts("eval"), task.labels("eval"), max_length),
        teacher_names=tuple(t.name for t in config.teachers),
        teacher_logits=teacher_logits,
        students_dir=str((Path(config.output_dir) / "students" / config.search.study_name).resolve()),
    )


def train_student(config: dict[str, Any], inputs: TrialInputs) -> None:
    """The Ray Tune trainable: one student; any error is reported (with its reason) rather than raised."""
    resources = inputs.config.search.resources_per_trial
    torch.set_num_threads(max(1, int(resources.cpu)))
    use_gpu = resources.gpu > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    try:
        run_trial(config, inputs, trial_number=config[TRIAL_NUMBER_KEY], device=device, report=tune.report)
    except Exception as err:  # recorded as FAIL with this reason by KDNASSearch
        logger.error("trial %s failed:\n%s", config.get(TRIAL_NUMBER_KEY), traceback.format_exc())
        reason = f"{type(err).__name__}: {err}"[:1000]
        tune.report({inputs.metric: math.nan, LATENCY_KEY: math.nan, ERROR_KEY: reason})  # Tune wants both keys


class ProgressLogger(tune.Callback):
    """One line per finished student."""

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        number = trial.config.get(TRIAL_NUMBER_KEY)
        arch = "L{num_layers} A{num_heads}x{head_dim} F×{ffn_ratio}".format(**trial.config)
        if ERROR_KEY in result:
            logger.info("trial %s %s failed: %s", number, arch, result[ERROR_KEY])
        elif self.metric in result:
            logger.info(
                "trial %s %s: %s=%.4f latency=%.2f ms (epoch %s, %.0f s)",
                number, arch, self.metric, result[self.metric], result[LATENCY_KEY], result.get("epoch"),
                result.get("time_total_s", 0.0),
            )


def reconcile_orphans(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """Fail RUNNING trials left by a dead driver (reason: driver lost) and re-enqueue their params once.

    Call only while no other driver runs this study.
    """
    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in orphans:
        storage.set_trial_user_attr(trial._trial_id, FAILURE_ATTR, DRIVER_LOST)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return len(orphans)


def trials_left(study: optuna.Study, n_trials: int) -> int:
    """The trial budget minus trials already finished (those failed by a lost driver are retried, not counted)."""
    done = [
        t for t in study.get_trials(deepcopy=False, states=FINISHED_STATES)
        if t.user_attrs.get(FAILURE_ATTR) != DRIVER_LOST
    ]
    return max(0, n_trials - len(done))


def init_ray(address: str | None) -> None:
    """Connect to the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start a quiet local Ray."""
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, ignore_reinit_error=True)
    else:
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)


def make_sampler(config: KDNASConfig) -> optuna.samplers.BaseSampler:
    """The configured multi-objective sampler, seeded."""
    seed = config.search.seed
    if config.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if config.search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if config.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)


def run_search(config: KDNASConfig, *, scheduler: tune.schedulers.TrialScheduler | None = None) -> optuna.Study:
    """Run the whole search described by ``config`` and return the study.

    ``scheduler`` is an optional Ray Tune scheduler; students it stops early are recorded as PRUNED.
    """
    resolve_device(config.latency.device)  # fail before any work when the latency device is absent
    output_dir = Path(config.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    url = config.storage_url
    storage = open_storage(url)
    study = create_or_load_study(config, storage)
    logger.info("study %r in %s", config.search.study_name, mask_url(url))

    task = load_task(config.data)
    logger.info("task %s: %d train / %d eval examples, metric %s",
                task.name, len(task.train), len(task.eval), task.metric)
    fit_teachers(config, task)
    references, teacher_logits = teacher_reference(config, task, output_dir / "cache")
    for ref in references:
        logger.info("teacher %s: %s=%.4f latency=%.2f ms", ref["name"], task.metric, ref["value"], ref["latency_ms"])
    study.set_user_attr("teachers", references)
    study.set_user_attr("task", {"name": task.name, "metric": task.metric, "label_names": list(task.label_names)})
    recorded = dump_config(config)
    recorded["search"]["storage"] = mask_url(url)
    study.set_user_attr("config", recorded)
    inputs = prepare_inputs(config, task, teacher_logits)

    orphans = reconcile_orphans(study, storage)
    if orphans:
        logger.info("resumed: %d trial(s) left RUNNING by a lost driver were failed and re-enqueued", orphans)
    remaining = trials_left(study, config.search.n_trials)
    if remaining == 0:
        logger.info("the study already holds %d finished trials: nothing to run", config.search.n_trials)
        return study

    search = config.search
    init_ray(search.ray_address)
    searcher = KDNASSearch(
        space=SearchSpace(config.student.space).suggest,
        metric=objective_names(config),
        mode=["max", "min"],
        storage=storage,
        study_name=search.study_name,
        sampler=make_sampler(config),
        latency_budget_ms=config.latency.budget_ms,
    )
    resources = {"cpu": search.resources_per_trial.cpu, "gpu": search.resources_per_trial.gpu}
    trainable = tune.with_resources(tune.with_parameters(train_student, inputs=inputs), resources)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=remaining,
            max_concurrent_trials=search.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=search.study_name,
            storage_path=search.storage_path or str(output_dir / "ray_results"),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            callbacks=[ProgressLogger(task.metric)],
            verbose=0,
        ),
    )
    started = time.perf_counter()
    tuner.fit()
    logger.info("search finished in %.0f s", time.perf_counter() - started)
    return study


def retrain_student(study: optuna.Study, trial: optuna.trial.FrozenTrial, *, epochs: int | None = None) -> Path:
    """Train ``trial``'s architecture again with the study's recorded recipe (optionally for ``epochs``).

    The student is saved under ``<output_dir>/students/<study>/retrained/`` and its directory returned.
    """
    recorded = study.user_attrs.get("config")
    if recorded is None:
        raise ConfigError(f"study {study.study_name!r} has no recorded kdnas config to retrain from")
    raw = {**recorded, "search": {**recorded["search"], "storage": None}}
    if epochs is not None:
        raw["training"] = {**raw["training"], "epochs": epochs}
    config = build_config(raw)
    task = load_task(config.data)
    fit_teachers(config, task)
    _, teacher_logits = teacher_reference(config, task, Path(config.output_dir) / "cache")
    inputs = prepare_inputs(config, task, teacher_logits)
    inputs = replace(inputs, students_dir=str(Path(inputs.students_dir) / "retrained"))
    logger.info("retraining trial %d (%s epochs)", trial.number, config.training.epochs)
    run_trial(trial.params, inputs, trial_number=trial.number, device=driver_device(), report=lambda _: None)
    return student_dir(inputs, trial.number)
