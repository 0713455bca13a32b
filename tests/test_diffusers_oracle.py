"""Our samplers against Hugging Face diffusers' schedulers on the same model function and noise."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from components.diffusion import make_betas, sample, sampling_timesteps

W2 = torch.linspace(-0.4, 0.4, 32).reshape(8, 4)


def learned_variance_model(x, t, class_labels=None):
    """2C output channels: a prediction and a variance interpolation value in [-1, 1]."""
    return torch.tanh(torch.einsum("ij,bjhw->bihw", W2, x) + t.float().reshape(-1, 1, 1, 1) / 1000)

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


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_clip_sample_matches_diffusers(sampler):
    """Pixel-space x0 clipping (diffusers' clip_sample) gives diffusers' result, and it does change the samples."""
    xT = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    ref = _diffusers_loop(cls(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, clip_sample_range=0.5),
                          xT.clone(), 50, torch.Generator().manual_seed(9))
    kw = {"betas": make_betas("linear", 1000), "sampler": sampler, "num_steps": 50}
    ours = sample(model, xT.clone(), **kw, clip_sample=0.5, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    unclipped = sample(model, xT.clone(), **kw, generator=torch.Generator().manual_seed(9))
    assert (unclipped - ref).abs().max() > 1e-2
    assert ours.abs().max() <= 0.5 + 1e-6


def test_a_wrong_final_alpha_is_caught():
    """The oracle comparison is sensitive: set_alpha_to_one=False differs from diffusers' True."""
    xT = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = _diffusers_loop(DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True), xT.clone(), 20, None)
    ours = sample(model, xT.clone(), betas=make_betas("linear", 1000), sampler="ddim", num_steps=20, set_alpha_to_one=False)
    assert (ours - ref).abs().max() > 1e-3


DIFFUSERS_SCHEDULE = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_make_betas_matches_diffusers(schedule, zero_snr):
    kw = {"beta_start": 0.00085, "beta_end": 0.012} if schedule == "scaled_linear" else {}
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_SCHEDULE[schedule], rescale_betas_zero_snr=zero_snr, **kw).betas
    # diffusers rescales in float32, we in float64
    torch.testing.assert_close(make_betas(schedule, 1000, zero_terminal_snr=zero_snr, **kw), ref, rtol=0, atol=1e-5)


def _scale(x: torch.Tensor) -> float:
    return float(x.abs().max())


@pytest.mark.parametrize("seed", range(12))
def test_random_configurations_match_diffusers(seed):
    """Random steps, offsets, final alphas, etas and prediction types: DDIM, DDPM (fixed_small and
    learned_range) and DPM-Solver++(2M) within 2e-3 of the output's scale."""
    rng = torch.Generator().manual_seed(seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=rng))]  # noqa: E731
    steps, offset = pick([5, 10, 14, 20, 37, 50]), pick([0, 1])
    set_alpha_to_one, eta = pick([True, False]), pick([0.0, 0.3, 1.0])
    prediction = pick(["epsilon", "sample", "v_prediction"])
    schedule = pick(["linear", "scaled_linear", "cosine"])
    sched_kw = {"beta_start": 0.00085, "beta_end": 0.012} if schedule == "scaled_linear" else {}
    diff_kw = {"beta_schedule": DIFFUSERS_SCHEDULE[schedule], **sched_kw}
    betas = make_betas(schedule, 1000, **sched_kw)
    xT = torch.randn(2, 4, 8, 8, generator=rng)
    g = lambda: torch.Generator().manual_seed(seed + 100)  # noqa: E731

    ddim = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, **diff_kw, set_alpha_to_one=set_alpha_to_one, steps_offset=offset,
                         prediction_type=prediction)
    ref = _diffusers_loop(ddim, xT.clone(), steps, g(), eta=eta)
    ours = sample(model, xT.clone(), betas=betas, sampler="ddim", num_steps=steps, eta=eta, steps_offset=offset,
                  set_alpha_to_one=set_alpha_to_one, prediction_type=prediction, generator=g())
    assert (ours - ref).abs().max() <= 2e-3 * _scale(ref), ("ddim", schedule, steps, offset, set_alpha_to_one, eta, prediction)

    for variance_type, fn in (("fixed_small", model), ("learned_range", learned_variance_model)):
        ddpm = DDPMScheduler(num_train_timesteps=1000, clip_sample=False, variance_type=variance_type, prediction_type=prediction, **diff_kw)
        ddpm.set_timesteps(steps)
        x, gen = xT.clone(), g()
        for t in ddpm.timesteps:
            x = ddpm.step(fn(x, t.expand(2)), t, x, generator=gen).prev_sample
        ours = sample(fn, xT.clone(), betas=betas, sampler="ddpm", num_steps=steps, prediction_type=prediction, generator=g())
        assert (ours - x).abs().max() <= 2e-3 * _scale(x), ("ddpm", variance_type, steps, prediction)

    dpm = DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                      lower_order_final=True, prediction_type=prediction, **diff_kw,
                                      final_sigmas_type="zero" if set_alpha_to_one else "sigma_min")
    dpm.set_timesteps(timesteps=sampling_timesteps(1000, steps, "leading", offset))
    x = xT.clone()
    for t in dpm.timesteps:
        x = dpm.step(model(x, t.expand(2)), t, x).prev_sample
    ours = sample(model, xT.clone(), betas=betas, sampler="dpmpp_2m", num_steps=steps, steps_offset=offset,
                  set_alpha_to_one=set_alpha_to_one, prediction_type=prediction)
    assert (ours - x).abs().max() <= 2e-3 * _scale(x), ("dpmpp_2m", steps, offset, set_alpha_to_one, prediction)


@pytest.mark.parametrize("steps", [10, 25])
def test_ddim_trailing_equals_first_order_dpm_solver(steps):
    """diffusers' DDIMScheduler computes the previous timestep as t - T//N, which is wrong for trailing
    spacing (diffusers issues 9261, 11347); its first-order DPM-Solver++ takes the timestep list and is
    right. Our DDIM takes the previous timestep from the list, so it agrees with the latter."""
    xT = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    dpm = DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=1,
                                      timestep_spacing="trailing", final_sigmas_type="zero")
    dpm.set_timesteps(steps)
    x = xT.clone()
    for t in dpm.timesteps:
        x = dpm.step(model(x, t.expand(2)), t, x).prev_sample
    ours = sample(model, xT.clone(), betas=make_betas("linear", 1000), sampler="ddim", num_steps=steps, timestep_spacing="trailing")
    assert (ours - x).abs().max() <= 2e-3 * _scale(x)
