"""The one place a device name becomes a ``torch.device``, and the precision every stage runs at on it.

A neutral module (it imports nothing of the project but the shared errors): training, generation, evaluation and
the registry's pyfunc all resolve ``base.device`` here, and all run under the same :func:`autocast` rule
(bf16 on CUDA with fp32 weights, as training always has; fp32 on the CPU, unchanged).
"""

from __future__ import annotations

import contextlib
import re

import torch

from components.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")  # what params.yaml's base.device accepts (cuda:N is accepted here as well)


class DeviceError(ConfigError, RuntimeError):
    """A device that this machine does not have (or a name that is no device); the message names the setting and the fix.
    A ``ConfigError`` (the CLI exits 2 with the message, no traceback) and, as before, a ``RuntimeError``."""


def resolve_device(device: str | torch.device | None = "auto", *, key: str = "base.device") -> torch.device:
    """``auto`` (or ``None``) is CUDA when torch sees a CUDA device, else the CPU; ``cpu``, ``cuda`` and ``cuda:N``
    are taken as asked, but asking for CUDA where there is none is a :class:`DeviceError` naming ``key`` (the param or
    option the name came from) and what to set instead, before any model is built. A ``torch.device`` other than CUDA
    is returned as it is."""
    if isinstance(device, torch.device):  # already resolved (a stage passes its device down): only CUDA is checked again
        if device.type != "cuda":
            return device
        device = str(device)
    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise DeviceError(f"{key} is {device!r}, which is not a device: use one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
        raise DeviceError(
            f"{key} is {device!r} but no CUDA device is available here ({build}; torch.cuda.is_available() is False): "
            f"set {key}: auto (CUDA where there is one, else the CPU) or {key}: cpu"
        )
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"{key} is {device!r} but this machine has {torch.cuda.device_count()} CUDA device(s) "
                          f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1}); choose one of them, or cuda / auto")
    return torch.device(name)


def autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (fp32 master weights; Micikevicius et al. 2018's mixed precision with bfloat16, which
    needs no loss scaling); a no-op on the CPU, which runs fp32 and stays bit-identical to a run without it.

    Training, sampling and feature extraction all use this one rule, so a CUDA run is bf16 everywhere and a CPU run
    fp32 everywhere."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
