"""Latency where models are served: ONNX Runtime fp32 and int8 (``latency.runtime``, ``latency.precision``)."""

import logging
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import optuna
import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

import kdnas
from conftest import SCRATCH_TEACHER, tiny_raw
from kdnas.config import ConfigError, LatencyConfig, load_config
from kdnas.latency import serving
from kdnas.latency.cache import latency_cache_key
from kdnas.latency.serving import (
    check_runtime,
    export_onnx,
    inference_session,
    measure_configured,
    serving_graph,
)
from kdnas.student import StudentArch
from kdnas.student.batches import Encoded
from kdnas.study.storage import fingerprint_differences
from kdnas.teachers.loading import load_tokenizer
from kdnas.tune.fingerprint import config_fingerprint
from kdnas.tune.served import predict_onnx

FAST = {"warmup": 1, "runs": 3, "min_run_time_s": 0.0, "isolate": False}


@pytest.fixture(scope="module")
def student() -> torch.nn.Module:
    torch.manual_seed(0)
    return (
        StudentArch(num_layers=2, num_heads=2, head_dim=32, ffn_ratio=2).build(load_tokenizer("minilm"), 3, 64).eval()
    )


def padded_batch(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of 12 tokens, the second padded after 5: other shapes than the export's, and a real mask."""
    ids = torch.randint(1, vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


def onnx_logits(path: Path, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None = None) -> np.ndarray:
    session = inference_session(path, torch.device("cpu"), threads=1)
    rows = Encoded(ids, mask, types, torch.zeros(len(ids), dtype=torch.long))
    return predict_onnx(session, rows, batch_size=2).numpy()


def test_the_exported_student_computes_the_students_logits_at_any_batch_length_and_token_types(student, tmp_path):
    ids, mask = padded_batch(student.config.vocab_size)
    path = export_onnx(student, tmp_path / "model.onnx")
    with torch.inference_mode():
        expected = student(input_ids=ids, attention_mask=mask).logits.numpy()
    np.testing.assert_allclose(onnx_logits(path, ids, mask), expected, atol=1e-4)
    types = (torch.arange(12) >= 6).long().expand(3, 12)  # sentence pairs: the second sentence's token type is 1
    with torch.inference_mode():
        expected = student(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.numpy()
    np.testing.assert_allclose(onnx_logits(path, ids, mask, types), expected, atol=1e-4)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops  # fused as ORT's transformer optimizer fuses BERT
    assert student.config._attn_implementation == "sdpa" and not student.training  # put back as it was


def test_the_int8_graph_quantises_the_weights_and_stays_close(student, tmp_path):
    ids, mask = padded_batch(student.config.vocab_size)
    fp32 = serving_graph(student, tmp_path, "fp32")
    int8 = serving_graph(student, tmp_path, "int8")
    assert int8.name == "model.int8.onnx" and int8.stat().st_size < 0.6 * fp32.stat().st_size
    assert any(node.op_type == "DynamicQuantizeLinear" for node in onnx.load(str(int8)).graph.node)
    np.testing.assert_allclose(onnx_logits(int8, ids, mask), onnx_logits(fp32, ids, mask), atol=0.05)


def test_a_gpt2_teacher_is_exported_and_timed_like_a_student(tmp_path):
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=100,
        n_positions=32,
        n_embd=32,
        n_layer=1,
        n_head=2,
        num_labels=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
    )
    teacher = GPT2ForSequenceClassification(config).eval()
    ids = torch.randint(1, 100, (2, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        expected = teacher(input_ids=ids, attention_mask=mask).logits.numpy()
    np.testing.assert_allclose(onnx_logits(export_onnx(teacher, tmp_path / "t.onnx"), ids, mask), expected, atol=1e-4)
    result = measure_configured(
        teacher, vocab_size=100, settings=LatencyConfig(runtime="onnxruntime", **FAST), seq_len=16
    )
    assert result.runtime == "onnxruntime" and result.median_ms > 0


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_measurement_names_its_runtime_precision_version_and_cpu(student, precision):
    settings = LatencyConfig(runtime="onnxruntime", precision=precision, **FAST)
    result = measure_configured(student, vocab_size=student.config.vocab_size, settings=settings, seq_len=16)
    assert (result.runtime, result.precision) == ("onnxruntime", precision)
    assert result.runtime_version == f"onnxruntime {ort.__version__}"
    assert result.runs >= 3 and result.seq_len == 16 and result.threads == 1
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert ("avx2" in result.cpu_flags.split()) == (" avx2" in flags)
    eager = measure_configured(
        student, vocab_size=student.config.vocab_size, settings=LatencyConfig(**FAST), seq_len=16
    )
    assert (eager.runtime, eager.precision) == ("torch", "fp32") and eager.runtime_version.startswith("torch ")


def test_int8_needs_onnxruntime_and_a_cpu(tmp_path):
    with pytest.raises(ConfigError, match="precision 'int8' needs latency.runtime 'onnxruntime'"):
        load_config({"output_dir": str(tmp_path), "latency": {"precision": "int8"}})
    with pytest.raises(ConfigError, match="'int8' runs on a CPU"):
        load_config(
            {"output_dir": str(tmp_path), "latency": {"runtime": "onnxruntime", "precision": "int8", "device": "cuda"}}
        )


def test_missing_onnxruntime_or_its_cuda_provider_is_one_line(monkeypatch):
    settings = LatencyConfig(runtime="onnxruntime")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="no CUDA provider: pip install onnxruntime-gpu"):
        check_runtime(settings, torch.device("cuda"))
    check_runtime(settings, torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an import finds where it is not installed
    with pytest.raises(ConfigError, match=r"onnxruntime is not installed: pip install 'kdnas\[onnx\]'"):
        serving.onnxruntime_module()
    check_runtime(LatencyConfig(), torch.device("cpu"))  # PyTorch timing needs no ONNX Runtime


def test_a_rerun_in_another_runtime_or_precision_is_refused_by_the_fingerprint(tmp_path):
    def fingerprint(**latency):
        return config_fingerprint(load_config({"output_dir": str(tmp_path), "latency": latency}))

    eager = fingerprint()
    served = fingerprint(runtime="onnxruntime")
    assert fingerprint_differences(eager, served) == ["latency.runtime torch → onnxruntime"]
    assert fingerprint_differences(served, fingerprint(runtime="onnxruntime", precision="int8")) == [
        "latency.precision fp32 → int8"
    ]


def test_cached_measurements_are_kept_apart_by_runtime_and_precision():
    keys = {
        latency_cache_key({"arch": "L2"}, LatencyConfig(**settings), 16)
        for settings in ({}, {"runtime": "onnxruntime"}, {"runtime": "onnxruntime", "precision": "int8"})
    }
    assert len(keys) == 3


ONE_LAYER = {"num_layers": 1, "num_heads": 2, "head_dim": 8, "ffn_ratio": 1}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_trial_served_by_onnxruntime_is_scored_and_ranked_as_served(tmp_path, precision):
    latency = {"warmup": 0, "runs": 3, "min_run_time_s": 0, "runtime": "onnxruntime", "precision": precision}
    raw = tiny_raw(
        tmp_path / "run",
        teachers=[SCRATCH_TEACHER],
        data={"demo_train_size": 64, "demo_eval_size": 32},
        training={"epochs": 1},
        latency=latency,
    )
    students = kdnas.prepare_students(kdnas.load_config(raw))
    report = kdnas.train_student(students, ONE_LAYER, seed=3, trial_number=1)
    served, saved = report.attrs["served"], Path(report.attrs["student_path"])
    assert report.completed and report.attrs["latency"]["runtime"] == "onnxruntime"
    assert (served["runtime"], served["precision"]) == ("onnxruntime", precision)
    assert report.value == served["metric"] == served[precision]["metric"]  # the study ranks it as served
    assert served["fp32"]["agreement"] >= 0.995 and abs(served["fp32"]["drop"]) < 1e-6
    assert (saved / "model.onnx").is_file() and (saved / "model.int8.onnx").is_file() == (precision == "int8")
    graph = saved / ("model.int8.onnx" if precision == "int8" else "model.onnx")
    logits = predict_onnx(inference_session(graph, torch.device("cpu"), threads=1), students.eval)
    accuracy = float((logits.argmax(-1) == students.eval.labels).float().mean())
    assert accuracy == pytest.approx(served["metric"])  # the saved graph scores what the study recorded
    if precision == "int8":
        assert served["int8_exceeds_tolerance"] == (served["int8"]["drop"] > 0.01)
    exported = export_served(report, tmp_path)
    card = (exported / "README.md").read_text()
    assert "## Serving with ONNX Runtime" in card and f"`{graph.name}` ({precision})" in card
    assert f"measured in ONNX Runtime {ort.__version__}, {precision}" in card
    assert (exported / graph.name).read_bytes() == graph.read_bytes()


def export_served(report, tmp_path: Path) -> Path:
    """Export the trial ``report`` describes from a study holding it alone; a graph changed after the search (here:
    another student's) is refused and leaves nothing behind."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "latency_ms"])
    study.add_trial(
        optuna.trial.create_trial(
            values=[report.value, report.latency_ms], params={}, distributions={}, user_attrs=report.attrs
        )
    )
    trial = study.trials[0]
    exported = kdnas.export_trial(study, trial, tmp_path / "export")
    saved = Path(report.attrs["student_path"])
    other = StudentArch(num_layers=1, num_heads=2, head_dim=8, ffn_ratio=1).build(load_tokenizer("minilm"), 2, 64)
    original = (saved / "model.onnx").read_bytes()
    export_onnx(other.eval(), saved / "model.onnx")
    with pytest.raises(ConfigError, match="model.onnx computes other logits than the PyTorch student"):
        kdnas.export_trial(study, trial, tmp_path / "refused")
    assert not any((tmp_path / "refused").iterdir())
    (saved / "model.onnx").write_bytes(original)
    return exported


def test_kdnas_latency_compares_runtimes_and_precisions_in_a_table(tmp_path, capsys):
    from kdnas.cli import main

    quick = ["--set", f"output_dir={tmp_path}", "--set", "latency.runs=3", "--set", "latency.min_run_time_s=0"]
    assert main(["latency", "--arch", "L1-H64-A2-F128", "--arch", "L2-H64-A2-F256", "--compare", *quick]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("median latency on ") and "batch 1" in lines[0]
    header, rows = lines[1].split(), [line.split() for line in lines[2:]]
    assert header[:2] == ["arch", "torch"] and "int8" in lines[1] and "speed-up" in lines[1]
    assert [row[0] for row in rows] == ["L1-H64-A2-F128", "L2-H64-A2-F256"]
    assert all(float(cell) > 0 for row in rows for cell in row[1:4]) and rows[0][4].endswith("x")
    assert main(["latency", "--arch", "L2-H64-A3-F256", *quick]) == 2
    assert "hidden size must divide by the heads" in capsys.readouterr().err
    assert main(["latency", *quick]) == 2
    assert "name the architecture" in capsys.readouterr().err


def test_a_search_without_onnxruntime_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from kdnas.cli import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["search", "--output-dir", str(tmp_path / "run"), "--set", "latency.runtime=onnxruntime"]) == 2
    assert "onnxruntime is not installed: pip install 'kdnas[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before output_dir, the storage or a teacher was touched


def test_the_report_says_which_runtime_and_precision_latency_was_taken_in(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "latency_ms"])
    latency = {"median_ms": 0.4, "runtime": "onnxruntime", "precision": "int8", "runtime_version": "onnxruntime 1.32.0"}
    attrs = {"arch_summary": "L1-H64-A2-F128", "latency": latency}
    study.add_trial(optuna.trial.create_trial(values=[0.9, 0.4], params={}, distributions={}, user_attrs=attrs))
    kdnas.write_report(study, tmp_path, "accuracy")
    page = (tmp_path / "report.html").read_text()
    assert "Latency is the measured median forward time in ONNX Runtime 1.32.0, int8 during the search" in page


def test_exporting_and_quantising_log_no_line_per_fusion_or_tensor(student, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    serving_graph(student, tmp_path, "int8")
    logging.getLogger("kdnas.latency").info("kdnas's own lines still show")
    chatty = [r for r in caplog.records if r.levelno < logging.WARNING and not r.name.startswith("kdnas")]
    assert not chatty, [r.getMessage() for r in chatty[:3]]
    assert "kdnas's own lines still show" in caplog.text
