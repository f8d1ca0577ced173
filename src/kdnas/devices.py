"""The device a Ray trial or teacher task runs on, from the GPUs Ray gave it: never a silent fall-back to the CPU."""

from __future__ import annotations

import os
import socket

import torch

from kdnas.config import ConfigError


class NoGPUError(ConfigError):
    """A Ray trial or task was given GPUs but its node shows no CUDA device."""


def assigned_device(gpu: float, setting: str, where: str) -> torch.device:
    """The CPU when ``gpu`` (the GPUs ``setting`` gave, fractions allowed) is 0, else the CUDA device Ray assigned
    (the first visible one; a fraction shares it). Raises :class:`NoGPUError`, naming ``where`` this runs, when GPUs
    were given but CUDA is unavailable here."""
    if gpu <= 0:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise NoGPUError(
            f"{setting}.gpu is {gpu:g} but {where} ({socket.gethostname()}) sees no CUDA device "
            f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
            "set gpu: 0 to run on CPUs"
        )
    return torch.device("cuda")
