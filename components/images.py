"""Image value ranges shared by every layer: uint8 ``[N, H, W, C]`` on disk, float ``[N, C, H, W]`` in [-1, 1] in models."""

from __future__ import annotations

import numpy as np
import torch


def to_model_range(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> float ``[N, C, H, W]`` in [-1, 1]."""
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float ``[N, C, H, W]`` in [-1, 1] -> uint8 ``[N, H, W, C]`` (clipped, rounded)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
