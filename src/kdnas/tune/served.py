"""A trained student scored as it will be served (``latency.runtime: onnxruntime``): its ONNX graphs written beside
its Hugging Face files, and its metric on the evaluation set computed by ONNX Runtime, in fp32 and, with ``latency.
precision: int8``, dynamically quantised. The study then ranks students by the metric they will have in service."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel

from kdnas.config import LatencyConfig
from kdnas.latency.serving import inference_session, serving_graph, session_feed
from kdnas.latency.timing import resolve_device
from kdnas.outputs import missing_student_files, student_digest
from kdnas.student.batches import Encoded, batch_at, index_batches
from kdnas.student.training import evaluation_of
from kdnas.study.records import TrainedTwin
from kdnas.study.student_record import Served, ServedScore, StudentRecord


def score_served(
    model: PreTrainedModel,
    directory: Path,
    data: Encoded,
    metric: str,
    torch_logits: torch.Tensor,
    settings: LatencyConfig,
) -> Served:
    """Write ``model``'s serving graphs into ``directory`` (``model.onnx``; ``model.int8.onnx`` for int8) and score
    each on ``data`` by ``metric``: the record a trial keeps (the precision it is served in and its metric; per
    precision the metric, its agreement with the PyTorch predictions ``torch_logits`` and its drop below the PyTorch
    metric; with int8, whether the drop exceeds ``settings.int8_tolerance``; the seconds it all took)."""
    started = time.perf_counter()
    precision = settings.single_precision
    served = serving_graph(model, directory, precision)
    graphs = {"fp32": directory / "model.onnx"} | ({"int8": served} if precision == "int8" else {})
    device = resolve_device(settings.device)
    torch_value = evaluation_of(torch_logits, data.labels, metric).value
    scores = {}
    for precision, path in graphs.items():
        session = inference_session(path, device, settings.threads)
        logits = predict_onnx(session, data)
        value = evaluation_of(logits, data.labels, metric).value
        agreement = float((logits.argmax(-1) == torch_logits.argmax(-1)).float().mean())
        scores[precision] = ServedScore(metric=value, agreement=round(agreement, 6), drop=round(torch_value - value, 6))
    int8 = scores.get("int8")
    return Served(
        runtime="onnxruntime",
        precision=precision,
        metric=scores[precision].metric,
        fp32=scores["fp32"],
        int8=int8,
        int8_exceeds_tolerance=None if int8 is None else (int8.drop or 0.0) > settings.int8_tolerance,
        seconds=round(time.perf_counter() - started, 3),
    )


def predict_onnx(session: Any, data: Encoded, batch_size: int = 64) -> torch.Tensor:
    """``session``'s logits ``[N, C]`` for every row of ``data``, in row order, batched and trimmed as PyTorch
    predictions are (:func:`~kdnas.student.batches.batch_at`)."""
    logits = []
    for index in index_batches(len(data), batch_size, shuffle=False):
        batch = {name: tensor.numpy() for name, tensor in batch_at(data, index, torch.device("cpu")).items()}
        feed = session_feed(session, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        logits.append(torch.from_numpy(session.run(["logits"], feed)[0]))
    return torch.cat(logits)


def load_trained_twin(model: PreTrainedModel, twin: TrainedTwin) -> StudentRecord:
    """Load into ``model`` (built for the same architecture) the weights trial ``twin.number`` trained and saved, after
    checking they are the files its record names (:func:`~kdnas.outputs.student_digest`); that trial's record."""
    record = StudentRecord.from_attrs(twin.attrs or {})
    directory = Path(record.student_path or "")
    if not record.student_path or missing_student_files(directory):
        raise FileNotFoundError(f"trial {twin.number}'s trained student is not at {record.student_path!r} any more")
    if student_digest(directory) != record.student_sha256:
        raise ValueError(f"trial {twin.number}'s student at {directory} changed since it was trained (SHA-256 differs)")
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    return record
