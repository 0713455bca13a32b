"""Our samplers against Hugging Face diffusers' schedulers on the same model function and noise."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from components.diffusion import make_betas, sample

W = torch.linspace(-0.4, 0.4, 16).reshape(4, 4)


def model(x, t, class_labels=None):
    """A smooth, bounded stand-in for a trained epsilon network."""
    return torch.tanh(torch.einsum("ij,bjhw->bihw", W, x) + t.float().reshape(-1, 1, 1, 1) / 1000)


def _diffusers_loop(scheduler, x, steps, generator, **step_kw):
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.expand(x.shape[0])), t, x, generator=generator, **step_kw).prev_sample
    return x


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_ddim_matches_diffusers(eta, schedule):
    xT = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    kw = {"beta_start": 0.00085, "beta_end": 0.012} if schedule == "scaled_linear" else {}
    ref = _diffusers_loop(
        DDIMScheduler(num_train_timesteps=1000, beta_schedule=schedule, clip_sample=False, set_alpha_to_one=True,
                      timestep_spacing="leading", **kw),
        xT.clone(), 50, torch.Generator().manual_seed(5), eta=eta,
    )
    ours = sample(model, xT.clone(), betas=make_betas(schedule, 1000, **kw), sampler="ddim", num_steps=50, eta=eta,
                  generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_ddpm_matches_diffusers():
    xT = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    ref = _diffusers_loop(DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False),
                          xT.clone(), 50, torch.Generator().manual_seed(7))
    ours = sample(model, xT.clone(), betas=make_betas("linear", 1000), sampler="ddpm", num_steps=50,
                  generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_a_wrong_final_alpha_is_caught():
    """The oracle comparison is sensitive: set_alpha_to_one=False differs from diffusers' True."""
    xT = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = _diffusers_loop(DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True), xT.clone(), 20, None)
    ours = sample(model, xT.clone(), betas=make_betas("linear", 1000), sampler="ddim", num_steps=20, set_alpha_to_one=False)
    assert (ours - ref).abs().max() > 1e-3
