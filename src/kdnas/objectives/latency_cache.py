"""Latency measurements cached on disk, keyed by what determines them: model shape, device, settings, torch.

One small JSON file per key, written atomically (temporary file + ``os.replace``), so concurrent trials and
trials on other nodes of a cluster (``output_dir`` on a shared filesystem) can read and write the cache without
locks: two trials that measure the same key at once both write a valid file and the last one wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kdnas.config import LatencyConfig
from kdnas.objectives.latency import LatencyResult, device_name, measure_configured, resolve_device


def latency_cache_key(model_key: dict[str, Any], settings: LatencyConfig, seq_len: int) -> str:
    """A digest of the model's shape (``model_key``), the device's name, the timing settings and torch's version."""
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
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def read_cached(directory: Path, key: str) -> LatencyResult | None:
    """The cached result under ``key`` (marked ``cached``), or None when absent or unreadable."""
    try:
        data = json.loads((directory / f"{key}.json").read_text())
        return replace(LatencyResult(**data), cached=True)
    except (OSError, ValueError, TypeError):
        return None


def write_cached(directory: Path, key: str, result: LatencyResult) -> None:
    """Store ``result`` under ``key`` atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=f".{key}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(result.to_dict(), file)
        os.replace(tmp, directory / f"{key}.json")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def measure_cached(
    model: torch.nn.Module,
    *,
    model_key: dict[str, Any],
    vocab_size: int,
    settings: LatencyConfig,
    seq_len: int,
    cache_dir: Path | None,
) -> LatencyResult:
    """:func:`measure_configured`, reusing an earlier measurement of the same key from ``cache_dir`` (if given)."""
    if cache_dir is None:
        return measure_configured(model, vocab_size=vocab_size, settings=settings, seq_len=seq_len)
    key = latency_cache_key(model_key, settings, seq_len)
    cached = read_cached(cache_dir, key)
    if cached is not None:
        return cached
    result = measure_configured(model, vocab_size=vocab_size, settings=settings, seq_len=seq_len)
    write_cached(cache_dir, key, result)
    return result
