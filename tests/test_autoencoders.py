"""Autoencoder variants (KL f=4 / f=8, VQ, plain), the vector quantiser, the PatchGAN losses, the adaptive
weight, the perceptual loss, the latent scale factor and checkpoints of every kind."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from components.config import AutoencoderParams, DiffusionParams
from components.images import to_model_range
from components.models.autoencoder import AutoencoderConfig, KLAutoencoder, VQAutoencoder, build_autoencoder
from components.models.checkpoint import CheckpointError, load_autoencoder, save_checkpoint
from components.models.discriminator import PatchDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss
from components.models.vq import VectorQuantizer
from components.training.autoencoder import (
    autoencoder_config,
    autoencoder_summary,
    diffusion_latents,
    latent_std,
    reconstruction_metrics,
    train_autoencoder,
)
from tests.conftest import square_images as _images

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


VARIANTS = {
    "kl_f4": dict(regularizer="kl", channels=(8, 16, 16)),
    "kl_f8": dict(regularizer="kl", channels=(8, 16, 16, 16)),
    "vq_f4": dict(regularizer="vq", channels=(8, 16, 16), codebook_size=32),
    "vq_f4_straight_through": dict(regularizer="vq", channels=(8, 16, 16), codebook_size=32, vq_ema=False),
    "none_f4": dict(regularizer="none", channels=(8, 16, 16)),
    "kl_f4_layer_norm": dict(regularizer="kl", channels=(8, 16, 16), norm="layer"),
    "kl_f8_no_resample_conv": dict(regularizer="kl", channels=(8, 16, 16, 16), resample_with_conv=False),
}


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Zero-initialised output convolutions would hide missing gradients; give every weight a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_builds_trains_and_round_trips(name: str, tmp_path: Path):
    cfg = AutoencoderConfig(in_channels=3, image_size=16, **VARIANTS[name])
    model = build_autoencoder(cfg, scale_factor=0.5)
    _randomise(model)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    model.train()
    recon, reg, _ = model(x, torch.Generator().manual_seed(2))
    assert recon.shape == x.shape and reg.ndim == 0 and torch.isfinite(reg)
    (F.mse_loss(recon, x) + reg).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, f"no gradient reaches {n}"
    # latent shape follows f = 2 ** (levels - 1)
    model.eval()
    post = model.encode(x)
    assert post.mean.shape == (4, *cfg.latent_shape)
    assert cfg.latent_shape[1] == 16 // cfg.downsampling_factor
    # save / load: identical outputs, scale factor and kind restored
    save_checkpoint(tmp_path / "ae", model, cfg.to_dict(), {"scale_factor": 0.5})
    assert json.loads((tmp_path / "ae" / "config.json").read_text())["model"]["kind"] == cfg.kind
    loaded, _ = load_autoencoder(tmp_path / "ae")
    assert type(loaded) is type(model) and loaded.config == cfg
    assert torch.equal(loaded.reconstruct(x), model.reconstruct(x))
    z = torch.randn(2, *cfg.latent_shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(loaded.decode(z), model.decode(z))
    assert float(loaded.scale_factor) == 0.5


def test_kinds_are_distinguished_and_mismatches_are_clear(tmp_path: Path):
    kinds = {AutoencoderConfig(regularizer=r).kind for r in ("kl", "vq", "none")}
    assert kinds == {"kl_autoencoder", "vq_autoencoder", "plain_autoencoder"}
    with pytest.raises(ValueError, match="regularizer"):
        AutoencoderConfig(regularizer="vae")
    with pytest.raises(ValueError, match="build_autoencoder"):
        KLAutoencoder(AutoencoderConfig(regularizer="vq"))
    # a checkpoint written before `regularizer` existed (kind only) is a KL one
    old = AutoencoderConfig(channels=(8, 16, 16)).to_dict()
    del old["regularizer"], old["codebook_size"], old["commitment_beta"], old["vq_ema"], old["vq_decay"]
    assert AutoencoderConfig.from_dict(old).regularizer == "kl"
    # ... and one written before `norm` existed has GroupNorm layers
    del old["norm"]
    assert AutoencoderConfig.from_dict(old).norm == "group"
    # ... and one written before `resample_with_conv` existed has its resampling convolutions
    del old["resample_with_conv"]
    assert AutoencoderConfig.from_dict(old).resample_with_conv is True
    with pytest.raises(ValueError, match="norm"):
        AutoencoderConfig(norm="batch")
    # weights of one kind under the config of another: CheckpointError, not a crash deep in torch
    vq = build_autoencoder(AutoencoderConfig(channels=(8, 16, 16), regularizer="vq"))
    save_checkpoint(tmp_path / "bad", vq, AutoencoderConfig(channels=(8, 16, 16), regularizer="none").to_dict())
    with pytest.raises(CheckpointError, match="do not match"):
        load_autoencoder(tmp_path / "bad")
    save_checkpoint(tmp_path / "other", torch.nn.Linear(1, 1), {"kind": "unet"})
    with pytest.raises(CheckpointError, match="not an autoencoder"):
        load_autoencoder(tmp_path / "other")


def test_layer_norm_autoencoder_keeps_each_position_to_itself():
    """``norm: layer`` normalises each position over its channels (= F.layer_norm on channels-last), so one spot of
    large activations changes the normalised features at that spot only; GroupNorm's statistics span the feature map,
    so the same spot rescales every position (what lets a decoder plant "droplet" spots to steer it)."""
    from components.models.blocks import ChannelLayerNorm, group_norm

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 8, 8, generator=g)
    ln = ChannelLayerNorm(16)
    with torch.no_grad():
        ln.weight.copy_(torch.rand(16, generator=g) + 0.5)
        ln.bias.copy_(torch.randn(16, generator=g))
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (16,), ln.weight, ln.bias, eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), ref, atol=1e-5, rtol=1e-5)
    spot = x.clone()
    spot[:, :, 2, 3] += 50.0
    elsewhere = torch.ones(8, 8, dtype=torch.bool)
    elsewhere[2, 3] = False
    assert torch.equal(ln(spot)[..., elsewhere], ln(x)[..., elsewhere])
    gn = group_norm(16)
    assert (gn(spot)[..., elsewhere] - gn(x)[..., elsewhere]).abs().max() > 0.1
    # the option reaches every norm of the encoder and decoder, and the params section accepts it
    model = build_autoencoder(AutoencoderConfig(channels=(8, 16, 16), norm="layer"))
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.GroupNorm, ChannelLayerNorm))]
    assert norms and all(isinstance(m, ChannelLayerNorm) for m in norms)
    assert autoencoder_config(AutoencoderParams(norm="layer"), in_channels=1, image_size=32).norm == "layer"
    with pytest.raises(ValueError, match="norm"):
        AutoencoderParams(norm="batch")


def test_every_model_field_comes_from_its_params_key():
    """``autoencoder_config`` takes every field of ``AutoencoderConfig`` (but the image shape) from the
    ``train_autoencoder`` key of the same name: each field set to a value other than its default arrives, so a new
    model option cannot be left out of the mapping."""
    from dataclasses import fields

    model_fields = {f.name for f in fields(AutoencoderConfig)} - {"in_channels", "image_size"}
    assert model_fields <= set(AutoencoderParams.model_fields), "a model field has no train_autoencoder key"
    others = {
        "channels": [8, 16, 16, 16], "latent_channels": 3, "num_res_blocks": 2, "regularizer": "vq", "codebook_size": 64,
        "commitment_beta": 0.5, "vq_ema": False, "vq_decay": 0.9, "norm": "layer", "resample_with_conv": False,
    }
    assert set(others) == model_fields, "give the new field a non-default value here"
    defaults = AutoencoderConfig()
    cfg = autoencoder_config(AutoencoderParams(**others), in_channels=3, image_size=32)
    for name, value in others.items():
        expected = tuple(value) if name == "channels" else value
        assert getattr(cfg, name) == expected != getattr(defaults, name), name
    assert (cfg.in_channels, cfg.image_size) == (3, 32)
    with pytest.raises(ValueError, match="not divisible by f=4"):
        autoencoder_config(AutoencoderParams(channels=[8, 16, 16]), in_channels=1, image_size=30)


def test_resampling_without_convolutions_is_average_pooling_and_nearest_upsampling():
    """``resample_with_conv: false`` (LDM's ``resamp_with_conv``): Downsample is 2x2 average pooling, Upsample repeats
    each pixel 2x2, and neither has a weight; the flag reaches every resampling layer of the encoder and decoder, which
    then costs what the default MNIST model costs without its two upsampling convolutions at the doubled resolution."""
    from components.models.blocks import Downsample, Upsample

    x = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    down, up = Downsample(3, with_conv=False), Upsample(3, with_conv=False)
    assert not list(down.parameters()) and not list(up.parameters())
    expected_down = x.reshape(2, 3, 2, 2, 3, 2).mean(dim=(3, 5))
    torch.testing.assert_close(down(x), expected_down, rtol=0, atol=1e-6)
    assert torch.equal(up(x), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    assert len(list(Downsample(3).parameters())) == len(list(Upsample(3).parameters())) == 2  # the default keeps its convs

    params = AutoencoderParams(resample_with_conv=False)
    cfg = autoencoder_config(params, in_channels=1, image_size=32)
    model = build_autoencoder(cfg)
    resamplers = [m for m in model.modules() if isinstance(m, (Downsample, Upsample))]
    assert len(resamplers) == 4 and all(m.conv is None for m in resamplers)
    default = autoencoder_summary(build_autoencoder(autoencoder_config(AutoencoderParams(), in_channels=1, image_size=32)))
    cheap = autoencoder_summary(model)
    # the encoder loses its two stride-2 convolutions (16 and 32 channels at 16x16 and 8x8 outputs)
    assert default["encoder_macs"] - cheap["encoder_macs"] == 9 * (16 * 16 * 16 * 16 + 32 * 32 * 8 * 8)
    # the decoder its two upsampling convolutions (64 channels at 16x16, 32 channels at 32x32): 30 % of the round trip
    assert default["decoder_macs"] - cheap["decoder_macs"] == 9 * (64 * 64 * 16 * 16 + 32 * 32 * 32 * 32)
    assert cheap["macs_per_forward"] / default["macs_per_forward"] == pytest.approx(0.678, abs=1e-3)
    assert model.decode(torch.zeros(1, *cfg.latent_shape)).shape == (1, 1, 32, 32)


def test_params_validation_names_the_key():
    with pytest.raises(ValueError, match="regularizer"):
        AutoencoderParams(regularizer="vae")
    with pytest.raises(ValueError, match="disc_start_images"):
        AutoencoderParams(disc_weight=0.5, disc_start_images=50_000, max_images=40_000)
    with pytest.raises(ValueError, match="perceptual_input_size"):
        AutoencoderParams(perceptual_input_size=48)
    with pytest.raises(ValueError, match="codebook_size"):
        AutoencoderParams(codebook_size=1)
    with pytest.raises(ValueError, match="vq_decay"):
        AutoencoderParams(vq_decay=1.0)


# ------------------------------------------------------------------------------------ quantiser
def _nearest(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Brute-force nearest code of each position (the reference for the quantiser's argmin)."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    return torch.cdist(flat, codebook).argmin(1).reshape(z.shape[0], *z.shape[2:])


def test_straight_through_gradient_reaches_the_encoder():
    q = VectorQuantizer(8, 3, beta=0.25, ema=True)
    q.init_from(torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)), torch.Generator().manual_seed(0))
    q.eval()
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out, _, info = q(z)
    assert torch.equal(info["indices"], _nearest(z.detach(), q.codebook))
    assert torch.allclose(out, q.lookup(info["indices"]), atol=1e-6)  # forward value: the codes
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * w).sum().backward()
    assert torch.equal(z.grad, w)  # backward: identity (sg[z_q - z])
    # and through a whole VQ autoencoder the reconstruction loss moves the encoder
    ae = VQAutoencoder(AutoencoderConfig(in_channels=1, image_size=16, channels=(8, 16, 16), regularizer="vq", codebook_size=16))
    _randomise(ae)
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    ae.train()
    recon, _, _ = ae(x, torch.Generator().manual_seed(0))
    F.mse_loss(recon, x).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ae.encoder.parameters())


@pytest.mark.parametrize("ema", [True, False])
def test_vq_loss_matches_direct_computation(ema: bool):
    beta = 0.3
    q = VectorQuantizer(6, 2, beta=beta, ema=ema)
    codes = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 2.0], [3.0, -1.0], [0.5, -2.0], [-2.0, -2.0]])
    q.codebook.data.copy_(codes)
    q.initialised.fill_(True)
    q.eval()  # no EMA step, so the loss is computed against the codes above
    z = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(0)) * 1.5
    _, loss, info = q(z)
    nearest = codes[_nearest(z, codes)].permute(0, 3, 1, 2)
    sq = ((z - nearest) ** 2).mean()
    assert info["commitment"].item() == pytest.approx(sq.item(), rel=1e-6)
    # eq. 3 of van den Oord et al.: codebook term (absent with EMA) + beta * commitment, element means
    expected = (beta if ema else 1 + beta) * sq
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_ema_update_moves_codes_towards_assigned_vectors():
    decay = 0.9
    q = VectorQuantizer(3, 2, beta=0.25, ema=True, decay=decay)
    codes = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    q.init_from(codes.T.reshape(1, 2, 1, 3))  # 3 vectors, 3 codes: the codebook is these, in some order
    assert sorted(map(tuple, q.codebook.tolist())) == sorted(map(tuple, codes.tolist()))
    assert torch.equal(q.cluster_size, torch.ones(3))
    q.codebook.copy_(codes)
    q.embed_sum.copy_(codes)
    # 8 vectors around (1, 1): all nearest to code 0
    z = (torch.tensor([1.0, 1.0]) + 0.1 * torch.randn(8, 2, generator=torch.Generator().manual_seed(0))).T.reshape(1, 2, 2, 4)
    q.train()
    q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    n = torch.tensor([decay + (1 - decay) * 8, decay, decay])
    m = torch.stack([decay * codes[0] + (1 - decay) * flat.sum(0), decay * codes[1], decay * codes[2]])
    total = n.sum()
    expected = m / ((n + q.eps) / (total + 3 * q.eps) * total)[:, None]
    assert torch.allclose(q.codebook, expected, atol=1e-6)
    before = torch.linalg.norm(codes[0] - flat.mean(0))
    after = torch.linalg.norm(q.codebook[0] - flat.mean(0))
    assert after < 0.6 * before  # moved towards the mean of its vectors
    assert torch.allclose(q.codebook[1:], codes[1:], atol=1e-3)  # unused codes stay put
    dists = [after]
    for _ in range(20):
        q(z)
        dists.append(torch.linalg.norm(q.codebook[0] - flat.mean(0)))
    assert all(b < a for a, b in itertools.pairwise(dists))  # keeps approaching, geometrically
    assert dists[-1] < 0.15 * before


# ---------------------------------------------------------------------------------------- GAN
def test_hinge_losses_and_patch_logits():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # 0.5 * (mean(relu(1 - [2, .5])) + mean(relu(1 + [-2, .5]))) = 0.5 * (0.25 + 0.75)
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5)
    assert hinge_g_loss(fake).item() == pytest.approx(0.75)
    assert hinge_d_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0.0  # beyond the margins
    disc = PatchDiscriminator(3, width=8, num_layers=2)
    logits = disc(torch.randn(2, 3, 32, 32))
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] > 1  # one logit per patch


def test_adaptive_weight_is_the_gradient_norm_ratio():
    w = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    rec = (3.0 * w).sum()  # d/dw = 3 everywhere
    g = (0.5 * w**2).sum()  # d/dw = w
    lam = adaptive_weight(rec, g, w)
    expected = (3.0 * torch.ones(4, 5)).norm() / (w.detach().norm() + 1e-4)
    assert lam.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not lam.requires_grad
    assert adaptive_weight((3.0 * w).sum(), 0.0 * w.sum(), w).item() == pytest.approx(1e4)  # clamped


# -------------------------------------------------------------------------------- perceptual
def test_perceptual_loss_zero_on_identity_and_grows_with_distortion():
    from components.models.perceptual import EffNetPerceptualLoss

    loss = EffNetPerceptualLoss(64)
    loss.train()  # stays frozen in inference mode
    assert not loss.training and all(not p.requires_grad for p in loss.parameters())
    x = torch.from_numpy(_images(4, 32)).permute(0, 3, 1, 2).float() / 127.5 - 1
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(loss(x, x), torch.zeros(4), atol=1e-6)
    small, large = loss(x, x + 0.05 * noise), loss(x, x + 0.5 * noise)
    assert (small > 0).all() and (large > small).all()
    y = (x + 0.3 * noise).requires_grad_(True)
    loss(x, y).sum().backward()
    assert y.grad.abs().sum() > 0
    gray = x[:, :1]
    assert loss(gray, gray + 0.3 * noise[:, :1]).shape == (4,)  # grayscale is replicated to RGB


# ------------------------------------------------------------------------------------ training
TINY = dict(channels=(8, 16, 16), batch_size=8, max_images=192, lr=3e-3, warmup_images=16, latent_channels=3)


class _KnownLatents(torch.nn.Module):
    """Encoder stub with analytically known latents, whatever the input: per image 4 x 4 x 4 means
    ``b + a * (-1)^(c+h+w)`` (half +a, half -a: population std a) and, for KL, log-variance ``log sigma^2``."""

    def __init__(self, a: float, b: float, sigma: float | None):
        super().__init__()
        self.a, self.b, self.sigma = a, b, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = torch.meshgrid(torch.arange(4), torch.arange(4), torch.arange(4), indexing="ij")
        mean = (self.b + self.a * (-1.0) ** (c + h + w)).expand(x.shape[0], 4, 4, 4)
        if self.sigma is None:
            return mean
        return torch.cat([mean, torch.full_like(mean, 2 * math.log(self.sigma))], dim=1)


@pytest.mark.parametrize(
    ("regularizer", "sigma", "expected"),
    [
        # KL: z = mean + sigma * n, so Var z = Var(mean) + sigma^2 = 1 + 0.25 (law of total variance)
        ("kl", 0.5, math.sqrt(1.25)),
        ("kl", 2.0, math.sqrt(5.0)),
        # deterministic kinds: z is the encoder output, std exactly a = 1 (the offset b = 3 does not count)
        ("vq", None, 1.0),
        ("none", None, 1.0),
    ],
)
def test_latent_std_of_latents_with_known_std(regularizer: str, sigma: float | None, expected: float):
    model = build_autoencoder(AutoencoderConfig(in_channels=1, image_size=8, channels=(8, 16), latent_channels=4,
                                                regularizer=regularizer, codebook_size=4))
    model.encoder = _KnownLatents(a=1.0, b=3.0, sigma=sigma)
    data = torch.zeros(1000, 1, 8, 8)  # 64,000 latent elements: the sampled std is within ~0.3% of the truth
    std = latent_std(model, data, torch.device("cpu"), seed=0)
    assert std == pytest.approx(expected, rel=0.01 if sigma else 1e-4)
    assert latent_std(model, data, torch.device("cpu"), seed=0) == std  # seeded


def test_diffusion_latents_are_scaled_draws_or_the_scaled_means():
    """train_diffusion trains on z = s * (mean + std * n): ``posterior_sample`` hands it s * mean and log-variance
    2 log(s * sigma); ``posterior_mean`` the same means with std exactly 0, so every draw is the mean."""
    model = build_autoencoder(AutoencoderConfig(in_channels=1, image_size=8, channels=(8, 16), latent_channels=4,
                                                regularizer="kl"), scale_factor=0.5)
    model.encoder = _KnownLatents(a=1.0, b=3.0, sigma=2.0)
    data = torch.zeros(6, 1, 8, 8)
    expected_mean = 0.5 * model.encoder(data)[:, :4]
    mean, logvar, scale = diffusion_latents(model, data, torch.device("cpu"))
    assert scale == 0.5
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(torch.exp(0.5 * logvar), torch.full_like(mean, 0.5 * 2.0))  # s * sigma
    mean_only, logvar_mean, scale_mean = diffusion_latents(model, data, torch.device("cpu"), "posterior_mean")
    assert scale_mean == 0.5  # the default scale is the autoencoder's, whatever the latents
    torch.testing.assert_close(mean_only, expected_mean)
    assert torch.isneginf(logvar_mean).all()
    n = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mean_only + torch.exp(0.5 * logvar_mean) * n, mean_only)  # the draw train_diffusion makes is the mean
    with pytest.raises(ValueError, match="posterior_mean"):
        diffusion_latents(model, data, torch.device("cpu"), "mode")
    with pytest.raises(ValueError, match="latents"):
        DiffusionParams(latents="mode")


def test_unit_latent_scale_gives_the_means_unit_variance_and_leaves_the_draws_at_the_autoencoders():
    """``latent_scale: unit`` is 1/std of what the U-Net learns (LDM's intent for the scale factor): for the means,
    whose std (here 4) differs from the draws' the autoencoder's scale factor was made for, 1/std(means); for the draws
    the autoencoder's own scale factor (it is 1/std of those draws). A number is used as given (distill's teacher's)."""
    model = build_autoencoder(AutoencoderConfig(in_channels=1, image_size=8, channels=(8, 16), latent_channels=4,
                                                regularizer="kl"), scale_factor=0.5)
    model.encoder = _KnownLatents(a=4.0, b=3.0, sigma=2.0)
    data = torch.zeros(6, 1, 8, 8)
    means = model.encoder(data)[:, :4]
    cpu = torch.device("cpu")
    mean, logvar, scale = diffusion_latents(model, data, cpu, "posterior_mean", "unit")
    assert scale == pytest.approx(1.0 / float(means.double().std()), rel=1e-6)  # float32 reduction vs a float64 one
    assert scale == pytest.approx(0.25, rel=0.01)  # population std 4 (Bessel's correction over 384 elements: 0.13 %)
    torch.testing.assert_close(mean, scale * means)
    assert float(mean.double().std()) == pytest.approx(1.0, abs=1e-6)
    assert torch.isneginf(logvar).all()
    m_unit, lv_unit, s_unit = diffusion_latents(model, data, cpu, "posterior_sample", "unit")
    m_ae, lv_ae, s_ae = diffusion_latents(model, data, cpu, "posterior_sample", "autoencoder")
    assert s_unit == s_ae == 0.5
    assert torch.equal(m_unit, m_ae) and torch.equal(lv_unit, lv_ae)
    m2, lv2, s2 = diffusion_latents(model, data, cpu, "posterior_sample", 2.0)
    assert s2 == 2.0
    torch.testing.assert_close(m2, 2.0 * means)
    torch.testing.assert_close(torch.exp(0.5 * lv2), torch.full_like(m2, 2.0 * 2.0))
    for bad in ("ones", 0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="latent scale"):
            diffusion_latents(model, data, cpu, "posterior_mean", bad)
    with pytest.raises(ValueError, match="latent_scale"):
        DiffusionParams(latent_scale="ones")


@pytest.mark.parametrize("regularizer", ["kl", "vq", "none"])
def test_scale_factor_makes_the_training_latents_unit_variance(regularizer: str):
    imgs = _images(200)
    cfg = AutoencoderParams(regularizer=regularizer, codebook_size=16, **{**TINY, "max_images": 48})
    model, _ = train_autoencoder(imgs, cfg, seed=0, device=torch.device("cpu"), progress=False)
    with torch.no_grad():
        post = model.encode(to_model_range(imgs))
    mean, logvar = post.mean.double().numpy(), post.logvar.double().numpy()
    if regularizer == "kl":
        # the variance of posterior samples over all elements, without sampling: E[var] + Var[mean]
        var = np.exp(logvar).mean() + mean.var()
        tol = 0.03  # the scale comes from one sample of 9,600 latents: its std is within ~0.7% (1 sigma)
    else:
        assert np.isneginf(logvar).all()  # deterministic: the diffusion model sees exactly the encoder output
        var = mean.var(ddof=1)
        tol = 1e-4
    assert float(model.scale_factor) ** 2 * var == pytest.approx(1.0, rel=tol)


def test_gan_and_perceptual_training_is_deterministic_and_switches_on_at_start():
    imgs = _images(32)
    cfg = AutoencoderParams(regularizer="kl", perceptual_weight=0.1, perceptual_input_size=32, disc_weight=0.5,
                            disc_start_images=48, disc_layers=1, **{**TINY, "max_images": 96})
    m1, hist = train_autoencoder(imgs, cfg, seed=0, device=torch.device("cpu"), progress=False, log_every=1)
    m2, _ = train_autoencoder(imgs, cfg, seed=0, device=torch.device("cpu"), progress=False, log_every=1)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    before = [h for h in hist if h["images"] <= 48]
    after = [h for h in hist if h["images"] > 48]
    assert before and after
    assert all("g_loss" not in h for h in before)
    assert all(np.isfinite(h["g_loss"]) and np.isfinite(h["d_loss"]) and h["adaptive_weight"] >= 0 for h in after)
    assert all(h["perceptual"] > 0 for h in hist)


def test_vq_training_learns_and_uses_codes():
    imgs = _images(48)
    cfg = AutoencoderParams(regularizer="vq", codebook_size=32, **{**TINY, "max_images": 480})
    model, hist = train_autoencoder(imgs, cfg, seed=0, device=torch.device("cpu"), progress=False)
    assert hist[-1]["mse"] < 0.5 * hist[0]["mse"]
    assert hist[-1]["perplexity"] > 2.0  # more than a couple of codes in use
    assert reconstruction_metrics(model, imgs, torch.device("cpu"))["val_psnr"] > 15.0
    s = autoencoder_summary(model)
    assert s["parameters"] > 0 and s["macs_per_forward"] == s["encoder_macs"] + s["decoder_macs"] > 0


def test_spot_ratio_measures_a_planted_decoder_spot():
    """benchmarks.autoencoder_spots reads the input of the decoder's last norm during a reconstruction: the ratio is
    about 1-3 for the smooth features of a random decoder on smooth images, and far above 10 when one position is made
    100x brighter there."""
    from benchmarks.autoencoder_spots import last_norm_inputs, spot_ratio
    from components.evaluation.ceiling import reconstruct

    images = np.full((4, 16, 16, 3), 128, dtype=np.uint8)
    images[:, 4:12, 4:12] = 200
    for norm in ("group", "layer"):
        model = build_autoencoder(AutoencoderConfig(in_channels=3, image_size=16, channels=(8, 16, 16), norm=norm)).eval()

        def ratio(model: torch.nn.Module = model) -> float:
            with torch.inference_mode(), last_norm_inputs(model) as seen:
                reconstruct(model, images, 3)  # two batches: both are recorded
            assert sum(len(s) for s in seen) == len(images)
            return spot_ratio(seen)

        smooth = ratio()
        assert 1.0 <= smooth < 5.0, (norm, smooth)

        def plant(module, inputs, output):
            output = output.clone()
            output[:, :, 3, 5] *= 100.0
            return output

        handle = model.decoder.net[-4].register_forward_hook(plant)  # the last ResBlock, whose output feeds the final norm
        try:
            assert ratio() > 10 * smooth, norm
        finally:
            handle.remove()
        assert ratio() == smooth  # the hook of last_norm_inputs is gone too: nothing accumulates across calls
