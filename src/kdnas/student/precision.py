"""Numeric precision of training and inference: fp32, or bf16/fp16 autocast (fp16 with a gradient scaler)."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16", "fp16"]
"""``auto``: bf16 on a CUDA device that supports it, fp16 on an older one, fp32 on the CPU."""

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The precision ``precision`` means on ``device``: ``fp32``, ``bf16`` or ``fp16`` (``auto`` resolved).

    An explicit ``bf16`` or ``fp16`` is honoured on any device (the CPU autocasts both, slowly), except ``bf16`` on a
    CUDA device without native bfloat16, which raises ``ValueError``.
    """
    device = torch.device(device)
    if precision not in ("auto", "fp32", *_AUTOCAST_DTYPES):
        raise ValueError(f"unknown precision {precision!r}: use auto, fp32, bf16 or fp16")
    if device.type != "cuda":
        return "fp32" if precision == "auto" else precision
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    if precision == "auto":
        return "bf16" if native_bf16 else "fp16"
    if precision == "bf16" and not native_bf16:
        raise ValueError(
            f"training.precision is bf16 but {torch.cuda.get_device_name(device)} has no native bfloat16: "
            "use fp16 or auto"
        )
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` (a resolved one) on ``device``; nothing for ``fp32``."""
    if precision not in _AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler for ``fp16`` (gradients would underflow without one); disabled, a no-op, otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
