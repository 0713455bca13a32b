"""components/training/autoencoder.py: what each line of the autoencoder's training decides (the loss terms and
their weights, the discriminator and its optimizer, defaults, the scale factor and the reconstruction metrics).
Written against the survivors of its mutation run (reports/mutation.md)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from components.config import AutoencoderParams
from components.models.autoencoder import build_autoencoder
from components.training.autoencoder import fit_autoencoder
from components.training.state import latest_training_state, load_training_state
from tests.conftest import square_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)

TINY = dict(channels=(8, 16, 16), batch_size=8, lr=3e-3, warmup_images=8, latent_channels=3)


_images = functools.partial(square_images, 32, channels=1)  # 32 one-channel 16x16 images


@pytest.mark.parametrize(("regularizer", "kl_weight", "reg_weight"), [("kl", 0.25, 0.25), ("vq", 0.25, 1.0)])
def test_the_loss_is_the_reconstruction_plus_the_weighted_regulariser(regularizer, kl_weight, reg_weight):
    """Without perceptual and GAN terms the step loss is MSE + w R: w = kl_weight for KL, 1 for VQ (its beta is in R)."""
    cfg = AutoencoderParams(regularizer=regularizer, codebook_size=8, kl_weight=kl_weight, max_images=24, **TINY)
    _, result = fit_autoencoder(_images(), cfg, seed=0, progress=False, log_every=1)
    assert len(result.history) == 3
    for h in result.history:
        assert h["reg"] > 1e-4  # so that the weight is visible in the sum
        assert h["loss"] == pytest.approx(h["mse"] + reg_weight * h["reg"], rel=1e-5)


def test_with_the_l1_reconstruction_loss_the_step_loss_is_the_mean_absolute_error_plus_the_weighted_kl():
    cfg = AutoencoderParams(regularizer="kl", reconstruction_loss="l1", kl_weight=0.25, max_images=24, **TINY)
    _, result = fit_autoencoder(_images(), cfg, seed=0, progress=False, log_every=1)
    for h in result.history:
        assert h["reg"] > 1e-4
        assert h["loss"] == pytest.approx(h["l1"] + 0.25 * h["reg"], rel=1e-5)
        assert h["l1"] ** 2 <= h["mse"] * (1 + 1e-5) and abs(h["l1"] - h["mse"]) > 0.05  # Jensen; and not the MSE renamed
    mse_run = fit_autoencoder(_images(), cfg.model_copy(update={"reconstruction_loss": "mse"}), seed=0, progress=False, log_every=1)[1]
    assert all("l1" not in h for h in mse_run.history)
    assert mse_run.history[-1]["mse"] != pytest.approx(result.history[-1]["mse"], rel=1e-3)  # a different objective trains differently


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


def test_without_perceptual_weight_the_perceptual_network_is_not_used():
    cfg = AutoencoderParams(regularizer="kl", perceptual_weight=0.0, max_images=16, **TINY)
    _, result = fit_autoencoder(_images(), cfg, seed=0, progress=False, log_every=1)
    assert all("perceptual" not in h for h in result.history)


# ------------------------------------------------------------------------------------- the GAN and perceptual terms
class _SpyAdam(torch.optim.Adam):
    """The discriminator's optimizer (the generator's is AdamW): records each step's learning rate and whether the
    gradients were cleared since the previous step."""

    events: ClassVar[list[tuple[str, float]]] = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        _SpyAdam.events.append(("zero_grad", 0.0))
        super().zero_grad(set_to_none)

    def step(self, closure=None):
        _SpyAdam.events.append(("step", self.param_groups[0]["lr"]))
        return super().step(closure)


@pytest.fixture
def gan_spies(monkeypatch):
    """Spies on the discriminator's optimizer, its hinge loss and the adaptive weight, as the training module calls them."""
    import components.training.autoencoder as ae

    _SpyAdam.events = []
    monkeypatch.setattr(ae.torch.optim, "Adam", _SpyAdam)
    calls: dict[str, list] = {"d_loss": [], "adaptive": []}
    real_d, real_adaptive = ae.hinge_d_loss, ae.adaptive_weight

    def d_loss(logits_real, logits_fake):
        out = real_d(logits_real, logits_fake)
        calls["d_loss"].append((float(out.detach()), float(logits_real.detach().mean()), float(logits_fake.detach().mean())))
        return out

    def adaptive(nll, g_loss, last_layer):
        out = real_adaptive(nll, g_loss, last_layer)
        calls["adaptive"].append((float(nll.detach()), float(g_loss.detach()), float(out)))
        return out

    monkeypatch.setattr(ae, "hinge_d_loss", d_loss)
    monkeypatch.setattr(ae, "adaptive_weight", adaptive)
    return calls


GAN = dict(regularizer="kl", kl_weight=1e-3, perceptual_weight=0.3, perceptual_input_size=32, disc_weight=0.5, disc_layers=1)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_the_discriminator_follows_the_generator_s_lr_schedule_and_clears_its_gradients(gan_spies, schedule):
    """At every step the discriminator's lr is disc_lr times the generator's warmup/cosine factor of that same step
    (the first step included: its factor is 1/warmup, not 0), after its gradients were cleared."""
    cfg = AutoencoderParams(**GAN, disc_start_images=0, disc_lr=1e-3, lr_schedule=schedule,
                            **{**TINY, "warmup_images": 24, "max_images": 8 * 6})
    _, result = fit_autoencoder(_images(), cfg, seed=0, progress=False, log_every=1)
    events = _SpyAdam.events
    assert [e for e, _ in events] == ["zero_grad", "step"] * 6
    disc_lrs = [lr for e, lr in events if e == "step"]
    gen_factors = [h["lr"] / cfg.lr for h in result.history]
    assert gen_factors[0] == pytest.approx(1 / 3) and (gen_factors[-1] < 1.0) == (schedule == "cosine")
    assert disc_lrs == pytest.approx([1e-3 * f for f in gen_factors], rel=1e-6)


def test_the_logged_losses_add_up_and_the_adaptive_weight_balances_reconstruction_against_gan(gan_spies):
    """Step loss = MSE + w_p P + kl_weight KL + disc_weight * lambda * L_G (module docstring), with lambda computed from
    the reconstruction loss (MSE + w_p P) and the generator loss, in that order; d_loss is the mean hinge loss of the
    step's micro-batches."""
    cfg = AutoencoderParams(**GAN, disc_start_images=0, **{**TINY, "max_images": 8 * 3, "runtime": {"grad_accum": 2}})
    _, result = fit_autoencoder(_images(), cfg, seed=0, progress=False, log_every=1)
    assert len(result.history) == 3 and len(gan_spies["adaptive"]) == 6 and len(gan_spies["d_loss"]) == 6
    for i, h in enumerate(result.history):
        # the logged parts are those of the step's last micro-batch; the loss is the step mean: check that micro-batch
        nll, g_loss, lam = gan_spies["adaptive"][2 * i + 1]
        rec = h["mse"] + 0.3 * h["perceptual"]
        assert nll == pytest.approx(rec, rel=1e-5) and g_loss == pytest.approx(h["g_loss"], rel=1e-5)
        assert lam == pytest.approx(h["adaptive_weight"], rel=1e-5) and lam > 0
        d_pair = [d for d, _, _ in gan_spies["d_loss"][2 * i : 2 * i + 2]]
        assert h["d_loss"] == pytest.approx(sum(d_pair) / 2, rel=1e-5)


def test_the_step_loss_with_every_term_is_their_weighted_sum(gan_spies):
    cfg = AutoencoderParams(**GAN, disc_start_images=0, **{**TINY, "max_images": 8 * 3})
    _, result = fit_autoencoder(_images(), cfg, seed=0, progress=False, log_every=1)
    for h in result.history:
        expected = h["mse"] + 0.3 * h["perceptual"] + 1e-3 * h["reg"] + 0.5 * h["adaptive_weight"] * h["g_loss"]
        assert h["loss"] == pytest.approx(expected, rel=1e-5)
        assert h["perceptual"] > 0 and h["reg"] > 0 and abs(h["g_loss"]) > 1e-4


def test_the_discriminator_learns_to_tell_real_images_from_reconstructions(gan_spies, monkeypatch):
    """Hinge loss on (real, reconstruction) in that order, backpropagated and stepped every step: after some steps
    the trained discriminator scores the real images above the model's reconstructions, and its loss has fallen."""
    import components.training.autoencoder as ae

    made = []

    class Recorded(ae.PatchDiscriminator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(ae, "PatchDiscriminator", Recorded)
    images = _images()
    cfg = AutoencoderParams(**{**GAN, "perceptual_weight": 0.0}, disc_start_images=0, disc_lr=2e-2,
                            **{**TINY, "lr": 1e-4, "max_images": 8 * 30})
    model, _ = fit_autoencoder(images, cfg, seed=0, progress=False, log_every=1)
    (disc,) = made
    from components.images import to_model_range

    x = to_model_range(images)
    with torch.no_grad():
        real, fake = disc(x).mean(), disc(model.reconstruct(x)).mean()
    assert real > fake + 0.1
    d_losses = [d for d, _, _ in gan_spies["d_loss"]]
    assert np.mean(d_losses[-5:]) < np.mean(d_losses[:5]) - 0.05


def test_a_non_finite_discriminator_loss_stops_training_naming_the_step(monkeypatch):
    import components.training.autoencoder as ae
    from components.training.common import NonFiniteLossError

    calls = []

    def nan_on_third(logits_real, logits_fake):
        calls.append(1)
        out = ae.F.relu(1.0 - logits_real).mean()
        return out * float("nan") if len(calls) == 3 else out

    monkeypatch.setattr(ae, "hinge_d_loss", nan_on_third)
    cfg = AutoencoderParams(**GAN, disc_start_images=0, **{**TINY, "max_images": 8 * 5})
    with pytest.raises(NonFiniteLossError, match=r"at step 2;"):  # the third step, 0-based as the generator's errors
        fit_autoencoder(_images(), cfg, seed=0, progress=False)


# ------------------------------------------------------------------------------------- latent_std and the metrics
class _Fixed(torch.nn.Module):
    """An 'autoencoder' whose encoder returns a fixed latent and whose reconstruction is ``x + offset(x)``."""

    def __init__(self, latent: float = 0.0, offset=None):
        super().__init__()
        self.latent, self.offset = latent, offset

    def encode(self, x):
        from types import SimpleNamespace

        mean = torch.full((x.shape[0], 2, 2, 2), self.latent)
        return SimpleNamespace(mean=mean, logvar=torch.full_like(mean, float("-inf")))

    def reconstruct(self, x):
        return x + self.offset(x)


def test_collapsed_latents_are_refused_with_a_clear_error():
    from components.training.autoencoder import latent_std

    with pytest.raises(ValueError, match="collapsed"):
        latent_std(_Fixed(latent=1.5), torch.zeros(8, 1, 4, 4), torch.device("cpu"), seed=0)


def test_encode_dataset_covers_every_image_past_one_batch():
    from components.training.autoencoder import encode_dataset

    model = _Fixed()
    model.encode = lambda x: __import__("types").SimpleNamespace(mean=x[:, :, :1, :1] * 2, logvar=x[:, :, :1, :1] * 0)
    data = torch.arange(1203, dtype=torch.float32).view(1203, 1, 1, 1).expand(1203, 1, 2, 2).contiguous()
    mean, logvar = encode_dataset(model, data, torch.device("cpu"))
    assert logvar.shape == mean.shape == (1203, 1, 1, 1) and torch.equal(mean.flatten(), 2 * torch.arange(1203, dtype=torch.float32))


def _offset(x: torch.Tensor) -> torch.Tensor:
    return 0.01 + 0.2 * (x + 1)  # grows with the image's grey level: every level its own error, x + offset <= 1


def test_reconstruction_metrics_average_per_image_psnr_over_every_image():
    """MSE on [-1, 1]; PSNR = 10 log10(4 / MSE) per image (the range is 2), then averaged, over all 1,203 images:
    none skipped or counted twice at the 500-image batch boundaries."""
    from components.training.autoencoder import reconstruction_metrics

    levels = np.arange(1203) % 199  # grey levels 0..198: x + offset stays below 1
    images = np.broadcast_to(levels.astype(np.uint8)[:, None, None, None], (1203, 4, 4, 1)).copy()
    mse = (0.01 + 0.2 * (levels / 127.5)) ** 2
    out = reconstruction_metrics(_Fixed(offset=_offset), images, torch.device("cpu"))
    assert out["val_mse"] == pytest.approx(mse.mean(), rel=1e-5)
    assert out["val_psnr"] == pytest.approx(np.mean(10 * np.log10(4.0 / mse)), rel=1e-5)


def test_reconstructions_are_clipped_to_the_image_range_and_a_perfect_one_is_finite():
    from components.training.autoencoder import reconstruction_metrics

    images = np.full((3, 4, 4, 1), 255, dtype=np.uint8)  # x = 1.0
    over = reconstruction_metrics(_Fixed(offset=lambda x: torch.full_like(x, 0.7)), images, torch.device("cpu"))
    assert over["val_mse"] == 0.0  # 1.7 is clipped to 1.0 = x
    assert over["val_psnr"] == pytest.approx(10 * np.log10(4.0 / 1e-10))  # floored MSE: finite
    black = np.zeros((3, 4, 4, 1), dtype=np.uint8)  # x = -1.0
    under = reconstruction_metrics(_Fixed(offset=lambda x: torch.full_like(x, -0.5)), black, torch.device("cpu"))
    assert under["val_mse"] == 0.0
    half = reconstruction_metrics(_Fixed(offset=lambda x: torch.full_like(x, -0.5)), images, torch.device("cpu"))
    assert half["val_mse"] == pytest.approx(0.25) and half["val_psnr"] == pytest.approx(10 * np.log10(16.0))


def test_psnr_is_per_image_not_per_pixel():
    """Half of each image reconstructed exactly, half off by 0.5: the image's MSE is 0.125 and its PSNR 10 log10(32)
    (a per-pixel average would count the exact pixels at the 1e-10 floor, ~106 dB)."""
    from components.training.autoencoder import reconstruction_metrics

    images = np.full((2, 4, 4, 1), 128, dtype=np.uint8)

    def half_off(x):
        off = torch.zeros_like(x)
        off[..., :2] = 0.5
        return off

    out = reconstruction_metrics(_Fixed(offset=half_off), images, torch.device("cpu"))
    assert out["val_mse"] == pytest.approx(0.125) and out["val_psnr"] == pytest.approx(10 * np.log10(32.0))


def test_the_summary_counts_one_image():
    """MACs per image: a batch of three costs three times the summary's figure."""
    from components.models.summary import macs_per_forward
    from components.training.autoencoder import _Reconstruct, autoencoder_config, autoencoder_summary

    cfg = AutoencoderParams(regularizer="kl", **{**TINY, "max_images": 8})
    model = build_autoencoder(autoencoder_config(cfg, 1, 16))
    summary = autoencoder_summary(model)
    assert 3 * summary["macs_per_forward"] == macs_per_forward(_Reconstruct(model), torch.zeros(3, 1, 16, 16))
    assert 3 * summary["encoder_macs"] == macs_per_forward(model.encoder, torch.zeros(3, 1, 16, 16))
