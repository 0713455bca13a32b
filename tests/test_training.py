"""Training loops: they learn, they are deterministic, EMA warms up, NaN stops the run."""

import numpy as np
import pytest
import torch

from components.config import AutoencoderParams, DiffusionParams
from components.training.autoencoder import reconstruction_metrics, train_autoencoder
from components.training.common import NonFiniteLossError, check_finite, ema_model
from components.training.diffusion import train_diffusion


def _digits(n: int = 64) -> np.ndarray:
    """Simple structured images: bright squares at class-dependent positions."""
    imgs = np.zeros((n, 16, 16, 1), dtype=np.uint8)
    for i in range(n):
        r, c = (i % 4) * 4, (i // 4 % 4) * 4
        imgs[i, r : r + 6, c : c + 6] = 255
    return imgs


AE = AutoencoderParams(channels=(8, 16, 16), batch_size=16, max_images=640, lr=3e-3, warmup_images=64)


def test_autoencoder_learns_and_is_deterministic():
    imgs = _digits()
    cpu = torch.device("cpu")
    m1, hist = train_autoencoder(imgs, AE, seed=0, device=cpu, progress=False)
    m2, _ = train_autoencoder(imgs, AE, seed=0, device=cpu, progress=False)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert hist[-1]["mse"] < 0.5 * hist[0]["mse"]
    metrics = reconstruction_metrics(m1, imgs, cpu)
    assert metrics["val_psnr"] > 12.0
    # scale factor = 1/std of the training latents
    assert 0.05 < float(m1.scale_factor) < 20.0


def test_ema_decay_warms_up_then_caps():
    model = torch.nn.Linear(1, 1, bias=False)
    ema = ema_model(model, target_decay=0.999)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.update_parameters(model)  # first update copies
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update_parameters(model)  # n=1: decay = 2/11
    assert ema.module.weight.item() == pytest.approx(1 - 2 / 11, rel=1e-6)
    for _ in range(5000):
        ema.update_parameters(model)
    assert ema.module.weight.item() == pytest.approx(1.0, abs=1e-2)


def test_diffusion_training_reduces_loss_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(32)
    mean = labels.float().reshape(-1, 1, 1, 1).expand(-1, 4, 4, 4) / 2 - 0.75 + 0.0 * torch.randn(128, 4, 4, 4, generator=g)
    logvar = torch.full_like(mean, -6.0)
    cfg = DiffusionParams.model_validate(
        {"unet": {"preset": "res-clsAtn-chnAtn", "channels": [16, 32], "num_heads": 2}, "batch_size": 32, "max_images": 1920,
         "warmup_images": 64, "log_every": 5, "lr": 2e-3}
    )
    cpu = torch.device("cpu")
    m1, run = train_diffusion(mean, logvar, labels, 4, cfg, seed=1, device=cpu, progress=False)
    m2, _ = train_diffusion(mean, logvar, labels, 4, cfg, seed=1, device=cpu, progress=False)
    curve = run.history
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    assert curve[-1]["loss"] < 0.7 * curve[0]["loss"]
    assert not m1.training


def test_non_finite_loss_raises():
    with pytest.raises(NonFiniteLossError, match="step 7"):
        check_finite(torch.tensor(float("nan")), 7)


def test_learned_variance_model_trains_and_samples_with_every_sampler():
    from components.diffusion import make_betas, sample

    labels = torch.arange(4).repeat(16)
    mean = labels.float().reshape(-1, 1, 1, 1).expand(-1, 4, 4, 4) / 2 - 0.75
    cfg = DiffusionParams.model_validate(
        {"unet": {"preset": "res-clsAtn-chnAtn", "channels": [16, 32], "num_heads": 2}, "batch_size": 32, "max_images": 640,
         "warmup_images": 64, "log_every": 5, "variance_type": "learned_range", "min_snr_gamma": 5.0}
    )
    model, run = train_diffusion(mean, torch.full_like(mean, -6.0), labels, 4, cfg, seed=0, device=torch.device("cpu"), progress=False)
    curve = run.history
    assert model.config.out_channels == 8
    assert all(np.isfinite(p["loss"]) for p in curve) and curve[-1]["loss"] < curve[0]["loss"]
    betas = make_betas(cfg.schedule, cfg.num_timesteps, cfg.beta_start, cfg.beta_end)
    x_T = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    for sampler in ("ddpm", "ddim", "dpmpp_2m"):
        out = sample(model, x_T, betas=betas, sampler=sampler, num_steps=5, class_labels=torch.arange(4), guidance_scale=2.0,
                     generator=torch.Generator().manual_seed(1))
        assert out.shape == x_T.shape and torch.isfinite(out).all(), sampler


@pytest.mark.parametrize("latent_scale", ["autoencoder", "unit"])
@pytest.mark.parametrize("latents", ["posterior_sample", "posterior_mean"])
def test_the_train_diffusion_stage_hands_the_unet_the_latents_params_ask_for(tmp_path, monkeypatch, latents, latent_scale):
    """train_diffusion.latents and latent_scale reach the U-Net's training: the scaled posterior means either way, and
    the posterior's log-variance (shifted by 2 log s) for posterior_sample, -inf (every draw is the mean) for
    posterior_mean; s is the autoencoder's 0.8 except for the means at ``unit``, 1/std of the means."""
    import math
    from types import SimpleNamespace

    import components.data.artifact as artifact
    import components.training.diffusion as diffusion_training
    from components.config import Params
    from components.models.autoencoder import AutoencoderConfig, build_autoencoder
    from components.models.checkpoint import save_checkpoint
    from components.training.autoencoder import encode_dataset
    from pipelines.stages import train_diffusion as stage

    ae = build_autoencoder(AutoencoderConfig(in_channels=1, image_size=8, channels=(8, 16), latent_channels=2), scale_factor=0.8)
    save_checkpoint(tmp_path / "models" / "autoencoder", ae, ae.config.to_dict(), {"scale_factor": 0.8})
    images = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 1), dtype=np.uint8)
    ds = SimpleNamespace(images={"train": images}, labels={"train": np.arange(6) % 3}, captions=None, num_classes=3,
                         manifest={"dataset_digest": "d" * 64})
    monkeypatch.setattr(artifact, "read_dataset", lambda *a, **k: ds)
    seen = {}

    class Stop(Exception):
        """Raised by the recorder: the stage stops once it has handed the U-Net its latents."""

    def recorder(mean, logvar, labels, num_classes, cfg, **kwargs):
        seen.update(mean=mean, logvar=logvar, latents=cfg.latents)
        raise Stop

    monkeypatch.setattr(diffusion_training, "train_diffusion", recorder)
    params = Params.model_validate({"base": {"device": "cpu"}, "train_diffusion": {"latents": latents, "latent_scale": latent_scale}})
    with pytest.raises(Stop):
        stage.run(params, data_dir=tmp_path / "data", models_dir=tmp_path / "models", metrics_dir=tmp_path / "metrics")
    mean, logvar = encode_dataset(ae.eval(), images, torch.device("cpu"))
    s = 0.8
    if (latents, latent_scale) == ("posterior_mean", "unit"):
        s = 1.0 / float(mean.double().std())
        assert abs(s - 0.8) > 0.05  # the two scales differ, so a stage that ignores latent_scale fails
    torch.testing.assert_close(seen["mean"], s * mean)
    if latents == "posterior_mean":
        assert torch.isneginf(seen["logvar"]).all()
    else:
        torch.testing.assert_close(seen["logvar"], logvar + 2 * math.log(s))
