"""The diffusion weights that are returned and saved are the EMA ones; generation decodes ``z / latent_scale`` (the
autoencoder's ``scale_factor`` unless the U-Net's checkpoint records its own).

EMA: the expected average is rebuilt by hand from the online model's parameter trajectory (recorded at every
step) with the warmup decay ``min(target, (1 + n) / (10 + n))`` of :func:`components.training.common.ema_model`,
so an EMA that is skipped, updated before the optimizer step or swapped for the online model fails.
Latent scale: the diffusion model works on ``scale * z`` (unit variance); the decoder must get it back divided.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
import torch

import components.training.diffusion as diffusion_training
from components.config import DiffusionParams
from components.generation import LatentDiffusionGenerator
from components.models.autoencoder import AutoencoderConfig, build_autoencoder
from components.models.unet import UNet, UNetConfig
from components.training.loop import Trainer

EMA_DECAY = 0.5  # reached after 8 updates of the warmup (1 + n) / (10 + n): both regimes are exercised


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


class RecordingTrainer(Trainer):
    """The real Trainer, keeping itself and the online parameters seen at each step's loss call."""

    instances: ClassVar[list[RecordingTrainer]] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trajectory: list[dict[str, torch.Tensor]] = []
        RecordingTrainer.instances.append(self)

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def run(self, loss_fn, after_step=None):
        def recording_loss(net, batch):
            self.trajectory.append(self._snapshot())  # parameters after the previous optimizer step
            return loss_fn(net, batch)

        result = super().run(recording_loss, after_step)
        self.trajectory.append(self._snapshot())  # after the last step
        return result


@pytest.fixture
def recording_trainer(monkeypatch):
    RecordingTrainer.instances = []
    monkeypatch.setattr(diffusion_training, "Trainer", RecordingTrainer)
    return RecordingTrainer.instances


def _tiny_cfg(**overrides) -> DiffusionParams:
    return DiffusionParams.model_validate({
        "unet": {"preset": "res-clsAtn-chnAtn", "channels": [8, 16], "num_heads": 2}, "batch_size": 8,
        "max_images": 12 * 8, "warmup_images": 0, "lr": 1e-2, "lr_schedule": "constant", "ema_decay": EMA_DECAY,
        "num_timesteps": 50, **overrides,
    })


def _hand_ema(trajectory: list[dict[str, torch.Tensor]], target: float) -> dict[str, torch.Tensor]:
    """EMA of theta_1..theta_n: the first update copies, update n >= 1 uses decay min(target, (1+n)/(10+n))."""
    online = trajectory[1:]  # trajectory[0] is the initialisation, before any step
    ema = {k: v.double() for k, v in online[0].items()}
    for n, theta in enumerate(online[1:], start=1):
        d = min(target, (1.0 + n) / (10.0 + n))
        ema = {k: d * ema[k] + (1 - d) * theta[k].double() if theta[k].is_floating_point() else theta[k] for k in ema}
    return ema


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def _latents(n: int = 32):
    labels = torch.arange(4).repeat(n // 4)
    mean = torch.randn(n, 2, 4, 4, generator=torch.Generator().manual_seed(0)) + labels.float()[:, None, None, None]
    return mean, torch.full_like(mean, -4.0), labels


def test_train_diffusion_returns_the_ema_of_the_online_trajectory(recording_trainer):
    mean, logvar, labels = _latents()
    model, result = diffusion_training.train_diffusion(mean, logvar, labels, 4, _tiny_cfg(), seed=0,
                                                       device=torch.device("cpu"), progress=False)
    (trainer,) = recording_trainer
    assert result.steps == 12 and len(trainer.trajectory) == 13
    returned = {k: v.detach() for k, v in model.state_dict().items()}
    online = trainer.trajectory[-1]
    assert returned.keys() == online.keys()
    expected = _hand_ema(trainer.trajectory, EMA_DECAY)
    assert _max_diff(returned, expected) < 1e-5
    # the online weights moved well away from their average: returning them would fail the check above
    assert _max_diff(online, expected) > 1e-3
    assert model is trainer.ema.module


def _write_inputs(root: Path) -> None:
    """A 2-class dataset artifact of 16x16 grey images and an (untrained) KL autoencoder checkpoint."""
    from components.data.artifact import write_dataset
    from components.models.checkpoint import save_checkpoint

    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 16, 16, 1), dtype=np.uint8) for s, n in (("train", 32), ("val", 8))}
    labels = {s: np.arange(len(images[s]), dtype=np.int64) % 2 for s in images}
    write_dataset(root / "data", images, labels, ["a", "b"], source="test", extra={})
    torch.manual_seed(0)
    cfg = AutoencoderConfig(in_channels=1, image_size=16, channels=(8, 16), latent_channels=2, regularizer="kl")
    ae = build_autoencoder(cfg, scale_factor=0.8)
    save_checkpoint(root / "models" / "autoencoder", ae, cfg.to_dict(), {"scale_factor": 0.8})


def test_train_diffusion_stage_saves_the_ema_weights(tmp_path: Path, recording_trainer, monkeypatch):
    from components.config import Params
    from components.models.checkpoint import read_checkpoint
    from pipelines.stages import train_diffusion as stage
    from tests.conftest import tiny_params

    _write_inputs(tmp_path)
    fit_args = []
    real_fit = diffusion_training.train_diffusion

    def spy_fit(mean, logvar, *args, **kwargs):
        fit_args.append((mean.clone(), logvar.clone()))
        return real_fit(mean, logvar, *args, **kwargs)

    monkeypatch.setattr(diffusion_training, "train_diffusion", spy_fit)
    p = tiny_params()
    p["base"].update(num_threads=1, device="cpu")
    p["train_diffusion"] = {**p["train_diffusion"], **_tiny_cfg(max_images=6 * 8).model_dump(mode="json")}
    stage.run(Params.model_validate(p), data_dir=tmp_path / "data", models_dir=tmp_path / "models",
              metrics_dir=tmp_path / "metrics")
    (trainer,) = recording_trainer
    saved, meta = read_checkpoint(tmp_path / "models" / "diffusion")
    assert meta["weights"] == "ema"
    ema = {k: v.detach().cpu() for k, v in trainer.ema.module.state_dict().items()}
    assert saved.keys() == ema.keys()
    assert all(torch.equal(saved[k], ema[k]) for k in saved)
    assert _max_diff(saved, trainer.trajectory[-1]) > 1e-3  # not the online weights
    assert _max_diff(saved, _hand_ema(trainer.trajectory, EMA_DECAY)) < 1e-5
    # and it trained on scale * z: the posterior of the train images, mean times 0.8, variance times 0.8^2
    from components.data.artifact import read_dataset
    from components.models.checkpoint import load_autoencoder

    ae, _ = load_autoencoder(tmp_path / "models" / "autoencoder")
    x = torch.from_numpy(read_dataset(tmp_path / "data").images["train"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        post = ae.encode(x)
    ((mean, logvar),) = fit_args
    assert torch.allclose(mean, 0.8 * post.mean, atol=1e-5)
    assert torch.allclose(logvar.exp(), 0.64 * post.logvar.exp(), rtol=1e-4)


# --------------------------------------------------------------------------------- latent scale
SCHEDULE = {"schedule": "linear", "num_timesteps": 50, "beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "sample"}


class IdentityAutoencoder(torch.nn.Module):
    """image = decode(z) = z (1 channel, 4x4 latents and images); records what decode receives."""

    def __init__(self, scale_factor: float):
        super().__init__()
        self.config = SimpleNamespace(image_size=4, in_channels=1, latent_shape=(1, 4, 4))
        self.register_buffer("scale_factor", torch.tensor(scale_factor))
        self.decoded: list[torch.Tensor] = []

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self.decoded.append(z.clone())
        return z


class TargetUNet(torch.nn.Module):
    """Predicts x0 = targets[label] (the scaled latent of class ``label``) whatever x_t is."""

    def __init__(self, targets: torch.Tensor):
        super().__init__()
        self.targets = targets
        self.config = SimpleNamespace(num_classes=len(targets))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        assert labels is not None and (labels >= 0).all()  # guidance 1: conditional pass only
        return self.targets[labels].to(x.dtype)


def test_generator_decodes_scaled_latents_divided_by_the_scale_factor():
    scale = 0.25  # the autoencoder's latents have std 4; the diffusion model sees them times 0.25
    images = torch.tensor([[0.8, -0.8, 0.4, -0.4], [1.0, -1.0, 0.0, 0.6], [-0.2, 0.2, 0.9, -0.9], [0.5, 0.5, -0.5, -0.5]])
    images = torch.stack([images, -images, images.flip(0)])[:, None]  # 3 classes, [3, 1, 4, 4] in [-1, 1]
    ae = IdentityAutoencoder(scale)
    gen = LatentDiffusionGenerator(ae, TargetUNet(scale * images), {"schedule": SCHEDULE}, torch.device("cpu"))
    out = gen.generate([2, 0, 1], seed=0, steps=4, guidance=1.0)
    # uint8 of the unscaled image, by hand: round((x + 1) * 127.5)
    expected = ((images[[2, 0, 1]] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert out.shape == (3, 4, 4, 1) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1, out[..., 0]
    (z,) = ae.decoded
    assert torch.allclose(z, images[[2, 0, 1]], atol=1e-5)  # decode got z / 0.25, not z or z * 0.25


def _bias_pair(tmp_path: Path, diffusion_extra: dict) -> torch.Tensor:
    """Real checkpoints in ``tmp_path``: a KL autoencoder with scale factor 2.5 and a U-Net whose output is its
    (constant) output-conv bias, i.e. x0 = bias per channel, with ``diffusion_extra`` in its config.json; returns the bias."""
    from components.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ae_cfg = AutoencoderConfig(in_channels=1, image_size=8, channels=(8, 16), latent_channels=2, regularizer="kl")
    ae = build_autoencoder(ae_cfg, scale_factor=2.5)
    save_checkpoint(tmp_path / "autoencoder", ae, ae_cfg.to_dict(), {"scale_factor": 2.5})
    unet = UNet(UNetConfig(in_channels=2, out_channels=2, sample_size=4, num_classes=3, channels=(8, 16), num_heads=2))
    bias = torch.tensor([1.5, -0.75])
    with torch.no_grad():
        unet.conv_out.bias.copy_(bias)  # the output conv's weight is zero: out = bias everywhere
    save_checkpoint(tmp_path / "diffusion", unet, unet.config.to_dict(), {"schedule": SCHEDULE, **diffusion_extra})
    return bias


def test_generator_from_checkpoints_feeds_the_decoder_z_over_scale(tmp_path: Path):
    """Real checkpoints (:func:`_bias_pair`): x0 = bias per channel and a KL autoencoder with scale factor 2.5; the
    decoder must receive bias / 2.5."""
    bias = _bias_pair(tmp_path, {})
    gen = LatentDiffusionGenerator.from_dir(tmp_path)
    assert float(gen.autoencoder.scale_factor) == 2.5
    seen: list[torch.Tensor] = []
    gen.autoencoder.decoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    out = gen.generate([0, 2], seed=3, steps=3, guidance=3.0)
    assert out.shape == (2, 8, 8, 1)
    (z,) = seen
    assert torch.allclose(z, (bias / 2.5)[None, :, None, None].expand(2, 2, 4, 4), atol=1e-6)
    with torch.no_grad():
        decoded = gen.autoencoder.decoder(z)
    assert np.array_equal(out, ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())


def test_generator_divides_by_the_latent_scale_the_unet_was_trained_at(tmp_path: Path, monkeypatch):
    """A U-Net trained with ``train_diffusion.latent_scale: unit`` records its own scale (here 4.0, not the
    autoencoder's 2.5): generate decodes z / 4.0, and edit hands the sampler the encoded means times 4.0 and decodes
    what comes back divided by 4.0."""
    import components.generation as generation

    bias = _bias_pair(tmp_path, {"latent_scale": 4.0})
    gen = LatentDiffusionGenerator.from_dir(tmp_path)
    assert gen.latent_scale == 4.0 and float(gen.autoencoder.scale_factor) == 2.5
    seen: list[torch.Tensor] = []
    gen.autoencoder.decoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    gen.generate([0, 2], seed=3, steps=3, guidance=3.0)
    assert torch.allclose(seen.pop(), (bias / 4.0)[None, :, None, None].expand(2, 2, 4, 4), atol=1e-6)

    handed: list[torch.Tensor] = []

    def identity_edit(unet, z0, noise, **kwargs):
        handed.append(z0.clone())
        return z0  # the sampler returns the input latents: decode must get the means back

    monkeypatch.setattr(generation, "edit_latents", identity_edit)
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    gen.edit(images, [0, 1], seed=0, strength=0.5, steps=4)
    with torch.no_grad():
        means = gen.autoencoder.encode(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0).mean
    torch.testing.assert_close(handed[0], 4.0 * means)
    torch.testing.assert_close(seen.pop(), means, rtol=1e-6, atol=1e-6)


def test_checkpoints_without_a_latent_scale_use_the_autoencoders_and_a_bad_one_is_refused(tmp_path: Path):
    from components.models.checkpoint import CheckpointError

    _bias_pair(tmp_path / "old", {})
    assert LatentDiffusionGenerator.from_dir(tmp_path / "old").latent_scale == 2.5
    for bad in (0.0, -1.0, "4", True, None, float("nan")):
        _bias_pair(tmp_path / "bad", {"latent_scale": bad})
        with pytest.raises(CheckpointError, match="latent_scale"):
            LatentDiffusionGenerator.from_dir(tmp_path / "bad")
