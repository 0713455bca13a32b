"""Perceptual reconstruction loss on frozen ImageNet EfficientNet-Lite0 features.

LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", eq. 1)
compares channel-normalised activations of a pretrained network:
``d(x, y) = sum_l 1/(H_l W_l) sum_hw || w_l * (f^l_hw(x) - f^l_hw(y)) ||^2`` with ``f`` unit-normalised over
channels. Its learned weights ``w_l`` cannot be downloaded here, so this uses ``w_l = 1`` (the paper's
"baseline" variant) on the EfficientNet-Lite0 weights that ship offline in a pip package, loaded by
:func:`components.models.effnet_lite.load_effnet_lite0`. Taps: the stem and the last block of the
stride-4, -8 and -16 stages. Images are resized (bilinear) to ``input_size`` (a multiple of 32, as the
network's static "same" paddings require) and normalised as the TF Lite models were trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from components.models.effnet_lite import EFFNET_LITE_MEAN, EFFNET_LITE_STD, load_effnet_lite0

# blocks after which features are taken (ends of the 24-, 40- and 80-channel stages)
_TAPS = (2, 4, 7)


class EffNetPerceptualLoss(nn.Module):
    """``forward(x, y)`` -> per-example perceptual distance ``[B]`` between images in [-1, 1] (1 or 3 channels).

    The network is frozen and always in eval mode (BatchNorm statistics fixed); gradients flow to the input.
    """

    def __init__(self, input_size: int = 64):
        super().__init__()
        if input_size % 32:
            raise ValueError(f"perceptual input_size must be a multiple of 32, got {input_size}")
        self.input_size = input_size
        net, _ = load_effnet_lite0("cpu")
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: _TAPS[-1] + 1])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> EffNetPerceptualLoss:
        return super().train(False)  # frozen: BatchNorm stays in inference mode

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Tapped activations of images ``x`` in [-1, 1]."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        h = self.stem(((x + 1) * 127.5 - EFFNET_LITE_MEAN) / EFFNET_LITE_STD)
        feats = [h]
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in _TAPS:
                feats.append(h)
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Sum over taps of the spatial mean of squared differences of channel-unit-normalised features."""
        total = torch.zeros(x.shape[0], device=x.device)
        for fx, fy in zip(self.features(x), self.features(y), strict=True):
            fx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
            fy = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
            total = total + (fx - fy).pow(2).sum(1).mean(dim=(1, 2))
        return total
