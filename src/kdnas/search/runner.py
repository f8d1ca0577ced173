"""The search driver: prepare teachers and data once, then run students as Ray Tune trials into the Optuna study."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import tempfile
import time
import traceback
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune

from kdnas.config import ConfigError, KDNASConfig, build_config, dump_config
from kdnas.data import TaskData, load_task
from kdnas.data.augment import augment_texts
from kdnas.data.transfer import TransferSet, load_transfer_texts
from kdnas.export import Retrained
from kdnas.objectives.batches import concat, encode
from kdnas.objectives.importance import cached_importance
from kdnas.objectives.latency import resolve_device
from kdnas.objectives.latency_cache import measure_cached
from kdnas.objectives.metrics import score
from kdnas.objectives.teachers import (
    Teacher,
    cached_logits,
    fit_teacher,
    is_fitted,
    load_teacher,
    load_tokenizer,
    shares_tokenizer,
)
from kdnas.outputs import writable_dir
from kdnas.records import (
    ATTRS_KEY,
    DRIVER_ATTR,
    ERROR_KEY,
    FAILURE_ATTR,
    INFEASIBLE_KEY,
    LATENCY_KEY,
    TRIAL_NUMBER_KEY,
)
from kdnas.search.checkpoint import load_state, save_state
from kdnas.search.duplicates import recipe_key
from kdnas.search.fingerprint import config_fingerprint, task_fingerprint, transfer_fingerprint
from kdnas.search.progress import SearchProgress
from kdnas.search.resources import ResourceWait, check_local_resources
from kdnas.search.scheduler import LatencyAwareASHA, make_scheduler
from kdnas.search.searcher import DRIVER_LOST, KDNASSearch, counts_toward_budget
from kdnas.search.study import (
    HEARTBEAT_INTERVAL_S,
    check_comparable,
    create_or_load_study,
    find_study,
    mask_url,
    objective_names,
    open_storage,
    open_storage_if_exists,
    record_once,
)
from kdnas.search.trial import TrialInputs, build_and_measure, run_trial, student_dir
from kdnas.space import SearchSpace
from kdnas.space.inheritance import InheritanceSource, inheritance_source
from kdnas.space.search_space import smallest_student

logger = logging.getLogger(__name__)

UNLABELLED = -100
"""The label of a transfer example: cross-entropy ignores it, KD does not."""


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


def teacher_reference(
    config: KDNASConfig, task: TaskData, cache_dir: Path, transfer: TransferSet | None = None
) -> tuple[list[dict], torch.Tensor]:
    """Teachers' eval metric and latency (measured as students are), and their logits ``[K, N, C]`` on the train
    split followed by the ``transfer`` set."""
    device = driver_device()
    references, train_logits = [], []
    for teacher_cfg in config.teachers:
        teacher = load_teacher(config, teacher_cfg, task.num_labels)
        max_length = (teacher_cfg.fit.max_seq_length if teacher_cfg.fit else None) or config.data.max_seq_length
        logits = cached_logits(teacher, task, "train", max_length, cache_dir, device)
        if transfer:
            logits = torch.cat([logits, cached_logits(teacher, task, "transfer", max_length, cache_dir, device,
                                                      texts=transfer.texts, content=transfer.fingerprint())])
        train_logits.append(logits)
        eval_logits = cached_logits(teacher, task, "eval", max_length, cache_dir, device)
        latency = measure_cached(
            teacher.model,
            model_key={"teacher": json.loads(teacher.model.config.to_json_string(use_diff=False)),
                       "vocab_size": len(teacher.tokenizer)},
            vocab_size=len(teacher.tokenizer),
            settings=config.latency,
            seq_len=config.latency_seq_len,
            cache_dir=latency_cache_dir(config) if config.latency.cache else None,
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


def vocabulary_teachers(config: KDNASConfig, task: TaskData) -> list[Teacher]:
    """The teachers that tokenise like the students (same vocabulary, same ids on a sample of the task)."""
    student_tokenizer = load_tokenizer(config.student.tokenizer)
    sample = task.texts("train")[:64]
    teachers = [load_teacher(config, t, task.num_labels) for t in config.teachers]
    return [t for t in teachers if shares_tokenizer(student_tokenizer, t.tokenizer, sample)]


def inheritance_teacher(config: KDNASConfig, task: TaskData) -> Teacher | None:
    """The teacher students inherit from: ``student.inherit.teacher``, else the first BERT teacher with the
    students' vocabulary (None, with a warning, when there is none; an error when the named one cannot serve)."""
    inherit = config.student.inherit
    if not inherit.enabled:
        return None
    shared = {t.name: t for t in vocabulary_teachers(config, task)}
    if inherit.teacher is not None:
        teacher = shared.get(inherit.teacher)
        if teacher is None:
            raise ConfigError(f"student.inherit.teacher: teacher {inherit.teacher!r} does not use the students' "
                              f"vocabulary (student.tokenizer {config.student.tokenizer!r})")
        if teacher.model.config.model_type != "bert":
            raise ConfigError(f"student.inherit.teacher: teacher {inherit.teacher!r} is a "
                              f"{teacher.model.config.model_type} model; students inherit from BERT teachers only")
        return teacher
    teacher = next((t for t in shared.values() if t.model.config.model_type == "bert"), None)
    if teacher is None:
        logger.warning("no teacher is a BERT model with the students' vocabulary: students start from random weights")
    return teacher


def inheritance(config: KDNASConfig, task: TaskData, cache_dir: Path) -> InheritanceSource | None:
    """The inheritance teacher's weights and importance (ranked once on a seeded calibration subset, cached)."""
    teacher = inheritance_teacher(config, task)
    if teacher is None:
        return None
    inherit, texts = config.student.inherit, task.texts("train")
    rows = sorted(random.Random(config.data.seed).sample(range(len(texts)), min(inherit.calibration_size, len(texts))))
    max_length = config.data.max_seq_length
    calibration = encode(teacher.tokenizer, [texts[i] for i in rows], [0] * len(rows), max_length)
    importance, file = cached_importance(teacher, task, calibration, max_length, cache_dir, driver_device())
    teacher.model.to("cpu")
    return inheritance_source(teacher.name, teacher.model, importance, inherit.layers, calibration=len(rows),
                              cache_file=file.name)


def transfer_set(config: KDNASConfig, task: TaskData, found: TransferSet | None = None) -> TransferSet | None:
    """The configured transfer texts (``found``, loaded when not given) plus augmented copies of the training texts;
    None when there are none.

    Augmentation draws neighbours from the input embeddings of a teacher that tokenises like the students
    (``student.inherit.teacher`` when it is one); without such a teacher, automatic augmentation is skipped with a
    warning and configured augmentation is an error.
    """
    settings, copies = config.data.transfer, config.data.augment_copies
    found = load_transfer_texts(config.data, task) if found is None else found
    augmented: list = []
    teachers = sorted(vocabulary_teachers(config, task), key=lambda t: t.name != config.student.inherit.teacher) \
        if copies else []
    if copies and not teachers:
        problem = f"no teacher uses the students' vocabulary (student.tokenizer {config.student.tokenizer!r})"
        if settings.augment_copies is not None:
            raise ConfigError(f"data.transfer.augment_copies: {problem} to draw word neighbours from")
        logger.warning("no augmented transfer set: %s", problem)
    elif copies:
        embeddings = teachers[0].model.get_input_embeddings().weight.detach()
        augmented = augment_texts(task.texts("train"), load_tokenizer(config.student.tokenizer), embeddings,
                                  copies=copies, replace_prob=settings.replace_prob,
                                  neighbours=settings.neighbours, seed=config.data.seed)
    if not found.texts and not augmented:
        return None
    sources = {**found.sources, **({"augmented": len(augmented)} if augmented else {})}
    transfer = TransferSet(found.texts + augmented, sources)
    logger.info("transfer set: %d texts (%s)", len(transfer), ", ".join(f"{k} {v}" for k, v in sources.items()))
    return transfer


def uses_intermediate_kd(config: KDNASConfig) -> bool:
    """Whether any trial of this search may train with intermediate-layer KD (fixed on, or sampled)."""
    return config.kd.intermediate.enabled or any(c != "off" for c in config.kd.space.intermediate or [])


def intermediate_teachers(config: KDNASConfig, task: TaskData) -> tuple[tuple[str, Any], ...]:
    """The teachers taking part in intermediate KD: those sharing the student's tokenizer.

    A teacher named in ``kd.intermediate.teachers`` with another tokenizer is an error; by default such teachers
    take part in logit KD only, with a warning.
    """
    if not uses_intermediate_kd(config):
        return ()
    student_tokenizer = load_tokenizer(config.student.tokenizer)
    named = config.kd.intermediate.teachers
    sample = task.texts("train")[:64]
    chosen = []
    for teacher_cfg in config.teachers:
        if named is not None and teacher_cfg.name not in named:
            continue
        teacher = load_teacher(config, teacher_cfg, task.num_labels)
        if shares_tokenizer(student_tokenizer, teacher.tokenizer, sample):
            chosen.append((teacher.name, teacher.model))
        elif named is not None:
            raise ConfigError(
                f"kd.intermediate.teachers: teacher {teacher_cfg.name!r} does not share the student's tokenizer "
                f"({config.student.tokenizer!r}), so it cannot take part in intermediate KD"
            )
        else:
            logger.warning("teacher %s has another tokenizer than the student: it takes part in logit KD only",
                           teacher_cfg.name)
    if not chosen:
        raise ConfigError(
            f"intermediate KD is on but no teacher shares the student's tokenizer ({config.student.tokenizer!r})"
        )
    logger.info("intermediate KD teachers (run on the fly in every trial): %s", ", ".join(n for n, _ in chosen))
    return tuple(chosen)


def latency_cache_dir(config: KDNASConfig) -> Path:
    """Where students' latency measurements are cached: beside the teacher logits, shared by every study."""
    return (Path(config.output_dir) / "cache" / "latency").resolve()


def prepare_inputs(
    config: KDNASConfig, task: TaskData, teacher_logits: torch.Tensor, transfer: TransferSet | None = None
) -> TrialInputs:
    """Tokenise the task (and the transfer set, unlabelled) for students once, for every trial; load the
    intermediate-KD teachers and the inheritance source."""
    tokenizer = load_tokenizer(config.student.tokenizer)
    max_length = config.data.max_seq_length
    train = encode(tokenizer, task.texts("train"), task.labels("train"), max_length)
    if transfer:
        train = concat(train, encode(tokenizer, transfer.texts, [UNLABELLED] * len(transfer), max_length))
    return TrialInputs(
        config=config,
        metric=task.metric,
        label_names=task.label_names,
        train=train,
        eval=encode(tokenizer, task.texts("eval"), task.labels("eval"), max_length),
        teacher_names=tuple(t.name for t in config.teachers),
        teacher_logits=teacher_logits,
        students_dir=str((Path(config.output_dir) / "students" / config.search.study_name).resolve()),
        intermediate_teachers=intermediate_teachers(config, task),
        latency_cache_dir=str(latency_cache_dir(config)) if config.latency.cache else None,
        inherit=inheritance(config, task, Path(config.output_dir) / "cache"),
        transfer_rows=len(transfer) if transfer else 0,
    )


def check_budgets_reachable(inputs: TrialInputs) -> None:
    """Refuse a latency or size budget that even the space's smallest student exceeds (every trial would be wasted)."""
    config = inputs.config
    if config.latency.budget_ms is None and config.student.max_params is None:
        return
    arch = smallest_student(config.student.space)
    over = build_and_measure(arch, inputs).over_budget
    if over:
        raise ConfigError(f"no student of student.space fits the budget: even the smallest, {arch.summary}, has {over}")


def report_with_checkpoint(metrics: dict[str, Any], state: dict[str, Any]) -> None:
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


def train_student(config: dict[str, Any], inputs: TrialInputs) -> None:
    """The Ray Tune trainable: one student, checkpointed each epoch and resumed from its last checkpoint when
    retried; any error is reported (with its reason) rather than raised."""
    resources = inputs.config.search.resources_per_trial
    torch.set_num_threads(max(1, int(resources.cpu)))
    use_gpu = resources.gpu > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    try:
        run_trial(config, inputs, trial_number=config[TRIAL_NUMBER_KEY], device=device, report=tune.report,
                  checkpoint=report_with_checkpoint, resume=last_state())
    except Exception as err:  # recorded as FAIL with this reason by KDNASSearch
        logger.error("trial %s failed:\n%s", config.get(TRIAL_NUMBER_KEY), traceback.format_exc())
        reason = f"{type(err).__name__}: {err}"[:1000]
        tune.report({inputs.metric: math.nan, LATENCY_KEY: math.nan, ERROR_KEY: reason})  # Tune wants both keys


class SearchBookkeeping(tune.Callback):
    """Keeps the driver's trials' heartbeats fresh and counts trials restarted after their worker died."""

    def __init__(self, searcher: KDNASSearch, interval_s: float) -> None:
        self.searcher, self.interval_s, self.last_beat = searcher, interval_s, time.monotonic()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self.last_beat >= self.interval_s:
            self.searcher.record_heartbeats()
            self.last_beat = time.monotonic()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        logger.info("trial %s: its worker died; restarting it", trial.config.get(TRIAL_NUMBER_KEY))
        self.searcher.record_restart(trial.trial_id)


UNCLAIMED_GRACE_S = 60.0
"""A driver records itself on a trial right after creating it; a RUNNING trial still without one after this long
was left by a driver that died in between."""


def driver_gone(trial: optuna.trial.FrozenTrial, stale_ids: set[int]) -> bool:
    """Whether the driver of a RUNNING trial is gone: its heartbeat is stale, it never recorded itself (within
    :data:`UNCLAIMED_GRACE_S`), or it ran on this host and its process has exited."""
    driver = trial.system_attrs.get(DRIVER_ATTR)
    if trial._trial_id in stale_ids:
        return True
    if driver is None:  # another driver may be between creating this trial and recording itself on it
        started = trial.datetime_start
        return started is None or (datetime.now() - started).total_seconds() > UNCLAIMED_GRACE_S
    if driver["host"] != socket.gethostname():
        return False  # judged by its heartbeat
    if driver["pid"] == os.getpid():
        return True  # an earlier search in this process, which has ended
    try:
        os.kill(driver["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


def reconcile_orphans(study: optuna.Study, storage: optuna.storages.RDBStorage) -> int:
    """Fail RUNNING trials whose driver is gone (reason: driver lost) and re-enqueue their params once.

    Trials of drivers still running (their process on this host, or a fresh heartbeat) are left alone, so several
    drivers can share a study.
    """
    stale = set(storage._get_stale_trial_ids(study._study_id)) if storage.heartbeat_interval else set()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    orphans = [t for t in running if driver_gone(t, stale)]
    for trial in orphans:
        storage.set_trial_user_attr(trial._trial_id, FAILURE_ATTR, DRIVER_LOST)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        if trial.params:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return len(orphans)


def trials_left(study: optuna.Study, n_trials: int) -> int:
    """The trial budget minus trials finished or running (those failed by a lost driver are retried, not counted)."""
    return max(0, n_trials - sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False)))


def init_ray(address: str | None) -> None:
    """Connect to the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else start a quiet local Ray."""
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, ignore_reinit_error=True)
    else:
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)


def make_sampler(config: KDNASConfig, trials_before: int = 0) -> optuna.samplers.BaseSampler:
    """The configured multi-objective sampler, seeded with ``search.seed`` plus the number of trials the study held
    before this run: a resumed run does not replay the proposals of the first."""
    seed = config.search.seed + trials_before
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
    output_dir = writable_dir(Path(config.output_dir).resolve(), "output_dir")
    check_local_resources(config)
    url = config.storage_url
    storage = open_storage_if_exists(url)
    existing = find_study(storage, config.search.study_name) if storage else None
    fingerprint = config_fingerprint(config)
    check_comparable(existing, config, fingerprint, space=True)

    task = load_task(config.data)
    logger.info("task %s: %d train / %d eval examples, metric %s",
                task.name, len(task.train), len(task.eval), task.metric)
    fingerprint.update(task_fingerprint(task))
    check_comparable(existing, config, fingerprint)
    found = load_transfer_texts(config.data, task)  # a missing transfer file fails before teachers are fitted
    for teacher in config.teachers:  # a ready teacher's weights and tokenizer are checked before any fitting
        if teacher.fit is None:
            load_teacher(config, teacher, task.num_labels)
    fit_teachers(config, task)
    transfer = transfer_set(config, task, found)
    fingerprint.update(transfer_fingerprint(transfer))
    check_comparable(existing, config, fingerprint)
    references, teacher_logits = teacher_reference(config, task, output_dir / "cache", transfer)
    for ref in references:
        logger.info("teacher %s: %s=%.4f latency=%.2f ms", ref["name"], task.metric, ref["value"], ref["latency_ms"])
    inputs = prepare_inputs(config, task, teacher_logits, transfer)
    check_budgets_reachable(inputs)
    # the inputs are checked: only now is the study created (or a pre-fingerprint study given its fingerprint)
    storage = storage or open_storage(url)
    study = create_or_load_study(config, storage, fingerprint)
    logger.info("study %r in %s", config.search.study_name, mask_url(url))
    recorded = dump_config(config)
    recorded["search"]["storage"] = mask_url(url)
    record_once(study, {
        "teachers": references,
        "inheritance": inputs.inherit.record() if inputs.inherit else None,
        "transfer": {"size": len(transfer), "sources": transfer.sources,
                     "fingerprint": transfer.fingerprint()} if transfer else None,
        "task": {"name": task.name, "metric": task.metric, "label_names": list(task.label_names)},
        "config": recorded,
    })

    orphans = reconcile_orphans(study, storage)
    if orphans:
        logger.info("resumed: %d trial(s) left RUNNING by a lost driver were failed and re-enqueued", orphans)
    remaining = trials_left(study, config.search.n_trials)
    if remaining == 0:
        held = sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))
        logger.info("the study already holds %d finished trial(s), search.n_trials is %d: nothing to run",
                    held, config.search.n_trials)
        return study

    search = config.search
    space = SearchSpace(config.student.space, config.kd.space, config.training.space)
    logger.info("search space: %d distinct students", space.size())
    if search.n_trials > space.size():
        logger.warning("search.n_trials (%d) is more than the %d students the space holds: the search ends when "
                       "it has trained them all", search.n_trials, space.size())
    init_ray(search.ray_address)
    if scheduler is None:
        scheduler = make_scheduler(config, LATENCY_KEY)
    searcher = KDNASSearch(
        space=space.suggest,
        metric=objective_names(config),
        mode=["max", "min"],
        storage=storage,
        study_name=search.study_name,
        sampler=make_sampler(config, len(study.get_trials(deepcopy=False))),
        stop_reasons=scheduler.stop_reasons if isinstance(scheduler, LatencyAwareASHA) else None,
        n_trials=config.search.n_trials,
        reuse_duplicates=config.search.reuse_duplicates,
        recipe=recipe_key(dump_config(config)),
        space_size=space.size(),
    )
    resources = {"cpu": search.resources_per_trial.cpu, "gpu": search.resources_per_trial.gpu}
    # keeping one checkpoint per trial forces an experiment snapshot at each epoch; that is cheap here, so Tune's
    # warning about it would only be noise on every search
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trainable = tune.with_resources(tune.with_parameters(train_student, inputs=inputs), resources)
    progress = SearchProgress(study, task.metric, search.n_trials, search.time_budget_s)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=remaining,
            max_concurrent_trials=search.max_concurrent_trials,
            time_budget_s=search.time_budget_s,
            reuse_actors=True,  # a trial's worker imports torch and kdnas once, not once per trial
        ),
        run_config=tune.RunConfig(
            name=search.study_name,
            storage_path=search.storage_path or str(output_dir / "ray_results"),
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[progress, SearchBookkeeping(searcher, HEARTBEAT_INTERVAL_S / 2),
                       ResourceWait(search.resource_wait_s, resources)],
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
        logger.info("search.time_budget_s (%g s) ran out: %d unfinished student(s) recorded as PRUNED",
                    search.time_budget_s, cut)
    leftovers = reconcile_orphans(study, storage)  # e.g. a trial whose creation lost its connection half-way
    if leftovers:
        logger.info("%d trial(s) were left RUNNING and are failed; run the search again to fill the budget", leftovers)
    logger.info("search finished in %.0f s: %s", seconds, progress.status(final=True))
    return study


def retrain_student(study: optuna.Study, trial: optuna.trial.FrozenTrial, *, epochs: int | None = None
                    ) -> Retrained:
    """Train ``trial``'s architecture again with the study's recorded recipe (optionally for ``epochs``).

    The student is saved under ``<output_dir>/students/<study>/retrained/``; returned with its own metric, latency
    and attrs.
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
    transfer = transfer_set(config, task)
    _, teacher_logits = teacher_reference(config, task, Path(config.output_dir) / "cache", transfer)
    inputs = prepare_inputs(config, task, teacher_logits, transfer)
    inputs = replace(inputs, students_dir=str(Path(inputs.students_dir) / "retrained"))
    logger.info("retraining trial %d (%s epochs)", trial.number, config.training.epochs)
    result = run_trial(trial.params, inputs, trial_number=trial.number, device=driver_device(), report=lambda _: None)
    if INFEASIBLE_KEY in result:  # e.g. measured slower than latency.budget_ms on this machine
        raise ConfigError(f"trial {trial.number} retrained: {result[INFEASIBLE_KEY]}")
    return Retrained(student_dir(inputs, trial.number), result[inputs.metric], result[LATENCY_KEY],
                     json.loads(result[ATTRS_KEY]))
