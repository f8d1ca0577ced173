"""Measured inference latency: fixed threads, warm-up, median of many timed runs (filling a minimum time),
CUDA-synchronised on GPU, taken alone on the node (:mod:`kdnas.latency.isolation`).

The runs are timed by hand rather than with ``torch.utils.benchmark.Timer``: its estimates are means over blocks of
runs whose size and warm-up it chooses itself (``timeit`` warms up again on every call), while kdnas reports the
median, p90 and IQR over a configured number of single forward passes at the configured batch size. The loop uses
the same ingredients: a fixed torch thread count, warm-up, and CUDA synchronisation on both sides of each run."""

from __future__ import annotations

import functools
import platform
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from kdnas.config import ConfigError
from kdnas.latency.isolation import isolated


@dataclass(frozen=True)
class LatencyResult:
    """One latency measurement and the settings it was taken under."""

    median_ms: float
    p90_ms: float
    iqr_ms: float
    device: str
    device_name: str
    threads: int
    batch_size: int
    seq_len: int
    runs: int  # timed runs: at least the configured ``runs``, more to fill ``min_run_time_s``
    warmup: int
    min_run_time_s: float = 0.0
    isolated: bool = False  # taken while no training step ran on its node
    host: str = ""  # the machine it was taken on
    cached: bool = False  # read from the latency cache rather than measured now
    p10_ms: float | None = None  # None: read from a cache written before kdnas recorded it
    runtime: str = "torch"  # what ran the model: torch (eager) or onnxruntime
    precision: str = "fp32"  # fp32, or int8 (ONNX Runtime's dynamic quantisation)
    runtime_version: str = ""  # e.g. "torch 2.13.0" or "onnxruntime 1.32.0"
    cpu_flags: str = ""  # the CPU's instruction sets that decide int8 and fp32 speed (AVX2, AVX-512, VNNI, AMX)

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (error when absent) or ``auto`` (CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("latency.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """A human-readable name of the device latency is measured on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _percentile(sorted_values: list[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    low, high = int(position), min(int(position) + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def measure_latency(
    model: torch.nn.Module,
    *,
    vocab_size: int,
    batch_size: int = 1,
    seq_len: int = 128,
    device: torch.device | str = "cpu",
    threads: int = 1,
    warmup: int = 5,
    runs: int = 30,
    min_run_time_s: float = 0.0,
    isolate: bool = False,
) -> LatencyResult:
    """Time ``model``'s forward pass in PyTorch eager on random token ids of shape ``[batch_size, seq_len]``.

    The model is put in eval mode on ``device``; each run is bracketed by CUDA synchronisation on GPU. At least
    ``runs`` runs are timed, and more until they add up to ``min_run_time_s`` (as ``torch.utils.benchmark``'s
    ``min_run_time``): a fast model's median then rests on hundreds of runs, so a scheduling hiccup of a few
    milliseconds on the machine does not move it.
    With ``isolate``, warm-up and runs happen while no training step runs on the node
    (:func:`~kdnas.latency.isolation.isolated`). Returns the median (and p10, p90, IQR) in milliseconds.
    The model is moved before inference mode starts: weights moved inside it would become inference tensors, which
    a student trained after its measurement cannot use.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    input_ids = random_token_ids(vocab_size, batch_size, seq_len).to(device)
    attention_mask = torch.ones_like(input_ids)
    protocol = TimingProtocol(warmup, runs, min_run_time_s, isolate)
    with torch.inference_mode(), _torch_threads(threads):
        times = protocol.time(lambda: model(input_ids=input_ids, attention_mask=attention_mask), device)
    return protocol.result(times, device, threads, batch_size, seq_len, runtime_version=f"torch {torch.__version__}")


def random_token_ids(vocab_size: int, batch_size: int, seq_len: int) -> torch.Tensor:
    """The token ids every model is timed on: ``[batch_size, seq_len]`` ids drawn with a fixed seed."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(1, vocab_size, (batch_size, seq_len), generator=generator)


@dataclass(frozen=True)
class TimingProtocol:
    """How runs are timed, whatever runs them: ``warmup`` untimed runs, then at least ``runs`` timed ones and more
    until they add up to ``min_run_time_s``, alone on the node with ``isolate``."""

    warmup: int
    runs: int
    min_run_time_s: float
    isolate: bool

    def time(self, run: Callable[[], object], device: torch.device) -> list[float]:
        """The milliseconds of each timed call of ``run`` (CUDA-synchronised on both sides on a GPU)."""
        times: list[float] = []
        with isolated(self.isolate):
            for _ in range(self.warmup):
                run()
            _synchronize(device)
            timed_ms = 0.0
            while len(times) < self.runs or timed_ms < 1000.0 * self.min_run_time_s:
                start = time.perf_counter()
                run()
                _synchronize(device)
                times.append((time.perf_counter() - start) * 1000.0)
                timed_ms += times[-1]
        return times

    def result(
        self,
        times: list[float],
        device: torch.device,
        threads: int,
        batch_size: int,
        seq_len: int,
        runtime: str = "torch",
        precision: str = "fp32",
        runtime_version: str = "",
    ) -> LatencyResult:
        """The measurement ``times`` make, with the settings (and runtime) it was taken under."""
        ordered = sorted(times)
        return LatencyResult(
            median_ms=statistics.median(ordered),
            p90_ms=_percentile(ordered, 0.9),
            p10_ms=_percentile(ordered, 0.1),
            iqr_ms=_percentile(ordered, 0.75) - _percentile(ordered, 0.25),
            device=device.type,
            device_name=device_name(device),
            threads=threads,
            batch_size=batch_size,
            seq_len=seq_len,
            runs=len(times),
            warmup=self.warmup,
            min_run_time_s=self.min_run_time_s,
            isolated=self.isolate,
            host=socket.gethostname(),
            cpu_flags=cpu_flags() if device.type == "cpu" else "",
            runtime=runtime,
            precision=precision,
            runtime_version=runtime_version,
        )


_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
"""The instruction sets that decide how fast fp32 and int8 inference run on a CPU."""


@functools.cache  # the CPU does not change under a running process
def cpu_flags() -> str:
    """Which of :data:`_CPU_FLAGS` this CPU has, space-separated (empty where ``/proc/cpuinfo`` is not readable)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return ""
    return " ".join(flag for flag in _CPU_FLAGS if flag in flags)
