"""components/training/autoencoder.py: what each line of the autoencoder's training decides (the loss terms and
their weights, the discriminator and its optimizer, defaults, the scale factor and the reconstruction metrics).
Written against the survivors of its mutation run (reports/mutation.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import AutoencoderParams
from components.training.autoencoder import fit_autoencoder
from components.training.state import latest_training_state, load_training_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)

TINY = dict(channels=(8, 16, 16), batch_size=8, lr=3e-3, warmup_images=8, latent_channels=3)


def _images(n: int = 32, size: int = 16, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    imgs = np.full((n, size, size, channels), 20, dtype=np.uint8)
    for i in range(n):
        r, c = rng.integers(0, size - 6, 2)
        imgs[i, r : r + 6, c : c + 6] = rng.integers(120, 256, channels)
    return imgs


@pytest.mark.parametrize(("regularizer", "kl_weight", "reg_weight"), [("kl", 0.25, 0.25), ("vq", 0.25, 1.0)])
def test_the_loss_is_the_reconstruction_plus_the_weighted_regulariser(regularizer, kl_weight, reg_weight):
    """Without perceptual and GAN terms the step loss is MSE + w R: w = kl_weight for KL, 1 for VQ (its beta is in R)."""
    cfg = AutoencoderParams(regularizer=regularizer, codebook_size=8, kl_weight=kl_weight, max_images=24, **TINY)
    _, result = fit_autoencoder(_images(), cfg, seed=0, progress=False, log_every=1)
    assert len(result.history) == 3
    for h in result.history:
        assert h["reg"] > 1e-4  # so that the weight is visible in the sum
        assert h["loss"] == pytest.approx(h["mse"] + reg_weight * h["reg"], rel=1e-5)


def test_without_disc_weight_there_is_no_discriminator(tmp_path: Path):
    cfg = AutoencoderParams(regularizer="kl", disc_weight=0.0, disc_start_images=0, max_images=24, **TINY)
    _, result = fit_autoencoder(_images(), cfg, seed=0, progress=False, log_every=1, checkpoint_dir=tmp_path)
    assert all("g_loss" not in h and "d_loss" not in h for h in result.history)
    assert load_training_state(latest_training_state(tmp_path))["extra"] == {}


def test_the_discriminator_trains_with_its_own_adam_and_is_checkpointed(tmp_path: Path):
    """LDM's discriminator optimizer: Adam with betas (0.5, 0.9) at disc_lr (Esser et al. 2021), saved with the
    run so that a resumed run continues the adversarial game where it stopped."""
    cfg = AutoencoderParams(regularizer="kl", disc_weight=0.5, disc_start_images=0, disc_layers=1, disc_lr=1e-3,
                            max_images=24, **TINY)
    _, result = fit_autoencoder(_images(), cfg, seed=0, progress=False, log_every=1, checkpoint_dir=tmp_path)
    assert all("d_loss" in h for h in result.history)
    extra = load_training_state(latest_training_state(tmp_path))["extra"]
    assert set(extra) == {"discriminator", "discriminator_optimizer"}
    (group,) = extra["discriminator_optimizer"]["param_groups"]
    assert tuple(group["betas"]) == (0.5, 0.9)
    assert any(k.endswith("weight") for k in extra["discriminator"])


def test_without_a_device_it_trains_on_the_cpu():
    cfg = AutoencoderParams(regularizer="kl", max_images=8, **TINY)
    model, result = fit_autoencoder(_images(), cfg, seed=0, progress=False)
    assert result.steps == 1
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}


def test_the_loss_history_has_a_point_every_25_steps_by_default():
    cfg = AutoencoderParams(regularizer="none", max_images=8 * 50, **TINY)
    _, result = fit_autoencoder(_images(), cfg, seed=0, progress=False)
    assert [h["step"] for h in result.history] == [1, 25, 50]
