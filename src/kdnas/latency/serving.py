"""Latency where models are served: ONNX Runtime, in fp32 or dynamically quantised int8.

A model is exported with ``torch.onnx.export``'s TorchScript exporter (``dynamo=False``): the graph Optimum exports
too and the one ONNX Runtime's transformer optimizer recognises, so attention, LayerNorm and GELU fuse into its
contrib kernels (the torch.export-based exporter's BERT graph fuses no attention, and exports ~10× slower). The graph
is fused by ``onnxruntime.transformers.optimizer`` for its model type (BERT students, GPT-2 teachers; other types
keep ORT's own graph optimisations only), quantised for ``int8`` (``quantize_dynamic``: int8 weights, activations
quantised at run time) and timed in an ``InferenceSession`` with the protocol eager models are timed with.
"""

from __future__ import annotations

import importlib
import logging
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numpy as np
import torch
from transformers import PreTrainedModel

from kdnas.config import ConfigError, LatencyConfig
from kdnas.latency.timing import (
    LatencyResult,
    TimingProtocol,
    cpu_flags,
    measure_latency,
    random_token_ids,
    resolve_device,
)

_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
"""The graph's inputs (``token_type_ids`` only for models with token types, as BERT's)."""
_OPSET = 17
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""CPU flags with int8 dot-product instructions: without them int8 weights are quantised to 7 bits (``reduce_range``),
as ONNX Runtime advises, since its u8×s8 kernels can saturate."""

logger = logging.getLogger(__name__)


def onnxruntime_module() -> ModuleType:
    """``onnxruntime``, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        raise ConfigError(
            "latency.runtime is 'onnxruntime' but onnxruntime is not installed: pip install 'kdnas[onnx]'"
        ) from None


def onnxruntime_version() -> str:
    """The installed ONNX Runtime's version (a one-line :class:`ConfigError` when it is absent)."""
    return str(onnxruntime_module().__version__)


def check_runtime(settings: LatencyConfig, device: torch.device) -> None:
    """Refuse, in one line, a runtime that cannot time on ``device``: ONNX Runtime absent, or without its CUDA
    provider on a GPU; int8 on a GPU (dynamic quantisation is a CPU technique)."""
    if settings.runtime == "torch":
        return
    ort = onnxruntime_module()
    if device.type == "cuda" and "int8" in settings.precisions:
        raise ConfigError("latency.precision 'int8' runs on a CPU: set latency.device to 'cpu' or precision 'fp32'")
    if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ConfigError(
            "latency.device is 'cuda' but this onnxruntime has no CUDA provider: pip install onnxruntime-gpu"
        )


def measure_configured(
    model: torch.nn.Module, *, vocab_size: int, settings: LatencyConfig, seq_len: int
) -> LatencyResult:
    """Time ``model`` with the config's latency settings, in its runtime and precision (students and teachers are
    timed alike): :func:`~kdnas.latency.timing.measure_latency` in PyTorch, :func:`_measure_onnx` in ONNX Runtime."""
    device = resolve_device(settings.device)
    if settings.runtime == "onnxruntime":
        return _measure_onnx(
            cast(PreTrainedModel, model), vocab_size=vocab_size, settings=settings, seq_len=seq_len, device=device
        )
    return measure_latency(
        model,
        vocab_size=vocab_size,
        batch_size=settings.batch_size,
        seq_len=seq_len,
        device=device,
        threads=settings.threads,
        warmup=settings.warmup,
        runs=settings.runs,
        min_run_time_s=settings.min_run_time_s,
        isolate=settings.isolate,
    )


def _measure_onnx(
    model: PreTrainedModel,
    *,
    vocab_size: int,
    settings: LatencyConfig,
    seq_len: int,
    device: torch.device,
) -> LatencyResult:
    """Time ``model`` as ONNX Runtime serves it (``settings.precision``) on random token ids of shape
    ``[settings.batch_size, seq_len]``, with ``settings.threads`` intra-op threads and the timing protocol of
    :func:`~kdnas.latency.timing.measure_latency`."""
    ort = onnxruntime_module()
    check_runtime(settings, device)
    input_ids = random_token_ids(vocab_size, settings.batch_size, seq_len).numpy()
    with tempfile.TemporaryDirectory(prefix="kdnas-onnx-") as directory:
        path = serving_graph(model, Path(directory), settings.single_precision)
        session = inference_session(path, device, settings.threads)
    feed = session_feed(session, input_ids, np.ones_like(input_ids), None)
    protocol = TimingProtocol(settings.warmup, settings.runs, settings.min_run_time_s, settings.isolate)
    times = protocol.time(lambda: session.run(None, feed), device)
    serving = {
        "runtime": "onnxruntime",
        "precision": settings.single_precision,
        "runtime_version": f"onnxruntime {ort.__version__}",
    }
    return protocol.result(times, device, settings.threads, settings.batch_size, seq_len, **serving)


def serving_graph(model: PreTrainedModel, directory: Path, precision: str) -> Path:
    """Write ``model`` as ONNX Runtime serves it into ``directory``: exported, fused, and quantised for ``int8``.
    Returns the file to load (``model.onnx``, or ``model.int8.onnx`` beside it)."""
    exported = export_onnx(model, directory / "model.onnx")
    if precision == "int8":
        return _quantize_int8(exported, directory / "model.int8.onnx")
    return exported


def export_onnx(model: PreTrainedModel, path: Path) -> Path:
    """Export ``model`` (a Hugging Face sequence classifier) to ``path`` with dynamic batch and sequence axes, inputs
    ``input_ids`` and ``attention_mask``, output ``logits``, fused by ONNX Runtime's transformer optimizer for its
    model type. The model is exported from the CPU in eval mode with eager attention (the pattern the optimizer
    fuses); its device, mode and attention implementation are restored afterwards."""
    names = _input_names(model)
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    ids = random_token_ids(model.config.vocab_size, 1, 8)
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    with _exportable(model) as cpu_model, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings: known, and not the user's
        torch.onnx.export(
            cpu_model,
            (),
            str(path),
            kwargs={name: example[name] for name in names},
            input_names=list(names),
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=_OPSET,
            dynamo=False,
        )
    _fuse(path, model.config)
    return path


def _input_names(model: PreTrainedModel) -> tuple[str, ...]:
    """The inputs ``model`` is exported with: token ids, attention mask, and token types where it has them."""
    has_types = getattr(model.config, "type_vocab_size", 0) > 1
    return _INPUT_NAMES if has_types else _INPUT_NAMES[:2]


def session_feed(
    session: Any, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The inputs ``session``'s graph takes (token types zero where none are given)."""
    feed = {"input_ids": input_ids, "attention_mask": attention_mask}
    if any(i.name == "token_type_ids" for i in session.get_inputs()):
        feed["token_type_ids"] = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    return feed


@contextmanager
def _exportable(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """``model`` on the CPU in eval mode with eager attention and no key/value cache, put back as it was afterwards."""
    module: torch.nn.Module = model  # moved as a module (transformers types its own ``to`` for dtypes)
    device, training, attention = model.device, model.training, model.config._attn_implementation
    use_cache = getattr(model.config, "use_cache", None)
    model.set_attn_implementation("eager")
    if use_cache is not None:
        model.config.use_cache = False  # a decoder teacher (GPT-2) then returns no key/value cache (the tracer refuses)
    try:
        module.to("cpu").eval()
        yield model
    finally:
        model.set_attn_implementation(attention)
        if use_cache is not None:
            model.config.use_cache = use_cache
        module.to(device).train(training)


def _fuse(path: Path, config: Any) -> None:
    """Fuse the graph at ``path`` in place with ONNX Runtime's transformer optimizer when it knows the model type."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model

    _quiet_optimizer_loggers()
    model_type = getattr(config, "model_type", "")
    if model_type not in MODEL_TYPES:
        logger.debug("no ONNX Runtime fusions for model type %r: ORT's graph optimisations only", model_type)
        return
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    optimized = optimize_model(str(path), model_type=model_type, num_heads=heads, hidden_size=hidden, opt_level=0)
    optimized.save_model_to_file(str(path))


def _quiet_optimizer_loggers() -> None:
    """Keep only warnings from ONNX Runtime's transformer optimizer, whose module loggers (``fusion_base``,
    ``onnx_model``, …) log every fusion at INFO: a dozen lines per graph, per student, in a search's log."""
    package = Path(onnxruntime_module().__file__ or "").parent
    for name in list(logging.root.manager.loggerDict):
        module = sys.modules.get(name)
        if module is not None and Path(getattr(module, "__file__", None) or "/").is_relative_to(package):
            logging.getLogger(name).setLevel(logging.WARNING)


def _quantize_int8(source: Path, target: Path) -> Path:
    """Dynamically quantise the fp32 graph ``source`` to ``target``: int8 weights, activations quantised at run time;
    7-bit weights on CPUs without int8 dot-product instructions (:data:`_VNNI_FLAGS`)."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    vnni = any(flag in cpu_flags().split() for flag in _VNNI_FLAGS)
    root = logging.getLogger()
    root.addFilter(_only_warnings)
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            reduce_range=not vnni,
            extra_options={"DefaultTensorType": TensorProto.FLOAT},  # fused contrib ops' outputs have no inferred type
        )
    finally:
        root.removeFilter(_only_warnings)
    return target


def _only_warnings(record: logging.LogRecord) -> bool:
    """While quantising, drop what ``quantize_dynamic`` logs on the root logger below WARNING (a line per tensor) and
    its advice to pre-process the graph (for static quantisation; its symbolic shape inference cannot read the fused
    graph). kdnas's own loggers are named, so the root logger's filter does not touch them."""
    advice = record.getMessage().startswith("Please consider to run pre-processing before quantization")
    return record.levelno >= logging.WARNING and not advice


def inference_session(path: Path, device: torch.device, threads: int) -> Any:
    """An ``onnxruntime.InferenceSession`` of ``path``: ``threads`` intra-op threads, one inter-op thread, all of
    ORT's graph optimisations; the CUDA provider on a GPU."""
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are not the user's
    providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)
