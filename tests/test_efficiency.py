"""Search efficiency: latency cache, latency-first budgets, latency-aware early stopping."""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from types import SimpleNamespace

import optuna
import pytest
import safetensors.torch
import torch
from optuna.trial import TrialState
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from conftest import make_searcher, outcome_of
from kdnas.config import ConfigError, EarlyStoppingConfig, KDNASConfig, LatencyConfig, build_config, load_config
from kdnas.latency import cache as latency_cache
from kdnas.latency.timing import LatencyResult
from kdnas.student.batches import Encoded
from kdnas.student.metrics import standard_error
from kdnas.student.training import label_probability
from kdnas.study.records import (
    ATTRS_KEY,
    COMPLETED_KEY,
    CONSTRAINTS_KEY,
    INFEASIBLE_KEY,
    LABEL_PROBABILITY_KEY,
    LABEL_PROBABILITY_SE_KEY,
    TrialReport,
)
from kdnas.study.repeats import known_students
from kdnas.tune import student_run, trial_inputs
from kdnas.tune.rungs import mid_epoch_rungs, mid_epoch_steps, rungs_in_warmup
from kdnas.tune.scheduler import ParetoStopping, early_stopping_enabled, make_scheduler, rungs
from kdnas.tune.trial import run_trial
from kdnas.tune.trial_inputs import TrialInputs

METRICS = ["accuracy", "latency_ms"]
FAST = LatencyConfig(warmup=0, runs=3, min_run_time_s=0)


# --- latency cache -------------------------------------------------------------------------------------------------


class _Echo(torch.nn.Module):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return input_ids


def test_latency_cache_hit_skips_the_measurement(tmp_path, monkeypatch):
    calls = []
    real = latency_cache.measure_configured
    monkeypatch.setattr(latency_cache, "measure_configured", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(latency_cache, "contention", lambda *_: None)  # a busy machine is another test's subject
    model = _Echo()
    key = {"arch": {"num_layers": 1}}

    def measure(settings: LatencyConfig = FAST, model_key=key):
        return latency_cache.measure_cached(
            model, model_key=model_key, vocab_size=10, settings=settings, seq_len=8, cache_dir=tmp_path
        )

    first, second = measure(), measure()
    assert calls == [1] and not first.cached and second.cached
    assert second.median_ms == first.median_ms and second.device_name == first.device_name
    measure(LatencyConfig(warmup=0, runs=4, min_run_time_s=0))
    measure(model_key={"arch": {"num_layers": 2}})
    assert calls == [1, 1, 1], "other settings or another model are other keys"
    assert not list(tmp_path.glob(".*.tmp")), "writes are atomic: no temporary file is left"


def test_a_steady_measurement_slower_than_an_earlier_attempt_is_not_trusted(monkeypatch):
    def result(median_ms: float) -> LatencyResult:
        return LatencyResult(median_ms, median_ms, 0.0, "cpu", "cpu", 1, 1, 8, 10, 0)

    def attempts(*taken: tuple[float, str | None]):
        queue = [(result(ms), problem) for ms, problem in taken]
        monkeypatch.setattr(latency_cache, "_measure", lambda *_: queue.pop(0))
        return latency_cache.measure_trusted(_Echo(), vocab_size=10, settings=FAST, seq_len=8)

    busy = "its thread ran 60% of the time"
    kept, trusted = attempts((1.66, busy), (2.88, None), (1.70, None))  # a neighbour slowed the second one
    assert (kept.median_ms, trusted) == (1.70, True)
    kept, trusted = attempts((1.66, busy), (2.88, None), (2.90, None))
    assert (kept.median_ms, trusted) == (1.66, False), "never trusted: the fastest is kept, uncached"
    kept, trusted = attempts((1.66, busy), (1.70, None))  # within MAX_SKEW of the earlier attempt
    assert (kept.median_ms, trusted) == (1.70, True)


# --- latency first: budgets ----------------------------------------------------------------------------------------


def _inputs(tmp_path, **sections) -> TrialInputs:
    raw = {"latency": {"warmup": 0, "runs": 3, "min_run_time_s": 0, **sections.pop("latency", {})}, **sections}
    return TrialInputs(
        config=build_config(raw),
        metric="accuracy",
        label_names=("neg", "pos"),
        train=None,
        eval=None,
        teacher_names=(),
        teacher_logits=torch.zeros(0),
        students_dir=str(tmp_path),
        latency_cache_dir=str(tmp_path / "latency"),
    )


ARCH = {"num_layers": 1, "num_heads": 2, "head_dim": 16, "ffn_ratio": 1}


@pytest.mark.parametrize(
    ("sections", "violated", "reason"),
    [
        ({"latency": {"budget_ms": 1e-6}}, "latency_ms", "ms > budget 1e-06 ms"),
        ({"student": {"max_params": 1000}}, "params", "parameters > student.max_params 1,000"),
    ],
)
def test_infeasible_candidate_is_measured_and_never_trained(tmp_path, monkeypatch, sections, violated, reason):
    def no_training(*args, **kwargs):
        raise AssertionError("an infeasible student must not train")

    monkeypatch.setattr(student_run, "train", no_training)
    reports = []
    result = run_trial(ARCH, _inputs(tmp_path, **sections), trial_number=0, device="cpu", report=reports.append)
    assert reports == [result] and result[INFEASIBLE_KEY].startswith("infeasible, not trained: ")
    assert reason in result[INFEASIBLE_KEY]
    assert not (tmp_path / "trial-0000").exists()
    outcome = outcome_of(result)
    assert outcome.state == TrialState.PRUNED and outcome.values is None
    assert outcome.reason == result[INFEASIBLE_KEY] and outcome.constraints[violated] > 0
    assert outcome.attrs["params"] > 1000 and outcome.attrs["latency"]["median_ms"] == result["latency_ms"]
    assert outcome.attrs["epochs_trained"] == 0 and outcome.attrs["arch_summary"] == "L1-H32-A2-F32"


def test_feasible_results_carry_their_constraints():
    result = {
        "accuracy": 0.8,
        "latency_ms": 2.0,
        "kdnas_completed": True,
        CONSTRAINTS_KEY: json.dumps({"latency_ms": -1.0, "params": -5.0}),
    }
    outcome = outcome_of(result)
    assert outcome.state == TrialState.COMPLETE and outcome.constraints == {"latency_ms": -1.0, "params": -5.0}
    assert trial_inputs.budget_constraints(KDNASConfig(), 2.0, 10) == {}


# --- latency-aware early stopping ----------------------------------------------------------------------------------


def _feed(scheduler, trial_id: str, epoch: int, accuracy: float, latency: float) -> str:
    result = {"epoch": epoch, "accuracy": accuracy, "latency_ms": latency}
    return scheduler.on_trial_result(None, SimpleNamespace(trial_id=trial_id, config={}), result)


STUDENTS = [("slow-best", 0.90, 5.0), ("fast-best", 0.60, 1.0), ("slow", 0.85, 5.2), ("fast", 0.55, 1.1)]


def _scheduler(**kwargs) -> ParetoStopping:
    """The rule judging by the metric (these tests feed accuracies); the default judge is tested below."""
    defaults = {"max_t": 4, "eval_rows": 1000, "judge_by": "metric"}
    return ParetoStopping(metric="accuracy", latency_attr="latency_ms", **{**defaults, **kwargs})


def test_by_default_students_are_judged_by_the_probability_they_give_the_labels():
    # three students still predicting the majority class: equal accuracy, which cannot tell them apart
    scheduler = ParetoStopping(metric="accuracy", latency_attr="latency_ms", max_t=4, eval_rows=872, grace_period=0.25)

    def feed(name: str, probability: float, error: float, latency: float) -> str:
        result = {"epoch": 0.25, "accuracy": 0.5092, "latency_ms": latency}
        result.update({LABEL_PROBABILITY_KEY: probability, LABEL_PROBABILITY_SE_KEY: error})
        return scheduler.on_trial_result(None, SimpleNamespace(trial_id=name, config={}), result)

    assert feed("learning", 0.560, 0.004, 1.0) == TrialScheduler.CONTINUE
    assert feed("close", 0.557, 0.004, 2.0) == TrialScheduler.CONTINUE  # 0.003 behind: within one standard error
    assert feed("stuck", 0.501, 0.001, 2.0) == TrialScheduler.STOP
    assert feed("faster", 0.501, 0.001, 0.5) == TrialScheduler.CONTINUE  # nobody faster
    assert _feed(scheduler, "unjudged", 0.25, 0.1, 3.0) == TrialScheduler.CONTINUE  # a report without it
    assert scheduler.stop_reasons == {
        "stuck": "stopped early after epoch 0.25: accuracy 0.5092, label probability 0.5010, while a student at least "
        "as fast (1 ms, this one 2 ms) had 0.5600 there, ahead by more than 1 standard error(s) (0.0040 on 872 "
        "examples)"
    }
    config = build_config({"search": {"early_stopping": {"mode": "on"}}})
    assert config.search.early_stopping.judge_by == "label_probability"
    assert make_scheduler(config, "latency_ms", 100).judge_by == "label_probability"
    metric = build_config({"search": {"early_stopping": {"mode": "on", "judge_by": "metric"}}})
    assert make_scheduler(metric, "latency_ms", 100).judge_by == "metric"
    with pytest.raises(ValueError, match="judge_by must be one of label_probability, metric, not 'loss'"):
        _scheduler(judge_by="loss")
    with pytest.raises(ConfigError, match="judge_by"):
        build_config({"search": {"early_stopping": {"judge_by": "loss"}}})


def test_label_probability_is_the_mean_probability_of_each_label_and_its_standard_error():
    logits = torch.log(torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]]))
    labels = torch.tensor([0, 0, 0, 1])  # the label's probabilities: 0.9, 0.6, 0.3 and 0.8
    mean, error = label_probability(logits, labels, balanced=False)
    assert mean == pytest.approx(0.65) and error == pytest.approx(statistics.stdev([0.9, 0.6, 0.3, 0.8]) / 2)
    mean, error = label_probability(logits, labels, balanced=True)  # class 0: 0.6 ± 0.3/√3; class 1: 0.8 alone
    assert mean == pytest.approx(0.7) and error == pytest.approx(math.sqrt(0.09 / 3) / 2)


def test_scheduler_stops_students_a_faster_one_is_clearly_ahead_of_and_keeps_the_fast_end():
    scheduler = _scheduler()
    decisions = {name: _feed(scheduler, name, 1, acc, lat) for name, acc, lat in STUDENTS}
    assert decisions == {"slow-best": "CONTINUE", "fast-best": "CONTINUE", "slow": "STOP", "fast": "STOP"}
    assert scheduler.stop_reasons["fast"] == (
        "stopped early after epoch 1: accuracy 0.5500, while a student at least as fast (1 ms, this one 1.1 ms) had "
        "0.6000 there, ahead by more than 1 standard error(s) (0.0155 on 1000 examples)"
    )
    # plain ASHA, fed the same students, stops the fast end of the front
    asha = AsyncHyperBandScheduler(time_attr="epoch", metric="accuracy", mode="max", max_t=4, reduction_factor=2)
    for name, *_ in STUDENTS:
        asha.on_trial_add(None, SimpleNamespace(trial_id=name))
    plain = {name: _feed(asha, name, 1, acc, lat) for name, acc, lat in STUDENTS}
    assert plain["fast-best"] == TrialScheduler.STOP


def test_scheduler_never_stops_on_a_lead_the_evaluation_set_cannot_resolve():
    # on 100 examples one standard error at 0.80 is 0.04: a lead of 0.03 is noise, one of 0.10 is not
    def decisions(margin_se: float) -> dict[str, str]:
        scheduler = _scheduler(eval_rows=100, margin_se=margin_se)
        feed = [("leader", 0.80, 1.0), ("close", 0.77, 2.0), ("behind", 0.70, 2.0)]
        return {name: _feed(scheduler, name, 1, acc, lat) for name, acc, lat in feed}

    assert decisions(1.0) == {"leader": "CONTINUE", "close": "CONTINUE", "behind": "STOP"}
    assert decisions(0.0) == {"leader": "CONTINUE", "close": "STOP", "behind": "STOP"}
    assert decisions(3.0) == {"leader": "CONTINUE", "close": "CONTINUE", "behind": "CONTINUE"}


def test_metric_standard_errors():
    assert standard_error("accuracy", 0.8, 100) == pytest.approx(0.04)
    assert standard_error("f1", 0.5, 400) == pytest.approx(0.025)
    assert standard_error("mcc", 0.6, 101) == pytest.approx(0.064)
    assert standard_error("accuracy", 1.2, 10) == 0.0 and standard_error("mcc", 0.5, 1) == math.inf
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        standard_error("auc", 0.5, 10)


def test_scheduler_never_stops_a_student_on_the_rungs_front():
    scheduler = _scheduler()
    assert _feed(scheduler, "slow", 1, 0.80, 3.0) == TrialScheduler.CONTINUE
    assert _feed(scheduler, "mid", 1, 0.75, 2.0) == TrialScheduler.CONTINUE
    assert _feed(scheduler, "fastest", 1, 0.50, 0.5) == TrialScheduler.CONTINUE  # nobody is faster
    assert _feed(scheduler, "dominated", 1, 0.70, 2.5) == TrialScheduler.STOP  # "mid" is faster and better
    assert _feed(scheduler, "later", 2, 0.1, 1.0) == TrialScheduler.CONTINUE  # alone at rung 2
    promoted = SimpleNamespace(trial_id="promoted", config={"kdnas_promoted": True})  # trains in full
    assert scheduler.on_trial_result(None, promoted, {"epoch": 1, "accuracy": 0.1, "latency_ms": 9.0}) == "CONTINUE"
    assert set(scheduler.stop_reasons) == {"dominated"}


def test_scheduler_judges_rungs_only_and_ignores_unmeasured_results():
    assert rungs(1, 2, 4) == [1, 2] and rungs(1, 3, 10) == [1, 3, 9] and rungs(2, 2, 2) == []
    scheduler = _scheduler()
    assert _feed(scheduler, "a", 1, 0.9, 1.0) == TrialScheduler.CONTINUE
    assert _feed(scheduler, "b", 3, 0.1, 1.0) == TrialScheduler.CONTINUE  # epoch 3 is no rung
    assert _feed(scheduler, "c", 1, math.nan, 1.0) == TrialScheduler.CONTINUE  # infeasible or failed report
    assert _feed(scheduler, "d", 1, 0.1, 1.0) == TrialScheduler.STOP
    assert _feed(scheduler, "d", 1, 0.1, 1.0) == TrialScheduler.CONTINUE  # a repeated result is judged once


def test_a_fractional_grace_puts_rungs_inside_the_first_epoch():
    assert rungs(0.25, 2, 3) == [0.25, 0.5, 1, 2] and rungs(0.5, 3, 2) == [0.5, 1.5]
    config = build_config(
        {"search": {"early_stopping": {"mode": "on", "grace_epochs": 0.25}}, "training": {"epochs": 3, "batch_size": 4}}
    )
    assert mid_epoch_rungs(config) == [0.25, 0.5]
    assert rungs_in_warmup(config) == [0.25]  # warm-up: the first 10 % of 3 epochs' steps
    assert rungs_in_warmup(build_config({"search": {"early_stopping": {"mode": "on", "grace_epochs": 0.5}}})) == []
    assert mid_epoch_steps(config, 16) == {1: 0.25, 2: 0.5}  # 4 steps per epoch
    assert mid_epoch_steps(config, 4) == {}  # one step per epoch: both rungs round to an epoch's end
    off = config.model_copy(
        update={"search": config.search.model_copy(update={"early_stopping": EarlyStoppingConfig(mode="off")})}
    )
    assert mid_epoch_rungs(off) == [] and mid_epoch_steps(off, 16) == {}
    scheduler = _scheduler(max_t=3, grace_period=0.25)
    assert _feed(scheduler, "a", 0.25, 0.9, 1.0) == TrialScheduler.CONTINUE
    assert _feed(scheduler, "b", 0.3, 0.1, 1.0) == TrialScheduler.CONTINUE  # no rung
    assert _feed(scheduler, "b", 0.25, 0.1, 1.0) == TrialScheduler.STOP
    assert scheduler.stop_reasons["b"].startswith("stopped early after epoch 0.25: accuracy 0.1000, while a student")


def test_a_trial_reports_at_its_mid_epoch_rungs_without_changing_its_training(tmp_path):
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, 30000, (16, 8), generator=generator)
    data = Encoded(ids, torch.ones_like(ids), None, (ids[:, 0] > 15000).long())

    def trial(stopping: str, out: str) -> tuple[list[dict], dict]:
        raw = {
            "data": {"max_seq_length": 8},
            "training": {"epochs": 2, "batch_size": 4},
            "latency": {"warmup": 0, "runs": 3, "min_run_time_s": 0, "cache": False},
            "student": {"inherit": {"enabled": False}},
            "search": {"early_stopping": {"mode": stopping, "grace_epochs": 0.25}},
        }
        inputs = TrialInputs(
            config=build_config(raw),
            metric="accuracy",
            label_names=("neg", "pos"),
            train=data,
            eval=data,
            teacher_names=("t",),
            teacher_logits=torch.randn(1, len(data), 2, generator=torch.Generator().manual_seed(0)),
            students_dir=str(tmp_path / out),
        )
        reports: list[dict] = []
        run_trial(ARCH, inputs, trial_number=0, device="cpu", report=reports.append)
        weights = safetensors.torch.load_file(tmp_path / out / "trial-0000" / "model.safetensors")
        return reports, weights

    reports, weights = trial("on", "on")
    assert [r["epoch"] for r in reports] == [0.25, 0.5, 1, 2] and reports[-1][COMPLETED_KEY]
    stopped_at = [TrialReport.from_result(r, "accuracy") for r in reports[:2]]
    assert [(r.epoch, r.attrs["epochs_trained"]) for r in stopped_at] == [(0.25, 0.25), (0.5, 0.5)]
    curve = TrialReport.from_result(reports[-1], "accuracy").attrs["learning_curve"]
    assert [(epoch, value) for epoch, value, *_ in curve] == [(r["epoch"], r["accuracy"]) for r in reports]
    assert [point[3:] for point in curve] == [
        [round(r[LABEL_PROBABILITY_KEY], 6), round(r[LABEL_PROBABILITY_SE_KEY], 6)] for r in reports
    ]
    assert all(0 < r[LABEL_PROBABILITY_KEY] < 1 and 0 < r[LABEL_PROBABILITY_SE_KEY] < 0.5 for r in reports)
    assert all(0 < a[2] <= b[2] for a, b in zip(curve, curve[1:]))
    assert stopped_at[1].attrs["learning_curve"] == curve[:2]
    plain, plain_weights = trial("off", "off")
    assert [r["epoch"] for r in plain] == [1, 2] and plain[-1]["accuracy"] == reports[-1]["accuracy"]
    assert weights.keys() == plain_weights.keys()
    assert all(torch.equal(weights[k], plain_weights[k]) for k in weights)  # evaluating mid-epoch leaves training be


CURVES = {  # name: (latency ms, accuracy after each of 4 epochs); Tune runs them one by one, in this order
    "slow": (3.0, [0.80, 0.82, 0.84, 0.85]),
    "mid": (2.0, [0.75, 0.78, 0.80, 0.81]),
    "fastest": (0.5, [0.50, 0.60, 0.70, 0.72]),
    "dominated": (2.5, [0.70, 0.71, 0.72, 0.73]),  # "mid" is faster and better after epoch 1
}


@pytest.mark.slow
def test_latency_aware_asha_stops_the_dominated_student_in_a_real_tune_run(ray_session, tmp_path):
    from ray import tune

    from kdnas.tune.driver import init_ray

    def report_curve(config: dict) -> None:  # nested, so the workers get it by value
        latency, curve = config["student"]
        for epoch, accuracy in enumerate(curve, start=1):
            tune.report({"epoch": epoch, "accuracy": accuracy, "latency_ms": latency})

    init_ray(None)
    scheduler = _scheduler()
    tuner = tune.Tuner(
        tune.with_resources(report_curve, {"cpu": 1}),
        param_space={"student": tune.grid_search(list(CURVES.values()))},
        tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="asha", verbose=0),
    )
    results = tuner.fit()
    assert not results.errors
    names = {latency: name for name, (latency, _) in CURVES.items()}
    epochs = {names[r.config["student"][0]]: r.metrics["epoch"] for r in results}
    assert epochs == {"slow": 4, "mid": 4, "fastest": 4, "dominated": 1}
    (reason,) = scheduler.stop_reasons.values()
    assert reason.startswith("stopped early after epoch 1: accuracy 0.7000, while a student at least as fast (2 ms")


def test_configs_with_the_earlier_rules_latency_bins_still_load(caplog):
    with caplog.at_level(logging.WARNING, logger="kdnas.config"):
        stopping = build_config({"search": {"early_stopping": {"latency_bins": 3}}}).search.early_stopping
    assert stopping == EarlyStoppingConfig() and "latency_bins is no longer used" in caplog.text


def test_early_stopping_is_off_by_default_and_auto_turns_it_on_from_eight_trials_with_a_rung():
    def config(**search):
        return build_config({"search": search})

    assert not early_stopping_enabled(config(n_trials=100)) and make_scheduler(config(), "latency_ms", 100) is None
    auto = {"mode": "auto"}
    assert not early_stopping_enabled(config(n_trials=7, early_stopping=auto))
    assert early_stopping_enabled(config(n_trials=8, early_stopping=auto))
    assert make_scheduler(config(n_trials=8, early_stopping=auto), "latency_ms", 100)
    one_epoch = {"search": {"n_trials": 20, "early_stopping": auto}, "training": {"epochs": 1}}
    assert not early_stopping_enabled(build_config(one_epoch))
    for written, mode in (("on", "on"), ("off", "off"), ("auto", "auto")):  # YAML reads bare on/off as booleans
        assert load_config(None, [f"search.early_stopping.mode={written}"]).search.early_stopping.mode == mode
    assert early_stopping_enabled(config(n_trials=2, early_stopping={"mode": "on"}))
    assert make_scheduler(config(n_trials=20, early_stopping={"mode": "off"}), "latency_ms", 100) is None
    with pytest.raises(ConfigError, match="grace_epochs \\(4\\) must be below training.epochs \\(4\\)"):
        build_config({"search": {"early_stopping": {"mode": "on", "grace_epochs": 4}}, "training": {"epochs": 4}})


# --- a real tiny search --------------------------------------------------------------------------------------------


def test_searcher_records_the_schedulers_reason_for_a_stopped_student(tmp_path):
    from kdnas.study.records import PRUNED_ATTR
    from kdnas.study.storage import create_or_load_study, open_storage

    config = KDNASConfig()
    storage = open_storage(f"sqlite:///{tmp_path}/study.db")
    study = create_or_load_study(config, storage)
    searcher = make_searcher(config, storage, stop_reasons={"t1": "why"})
    for trial_id in ("t1", "t2"):
        searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, {"accuracy": 0.5, "latency_ms": 1.0, "epoch": 1})
    first, second = study.trials
    assert first.state == second.state == TrialState.PRUNED
    assert first.user_attrs[PRUNED_ATTR] == "why" and second.user_attrs[PRUNED_ATTR] == "stopped early after epoch 1"


def test_searcher_stops_at_the_deadline_and_says_so(tmp_path):
    from ray.tune.search import Searcher

    from kdnas.study.records import PRUNED_ATTR
    from kdnas.study.storage import create_or_load_study, open_storage
    from kdnas.tune.deadline import DeadlineStopper

    config = KDNASConfig()
    storage = open_storage(f"sqlite:///{tmp_path}/study.db")
    study = create_or_load_study(config, storage)
    searcher = make_searcher(config, storage)
    stopper = DeadlineStopper(searcher)  # Tune's stop for the time budget: the searcher's own clock
    assert isinstance(searcher.suggest("running"), dict) and not stopper.stop_all()
    searcher.deadline = time.monotonic() + 60.0
    assert not stopper.stop_all()
    searcher.deadline = time.monotonic() - 1.0
    assert stopper.stop_all() and searcher.suggest("late") == Searcher.FINISHED
    searcher.on_trial_complete("running", {"accuracy": 0.5, "latency_ms": 1.0, "epoch": 2})
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs[PRUNED_ATTR] == "stopped when the search's time budget ran out after epoch 2"


def _searcher(config: KDNASConfig, storage, *, recipe: str = "r1", seed: int = 0, **kwargs):
    from kdnas.student import SearchSpace

    space = SearchSpace(config.student.space)
    return make_searcher(
        config,
        storage,
        sampler=optuna.samplers.RandomSampler(seed=seed),
        recipe=recipe,
        space_size=space.size(),
        **kwargs,
    )


def _complete(searcher, trial_id: str, accuracy: float) -> None:
    attrs = {"epochs_trained": 4, "params": 10, "train_started_at": 1.0, "train_finished_at": 9.0}
    searcher.on_trial_complete(
        trial_id,
        {
            "accuracy": accuracy,
            "latency_ms": 1.5,
            "epoch": 4,
            COMPLETED_KEY: True,
            ATTRS_KEY: json.dumps(attrs),
            CONSTRAINTS_KEY: json.dumps({}),
        },
    )


def test_a_student_the_study_holds_is_recorded_as_a_repeat_and_the_sampler_asked_again(tmp_path):
    from kdnas.study.orphans import counts_toward_budget
    from kdnas.study.records import TRIAL_NUMBER_KEY
    from kdnas.study.storage import create_or_load_study, open_storage

    config = KDNASConfig()
    storage = open_storage(f"sqlite:///{tmp_path}/study.db")
    study = create_or_load_study(config, storage)
    first_run = _searcher(config, storage, reuse_duplicates=True)
    first_run.suggest("t1")
    _complete(first_run, "t1", 0.7)
    held = study.trials[0].params
    study.enqueue_trial(held)  # the next run's sampler proposes the same student
    second_run = _searcher(config, storage, reuse_duplicates=True, n_trials=2, seed=1)
    config_2 = second_run.suggest("t2")
    original, repeat, fresh = study.trials
    assert repeat.state == TrialState.COMPLETE and repeat.values == original.values == [0.7, 1.5]
    assert repeat.user_attrs["duplicate_of"] == 0 and repeat.user_attrs["recipe"] == "r1"
    assert "train_started_at" not in repeat.user_attrs and repeat.user_attrs["params"] == 10  # it cost nothing
    assert not counts_toward_budget(repeat) and counts_toward_budget(original)
    assert config_2[TRIAL_NUMBER_KEY] == fresh.number == 2 and fresh.params != held
    assert fresh.state == TrialState.RUNNING

    study.enqueue_trial(held)  # another recipe (e.g. more epochs) or reuse off: the student is trained again
    other_recipe = _searcher(config, storage, recipe="r2", reuse_duplicates=True)
    assert other_recipe.suggest("t3")[TRIAL_NUMBER_KEY] == 3 and study.trials[3].params == held
    study.enqueue_trial(held)
    assert _searcher(config, storage, reuse_duplicates=False).suggest("t4")[TRIAL_NUMBER_KEY] == 4


def test_an_exhausted_space_ends_the_search_with_its_reason(tmp_path):
    from ray.tune.search import Searcher

    from kdnas.study.storage import create_or_load_study, open_storage

    config = build_config(
        {"student": {"space": {"depth": {"min": 1, "max": 2}, "heads": [2], "head_dim": [8], "ffn_ratio": [1]}}}
    )
    storage = open_storage(f"sqlite:///{tmp_path}/study.db")
    study = create_or_load_study(config, storage)
    searcher = _searcher(config, storage, reuse_duplicates=True)
    searcher.suggest("t0")
    searcher.suggest("t1")  # a proposal of the student t0 trains is recorded as its repeat, and another asked
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    assert sorted(t.params["num_layers"] for t in trained) == [1, 2]
    assert all(
        t.state == TrialState.PRUNED and t.user_attrs["pruned_reason"].endswith("which was training: not trained twice")
        for t in study.trials
        if t not in trained
    )
    assert searcher.suggest("t2") is None, "both students still train: wait, one may be cut by the time budget"
    _complete(searcher, "t0", 0.6)
    _complete(searcher, "t1", 0.7)
    assert searcher.suggest("t2") == Searcher.FINISHED
    assert searcher.exhausted == "the study holds all 2 students of the search space"


def test_once_every_student_was_tried_the_stopped_ones_are_promoted_to_full_training(tmp_path):
    from ray.tune.search import Searcher

    from kdnas.study.records import PROMOTED_KEY, TRIAL_NUMBER_KEY
    from kdnas.study.storage import create_or_load_study, open_storage

    config = build_config(
        {"student": {"space": {"depth": {"min": 1, "max": 3}, "heads": [2], "head_dim": [8], "ffn_ratio": [1]}}}
    )
    storage = open_storage(f"sqlite:///{tmp_path}/study.db")
    study = create_or_load_study(config, storage)
    reasons = {"t1": "stopped early after epoch 1: …", "t2": "stopped early after epoch 1: …"}
    searcher = _searcher(config, storage, reuse_duplicates=True, stop_reasons=reasons)
    configs = {tid: searcher.suggest(tid) for tid in ("t0", "t1", "t2")}
    assert PROMOTED_KEY not in configs["t1"]
    _complete(searcher, "t0", 0.6)
    for tid, accuracy, latency in (("t1", 0.55, 1.0), ("t2", 0.50, 2.0)):  # t2's student is dominated when stopped
        curve = [[1, accuracy, 3.0]]
        searcher.on_trial_complete(
            tid,
            {
                "accuracy": accuracy,
                "latency_ms": latency,
                "epoch": 1,
                ATTRS_KEY: json.dumps({"learning_curve": curve, "latency": {"median_ms": latency}}),
            },
        )
    by_number = {t.number: t for t in study.trials}
    t1, t2 = (configs[tid][TRIAL_NUMBER_KEY] for tid in ("t1", "t2"))
    assert by_number[t1].state == by_number[t2].state == TrialState.PRUNED
    promoted = searcher.suggest("t3")  # all 3 students tried: t1's, on the stopped students' front, trains in full
    assert promoted[PROMOTED_KEY] and {k: promoted[k] for k in by_number[t1].params} == by_number[t1].params
    record = next(t for t in study.trials if t.number == promoted[TRIAL_NUMBER_KEY])
    assert record.user_attrs["promoted_from"] == t1 and record.state == TrialState.RUNNING
    second = searcher.suggest("t4")  # then t2's
    assert second[PROMOTED_KEY] and {k: second[k] for k in by_number[t2].params} == by_number[t2].params
    assert searcher.suggest("t5") is None, "nothing left to promote: wait for the promoted students"
    _complete(searcher, "t3", 0.7)
    _complete(searcher, "t4", 0.65)
    assert searcher.suggest("t6") == Searcher.FINISHED
    known = {t.number for t in known_students(study.trials, "r1").values()}  # repeats now reuse the full results
    assert known == {configs["t0"][TRIAL_NUMBER_KEY], promoted[TRIAL_NUMBER_KEY], second[TRIAL_NUMBER_KEY]}


class _StopAllButPromoted(ParetoStopping):
    """Stops every student at its first rung unless it was promoted: the searcher's promotions, made certain."""

    def on_trial_result(self, tune_controller, trial, result):
        if trial.config.get("kdnas_promoted") or result.get("epoch") != 1:
            return TrialScheduler.CONTINUE
        self.stop_reasons[trial.trial_id] = "stopped early after epoch 1: by the test"
        return TrialScheduler.STOP


@pytest.mark.slow
def test_a_search_that_tried_every_student_trains_the_stopped_ones_in_full(run_dir, ray_session):
    from conftest import tiny_raw
    from kdnas.tune.driver import run_search

    space = {"depth": {"min": 1, "max": 2}, "heads": [2], "head_dim": [8], "ffn_ratio": [1]}  # 2 students
    config = build_config(
        tiny_raw(run_dir, student={"space": space}, search={"n_trials": 4, "study_name": "promotions"})
    )
    study = run_search(
        config, scheduler=_StopAllButPromoted(metric="accuracy", latency_attr="latency_ms", max_t=2, eval_rows=48)
    )
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    stopped = [t for t in trained if t.state == TrialState.PRUNED]
    promoted = [t for t in trained if "promoted_from" in t.user_attrs]
    assert len(stopped) == 2 and all(t.user_attrs["pruned_reason"].endswith("by the test") for t in stopped)
    assert sorted(t.user_attrs["promoted_from"] for t in promoted) == sorted(t.number for t in stopped)
    assert all(t.state == TrialState.COMPLETE and t.user_attrs["epochs_trained"] == 2 for t in promoted)
    assert {json.dumps(t.params, sort_keys=True) for t in promoted} == {
        json.dumps(t.params, sort_keys=True) for t in stopped
    }


@pytest.mark.slow
def test_search_trains_a_repeated_student_once_and_counts_its_cost_once(run_dir, ray_session):
    from conftest import tiny_raw
    from kdnas.study.repeats import training_seconds
    from kdnas.study.storage import open_storage
    from kdnas.tune.driver import run_search

    config = build_config(tiny_raw(run_dir, search={"n_trials": 2, "study_name": "duplicates"}))
    run_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=open_storage(config.storage_url), study_name="duplicates", directions=["maximize", "minimize"]
    )
    repeated = {"num_layers": 1, "num_heads": 2, "head_dim": 8, "ffn_ratio": 1}
    for params in (repeated, repeated, {**repeated, "ffn_ratio": 2}):  # the sampler proposes a student twice
        study.enqueue_trial(params)
    started = time.perf_counter()
    study = run_search(config)
    wall = time.perf_counter() - started
    first, repeat, other = study.trials
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3 and other.params["ffn_ratio"] == 2
    assert "duplicate_of" not in first.user_attrs and first.user_attrs["epochs_trained"] == 2
    assert repeat.values == first.values and repeat.user_attrs["duplicate_of"] == 0
    assert repeat.user_attrs["student_path"] == first.user_attrs["student_path"]
    assert training_seconds(repeat) == 0.0 < training_seconds(first)
    compute = sum(training_seconds(t) for t in study.trials)
    assert wall / compute >= 1.0, "P1's ratio counts the repeat's training, which never ran"


@pytest.mark.slow
def test_search_stops_at_its_time_budget(run_dir, ray_session):
    from conftest import tiny_raw
    from kdnas.study.records import PRUNED_ATTR
    from kdnas.tune.driver import run_search

    budget = 18.0  # long enough for a first epoch after Ray starts the worker, even on a loaded machine
    raw = tiny_raw(
        run_dir,
        training={"epochs": 1000},  # no student finishes within the budget
        search={"n_trials": 50, "study_name": "time-budget", "time_budget_s": budget},
    )
    config = build_config(raw)
    study = run_search(config)
    trials = study.trials
    starts = [t.datetime_start for t in trials]  # the budget starts before the first trial is asked for
    assert (max(starts) - min(starts)).total_seconds() <= budget, "a trial started after the time budget ran out"
    assert 1 <= len(trials) < 50 and all(t.state == TrialState.PRUNED for t in trials)
    assert all(t.user_attrs[PRUNED_ATTR].startswith("stopped when the search's time budget ran out") for t in trials)
    assert trials[0].user_attrs["epochs_trained"] >= 1 and trials[0].user_attrs["latency"]["median_ms"] > 0


@pytest.mark.slow
def test_search_prunes_infeasible_students_and_runs_with_early_stopping(run_dir, ray_session):
    from conftest import tiny_raw
    from kdnas.study.records import PRUNED_ATTR
    from kdnas.tune.driver import run_search

    raw = tiny_raw(
        run_dir,
        training={"epochs": 3},
        student={
            "space": {"depth": {"min": 1, "max": 2}, "heads": [2], "head_dim": [8, 16, 32], "ffn_ratio": [1, 2]},
            "max_params": 1_500_000,
        },  # width 64 (about 1.98M parameters) is over it
        search={"n_trials": 6, "study_name": "efficiency", "early_stopping": {"mode": "on"}},
    )
    study = run_search(build_config(raw))
    trials = study.trials
    reasons = {  # a repeat of a stopped or infeasible student is PRUNED for its original's reason
        t.number: t.user_attrs[PRUNED_ATTR].removeprefix(
            f"the same student as trial {t.user_attrs.get('duplicate_of')}: "
        )
        for t in trials
        if t.state == TrialState.PRUNED
    }
    from kdnas.study.orphans import counts_toward_budget

    assert sum(map(counts_toward_budget, trials)) == 6, "repeats of a held student do not use up the budget"
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert any(t.params["head_dim"] == 32 for t in trials), "the seeded sampler proposes infeasible students"
    for t in trials:
        if t.params["head_dim"] == 32:
            assert t.state == TrialState.PRUNED and t.constraints["params"] > 0 and t.user_attrs["params"] > 1_500_000
            assert reasons[t.number].startswith("infeasible, not trained: ") and t.user_attrs["epochs_trained"] == 0
        elif t.state == TrialState.PRUNED:  # tiny students often tie, so the scheduler may stop none
            assert reasons[t.number].startswith("stopped early after epoch ")
            assert "ahead by more than" in reasons[t.number]
        else:
            assert t.constraints == {"params": pytest.approx(t.user_attrs["params"] - 1_500_000)}
        earlier = [u for u in trials[: t.number] if u.params == t.params]
        if "duplicate_of" in t.user_attrs:  # a repeat of a completed student: its result, not trained again
            original = trials[t.user_attrs["duplicate_of"]]
            assert original in earlier and t.values == original.values
            assert t.user_attrs["latency"] == original.user_attrs["latency"]
        elif earlier:  # a repeat of a stopped or infeasible student: measured again, from the latency cache
            assert t.user_attrs["latency"] == {**earlier[0].user_attrs["latency"], "cached": True}
