import math
from types import SimpleNamespace

import pytest
import torch

from kdnas.config import ConfigError, KDConfig
from kdnas.distill.combiners import (
    ConfidenceCombiner,
    FixedWeightCombiner,
    GradientSpaceCombiner,
    MeanCombiner,
    combined_target,
    make_combiner,
    min_norm_weights,
)
from kdnas.distill.losses import kd_loss
from kdnas.latency import timing as latency_mod
from kdnas.student import StudentArch
from kdnas.student.metrics import score
from kdnas.teachers.loading import load_tokenizer


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    y = torch.tensor([0, 1])
    alpha, temp = 0.3, 2.0
    ce = 0.0
    kl = 0.0
    for i in range(2):
        row = s[i].tolist()
        log_z = math.log(sum(math.exp(v) for v in row))
        ce += -(row[y[i]] - log_z)
        scaled = [v / temp for v in row]
        log_zt = math.log(sum(math.exp(v) for v in scaled))
        log_q = [v - log_zt for v in scaled]
        kl += sum(p * (math.log(p) - lq) for p, lq in zip(t[i].tolist(), log_q))
    expected = alpha * ce / 2 + (1 - alpha) * temp**2 * kl / 2
    got = kd_loss(s, t, y, alpha=alpha, temperature=temp)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(s, t, y, alpha=1.0, temperature=temp).item() == pytest.approx(ce / 2, rel=1e-5)


def test_mean_combiner_averages_teacher_probabilities():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 4.0]]])  # K=2, B=1, C=2
    target = combined_target(MeanCombiner(), logits, torch.tensor([0]), torch.zeros(1, 2), temperature=2.0)
    p1 = torch.softmax(torch.tensor([1.0, 0.0]), -1)
    p2 = torch.softmax(torch.tensor([0.0, 2.0]), -1)
    assert torch.allclose(target[0], (p1 + p2) / 2)
    assert torch.allclose(target.sum(-1), torch.ones(1))


def test_fixed_weights_are_normalised_and_checked():
    logits = torch.zeros(2, 3, 2)
    weights = FixedWeightCombiner([1.0, 3.0]).weights(logits, torch.zeros(3, dtype=torch.long), None, 1.0)
    assert torch.allclose(weights, torch.tensor([[0.25, 0.75]] * 3))
    with pytest.raises(ValueError, match="2 teacher weights for 3 teachers"):
        FixedWeightCombiner([1.0, 1.0]).weights(torch.zeros(3, 1, 2), torch.zeros(1, dtype=torch.long), None, 1.0)


def test_confidence_weights_match_ca_mkd_by_hand():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]]])  # teacher A right and confident, B wrong
    weights = ConfidenceCombiner().weights(logits, torch.tensor([0]), None, 1.0)
    ce_a, ce_b = math.log(1 + math.exp(-2)), math.log(1 + math.exp(2))
    soft_a = math.exp(ce_a) / (math.exp(ce_a) + math.exp(ce_b))
    assert weights[0].tolist() == pytest.approx([1 - soft_a, soft_a], rel=1e-5)
    assert ConfidenceCombiner().weights(logits[:1], torch.tensor([0]), None, 1.0).tolist() == [[1.0]]


def test_min_norm_weights_by_hand():
    opposing = torch.tensor([[1.0, -2.0], [-1.0, 2.0]], dtype=torch.float64)
    assert min_norm_weights(opposing, cap=1.0).tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    identical = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    assert min_norm_weights(identical, cap=1.0).tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert min_norm_weights(orthogonal, cap=1.0).tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    # g2 = g1/2: the minimum norm puts everything on g2, but the cap (tolerance for disagreement) stops it at 0.6
    nested = torch.tensor([[1.0, 0.0], [0.5, 0.0]], dtype=torch.float64)
    assert min_norm_weights(nested, cap=1.0).tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    assert min_norm_weights(nested, cap=0.6).tolist() == pytest.approx([0.4, 0.6], abs=1e-6)
    three = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    alpha = min_norm_weights(three, cap=0.6)
    assert alpha.sum().item() == pytest.approx(1.0) and (alpha @ three).norm().item() == pytest.approx(0, abs=1e-6)


def test_gradient_space_weights_cancel_teachers_pulling_apart():
    student = torch.zeros(4, 2)
    teachers = torch.tensor([[[1.0, 0.0]] * 4, [[0.0, 1.0]] * 4])  # symmetric around the student
    weights = GradientSpaceCombiner(cap=0.6).weights(teachers, torch.zeros(4, dtype=torch.long), student, 2.0)
    assert weights.shape == (4, 2) and torch.allclose(weights, torch.full((4, 2), 0.5), atol=1e-5)


def test_make_combiner_from_config():
    assert isinstance(make_combiner(KDConfig(combiner="mean")), MeanCombiner)
    assert isinstance(make_combiner(KDConfig(combiner="confidence")), ConfidenceCombiner)
    assert make_combiner(KDConfig(combiner="gradient", disagreement_bound=0.7)).cap == 0.7
    assert isinstance(make_combiner(KDConfig(combiner="weighted", teacher_weights=[2, 1])), FixedWeightCombiner)
    with pytest.raises(ValueError, match="teacher_weights is required"):
        KDConfig(combiner="weighted")


def test_metrics_against_hand_values():
    preds, labels = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    assert score("accuracy", preds, labels) == pytest.approx(3 / 5)
    # tp=2 fp=1 fn=1 -> f1 = 4/6
    assert score("f1", preds, labels) == pytest.approx(4 / 6)
    # binary mcc = (tp*tn - fp*fn)/sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2*1-1*1)/sqrt(3*3*2*2) = 1/6
    assert score("mcc", preds, labels) == pytest.approx(1 / 6)
    assert score("mcc", [0, 0], [0, 0]) == 0.0
    with pytest.raises(ValueError, match="unknown metric"):
        score("bleu", preds, labels)


def test_latency_measures_a_real_forward_with_fixed_threads():
    tokenizer = load_tokenizer("minilm")
    model = StudentArch(1, 2, 16, 2).build(tokenizer, num_labels=2, max_positions=64)
    threads_before = torch.get_num_threads()
    shapes = []  # every forward the measurement runs: warm-up and timed runs, each on a batch of seq_len tokens
    model.register_forward_hook(
        lambda _module, args, kwargs, _out: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    result = latency_mod.measure_latency(model, vocab_size=len(tokenizer), seq_len=16, threads=1, warmup=1, runs=5)
    assert shapes == [(1, 16)] * 6 and result.median_ms > 0
    assert (result.device, result.threads, result.seq_len, result.runs) == ("cpu", 1, 16, 5)
    assert torch.get_num_threads() == threads_before


def test_latency_times_a_fast_model_for_at_least_the_minimum_run_time(monkeypatch):
    tokenizer = load_tokenizer("minilm")
    model = StudentArch(1, 2, 16, 2).build(tokenizer, num_labels=2, max_positions=64)
    clock = iter(range(10**6))  # every reading of the timer 1 ms after the last: each run takes exactly 1 ms
    monkeypatch.setattr(latency_mod, "time", SimpleNamespace(perf_counter=lambda: next(clock) / 1000.0))
    result = latency_mod.measure_latency(
        model, vocab_size=len(tokenizer), seq_len=16, warmup=0, runs=3, min_run_time_s=0.1
    )
    # 3 runs, then more until they add up to 100 ms (101: float rounding of the 1 ms steps)
    assert result.runs in (100, 101) and result.median_ms == pytest.approx(1.0)
    assert result.min_run_time_s == 0.1
    slow = latency_mod.measure_latency(
        model, vocab_size=len(tokenizer), seq_len=16, warmup=0, runs=40, min_run_time_s=1e-6
    )
    assert slow.runs == 40  # the run count is a floor: a minimum time already reached adds none


def test_a_measurement_whose_median_sits_far_above_its_p10_counts_as_contended():
    from kdnas.latency.cache import contention
    from kdnas.latency.timing import LatencyResult

    def result(median: float, p10: float | None) -> LatencyResult:
        return LatencyResult(median, median * 1.05, 0.1, "cpu", "cpu", 1, 1, 8, 30, 1, p10_ms=p10)

    assert "p10" in contention(result(0.60, 0.48))  # a fifth of its runs' time lost to other work
    assert contention(result(0.49, 0.48)) is None  # an undisturbed one: its median within a few % of its p10
    assert contention(result(0.12, 0.09)) is None  # within the timer's jitter (NOISE_MS)
    assert contention(result(0.60, None)) is None  # from a cache written before p10 was recorded


def test_latency_synchronises_cuda_and_refuses_missing_gpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    latency_mod._synchronize(torch.device("cpu"))
    assert calls == []
    latency_mod._synchronize(torch.device("cuda", 0))
    assert calls == [torch.device("cuda", 0)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        latency_mod.resolve_device("cuda")
    assert latency_mod.resolve_device("auto").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert latency_mod.resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("pairs", [False, True])
def test_texts_encoded_in_chunks_are_encoded_as_all_at_once(monkeypatch, pairs):
    from kdnas.student import batches
    from kdnas.teachers.loading import load_tokenizer

    tokenizer = load_tokenizer("minilm")
    texts = [f"sentence {i} " + "word " * (i % 9) for i in range(23)]
    texts = [(t, t[::-1]) for t in texts] if pairs else texts
    whole = batches.encode(tokenizer, texts, list(range(23)), 16)
    monkeypatch.setattr(batches, "ENCODE_CHUNK", 5)
    chunked = batches.encode(tokenizer, texts, list(range(23)), 16)
    for name in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert torch.equal(getattr(chunked, name), getattr(whole, name)), name
    assert chunked.input_ids.shape == (23, 16)
