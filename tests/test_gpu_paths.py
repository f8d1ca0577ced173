"""The GPU code paths that run without a GPU: mixed precision through CPU autocast (bf16 and fp16, the fp16 gradient
scaler included), the precision ``auto`` picks on each device, models moved to a device outside inference mode,
trials refused a GPU they asked for, and ``benchmarks/gpu_check.sh`` failing loudly where CUDA is absent."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch

from conftest import tiny_bert
from kdnas.config import ConfigError, IntermediateConfig, KDConfig, build_config
from kdnas.distill.distillation import Distillation
from kdnas.distill.intermediate import IntermediateDistiller, expose_attention
from kdnas.resources import check_local_resources
from kdnas.student import training as training_mod
from kdnas.student.batches import Encoded, predict_logits
from kdnas.student.precision import resolve_precision
from kdnas.student.training import DivergedError, NonFiniteLossError, cross_entropy, train
from kdnas.study.records import ERROR_KEY, FAILURE_TRACEBACK_ATTR, TRIAL_NUMBER_KEY, TrialReport
from kdnas.tune import trainable
from kdnas.tune.checkpoint import load_state, save_state
from kdnas.tune.trial import run_trial
from kdnas.tune.trial_inputs import TrialInputs

REPO = Path(__file__).resolve().parents[1]


def _data(rows: int = 24, length: int = 8) -> Encoded:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 50, (rows, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[::3, length // 2 :] = 0
    return Encoded(ids, mask, None, (ids[:, 0] > 25).long())


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


class _Wrapped(torch.nn.Module):
    """A linear classifier with the ``model(**batch).logits`` interface ``train`` expects."""

    def __init__(self, inner: torch.nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, input_ids: torch.Tensor, **_: torch.Tensor):
        return type("Out", (), {"logits": self.inner(input_ids.float() * self.scale)})


# --- which precision -----------------------------------------------------------------------------------------------


def test_auto_precision_is_fp32_on_cpu_and_mixed_on_cuda(monkeypatch):
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("fp16", "cpu") == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    for native_bf16, expected in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native_bf16: n)
        assert resolve_precision("auto", "cuda") == expected
        assert resolve_precision("fp32", "cuda") == "fp32" and resolve_precision("fp16", "cuda") == "fp16"
    with pytest.raises(ValueError, match="training.precision is bf16 but Tesla V100 has no native bfloat16"):
        resolve_precision("bf16", "cuda")
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        resolve_precision("int8", "cpu")


def test_precision_is_a_training_setting():
    assert build_config({}).training.precision == "auto"
    assert build_config({"training": {"precision": "bf16"}}).training.precision == "bf16"
    with pytest.raises(ConfigError, match="training.precision"):
        build_config({"training": {"precision": "fp8"}})


# --- bf16 autocast, for real on the CPU ----------------------------------------------------------------------------


def test_auto_on_cpu_trains_exactly_as_fp32():
    runs = []
    for precision in ("auto", "fp32"):
        model = tiny_bert()
        train(model, _data(), epochs=2, batch_size=8, learning_rate=1e-3, precision=precision)
        runs.append(_weights(model))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def _moves_like_a_device_change(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` whose ``.to()`` copies every weight, as a move from the CPU to a GPU does (on the CPU: a no-op)."""
    model.to = lambda *args, **kwargs: model._apply(torch.clone)  # type: ignore[method-assign]
    return model


def test_a_model_measured_evaluated_or_ranked_on_another_device_stays_trainable():
    # A student's latency is measured (on latency.device) before it trains: moved inside inference mode, its weights
    # became inference tensors and every inherited student failed its first step on CUDA (found by gpu_check.sh).
    from kdnas.latency.timing import measure_latency
    from kdnas.teachers.importance import activation_importance

    data = _data()
    for use in (
        lambda m: measure_latency(m, vocab_size=50, seq_len=8, warmup=0, runs=1),
        lambda m: predict_logits(m, data),
        lambda m: activation_importance(m, data),
    ):
        model = _moves_like_a_device_change(tiny_bert())
        use(model)
        assert not any(p.is_inference() for p in model.parameters())
        train(model, data, epochs=1, batch_size=24, learning_rate=1e-3)  # raises on inference-tensor weights


def test_bf16_autocasts_the_forward_pass_and_keeps_float32_weights():
    model, dtypes, losses = tiny_bert(), [], []
    model.classifier.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    before = _weights(model)
    train(
        model,
        _data(),
        epochs=2,
        batch_size=8,
        learning_rate=1e-3,
        precision="bf16",
        on_step=lambda step, total, loss: losses.append(loss),
    )
    assert set(dtypes) == {torch.bfloat16} and len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_predicted_logits_are_float32_under_autocast():
    model, data = tiny_bert().eval(), _data()
    exact = predict_logits(model, data, batch_size=8)
    mixed = predict_logits(model, data, batch_size=8, precision="bf16")
    assert exact.dtype == mixed.dtype == torch.float32 and mixed.shape == (24, 2)
    assert torch.allclose(exact, mixed, atol=0.05) and not torch.equal(exact, mixed)
    model.train()
    assert torch.equal(predict_logits(model, data, batch_size=8), exact) and model.training  # eval, mode kept


@pytest.mark.parametrize(
    "kd",
    [
        KDConfig(combiner="learned"),
        KDConfig(combiner="confidence"),
        KDConfig(combiner="gradient"),
        KDConfig(combiner="mean", intermediate=IntermediateConfig(enabled=True, layer_map="emd")),
        KDConfig(combiner="mean", intermediate=IntermediateConfig(enabled=True, attention_loss="mse")),
    ],
    ids=["learned", "confidence", "gradient", "emd", "uniform-mse"],
)
def test_every_distillation_recipe_trains_under_bf16(kd):
    data, student = _data(), tiny_bert(seed=1)
    teacher_logits = torch.randn(2, len(data), 2, generator=torch.Generator().manual_seed(0))
    inter = None
    if kd.intermediate.enabled:
        inter = IntermediateDistiller(
            kd.intermediate, student_hidden=16, student_layers=2, teachers=[("t", tiny_bert())]
        )
    distillation = Distillation(kd, teacher_logits, inter, labels=data.labels)
    restore = expose_attention(student) if inter is not None and inter.wants_attentions else None
    losses: list[float] = []
    before = _weights(student)
    train(
        student,
        data,
        loss_fn=distillation,
        extra_parameters=distillation.parameters(),
        epochs=1,
        batch_size=8,
        learning_rate=1e-3,
        precision="bf16",
        on_step=lambda step, total, loss: losses.append(loss),
    )
    if restore is not None:
        restore()
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_a_trial_records_the_precision_it_trained_in(tmp_path):
    data = _data(rows=16)
    from kdnas.teachers.loading import load_tokenizer

    vocab = len(load_tokenizer("minilm"))
    ids = torch.randint(1000, vocab, data.input_ids.shape, generator=torch.Generator().manual_seed(0))
    data = Encoded(ids, data.attention_mask, None, data.labels)
    config = build_config(
        {
            "data": {"max_seq_length": 8},
            "training": {"epochs": 1, "batch_size": 8, "precision": "bf16"},
            "latency": {"warmup": 0, "runs": 3, "min_run_time_s": 0, "cache": False},
            "student": {"inherit": {"enabled": False}},
        }
    )
    inputs = TrialInputs(
        config=config,
        metric="accuracy",
        label_names=("neg", "pos"),
        train=data,
        eval=data,
        teacher_names=("t",),
        teacher_logits=torch.randn(1, len(data), 2),
        students_dir=str(tmp_path),
    )
    arch = {"num_layers": 1, "num_heads": 2, "head_dim": 8, "ffn_ratio": 1}
    result = run_trial(arch, inputs, trial_number=0, device="cpu", report=lambda _: None)
    from kdnas.study.records import TrialReport

    attrs = TrialReport.from_result(result, "accuracy").attrs
    assert attrs["train_precision"] == "bf16" and attrs["train_device"] == "cpu"


# --- fp16 with a gradient scaler (CPU autocast and torch.amp.GradScaler("cpu")) --------------------------------------


def test_fp16_resumes_with_its_gradient_scaler(tmp_path):
    states: list[dict] = []

    def run(**kwargs) -> torch.nn.Module:
        model = tiny_bert()
        train(model, _data(), epochs=3, batch_size=8, learning_rate=1e-3, precision="fp16", **kwargs)
        return model

    def keep(state: dict) -> None:  # through the checkpoint format, as a retried trial reads it
        folder = tmp_path / f"epoch-{state['epoch']}"
        save_state(state, folder)
        states.append(load_state(folder))

    straight = run(on_state=keep)
    assert [s["epoch"] for s in states] == [1, 2, 3]
    assert states[0]["scaler"]["scale"] > 0 and "_growth_tracker" in states[0]["scaler"]
    resumed = run(state=states[0])
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.allclose(a, b)


def test_fp32_and_bf16_states_carry_an_empty_scaler():
    states: list[dict] = []
    train(tiny_bert(), _data(), epochs=1, batch_size=8, learning_rate=1e-3, precision="bf16", on_state=states.append)
    assert states[0]["scaler"] == {}


class _GradientBlowUp(torch.autograd.Function):
    """Identity forward; an infinite gradient backward on the steps listed in ``steps``."""

    @staticmethod
    def forward(ctx, x, blow_up):
        ctx.blow_up = blow_up
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return (grad * math.inf if ctx.blow_up else grad), None


def _loss_blowing_up(steps: set[int] | None):
    """Cross-entropy whose gradients are infinite at the given steps (every step for None), its value finite."""
    calls = []

    def loss(model, batch, labels, index, progress):
        calls.append(progress)
        logits = _GradientBlowUp.apply(model(**batch).logits, steps is None or len(calls) in steps)
        return torch.nn.functional.cross_entropy(logits, labels)

    return loss


def test_fp16_skips_the_steps_whose_gradients_overflow_and_goes_on():
    torch.manual_seed(0)
    model = _Wrapped(torch.nn.Linear(8, 2), scale=1 / 50)
    weights, states, losses = [_weights(model)], [], []

    def on_step(step, total, loss):
        weights.append(_weights(model))
        losses.append(loss)

    train(
        model,
        _data(),
        loss_fn=_loss_blowing_up({2}),
        epochs=2,
        batch_size=8,
        learning_rate=0.1,
        precision="fp16",
        on_step=on_step,
        on_state=states.append,
    )
    skipped = [all(torch.equal(a, b) for a, b in zip(before, after)) for before, after in zip(weights, weights[1:])]
    assert skipped[1] and not all(skipped)  # step 2's infinite gradients were not applied; training went on
    assert states[-1]["scaler"]["scale"] == 65536.0 / 2 ** sum(skipped)  # each skip halved the scale
    assert all(math.isfinite(v) and v < 10 for v in losses)  # losses are recorded unscaled


def test_fp16_gradients_non_finite_at_every_scale_stop_training(monkeypatch):
    monkeypatch.setattr(training_mod, "MAX_SKIPPED_STEPS", 4)
    with pytest.raises(NonFiniteLossError, match="non-finite gradients for 4 steps in a row at step 3 .*fp16"):
        train(
            _Wrapped(torch.nn.Linear(8, 2)),
            _data(),
            loss_fn=_loss_blowing_up(None),
            epochs=2,
            batch_size=8,
            learning_rate=0.1,
            precision="fp16",
        )


@pytest.mark.parametrize(
    ("bad", "error"), [(float("nan"), NonFiniteLossError), (float("inf"), NonFiniteLossError), (None, DivergedError)]
)
def test_non_finite_and_diverging_losses_are_caught_under_fp16(bad, error):
    steps = []

    def loss(model, batch, labels, index, progress):
        steps.append(progress)
        value = cross_entropy(model, batch, labels, index, progress)
        return value * (10 ** len(steps)) if bad is None else value + (bad if len(steps) == 3 else 0)

    match = "non-finite loss .* at step 2 .*fp16" if bad is not None else "mean loss .* over 10x the initial loss"
    with pytest.raises(error, match=match):
        train(
            _Wrapped(torch.nn.Linear(8, 2)),
            _data(),
            loss_fn=loss,
            epochs=2,
            batch_size=8,
            precision="fp16",
            learning_rate=0.1,
        )


# --- GPUs per trial ------------------------------------------------------------------------------------------------


def _trial_inputs(gpu: float) -> TrialInputs:
    return TrialInputs(
        config=build_config({"search": {"resources_per_trial": {"cpu": 1, "gpu": gpu}}}),
        metric="accuracy",
        label_names=("a", "b"),
        train=None,
        eval=None,
        teacher_names=(),
        teacher_logits=torch.zeros(0),
        students_dir="/nonexistent",
    )


def test_a_trial_given_a_gpu_fails_loudly_without_cuda(monkeypatch):
    reports = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(trainable.tune, "report", reports.append)
    monkeypatch.setattr(trainable, "run_trial", lambda *a, **kw: pytest.fail("trained on the CPU"))
    trainable.student_trainable({TRIAL_NUMBER_KEY: 2}, _trial_inputs(0.25))
    (report,) = reports
    assert report[ERROR_KEY].startswith("NoGPUError: search.resources_per_trial.gpu is 0.25 but this worker (")
    assert "sees no CUDA device" in report[ERROR_KEY] and math.isnan(report["accuracy"])
    trace = TrialReport.from_result(report, "accuracy").attrs[FAILURE_TRACEBACK_ATTR]  # where: for `kdnas trials`
    assert trace.startswith("Traceback") and "in assigned_device" in trace and "NoGPUError" in trace.splitlines()[-1]


def test_a_local_search_asking_for_a_gpu_the_machine_lacks_is_refused_up_front(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    config = build_config({"search": {"resources_per_trial": {"cpu": 1, "gpu": 0.25}}})
    with pytest.raises(ConfigError, match="resources_per_trial.gpu is 0.25 but this machine has 0 GPU"):
        check_local_resources(config)


# --- the GPU check script ------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure where CUDA is absent")
def test_gpu_check_fails_loudly_without_cuda(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: FAILED: CUDA is not available"), done.stderr
    assert not out.exists() and not done.stdout.strip()
