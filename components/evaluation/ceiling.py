"""The autoencoder's ceiling on class consistency: how often the judge still reads real images right after they
pass through the autoencoder. A latent diffusion model can only produce what the decoder renders, so class
consistency of samples well below this figure points at the U-Net, near it at the autoencoder. It is not a hard
bound: guided samples are more prototypical than real images and can be read right more often (MNIST default run:
samples 0.988, reconstructions 0.968, the real images themselves 0.978)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from components.data.loader import iter_batches, to_model
from components.device import autocast
from components.images import to_uint8


@torch.no_grad()
def reconstruct(autoencoder: torch.nn.Module, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` (an array or ShardedImages, read through a DataLoader) -> uint8 reconstructions
    ``D(mean of q(z|x))`` (Rombach et al. 2022, sec. 3.1: the decoder of the encoder's latent; the mean, so the result
    is deterministic), computed on the autoencoder's device ``batch_size`` images at a time under the inference
    precision rule (bf16 autocast on CUDA, fp32 on the CPU)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(autoencoder.parameters()).device
    out = []
    for batch in iter_batches(images, batch_size, device=device):
        with autocast(device):
            y = autoencoder.decode(autoencoder.encode(to_model(batch, device)).mean)
        out.append(to_uint8(y.float()))
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), dtype=np.uint8)


def reconstruction_consistency(predict, autoencoder: torch.nn.Module, images: np.ndarray, labels: np.ndarray, num_classes: int,
                               batch_size: int = 100) -> dict:
    """The judge's accuracy (``predict``: uint8 images -> labels) on ``images`` and on their reconstructions, overall
    and per class: ``{"real": .., "reconstructed": .., "reconstructed_per_class": {class: ..}, "num": N}``."""
    return judges_on_reconstructions({"judge": predict}, autoencoder, images, labels, num_classes, batch_size)["judge"]


def judges_on_reconstructions(predicts: Mapping[str, Callable], autoencoder: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                              num_classes: int, batch_size: int = 100) -> dict[str, dict]:
    """:func:`reconstruction_consistency` of every judge of ``predicts`` (name -> uint8 images -> labels) on one
    reconstruction of ``images`` (the autoencoder runs once): name -> ``{"real", "reconstructed",
    "reconstructed_per_class", "num", "reconstructed_correct"}`` (the last: per-image booleans, for a paired comparison
    of the judges, :func:`~components.evaluation.probe.pick_judge`). The reconstructions are decoded images whose true
    class is known, so ``reconstructed`` is each judge's accuracy on the kind of image it judges in a latent diffusion
    model's samples."""
    from components.evaluation.metrics import class_consistency

    labels = np.asarray(labels)
    decoded = reconstruct(autoencoder, images, batch_size)
    out = {}
    for name, predict in predicts.items():
        real = class_consistency(predict(images), labels, num_classes)
        predicted = np.asarray(predict(decoded))
        rec = class_consistency(predicted, labels, num_classes)
        out[name] = {"real": real["overall"], "reconstructed": rec["overall"], "reconstructed_per_class": rec["per_class"],
                     "num": int(len(labels)), "reconstructed_correct": predicted == labels}
    return out
