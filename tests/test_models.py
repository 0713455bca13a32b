"""Models: shapes, conditioning, and exact save/load round trips through safetensors + JSON."""

from pathlib import Path

import pytest
import torch

from components.models.autoencoder import AutoencoderConfig, KLAutoencoder
from components.models.checkpoint import CheckpointError, load_autoencoder, load_unet, save_checkpoint
from components.models.unet import UNet, UNetConfig


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Zero-initialised output layers would hide bugs; give every weight a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_unet_shapes_conditioning_and_null_class():
    cfg = UNetConfig.from_layout(preset="res-res-clsAtn-atn-chnAtn", channels=(16, 32), attention_levels=(False, True), num_heads=2)
    model = UNet(cfg).eval()
    _randomise(model)
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    y = torch.tensor([1, 2, 3])
    out = model(x, t, y)
    assert out.shape == x.shape
    assert not torch.allclose(out, model(x, t, torch.tensor([4, 5, 6])))  # labels matter
    assert not torch.allclose(out, model(x, torch.tensor([1, 501, 998]), y))  # time matters
    # label -1 and no labels both mean the null class
    assert torch.equal(model(x, t, torch.full((3,), -1)), model(x, t, None))
    assert torch.equal(model(x, t, torch.full((3,), -1)), model(x, t, torch.full((3,), cfg.num_classes)))


def test_unet_backward_reaches_every_parameter():
    model = UNet(UNetConfig.from_layout(preset="res-conv-clsAtn-chnAtn", channels=(16, 32), num_heads=2))
    _randomise(model)
    model(torch.randn(2, 4, 8, 8), torch.tensor([3, 7]), torch.tensor([0, 1])).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("channels,latent", [((16, 32, 32), 8), ((16, 16, 32, 32), 4)])
def test_autoencoder_downsampling_factor(channels, latent):
    cfg = AutoencoderConfig(in_channels=3, image_size=32, channels=channels, latent_channels=4)
    ae = KLAutoencoder(cfg)
    post = ae.encode(torch.randn(2, 3, 32, 32))
    assert post.mean.shape == (2, 4, latent, latent) == (2, *cfg.latent_shape)
    assert ae.decode(post.mean).shape == (2, 3, 32, 32)
    # KL of the prior against itself is zero, and positive otherwise
    from components.models.autoencoder import DiagonalGaussian

    zeros = torch.zeros(1, 4, 2, 2)
    assert DiagonalGaussian(zeros, zeros).kl().item() == 0.0
    assert DiagonalGaussian(zeros + 1, zeros).kl().item() == pytest.approx(0.5 * 16)


def test_checkpoint_round_trip_is_exact(tmp_path: Path):
    unet = UNet(UNetConfig.from_layout(preset="res-res-clsAtn-atn-chnAtn", channels=(16, 32), num_heads=2)).eval()
    _randomise(unet, 1)
    ae = KLAutoencoder(AutoencoderConfig(channels=(8, 16, 16)), scale_factor=0.37).eval()
    _randomise(ae, 2)
    save_checkpoint(tmp_path / "unet", unet, unet.config.to_dict(), {"note": "x"})
    save_checkpoint(tmp_path / "ae", ae, ae.config.to_dict())
    unet2, meta = load_unet(tmp_path / "unet")
    ae2, _ = load_autoencoder(tmp_path / "ae")
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([5, 900]), torch.tensor([1, -1])
    assert torch.equal(unet(x, t, y), unet2(x, t, y))
    img = torch.randn(2, 1, 32, 32)
    assert torch.equal(ae.decode(ae.encode(img).mean), ae2.decode(ae2.encode(img).mean))
    assert float(ae2.scale_factor) == pytest.approx(0.37)
    assert meta["note"] == "x"
    with pytest.raises(CheckpointError, match="not a unet"):
        load_unet(tmp_path / "ae")
    with pytest.raises(CheckpointError, match="not found"):
        load_unet(tmp_path / "missing")
