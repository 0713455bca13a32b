"""Shared training utilities: devices, seeding, batching by images seen, LR warmup, EMA with warmup."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf."""


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("base.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(device)


def setup_torch(seed: int, num_threads: int = 0) -> None:
    """Seed torch's global RNG (module init) and pin the CPU thread count when asked."""
    torch.manual_seed(seed)
    if num_threads:
        torch.set_num_threads(num_threads)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (fp32 master weights); a no-op on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_indices(n: int, batch_size: int, max_images: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches, reshuffling every epoch, until ``max_images`` images have been seen."""
    seen = 0
    while seen < max_images:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            idx = perm[start : start + batch_size]
            yield idx
            seen += len(idx)
            if seen >= max_images:
                return


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


def to_model_range(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> float ``[N, C, H, W]`` in [-1, 1]."""
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float ``[N, C, H, W]`` in [-1, 1] -> uint8 ``[N, H, W, C]`` (clipped, rounded)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLossError(
            f"loss became {loss.item()} at step {step}; lower the learning rate or check the data. "
            "The previous checkpoint (if any) is left intact."
        )
