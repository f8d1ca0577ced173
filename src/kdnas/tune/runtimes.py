"""Student latency compared across serving runtimes and precisions (``kdnas latency --compare``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kdnas.config import KDNASConfig
from kdnas.student import StudentArch
from kdnas.tune.retime import measure_architecture

SERVING_FORMS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"))
"""PyTorch eager, ONNX Runtime fp32 and ONNX Runtime dynamic int8: the forms a small BERT is served in on a CPU."""


def latency_table(
    config: KDNASConfig, archs: Sequence[StudentArch], forms: Sequence[tuple[str, str]] = SERVING_FORMS
) -> list[dict[str, Any]]:
    """One row per architecture: its median latency (ms) in each ``(runtime, precision)`` of ``forms``, measured as a
    search measures students (:func:`~kdnas.tune.retime.measure_architecture`, ``config.latency``'s other settings),
    and each form's speed-up over the first."""
    rows = []
    for arch in archs:
        row: dict[str, Any] = {"arch": arch.summary}
        medians = []
        for runtime, precision in forms:
            latency = config.latency.model_copy(update={"runtime": runtime, "precision": precision})
            medians.append(measure_architecture(config.model_copy(update={"latency": latency}), arch).median_ms)
            row[f"{runtime} {precision} ms"] = round(medians[-1], 3)
        for (runtime, precision), median in zip(forms[1:], medians[1:]):
            row[f"{runtime} {precision} speed-up"] = f"{medians[0] / median:.2f}x"
        rows.append(row)
    return rows
