"""Check class consistency of generated digits with an independent MNIST classifier.

The pipeline's own evaluator trains a small CNN; this script trains a *different* one (LeNet-style,
dropout, random affine augmentation via torchvision, longer schedule) on the real train split,
reports its accuracy on the held-out real val split, then classifies a folder of samples written by
`latentflow sample` (``DIR/<label>/<index>.png``) and reports the share labelled as requested.

    .venv/bin/latentflow sample --num-per-class 50 --seed 123 --out /tmp/s
    .venv/bin/python -m benchmarks.independent_classifier --samples /tmp/s

Results are printed and written to ``reports/independent_classifier.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from benchmarks.provenance import provenance
from components.data.artifact import read_dataset
from components.data.samples import read_samples
from components.images import to_model_range
from components.io import atomic_write_json


class LeNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 8 * 8, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train(images: np.ndarray, labels: np.ndarray, epochs: int, seed: int) -> LeNet:
    torch.manual_seed(seed)
    model = LeNet()
    x, y = to_model_range(images), torch.from_numpy(labels).long()
    augment = v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), fill=-1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for s in range(len(x) // 64):
            idx = perm[s * 64 : (s + 1) * 64]
            batch = torch.stack([augment(img) for img in x[idx]])
            loss = F.cross_entropy(model(batch), y[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: LeNet, images: np.ndarray) -> np.ndarray:
    return torch.cat([model(to_model_range(images[i : i + 500])).argmax(1) for i in range(0, len(images), 500)]).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=Path, required=True, help="folder written by `latentflow sample`")
    ap.add_argument("--data", type=Path, default=Path("data/dataset"))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", type=Path, default=Path("reports/independent_classifier.json"))
    args = ap.parse_args()
    ds = read_dataset(args.data)
    t0 = time.perf_counter()
    model = train(ds.images["train"], ds.labels["train"], args.epochs, args.seed)
    val_acc = float((predict(model, ds.images["val"]) == ds.labels["val"]).mean())
    images, labels = read_samples(args.samples)
    pred = predict(model, images)
    per_class = {str(c): float((pred[labels == c] == c).mean()) for c in np.unique(labels)}
    result = {
        "classifier": "LeNet-style CNN, random affine augmentation, trained on the real train split",
        "real_val_accuracy": val_acc,
        "num_real_val": int(len(ds.labels["val"])),
        "samples": str(args.samples),
        "num_samples": int(len(labels)),
        "sample_class_consistency": float((pred == labels).mean()),
        "per_class": per_class,
        "seconds": round(time.perf_counter() - t0, 1),
        "provenance": provenance(),
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
