"""Latency measurements cached on disk, keyed by what determines them: model shape, device, settings, torch.

One small JSON file per key, written atomically (temporary file + ``os.replace``), so concurrent trials and
trials on other nodes of a cluster (``output_dir`` on a shared filesystem) can read and write the cache without
locks: two trials that measure the same key at once both write a valid file and the last one wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kdnas.config import KDNASConfig, LatencyConfig
from kdnas.latency.serving import measure_configured, onnxruntime_version
from kdnas.latency.timing import LatencyResult, device_name, resolve_device
from kdnas.outputs import write_json_atomically

logger = logging.getLogger(__name__)


def latency_cache_dir(config: KDNASConfig) -> Path:
    """Where latency measurements (students' and teachers') are cached: beside the teacher logits, shared by every
    study of ``output_dir``."""
    return (Path(config.output_dir) / "cache" / "latency").resolve()


def latency_cache_key(model_key: dict[str, Any], settings: LatencyConfig, seq_len: int) -> str:
    """A digest of the model's shape (``model_key``), the device's name, the timing settings and the runtime's
    version (torch's; and ONNX Runtime's, with its precision, when it times)."""
    device = resolve_device(settings.device)
    parts = {
        "model": model_key,
        "device": device.type,
        "device_name": device_name(device),
        "batch_size": settings.batch_size,
        "seq_len": seq_len,
        "threads": settings.threads,
        "warmup": settings.warmup,
        "runs": settings.runs,
        "min_run_time_s": settings.min_run_time_s,
        "isolate": settings.isolate,
        "torch": torch.__version__,
    }
    if settings.runtime != "torch":  # keys of PyTorch eager measurements stay as they were before runtimes
        parts |= {
            "runtime": settings.runtime,
            "precision": settings.single_precision,
            "onnxruntime": onnxruntime_version(),
        }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _read_cached(directory: Path, key: str) -> LatencyResult | None:
    """The cached result under ``key`` (marked ``cached``), or None when absent or unreadable."""
    try:
        data = json.loads((directory / f"{key}.json").read_text())
        return replace(LatencyResult(**data), cached=True)
    except (OSError, ValueError, TypeError):
        return None


def _write_cached(directory: Path, key: str, result: LatencyResult) -> None:
    """Store ``result`` under ``key`` atomically."""
    write_json_atomically(directory / f"{key}.json", result.to_dict())


_MAX_SPREAD = 1.5
"""A measurement whose p90 exceeds this multiple of its median (and the median by :data:`NOISE_MS`) was disturbed
during its runs."""
MAX_SKEW = 1.1
"""A measurement whose median exceeds this multiple of its p10 (and the p10 by :data:`NOISE_MS`) had a good share of
its runs slowed by other work on the machine: the median of an undisturbed one lies within a few percent of its
p10."""
NOISE_MS = 0.05
"""Timer and scheduling jitter below which a spread means nothing."""
_MIN_CPU_SHARE = 0.85
"""A single-threaded CPU measurement whose thread ran for less than this share of its wall time (judged over at
least :data:`_MIN_JUDGED_S`) was contended."""
_MIN_JUDGED_S = 0.02
ATTEMPTS = 3
"""Measurements taken at most for one model while the machine is contended."""


def contention(result: LatencyResult, cpu_share: float | None = None) -> str | None:
    """Why ``result`` cannot be trusted for the cache (None when it can): its own spread, or (``cpu_share``) how
    little of the measurement's wall time its thread was given a core."""
    if result.p90_ms > _MAX_SPREAD * result.median_ms and result.p90_ms - result.median_ms > NOISE_MS:
        return f"p90 {result.p90_ms:.3f} ms > {_MAX_SPREAD:g} × median {result.median_ms:.3f} ms"
    p10 = result.p10_ms
    if p10 is not None and result.median_ms > MAX_SKEW * p10 and result.median_ms - p10 > NOISE_MS:
        return f"median {result.median_ms:.3f} ms > {MAX_SKEW:g} × p10 {p10:.3f} ms"
    if cpu_share is not None and cpu_share < _MIN_CPU_SHARE:
        return f"its thread ran {cpu_share:.0%} of the time (other processes held the cores)"
    return None


def _measure(
    model: torch.nn.Module, vocab_size: int, settings: LatencyConfig, seq_len: int
) -> tuple[LatencyResult, str | None]:
    """One measurement and its :func:`contention` (the CPU share is judged for single-threaded CPU timing only)."""
    started, cpu_started = time.perf_counter(), time.thread_time()
    result = measure_configured(model, vocab_size=vocab_size, settings=settings, seq_len=seq_len)
    wall = time.perf_counter() - started
    judged = result.device == "cpu" and result.threads == 1 and wall >= _MIN_JUDGED_S
    return result, contention(result, (time.thread_time() - cpu_started) / wall if judged else None)


def _slower_than_before(result: LatencyResult, earlier: list[LatencyResult]) -> str | None:
    """Why ``result`` was disturbed though its own runs look steady (None when it was not): it is more than
    :data:`MAX_SKEW` × slower (and :data:`NOISE_MS`) than an earlier attempt at the same model. Other work only adds
    time, so the faster attempt bounds the truth; a neighbour that slows the model without taking its core (memory
    bandwidth, a shared cache) passes :func:`contention`, not this."""
    fastest = min((attempt.median_ms for attempt in earlier), default=None)
    if fastest is None or result.median_ms <= MAX_SKEW * fastest or result.median_ms - fastest <= NOISE_MS:
        return None
    return f"median {result.median_ms:.3f} ms > {MAX_SKEW:g} × an earlier attempt's {fastest:.3f} ms"


def measure_trusted(
    model: torch.nn.Module, *, vocab_size: int, settings: LatencyConfig, seq_len: int
) -> tuple[LatencyResult, bool]:
    """:func:`measure_configured`, taken again while it was contended (see :func:`contention`) or slower than an
    earlier attempt (:func:`_slower_than_before`), up to :data:`ATTEMPTS` times. Returns the first trustworthy
    measurement and True, or, when every attempt was contended, the fastest and False."""
    attempts: list[tuple[LatencyResult, str]] = []
    for _ in range(ATTEMPTS):
        result, problem = _measure(model, vocab_size, settings, seq_len)
        problem = problem or _slower_than_before(result, [earlier for earlier, _ in attempts])
        if problem is None:
            return result, True
        attempts.append((result, problem))
    result, problem = min(attempts, key=lambda attempt: attempt[0].median_ms)
    logger.debug("latency measured under contention (%s) %d times: %.3f ms kept", problem, ATTEMPTS, result.median_ms)
    return result, False


def measure_cached(
    model: torch.nn.Module,
    *,
    model_key: dict[str, Any],
    vocab_size: int,
    settings: LatencyConfig,
    seq_len: int,
    cache_dir: Path | None,
) -> LatencyResult:
    """:func:`measure_trusted`, reusing an earlier measurement of the same key from ``cache_dir`` (if given).

    Only a trustworthy measurement is cached: when every attempt was contended the fastest is returned uncached, and
    a later trial of the same model measures it again. A cached entry that fails the spread rule is ignored.
    """
    if cache_dir is None:
        return measure_configured(model, vocab_size=vocab_size, settings=settings, seq_len=seq_len)
    key = latency_cache_key(model_key, settings, seq_len)
    cached = _read_cached(cache_dir, key)
    if cached is not None and contention(cached) is None:
        return cached
    result, trusted = measure_trusted(model, vocab_size=vocab_size, settings=settings, seq_len=seq_len)
    if trusted:
        _write_cached(cache_dir, key, result)
    return result
