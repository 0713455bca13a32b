"""Model size figures logged by the training stages: parameter count and multiply-accumulates per forward."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def macs_per_forward(model: torch.nn.Module, *inputs, **kwargs) -> int:
    """Multiply-accumulates of one ``model(*inputs, **kwargs)`` call, counted by torch's FlopCounterMode
    (which counts 2 FLOPs per MAC for matmuls, convolutions and attention)."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(*inputs, **kwargs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def model_summary(model: torch.nn.Module, *inputs, **kwargs) -> dict[str, int]:
    """``{"parameters": ..., "macs_per_forward": ...}`` for a forward on ``inputs`` (batch of one is typical)."""
    return {"parameters": count_parameters(model), "macs_per_forward": macs_per_forward(model, *inputs, **kwargs)}
