"""Tests written to kill the mutants of components/diffusion/editing.py that tests/test_editing.py let survive
(benchmarks/mutation.py; reports/mutation.md lists each survivor and the test that kills it, or why it is equivalent).

Each pins a documented behaviour of the editing math: where its input checks draw the line, what its defaults are,
which noise levels RePaint's resampling moves between, what the first model call of an inpainting run sees, which
random draws come from the caller's generator, and that learned-variance channels are dropped in the resampling steps.
"""

from __future__ import annotations

import math

import pytest
import torch

from components.diffusion import alphas_cumprod, editing, make_betas
from components.diffusion.editing import edit_latents, latent_mask, noised, renoise, strength_start
from components.diffusion.samplers import sampling_grid
from tests.test_editing import GaussianEpsModel, PointMassEpsModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)

BETAS = make_betas("linear", 1000)


def _latents(shape=(2, 2, 4, 4), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    z0 = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
    return z0, noise


def _bottom_half(n: int, h: int = 4, w: int = 4) -> torch.Tensor:
    mask = torch.zeros(n, 1, h, w)
    mask[:, :, h // 2 :] = 1
    return mask


# ------------------------------------------------------------------ input checks: the boundary is accepted, just past it is not
def test_strength_start_accepts_a_one_step_grid_and_refuses_an_empty_one():
    assert strength_start(1, 1.0) == 0 and strength_start(1, 0.5) == 1
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        strength_start(0, 0.5)


def test_renoise_accepts_the_same_level_and_refuses_zero_or_a_less_noisy_one():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(renoise(x, 0.5, 0.5, torch.Generator().manual_seed(1)), x)  # ratio 1: no noise added
    for alpha_to in (0.0, 0.75):  # ratio 0 (pure noise is not a forward step from a level), ratio 1.5 (less noisy)
        with pytest.raises(ValueError, match="noisier"):
            renoise(x, 0.5, alpha_to, None)


def test_renoise_adds_the_generators_noise_with_a_plus_sign():
    """x' = sqrt(r) x + sqrt(1 - r) z with z the generator's next standard normal draw (in float64): the same draw
    reproduces the step exactly, so a seeded RePaint run is reproducible."""
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    expected = (math.sqrt(0.5) * x.double() + math.sqrt(0.5) * z).float()
    torch.testing.assert_close(renoise(x, 0.9, 0.45, torch.Generator().manual_seed(7)), expected, rtol=0, atol=1e-7)


def test_noised_tolerates_an_alpha_a_rounding_step_above_one():
    """alpha_bar = 1 (the end of a DDIM run) may arrive as 1 + 1 ulp from float arithmetic: the noise weight is
    floored at 0 instead of raising a math domain error."""
    z0, noise = _latents((1, 1, 2, 2))
    a = 1.0 + 2**-52
    torch.testing.assert_close(noised(z0, a, noise), z0, rtol=1e-12, atol=0)
    assert torch.equal(noised(z0, 1.0, noise), z0)


def test_latent_mask_refuses_a_mask_with_more_than_one_channel():
    for bad in (torch.ones(1, 2, 8, 8), torch.ones(1, 8, 8)):
        with pytest.raises(ValueError, match=r"mask must be \[N, 1, H, W\]"):
            latent_mask(bad, (4, 4))


def test_edit_latents_mask_checks_at_their_boundaries():
    """Batch of 3 latents with 4 channels (so a check that read the channel count instead of the batch size shows):
    a mask of batch 3 or 1 is accepted, batch 2 is not; values exactly 0 and 1 are fine, 1.5 or -0.5 are not;
    resample_steps 0 is fine, -1 is not."""
    model = PointMassEpsModel(alphas_cumprod(BETAS))
    z0, noise = _latents((3, 4, 2, 2))
    kw = dict(betas=BETAS, sampler="ddim", num_steps=2, strength=1.0, class_labels=torch.tensor([0, 1, 2]))
    for n in (3, 1):
        out = edit_latents(model, z0, noise, mask=_bottom_half(n, 2, 2), **kw)
        assert torch.equal(out[:, :, :1], z0[:, :, :1])
    with pytest.raises(ValueError, match="latent grid"):
        edit_latents(model, z0, noise, mask=_bottom_half(2, 2, 2), **kw)
    for bad in (1.5, -0.5):
        mask = _bottom_half(3, 2, 2)
        mask[0, 0, 1, 1] = bad
        with pytest.raises(ValueError, match=r"mask values must be in \[0, 1\]"):
            edit_latents(model, z0, noise, mask=mask, **kw)
    with pytest.raises(ValueError, match="resample_steps must be >= 0"):
        edit_latents(model, z0, noise, mask=_bottom_half(3, 2, 2), resample_steps=-1, **kw)


# ------------------------------------------------------------------ defaults
def test_edit_latents_defaults_are_deterministic_ddim_and_plain_conditioning():
    """Without eta and guidance_scale: eta 0 (DDIM draws nothing, the generator does not matter) and guidance 1
    (the conditional prediction alone), as the docstring and the CLI's defaults say. Gaussian classes, so that the
    result depends on the path (a point mass is reached from anywhere)."""
    model = GaussianEpsModel(alphas_cumprod(BETAS))
    z0, noise = _latents()
    kw = dict(betas=BETAS, sampler="ddim", num_steps=6, strength=0.7, class_labels=torch.tensor([0, 2]))
    default = edit_latents(model, z0, noise, generator=torch.Generator().manual_seed(1), **kw)
    explicit = edit_latents(model, z0, noise, generator=torch.Generator().manual_seed(2), eta=0.0, guidance_scale=1.0, **kw)
    assert torch.equal(default, explicit)


# ------------------------------------------------------------------ inpainting: the first step, RePaint's levels, the draws
def test_inpainting_from_pure_noise_starts_with_the_kept_region_noised_from_the_same_noise():
    """Strength 1 (k = 0): the first model call sees ``noise`` in the repainted region and sqrt(a_0) z0 +
    sqrt(1 - a_0) noise in the kept one (a_0 = the grid's first alpha_bar), so both regions start at one noise level
    and the kept one already carries the input."""
    first = []

    class Recorder(PointMassEpsModel):
        def forward(self, x, t, labels):
            if not first:
                first.append(x.clone())
            return super().forward(x, t, labels)

    z0, noise = _latents()
    mask = _bottom_half(2)
    edit_latents(Recorder(alphas_cumprod(BETAS)), z0, noise, betas=BETAS, sampler="ddim", num_steps=5, strength=1.0, mask=mask,
                 class_labels=torch.tensor([0, 3]), generator=torch.Generator().manual_seed(0))
    _, alphas, _ = sampling_grid("ddim", BETAS, 5)
    a0 = float(alphas[0])
    kept = (math.sqrt(a0) * z0.double() + math.sqrt(1 - a0) * noise.double()).float()
    x = first[0]
    assert torch.equal(x[:, :, 2:], noise[:, :, 2:])
    torch.testing.assert_close(x[:, :, :2], kept[:, :, :2], rtol=0, atol=1e-6)


def test_repaint_resamples_each_step_between_its_own_two_levels(monkeypatch):
    """RePaint (Lugmayr et al. 2022, alg. 1, jump length 1): after step i lands on level a_{i+1}, each resample
    re-noises a_{i+1} -> a_i, repeats step i (timestep t_i, a_i -> a_{i+1}) and re-imposes the known region at
    a_{i+1}. The known region is noised to a_0 once at the start, then to a_{i+1} after the step and after each
    resample (not at all at the final level 1, where it is z0 itself)."""
    calls: dict[str, list] = {"renoise": [], "step": [], "noised": []}
    real_renoise, real_step, real_noised = editing.renoise, editing.single_step, editing.noised

    def rec_renoise(x, a_from, a_to, generator):
        calls["renoise"].append((float(a_from), float(a_to)))
        return real_renoise(x, a_from, a_to, generator)

    def rec_step(sampler, denoise, x, t, a_t, a_next, **kw):
        calls["step"].append((t, float(a_t), float(a_next)))
        return real_step(sampler, denoise, x, t, a_t, a_next, **kw)

    def rec_noised(z0, alpha, noise):
        calls["noised"].append(float(alpha))
        return real_noised(z0, alpha, noise)

    monkeypatch.setattr(editing, "renoise", rec_renoise)
    monkeypatch.setattr(editing, "single_step", rec_step)
    monkeypatch.setattr(editing, "noised", rec_noised)
    n, r = 4, 2
    z0, noise = _latents()
    edit_latents(PointMassEpsModel(alphas_cumprod(BETAS)), z0, noise, betas=BETAS, sampler="ddim", num_steps=n, strength=1.0,
                 mask=_bottom_half(2), resample_steps=r, class_labels=torch.tensor([1, 2]), generator=torch.Generator().manual_seed(0))
    timesteps, alphas, final = sampling_grid("ddim", BETAS, n)
    levels = [float(a) for a in alphas] + [final]
    assert final == 1.0
    assert calls["renoise"] == [(levels[i + 1], levels[i]) for i in range(n) for _ in range(r)]
    assert calls["step"] == [(timesteps[i], levels[i], levels[i + 1]) for i in range(n) for _ in range(r)]
    assert calls["noised"] == [levels[0]] + [levels[i + 1] for i in range(n - 1) for _ in range(1 + r)]


@pytest.mark.parametrize("resample_steps", [0, 1])
def test_inpainting_draws_exactly_the_documented_noise_from_the_generator(resample_steps: int):
    """With DDIM at eta 0 (which draws nothing itself) the generator gives, per step, the known region's noise
    (float32, like z0) and, per resample, the re-noising noise (float64); none for the known region at the final
    level alpha_bar = 1. The generator is left exactly where those draws leave it (a caller that goes on drawing
    from it, e.g. the next batch, sees the same numbers whatever the run did before)."""
    n = 3
    z0, noise = _latents()
    gen = torch.Generator().manual_seed(11)
    edit_latents(PointMassEpsModel(alphas_cumprod(BETAS)), z0, noise, betas=BETAS, sampler="ddim", num_steps=n, strength=1.0,
                 mask=_bottom_half(2), resample_steps=resample_steps, class_labels=torch.tensor([0, 1]), generator=gen)
    ref = torch.Generator().manual_seed(11)
    for i in range(n):
        last = i == n - 1
        if not last:
            torch.randn(z0.shape, generator=ref)
        for _ in range(resample_steps):
            torch.randn(z0.shape, generator=ref, dtype=torch.float64)
            if not last:
                torch.randn(z0.shape, generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())


def test_repaint_drops_learned_variance_channels_in_its_resampling_steps():
    """A model with learned variance returns 2C channels (eps, then variance); DDIM uses only eps, in the
    resampling steps as in the main ones: the edit equals that of the same model without the extra channels.
    Latents of batch 3, 2 channels, 4x4: a batch size or a height read as the channel count would keep variance
    channels (3 or 4 of the model's 4) instead of dropping them."""
    ac = alphas_cumprod(BETAS)

    class WithVariance(GaussianEpsModel):
        def forward(self, x, t, labels):
            eps = super().forward(x, t, labels)
            return torch.cat([eps, torch.full_like(eps, 50.0)], dim=1)

    z0, noise = _latents((3, 2, 4, 4))
    kw = dict(betas=BETAS, sampler="ddim", num_steps=4, strength=1.0, mask=_bottom_half(3), resample_steps=1,
              class_labels=torch.tensor([2, 0, 1]))
    out = edit_latents(WithVariance(ac), z0, noise, generator=torch.Generator().manual_seed(3), **kw)
    plain = edit_latents(GaussianEpsModel(ac), z0, noise, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(out, plain)
