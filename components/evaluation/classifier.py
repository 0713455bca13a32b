"""A small CNN trained on the real train split: its features give a domain Fréchet distance and its
predictions give class consistency of guided samples."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from components.data.loader import IndexBatches, iter_batches, make_loader, to_model
from components.device import autocast, resolve_device
from components.models.checkpoint import read_checkpoint


@dataclass(frozen=True)
class ClassifierConfig:
    in_channels: int = 1
    num_classes: int = 10
    width: int = 32
    feature_dim: int = 128
    input_pool: int = 1  # average-pool the input by this factor first (1 = native resolution); see input_pool_for
    kind: str = field(default="classifier", init=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ClassifierConfig:
        return cls(**{k: v for k, v in d.items() if k != "kind"})


def input_pool_for(side: int, max_side: int) -> int:
    """The smallest integer factor that average-pools a ``side``-pixel image to at most ``max_side`` pixels
    (28 or 32 with ``max_side`` 32 -> 1, 64 -> 2, 128 -> 4)."""
    if side < 1 or max_side < 1:
        raise ValueError(f"side and max_side must be >= 1, got {side} and {max_side}")
    return max(1, math.ceil(side / max_side))


class Classifier(nn.Module):
    """[average pool by ``input_pool``], conv-bn-relu x2, pool, x2, pool, x1, global average pool -> ``feature_dim``
    features -> logits. The input pool has no weights, so checkpoints without it load unchanged."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.input_pool = nn.AvgPool2d(config.input_pool) if config.input_pool > 1 else nn.Identity()

        def cbr(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *cbr(config.in_channels, w), *cbr(w, w), nn.MaxPool2d(2),
            *cbr(w, 2 * w), *cbr(2 * w, 2 * w), nn.MaxPool2d(2),
            *cbr(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * w, config.feature_dim), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.input_pool(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero fill, i.e. -1 in model range)."""
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    n, _, h, w = x.shape
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    return torch.stack([pad[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def train_classifier(
    images, labels: np.ndarray, num_classes: int, *, epochs: int, batch_size: int, lr: float, seed: int, progress: bool = True,
    device: str | torch.device | None = "cpu", workers: int = 0, max_side: int = 32,
) -> Classifier:
    """Train with AdamW, one-cycle LR and +-2 px shifts; deterministic given ``seed``.

    Images with a side above ``max_side`` are average-pooled first (:func:`input_pool_for`; 64x64 -> 32x32), which
    cuts the cost of a 64x64 classifier about 4x; at 28 or 32 pixels (``max_side`` 32) nothing changes.

    ``images``: uint8 ``[N, H, W, C]``, an array or a :class:`~components.data.artifact.ShardedImages`; each epoch's
    batches are read through a DataLoader (``workers`` processes) and converted to float per batch. The draws (the
    epoch's permutation, then each batch's shifts) come from one generator in that order, whatever ``workers`` is.

    Runs on ``device`` (``auto`` | ``cpu`` | ``cuda``; :func:`components.device.resolve_device`) under the training
    precision rule (bf16 autocast on CUDA, fp32 on the CPU). The weights are initialised and every random draw
    (order, shifts) is made on the CPU, so the run is the same one on any device up to the device's arithmetic; the
    model is returned on ``device``."""
    device = resolve_device(device, key="device")
    torch.manual_seed(seed)
    config = ClassifierConfig(in_channels=images.shape[-1], num_classes=num_classes, input_pool=input_pool_for(max(images.shape[1:3]), max_side))
    # channels-last for training: ~1.3x the steps/s of the default layout on a 2-core CPU (benchmarks/eval_speed.py)
    model = Classifier(config).to(device, memory_format=torch.channels_last)
    y = torch.from_numpy(labels).long()
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(1, len(images) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in tqdm(range(epochs), desc="classifier", unit="epoch", disable=not progress):
        perm = torch.randperm(len(images), generator=gen)
        steps = [perm[s * batch_size : (s + 1) * batch_size] for s in range(steps_per_epoch)]
        loader = make_loader(images, IndexBatches([idx.tolist() for idx in steps]), workers=workers, pin_memory=device.type == "cuda")
        for idx, batch in zip(steps, loader, strict=True):
            with autocast(device):
                x = _random_shift(to_model(batch), 2, gen).to(device, memory_format=torch.channels_last)
                loss = F.cross_entropy(model(x), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.to(memory_format=torch.contiguous_format).eval()  # safetensors stores contiguous tensors


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """The classifier saved at ``path`` (safetensors + JSON config, :func:`components.models.checkpoint.read_checkpoint`),
    in eval mode on ``device``."""
    state, meta = read_checkpoint(path)
    model = Classifier(ClassifierConfig.from_dict(meta["model"]))
    model.load_state_dict(state)
    return model.to(device).eval()


@torch.no_grad()
def classify(model: Classifier, images, batch_size: int = 500, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[N, feature_dim]`` (float64) and predicted labels ``[N]`` of uint8 images (an array or
    ShardedImages, read through a DataLoader), computed on the model's device ``batch_size`` images at a time (bf16
    autocast on CUDA, fp32 on the CPU)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    if len(images) == 0:
        return np.zeros((0, model.config.feature_dim)), np.zeros(0, dtype=np.int64)
    feats, preds = [], []
    for batch in iter_batches(images, batch_size, workers=workers, device=device):
        with autocast(device):
            f = model.features(to_model(batch, device))
            logits = model.head(f)
        feats.append(f.double().cpu())
        preds.append(logits.argmax(1).cpu())
    return torch.cat(feats).numpy(), torch.cat(preds).numpy()


class ClassifierExtractor:
    """The domain classifier as a feature extractor (same interface as those in ``features.py``)."""

    def __init__(self, model: Classifier, weights: str = "models/classifier"):
        from components.evaluation.features import ExtractorInfo

        self.model = model
        self.info = ExtractorInfo(
            name="classifier", feature_dim=model.config.feature_dim,
            resize="none (native resolution)" if model.config.input_pool == 1 else f"average pool by {model.config.input_pool}",
            weights=f"{weights} (trained on the real train split)",
        )

    def __call__(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        return classify(self.model, images, batch_size)[0]

    def predict(self, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
        return classify(self.model, images, batch_size)[1]
