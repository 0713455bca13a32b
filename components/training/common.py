"""Shared training utilities: devices, seeding, autocast, LR warmup, EMA with warmup, finite-loss check."""

from __future__ import annotations

import math

import torch
from torch.optim.swa_utils import AveragedModel

from components.device import autocast, resolve_device  # noqa: F401  (re-exported: the one device rule, shared below training)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf."""


def setup_torch(seed: int, num_threads: int = 0) -> None:
    """Seed torch's global RNG (module init) and pin the CPU thread count when asked."""
    torch.manual_seed(seed)
    if num_threads:
        torch.set_num_threads(num_threads)


def warmup_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int | None = None, final_fraction: float = 0.0) -> float:
    """Linear warmup to ``base_lr`` over ``warmup_steps``; then constant, or, with ``total_steps``,
    cosine decay to ``final_fraction * base_lr`` at the last step (Loshchilov & Hutter 2017, eq. 5)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if total_steps is None or total_steps <= warmup_steps:
        return base_lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def ema_model(model: torch.nn.Module, target_decay: float) -> AveragedModel:
    """torch's AveragedModel with an EMA whose decay warms up: min(target, (1 + n) / (10 + n)).

    A fixed decay keeps ``decay ** n`` of the random initialisation after n updates (a quarter at
    0.999 and n = 1,300); the warmup (as in Tarvainen & Valpola 2017 / diffusers' EMAModel) removes it.
    """

    def avg_fn(avg: torch.Tensor, cur: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        decay = min(target_decay, (1.0 + float(n)) / (10.0 + float(n)))
        return avg * decay + cur * (1.0 - decay)

    return AveragedModel(model, avg_fn=avg_fn, use_buffers=True)


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLossError(
            f"loss became {loss.item()} at step {step}; lower the learning rate or check the data. "
            "The previous checkpoint (if any) is left intact."
        )
