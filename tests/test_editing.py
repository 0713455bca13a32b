"""Image editing without retraining: image-to-image (SDEdit), inpainting (Blended Latent Diffusion + RePaint), the
``latentflow edit`` command and the pyfunc's editing rows.

Two kinds of models. The latent math is checked against exact denoisers of known data distributions (a point mass
and a Gaussian per class), where the right answer is known in closed form. The image side (encoding, masks,
decoding, pasting, the CLI, the pyfunc) runs the project's own KL autoencoder and U-Net with deterministic random
weights (tiny, 8x8 greyscale): what is checked there is the plumbing, bit for bit against the generator's own
methods. Whether a *trained* model fills a masked half-digit with the requested class is measured by
``benchmarks/editing.py`` (reports/benchmarks/editing.json), as training a model that draws digits takes too long for a test.
"""

from __future__ import annotations

import base64
import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from components.diffusion import alphas_cumprod, make_betas, sample
from components.diffusion.editing import edit_latents, latent_mask, renoise, strength_start
from components.diffusion.options import SAMPLERS
from components.diffusion.samplers import sampling_grid
from components.generation import LatentDiffusionGenerator
from components.images import encode_png
from components.models.autoencoder import AutoencoderConfig, build_autoencoder
from components.models.checkpoint import save_checkpoint
from components.models.unet import UNet, UNetConfig
from components.registry.mlflow_registry import SIGNATURE, LatentDiffusionPyfunc
from pipelines.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)

NUM_CLASSES = 4
SCHEDULE = {"schedule": "linear", "num_timesteps": 100, "beta_start": 1e-4, "beta_end": 0.04, "prediction_type": "epsilon"}


# ------------------------------------------------------------------ exact denoisers


class GaussianEpsModel(torch.nn.Module):
    """Exact eps-predictor when class k's data are N(mu_k, s^2 I), mu_k = k - 1.5 (null class: N(0, s0^2 I)):
    x_t ~ N(sqrt(a) mu, (a s^2 + 1 - a) I), so E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a)."""

    def __init__(self, ac: torch.Tensor, s: float = 0.5, s0: float = 2.0):
        super().__init__()
        self.ac, self.s, self.s0 = ac.double(), s, s0
        self.calls = 0

    def params(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = torch.where(labels < 0, 0.0, labels.double() - 1.5)[:, None, None, None]
        var = torch.where(labels < 0, self.s0**2, self.s**2)[:, None, None, None].double()
        return mu, var

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        a = self.ac[t][:, None, None, None]
        mu, var = self.params(labels)
        return ((1 - a).sqrt() * (x.double() - a.sqrt() * mu) / (a * var + 1 - a)).to(x.dtype)

    def ode_map(self, x: torch.Tensor, a: float, label: int) -> torch.Tensor:
        """Where the probability-flow ODE takes x at level alpha_bar = a (no guidance): the affine map of
        N(sqrt(a) mu, (a s^2 + 1 - a) I) onto N(mu, s^2 I)."""
        mu = label - 1.5
        return mu + self.s * (x.double() - math.sqrt(a) * mu) / math.sqrt(a * self.s**2 + 1 - a)


class PointMassEpsModel(torch.nn.Module):
    """Exact eps-predictor when class k's data are the single point x0 = 1 + k (null class: x0 = -1)."""

    def __init__(self, ac: torch.Tensor):
        super().__init__()
        self.ac = ac.double()
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        a = self.ac[t][:, None, None, None]
        x0 = torch.where(labels < 0, -1.0, 1.0 + labels.double())[:, None, None, None]
        return ((x.double() - a.sqrt() * x0) / (1 - a).sqrt()).to(x.dtype)


def _betas() -> torch.Tensor:
    return make_betas("linear", 1000)


# ------------------------------------------------------------------ the strength grid and the start-at-k entry point


def test_strength_selects_the_tail_of_the_grid_as_diffusers_img2img():
    # diffusers: init_timestep = min(int(N * strength), N); t_start = N - init_timestep
    assert [strength_start(50, s) for s in (1.0, 0.8, 0.5, 0.3, 0.02, 0.0)] == [0, 10, 25, 35, 49, 50]
    assert strength_start(10, 0.05) == 10  # int(0.5) = 0 steps: nothing to run
    for bad in (-0.01, 1.01, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"strength must be a number in \[0, 1\]"):
            strength_start(50, bad)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_starting_at_step_k_from_the_full_runs_x_k_continues_the_full_run_exactly(sampler: str):
    """``start=k`` from the x the full run had after k steps (and the generator in the same state) is the full run's tail."""
    betas = _betas()
    model = GaussianEpsModel(alphas_cumprod(betas))
    labels = torch.tensor([0, 3])
    x_T = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    kwargs = dict(betas=betas, sampler=sampler, num_steps=20, class_labels=labels, guidance_scale=2.0, eta=0.5)
    seen = {}

    def record(i: int, x: torch.Tensor) -> torch.Tensor:
        if i == 6:  # after step 6: x at step 7's level
            seen["x"], seen["rng"] = x.clone(), gen.get_state()
        return x

    gen = torch.Generator().manual_seed(1)
    full = sample(model, x_T, generator=gen, callback=record, **kwargs)
    tail_gen = torch.Generator()
    tail_gen.set_state(seen["rng"])
    tail = sample(model, seen["x"], generator=tail_gen, start=7, **kwargs)
    assert torch.equal(full, tail)
    assert not torch.equal(full, sample(model, seen["x"], generator=torch.Generator().manual_seed(9), start=7, **kwargs)) \
        or sampler == "ddim"  # ddpm draws noise at every step (a different generator state, a different tail)


def test_a_callback_that_returns_x_unchanged_leaves_every_sampler_bit_identical():
    betas = _betas()
    model = GaussianEpsModel(alphas_cumprod(betas))
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for sampler in SAMPLERS:
        kwargs = dict(betas=betas, sampler=sampler, num_steps=12, class_labels=torch.tensor([1, 2]), guidance_scale=3.0)
        calls: list[int] = []

        def hook(i: int, x: torch.Tensor, calls: list[int] = calls) -> torch.Tensor:
            calls.append(i)
            return x

        plain = sample(model, x_T, generator=torch.Generator().manual_seed(3), **kwargs)
        hooked = sample(model, x_T, generator=torch.Generator().manual_seed(3), callback=hook, **kwargs)
        assert torch.equal(plain, hooked), sampler
        assert calls == list(range(12)), sampler


# ------------------------------------------------------------------ SDEdit on exact models


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_2m_karras"])
@pytest.mark.parametrize("strength", [0.3, 0.6])
def test_sdedit_starts_at_the_noise_level_strength_selects(sampler: str, strength: float):
    """For Gaussian data the probability-flow ODE from level a is an affine map; SDEdit with DPM-Solver++(2M) (second
    order: 1e-3 from the exact map at 100 steps; DDIM's first-order error, 0.04-0.07 here, would hide an off-by-one)
    must land on it from a = the solver's alpha_bar at step k. Starting one step off (a wrong level) misses by 10x more."""
    betas, n = _betas(), 100
    model = GaussianEpsModel(alphas_cumprod(betas))
    z0 = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0)) * 2
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
    label = 2
    out = edit_latents(model, z0, noise, betas=betas, sampler=sampler, num_steps=n, strength=strength,
                       class_labels=torch.full((64,), label), guidance_scale=1.0)
    _, alphas, _ = sampling_grid(sampler, betas, n)
    k = strength_start(n, strength)
    a = float(alphas[k])
    x_k = math.sqrt(a) * z0.double() + math.sqrt(1 - a) * noise.double()
    expected = model.ode_map(x_k, a, label)
    err = (out.double() - expected).abs().max().item()
    assert err < 0.004, err
    for j in (k - 1, k + 1):
        a_off = float(alphas[j])
        off = model.ode_map(math.sqrt(a_off) * z0.double() + math.sqrt(1 - a_off) * noise.double(), a_off, label)
        assert (off - expected).abs().max().item() > 4 * err


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sdedit_output_moves_away_from_the_input_as_strength_grows(sampler: str):
    """Mean distance to the input over 256 latents, measured at strengths 0, 0.1, ..., 1 (guided toward class 3, whose
    mean is 1.5 away from the inputs'): 0 at strength 0, then strictly increasing. DDPM forgets the input entirely
    from about strength 0.5 on (fresh noise at every step), after which its distance only fluctuates (by 0.02 seen):
    strictly increasing up to 0.5 there."""
    betas = _betas()
    model = GaussianEpsModel(alphas_cumprod(betas), s=1.0)
    z0 = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(0)) * 0.5
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
    distances = []
    for strength in np.linspace(0, 1, 6 if sampler == "ddpm" else 11)[: 6 if sampler == "ddpm" else 11] / (2 if sampler == "ddpm" else 1):
        out = edit_latents(model, z0, noise, betas=betas, sampler=sampler, num_steps=30, strength=float(strength),
                           generator=torch.Generator().manual_seed(2), class_labels=torch.full((256,), 3), guidance_scale=1.5)
        distances.append((out - z0).abs().mean().item())
    assert distances[0] == 0.0
    assert all(b > a for a, b in itertools.pairwise(distances)), distances
    assert distances[-1] > 1.0, distances  # the input is (mostly) forgotten: samples sit near mu_3 = 1.5


def test_strength_one_is_sampling_from_the_same_noise_and_zero_returns_the_input():
    betas = _betas()
    model = GaussianEpsModel(alphas_cumprod(betas))
    z0 = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2])
    for sampler in SAMPLERS:
        kwargs = dict(betas=betas, sampler=sampler, num_steps=10, class_labels=labels, guidance_scale=2.5, eta=1.0)
        out = edit_latents(model, z0, noise, strength=1.0, generator=torch.Generator().manual_seed(5), **kwargs)
        assert torch.equal(out, sample(model, noise, generator=torch.Generator().manual_seed(5), **kwargs)), sampler
        assert torch.equal(edit_latents(model, z0, noise, strength=0.0, **kwargs), z0), sampler


# ------------------------------------------------------------------ inpainting on exact models


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("resample_steps", [0, 2])
def test_inpainting_fills_the_mask_with_the_class_and_keeps_the_rest_exactly(sampler: str, resample_steps: int):
    """Point-mass classes: every sampler lands the repainted region exactly on the class's point (1 + label); the kept
    region is the input's latent bit for bit. RePaint repeats each step ``resample_steps`` more times: one more
    (batched, guided) model call each."""
    betas, n = _betas(), 10
    model = PointMassEpsModel(alphas_cumprod(betas))
    z0 = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, 2:] = 1  # repaint the bottom half
    labels = torch.tensor([0, 2])
    out = edit_latents(model, z0, noise, betas=betas, sampler=sampler, num_steps=n, strength=1.0, mask=mask,
                       resample_steps=resample_steps, generator=torch.Generator().manual_seed(2), class_labels=labels,
                       guidance_scale=1.0)
    assert torch.equal(out[:, :, :2], z0[:, :, :2])
    target = (1.0 + labels.float())[:, None, None, None].expand(2, 2, 2, 4)
    assert torch.allclose(out[:, :, 2:], target, atol=1e-4), out[:, :, 2:]
    assert model.calls == n * (1 + resample_steps)


def test_the_kept_region_follows_the_inputs_noise_level_at_every_step():
    """Blended Latent Diffusion: after each step the kept region is sqrt(a) z0 + sqrt(1 - a) eps at the new level a,
    which a sampler hook sees; read through a recording model (the next step's input), the kept region's
    statistics match: mean sqrt(a) z0 (within the noise) and residual std sqrt(1 - a)."""
    betas, n = _betas(), 8
    inputs = []

    class Recorder(PointMassEpsModel):
        def forward(self, x, t, labels):
            inputs.append((int(t[0]), x[: len(x) // 2].clone()))  # the conditional half of the batched guided call
            return super().forward(x, t, labels)

    model = Recorder(alphas_cumprod(betas))
    z0 = torch.full((1, 1, 64, 64), 0.7)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 32:] = 1
    edit_latents(model, z0, noise, betas=betas, sampler="ddim", num_steps=n, strength=1.0, mask=mask,
                 generator=torch.Generator().manual_seed(2), class_labels=torch.tensor([1]), guidance_scale=2.0)
    ac = alphas_cumprod(betas)
    assert len(inputs) == n
    for t, x in inputs:
        kept = x[..., :32].double()
        a = float(ac[t])
        resid = (kept - math.sqrt(a) * 0.7) / math.sqrt(1 - a)
        assert abs(resid.mean().item()) < 0.1 and abs(resid.std().item() - 1) < 0.1, (t, resid.mean(), resid.std())


def test_latent_mask_repaints_a_latent_when_any_of_its_pixels_is_masked():
    px = torch.zeros(1, 1, 8, 8)
    px[0, 0, 3, 5] = 1  # one pixel, in latent cell (1, 2) of a 4x4 grid
    m = latent_mask(px, (4, 4))
    assert m.shape == (1, 1, 4, 4) and m.sum() == 1 and m[0, 0, 1, 2] == 1


def test_renoise_has_the_forward_process_statistics():
    x = torch.full((200_000,), 2.0)
    y = renoise(x, 0.9, 0.45, torch.Generator().manual_seed(0))
    assert y.mean().item() == pytest.approx(2.0 * math.sqrt(0.5), abs=0.01)
    assert y.std().item() == pytest.approx(math.sqrt(0.5), abs=0.01)
    with pytest.raises(ValueError, match="noisier"):
        renoise(x, 0.4, 0.9, None)


def test_edit_latents_rejects_bad_arguments():
    betas = _betas()
    model = PointMassEpsModel(alphas_cumprod(betas))
    z = torch.zeros(1, 1, 4, 4)
    kw = dict(betas=betas, sampler="ddim", num_steps=5, class_labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="needs a mask"):
        edit_latents(model, z, z, strength=1.0, resample_steps=1, **kw)
    with pytest.raises(ValueError, match="latent grid"):
        edit_latents(model, z, z, strength=1.0, mask=torch.ones(1, 1, 8, 8), **kw)
    with pytest.raises(ValueError, match="strength"):
        edit_latents(model, z, z, strength=1.5, **kw)


# ------------------------------------------------------------------ the image side: a tiny real generator


def _randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """``autoencoder/`` + ``diffusion/`` of a tiny greyscale 8x8 generator (f = 2, 2x4x4 latents), random weights."""
    root = tmp_path_factory.mktemp("editing") / "models"
    ae_cfg = AutoencoderConfig(in_channels=1, image_size=8, channels=(8, 16), latent_channels=2, regularizer="kl")
    ae = build_autoencoder(ae_cfg, scale_factor=0.8)
    _randomise(ae, 1)
    save_checkpoint(root / "autoencoder", ae, ae_cfg.to_dict(), {"scale_factor": 0.8})
    unet = UNet(UNetConfig(in_channels=2, out_channels=2, sample_size=4, num_classes=NUM_CLASSES, channels=(8, 16), num_heads=2))
    _randomise(unet, 2)
    save_checkpoint(root / "diffusion", unet, unet.config.to_dict(), {"schedule": SCHEDULE, "class_names": ["zero", "one", "two", "three"]})
    return root


@pytest.fixture(scope="module")
def gen(model_dir) -> LatentDiffusionGenerator:
    return LatentDiffusionGenerator.from_dir(model_dir)


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)


def _half_masks(n: int) -> np.ndarray:
    masks = np.zeros((n, 8, 8), dtype=bool)
    masks[:, 4:] = True  # repaint the bottom half
    return masks


def test_strength_zero_returns_the_autoencoders_reconstruction(gen):
    from components.images import to_model_range, to_uint8

    images = _images(5)
    with torch.no_grad():
        recon = to_uint8(gen.autoencoder.reconstruct(to_model_range(images)))
    for sampler in SAMPLERS:
        out = gen.edit(images, [0, 1, 2, 3, 0], seed=3, strength=0.0, sampler=sampler, steps=8)
        assert np.array_equal(out, recon), sampler
    assert not np.array_equal(recon, images)  # a random autoencoder: the reconstruction is not the input


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_strength_one_equals_class_conditional_sampling_from_the_same_seed(gen, sampler: str):
    labels = [3, 0, 2, 1, 1]
    kwargs = dict(seed=11, sampler=sampler, steps=8, guidance=2.0, eta=0.3, batch_size=2)  # several batches, as generate
    out = gen.edit(_images(5), labels, strength=1.0, **kwargs)
    assert np.array_equal(out, gen.generate(labels, **kwargs))
    assert not np.array_equal(out, gen.edit(_images(5), labels, strength=0.5, **kwargs))


def test_intermediate_strengths_stay_closer_to_the_input_the_lower_the_strength(gen):
    """Measured in latent space on the tiny random U-Net (the decoder of a random autoencoder is not monotone in its
    input; the trained model's pixel-space figures are in reports/benchmarks/editing.json)."""
    images = _images(32, seed=4)
    with torch.no_grad():
        from components.images import to_model_range

        z0 = gen.autoencoder.encode(to_model_range(images)).mean * gen.autoencoder.scale_factor
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    distances = []
    for strength in (0.0, 0.25, 0.5, 0.75, 1.0):
        z = edit_latents(gen.unet, z0, noise, betas=gen.betas, sampler="ddim", num_steps=20, strength=strength,
                         class_labels=torch.zeros(32, dtype=torch.long), guidance_scale=1.0)
        distances.append((z - z0).pow(2).mean().sqrt().item())
    assert distances[0] == 0.0 and all(b > a for a, b in itertools.pairwise(distances)), distances


@pytest.mark.parametrize("resample_steps", [0, 1])
def test_inpainting_keeps_the_unmasked_pixels_and_changes_the_masked_ones(gen, resample_steps: int):
    from components.images import to_model_range, to_uint8

    images, masks = _images(4, seed=2), _half_masks(4)
    out = gen.edit(images, [0, 1, 2, 3], seed=5, strength=1.0, masks=masks, resample_steps=resample_steps, steps=6)
    assert np.array_equal(out[:, :4], images[:, :4])  # pasted: the input's own pixels, no autoencoder error at all
    assert (out[:, 4:] != images[:, 4:]).mean() > 0.5  # the bottom half is new
    # without the pixel paste the unmasked region is the decoder's: the latents there are the input's, so the top
    # half stays near the reconstruction; on this random autoencoder (GroupNorm couples all pixels) within 3x the
    # reconstruction's own error, while the repainted half moves much further
    raw = gen.edit(images, [0, 1, 2, 3], seed=5, strength=1.0, masks=masks, resample_steps=resample_steps, steps=6, paste_pixels=False)
    with torch.no_grad():
        recon = to_uint8(gen.autoencoder.reconstruct(to_model_range(images))).astype(float)
    recon_err = np.abs(recon[:, :4] - images[:, :4]).mean()
    kept_err = np.abs(raw[:, :4].astype(float) - images[:, :4]).mean()
    assert kept_err <= 3 * recon_err, (kept_err, recon_err)
    assert np.array_equal(raw[:, 4:], out[:, 4:])  # the paste changes only the unmasked pixels


def test_edit_rejects_bad_images_masks_and_labels(gen):
    images = _images(1)
    with pytest.raises(ValueError, match="4x4 pixels but the model makes 8x8"):
        gen.edit(np.zeros((1, 4, 4, 1), np.uint8), [0], seed=0, strength=0.5)
    with pytest.raises(ValueError, match="RGB .* greyscale"):
        gen.edit(np.zeros((1, 8, 8, 3), np.uint8), [0], seed=0, strength=0.5)
    with pytest.raises(ValueError, match="masks must be bool"):
        gen.edit(images, [0], seed=0, strength=0.5, masks=np.ones((1, 4, 4), bool))
    with pytest.raises(ValueError, match="no white pixel"):
        gen.edit(images, [0], seed=0, strength=0.5, masks=np.zeros((1, 8, 8), bool))
    with pytest.raises(ValueError, match="class labels must be in"):
        gen.edit(images, [NUM_CLASSES], seed=0, strength=0.5)
    with pytest.raises(ValueError, match="strength"):
        gen.edit(images, [0], seed=0, strength=-0.1)


def test_masks_are_read_from_any_image_mode_white_means_repaint():
    import io

    from components.images import decode_mask

    grey = np.zeros((8, 8), np.uint8)
    grey[4:, 2:] = 255
    grey[0, 0] = 127  # below the threshold: kept
    expected = grey >= 128
    for mode in ("L", "RGB", "RGBA", "LA", "1", "P"):
        buf = io.BytesIO()
        Image.fromarray(grey).convert(mode).save(buf, format="PNG")
        assert np.array_equal(decode_mask(buf.getvalue()), expected if mode != "1" else grey > 127), mode
    with pytest.raises(ValueError, match="not a readable image"):
        decode_mask(b"GIF89a?")


# ------------------------------------------------------------------ latentflow edit


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array).save(path)
    return path


def _edit(*args: str):
    return CliRunner().invoke(app, ["edit", *args], catch_exceptions=False)


def test_cli_edit_writes_what_the_generator_makes(model_dir, gen, tmp_path):
    image = _images(1, seed=7)
    mask = np.where(_half_masks(1)[0], 255, 0).astype(np.uint8)
    src, m = _png(tmp_path / "in.png", image[0]), _png(tmp_path / "mask.png", mask)
    params = tmp_path / "none.yaml"  # absent: the built-in defaults (ddim, 50 steps, guidance 3, seed 0)
    res = _edit("--image", str(src), "--label", "two", "--strength", "0.5", "--steps", "6", "--seed", "4", "--model", str(model_dir),
                "--out", str(tmp_path / "i2i.png"), "--params", str(params))
    assert res.exit_code == 0, res.output
    expected = gen.edit(image, [2], seed=4, strength=0.5, steps=6, sampler="ddim", guidance=3.0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "i2i.png"))[..., None], expected[0])
    res = _edit("--image", str(src), "--label", "3", "--mask", str(m), "--resample-steps", "1", "--steps", "5", "--sampler", "ddpm",
                "--model", str(model_dir), "--out", str(tmp_path / "inpaint.png"), "--params", str(params))
    assert res.exit_code == 0, res.output
    expected = gen.edit(image, [3], seed=0, strength=1.0, masks=_half_masks(1), resample_steps=1, steps=5, sampler="ddpm", guidance=3.0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "inpaint.png"))[..., None], expected[0])


def test_cli_edit_errors_are_clear_and_leave_the_output_alone(model_dir, tmp_path):
    good = _png(tmp_path / "in.png", _images(1)[0])
    rgb = _png(tmp_path / "rgb.png", np.zeros((8, 8, 3), np.uint8))
    small = _png(tmp_path / "small.png", np.zeros((4, 4), np.uint8))
    big_mask = _png(tmp_path / "bigmask.png", np.full((16, 16), 255, np.uint8))
    black = _png(tmp_path / "black.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    out = tmp_path / "out.png"
    out.write_bytes(b"previous result")
    base = ["--model", str(model_dir), "--out", str(out), "--params", str(tmp_path / "none.yaml"), "--steps", "4"]
    cases = [
        (["--image", str(tmp_path / "missing.png"), "--label", "0"], "missing.png not found"),
        (["--image", str(tmp_path / "junk.png"), "--label", "0"], "not a readable image"),
        (["--image", str(small), "--label", "0"], "4x4 pixels but the model makes 8x8"),
        (["--image", str(rgb), "--label", "0"], "RGB (3 channels) but the model makes greyscale"),
        (["--image", str(good), "--label", "0", "--mask", str(big_mask)], "16x16 pixels but --image"),
        (["--image", str(good), "--label", "0", "--mask", str(black)], "no white pixel"),
        (["--image", str(good), "--label", "0", "--strength", "1.5"], "must be in [0, 1]"),
        (["--image", str(good), "--label", "seven"], "--label 'seven' is not a class of this model"),
        (["--image", str(good), "--label", "4"], "index 0..3"),
        (["--image", str(good), "--label", "0", "--resample-steps", "2"], "--resample-steps needs --mask"),
        (["--image", str(good), "--label", "0", "--sampler", "euler"], "--sampler must be one of"),
        (["--image", str(good), "--label", "0", "--steps", "101"], "trained with 100 timesteps"),
    ]
    for args, message in cases:
        res = _edit(*args, *base[:-2]) if "--steps" in args else _edit(*args, *base)
        assert res.exit_code == 2, (args, res.exit_code, res.output)
        assert message in " ".join(res.output.split()), (args, res.output)
        assert out.read_bytes() == b"previous result"
    res = _edit("--image", str(good), "--label", "0", "--model", str(tmp_path / "nowhere"), "--out", str(out))
    assert res.exit_code == 1 and "model folder" in res.output
    assert out.read_bytes() == b"previous result"


# ------------------------------------------------------------------ the pyfunc


@pytest.fixture(scope="module")
def pyfunc(gen) -> LatentDiffusionPyfunc:
    model = LatentDiffusionPyfunc()
    model._generator = gen
    return model


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(encode_png(array)).decode()


def _decode(frame: pd.DataFrame) -> np.ndarray:
    import io

    return np.stack([np.asarray(Image.open(io.BytesIO(png))) for png in frame["image"]])[..., None]


def test_pyfunc_rows_without_an_image_generate_exactly_as_before(pyfunc, gen):
    frame = pd.DataFrame({"class_label": [1, 3], "num_images": [2, 1], "steps": [4, 5], "seed": [7, 8],
                          "image": [None, None], "mask": [None, None], "strength": [np.nan, np.nan]})
    out = pyfunc.predict(None, frame)
    expected = np.concatenate([gen.generate([1, 1], seed=7, steps=4), gen.generate([3], seed=8, steps=5)])
    assert np.array_equal(_decode(out), expected)
    plain = pyfunc.predict(None, pd.DataFrame({"class_label": [1, 3], "num_images": [2, 1], "steps": [4, 5], "seed": [7, 8]}))
    assert plain.equals(out)


def test_pyfunc_edits_rows_with_an_image(pyfunc, gen):
    image, mask = _images(1, seed=9)[0], np.where(_half_masks(1)[0], 255, 0).astype(np.uint8)[..., None]
    wrapped = base64.encodebytes(encode_png(image)).decode()  # line breaks every 76 characters, as MLflow's responses
    frame = pd.DataFrame({
        "class_label": [2, 1, 0], "num_images": [2, 1, 1], "steps": [5, 5, 5], "seed": [1, 2, 3],
        "image": [_b64(image), wrapped, None], "mask": [None, _b64(mask), None], "strength": [0.4, None, None],
        "resample_steps": [None, 1, None],
    })
    out = pyfunc.predict(None, frame)
    assert out["class_label"].tolist() == [2, 2, 1, 0] and out["seed"].tolist() == [1, 1, 2, 3]
    images = _decode(out)
    assert np.array_equal(images[:2], gen.edit(np.stack([image, image]), [2, 2], seed=1, strength=0.4, steps=5))
    assert np.array_equal(images[2:3], gen.edit(image[None], [1], seed=2, strength=1.0, masks=_half_masks(1), resample_steps=1, steps=5))
    assert np.array_equal(images[3:], gen.generate([0], seed=3, steps=5))


def test_pyfunc_editing_errors_name_the_row_and_the_problem(pyfunc):
    image = _b64(_images(1)[0])
    cases = [
        ({"class_label": [0], "strength": [0.5]}, "row 0: strength apply to editing and need an 'image'"),
        ({"class_label": [0], "image": ["%%%"]}, "row 0: image is not valid base64"),
        ({"class_label": [0], "image": [base64.b64encode(b"png?").decode()]}, "not a readable image"),
        ({"class_label": [0], "image": [_b64(np.zeros((4, 4, 1), np.uint8))]}, "4x4 pixels but the model makes 8x8"),
        ({"class_label": [0], "image": [image], "mask": [_b64(np.zeros((6, 6, 1), np.uint8))]}, "must be the same size"),
        ({"class_label": [0], "image": [image], "strength": [2.0]}, "strength must be a number in [0, 1]"),
        ({"class_label": [0], "image": [image], "resample_steps": [1.5]}, "resample_steps must be a whole number"),
    ]
    for columns, message in cases:
        with pytest.raises(ValueError) as info:
            pyfunc.predict(None, pd.DataFrame(columns))
        assert message in str(info.value), (columns, info.value)


def test_signature_lists_the_editing_columns_as_optional():
    inputs = {c.name: c for c in SIGNATURE.inputs.inputs}
    assert not inputs["class_label"].required and not inputs["prompt"].required  # one of them per row (text models: prompt)
    for name, kind in (("image", "string"), ("mask", "string"), ("strength", "double"), ("resample_steps", "double")):
        assert not inputs[name].required and inputs[name].type.name == kind, name


@pytest.mark.slow  # ~30 s: MLflow saves and loads the model (models from code, bundled components)
def test_a_saved_pyfunc_accepts_editing_rows_through_its_signature(model_dir, gen, tmp_path):
    """The model as MLflow saves it (models from code, this signature, the bundled components): schema enforcement
    lets base64 images through, and the answer is the generator's."""
    import mlflow.pyfunc

    from components.registry.mlflow_registry import MODEL_CODE_PATH, _copy_code_package

    path = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(path=str(path), python_model=str(MODEL_CODE_PATH), artifacts={"model_dir": str(model_dir)},
                             signature=SIGNATURE, code_paths=[str(_copy_code_package(tmp_path / "code"))])
    loaded = mlflow.pyfunc.load_model(str(path))
    image, mask = _images(1, seed=3)[0], np.where(_half_masks(1)[0], 255, 0).astype(np.uint8)[..., None]
    out = loaded.predict(pd.DataFrame({"class_label": [1, 2], "steps": [4, 4], "seed": [5, 6], "image": [_b64(image), None],
                                       "mask": [_b64(mask), None], "resample_steps": [1, None]}))
    images = _decode(out)
    assert np.array_equal(images[:1], gen.edit(image[None], [1], seed=5, strength=1.0, masks=_half_masks(1), resample_steps=1, steps=4))
    assert np.array_equal(images[1:], gen.generate([2], seed=6, steps=4))
