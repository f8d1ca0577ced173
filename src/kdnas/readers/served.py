"""An exported student as it is served (``latency.runtime: onnxruntime``): its model card's serving section and the
check that its ONNX graphs load and compute what the PyTorch student computes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kdnas.config import ConfigError
from kdnas.study.student_record import LatencyDetail, Served, ServedScore

_GRAPHS = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
"""The ONNX graph of each served precision, as a trial saves them beside its student."""


_RUNTIME_NAMES = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime"}


def latency_form(latency: LatencyDetail) -> str:
    """How a latency was taken, for a card: ``ONNX Runtime 1.32.0, int8`` or ``PyTorch 2.13.0, fp32`` (a record from
    before runtimes were recorded: ``PyTorch, fp32``, the only runtime then)."""
    runtime = latency.runtime or "torch"
    version = (latency.runtime_version or "").removeprefix(runtime).strip()
    return f"{_RUNTIME_NAMES.get(runtime, runtime)} {version}".strip() + f", {latency.precision or 'fp32'}"


def serving_section(served: Served | None, metric: str, latency: LatencyDetail, arch: str) -> str:
    """The model card's section on serving the student's ONNX graphs (empty for a student not scored as served)."""
    if served is None or served.fp32 is None:
        return ""
    scores: dict[str, ServedScore] = {"fp32": served.fp32} | ({"int8": served.int8} if served.int8 else {})
    torch_metric = (served.fp32.metric or 0.0) + (served.fp32.drop or 0.0)
    rows = "\n".join(
        f"| ONNX Runtime | {precision} | `{_GRAPHS[precision]}` | {score.metric:.4f} | "
        f"{100 * (score.agreement or 0):.1f} % |"
        for precision, score in scores.items()
    )
    graph = _GRAPHS[served.precision or "fp32"]
    flagged = (
        f"\n\n**Note**: int8 falls {100 * (served.int8.drop or 0):.2f} points below PyTorch, past the study's "
        "tolerance."
        if served.int8_exceeds_tolerance and served.int8
        else ""
    )
    return f"""
## Serving with ONNX Runtime
The search scored this student as it is served: `{graph}` ({served.precision}) is what its {metric} and latency
above are of. CPU flags where it was timed: {latency.cpu_flags or "not recorded"}.{flagged}

| runtime | precision | file | {metric} | predictions as PyTorch |
|---|---|---|---|---|
| PyTorch | fp32 | `model.safetensors` | {torch_metric:.4f} | — |
{rows}

```python
import onnxruntime
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")
session = onnxruntime.InferenceSession("path/to/this/directory/{graph}")
encoded = tokenizer(["a sentence to classify"], return_tensors="np")
inputs = {{i.name: encoded[i.name] for i in session.get_inputs()}}
logits = session.run(["logits"], inputs)[0]
```
`kdnas latency --arch {arch} --compare` times PyTorch, ONNX Runtime fp32 and int8 on your machine.
"""


_ONNX_CHECK = """
import sys
import numpy as np
import onnxruntime
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
directory, graphs = sys.argv[1], sys.argv[2:]
tokenizer = AutoTokenizer.from_pretrained(directory)
model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
encoded = tokenizer(["does the export load?", "a second, longer probe of the exported graph"], return_tensors="np",
                    padding=True)
with torch.inference_mode():
    expected = model(**{k: torch.from_numpy(v) for k, v in encoded.items()}).logits.numpy()
for graph in graphs:
    session = onnxruntime.InferenceSession(f"{directory}/{graph}", providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {i.name: encoded[i.name] for i in session.get_inputs()})[0]
    if logits.shape != expected.shape:
        raise SystemExit(f"{graph} gives logits of shape {logits.shape}, not {expected.shape}")
    if graph == "model.onnx" and not np.allclose(logits, expected, atol=1e-3):
        raise SystemExit(f"{graph} computes other logits than the PyTorch student "
                         f"(largest difference {np.abs(logits - expected).max():.3g})")
"""


def check_graphs_load(out_dir: Path) -> None:
    """Load the exported ONNX graphs with a plain ``onnxruntime.InferenceSession`` in a fresh Python process, as a
    user's would, and run them on two probe texts: ``model.onnx`` must compute the PyTorch student's logits, the int8
    graph logits of the same shape. Raises :class:`ConfigError` with the last line of what fails; does nothing where
    the export holds no graph."""
    graphs = [name for name in _GRAPHS.values() if (out_dir / name).is_file()]
    if not graphs:
        return
    run_check(_ONNX_CHECK, [str(out_dir), *graphs], f"the exported ONNX graphs in {out_dir} fail")


def run_check(script: str, args: list[str], failure: str) -> None:
    """Run ``script`` with ``args`` in a fresh Python process, as a user's would (this one stays free of torch); when
    it fails, raise :class:`ConfigError` ``<failure>: <the last line it wrote to stderr>``."""
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise ConfigError(f"{failure}: {lines[-1] if lines else done.returncode}")
