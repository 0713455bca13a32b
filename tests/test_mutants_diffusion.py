"""Tests written to kill the mutants of components/diffusion/ that the other suites let survive
(benchmarks/mutation.py; reports/mutation.md lists each survivor and its test or why it is equivalent).

Each pins a behaviour a user of the samplers, losses or schedules depends on: the defaults of the public
sampler functions, which random draws a sampler makes, every-timestep DDPM against diffusers, ...
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from components.diffusion import (
    alphas_cumprod,
    ddim,
    ddpm,
    dpm_solver_timesteps,
    dpmpp_2m,
    dpmpp_2m_karras,
    karras_timesteps,
    make_betas,
    sample,
    sampling_timesteps,
)
from components.diffusion.samplers import denoiser, guided, single_step

W = torch.linspace(-0.4, 0.4, 16).reshape(4, 4)


def model(x, t, class_labels=None):
    """A smooth, bounded stand-in for a trained epsilon network (as in test_diffusers_oracle)."""
    return torch.tanh(torch.einsum("ij,bjhw->bihw", W, x) + t.float().reshape(-1, 1, 1, 1) / 1000)


def _x(seed: int = 0, shape=(2, 4, 3, 3)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


BETAS = make_betas("linear", 1000)
AC = alphas_cumprod(BETAS)
TS = sampling_timesteps(1000, 8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


# ------------------------------------------------------------------------------------- the public sampler functions
def test_sampler_functions_called_directly_use_their_documented_defaults():
    """ddim: eta 0 (deterministic); ddpm and dpmpp_2m: end at alpha 1, as ``sample`` runs them."""
    x = _x()
    direct = ddim(model, x, TS, AC, final_alpha=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(direct, sample(model, x, betas=BETAS, sampler="ddim", num_steps=8, eta=0.0))
    assert torch.equal(dpmpp_2m(model, x, dpm_solver_timesteps(1000, 8), AC), sample(model, x, betas=BETAS, sampler="dpmpp_2m", num_steps=8))
    via_sample = sample(model, x, betas=BETAS, sampler="ddpm", num_steps=8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(ddpm(model, x, TS, AC, generator=torch.Generator().manual_seed(2)), via_sample)
    assert torch.isfinite(via_sample).all()


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_deterministic_samplers_draw_no_random_numbers(sampler):
    """DDIM with eta = 0 and DPM-Solver++ make no draw: neither the caller's generator nor the global RNG moves
    (a caller that draws x_T and then more from one generator gets the same numbers with either sampler)."""
    g = torch.Generator().manual_seed(3)
    before, global_before = g.get_state(), torch.get_rng_state()
    sample(model, _x(), betas=BETAS, sampler=sampler, num_steps=8, eta=0.0, generator=g)
    sample(model, _x(), betas=BETAS, sampler=sampler, num_steps=8, eta=0.0)
    assert torch.equal(g.get_state(), before) and torch.equal(torch.get_rng_state(), global_before)


def test_stochastic_sampling_without_a_generator_uses_the_global_rng():
    kw = dict(betas=BETAS, sampler="ddpm", num_steps=8)
    torch.manual_seed(0)
    a = sample(model, _x(), **kw)
    torch.manual_seed(0)
    b = sample(model, _x(), **kw)
    torch.manual_seed(1)
    c = sample(model, _x(), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # one normal draw per step, in the caller's generator when there is one
    g = torch.Generator().manual_seed(5)
    sample(model, _x(), generator=g, **kw)
    ref = torch.Generator().manual_seed(5)
    for _ in range(len(TS) - 1):  # no noise at t = 0
        torch.randn(_x().shape, generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())


def test_ddim_with_eta_above_one_stays_finite():
    """``sample.eta`` is only bounded below: for eta > 1, 1 - a_prev - sigma^2 < 0 and the direction term is
    clamped to zero, x_prev = sqrt(a_prev) x0 + sigma z (rather than NaN)."""
    x = _x()
    out = sample(model, x, betas=BETAS, sampler="ddim", num_steps=8, eta=2.0, generator=torch.Generator().manual_seed(4))
    assert torch.isfinite(out).all()
    # one step by hand
    t, t_prev = TS[0], TS[1]
    a_t, a_prev = AC[t], AC[t_prev]
    eps = model(x, torch.full((2,), t)).double()
    x0 = (x.double() - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    sigma = 2.0 * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
    assert 1 - a_prev - sigma**2 < 0
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=x.dtype).double()
    one = ddim(model, x, TS[:1], AC, final_alpha=float(a_prev), eta=2.0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(one.double(), a_prev.sqrt() * x0 + sigma * z, rtol=1e-5, atol=1e-5)


def test_ddpm_over_every_timestep_matches_diffusers():
    """num_steps = T: every t including t = 1 (the last noisy step) matches diffusers' DDPMScheduler."""
    T = 20
    betas = make_betas("linear", T, 1e-3, 0.2)
    sched = DDPMScheduler(num_train_timesteps=T, beta_start=1e-3, beta_end=0.2, beta_schedule="linear", clip_sample=False)
    sched.set_timesteps(T)
    x, g = _x(6), torch.Generator().manual_seed(7)
    for t in sched.timesteps:
        x = sched.step(model(x, t.expand(2)), t, x, generator=g).prev_sample
    ours = sample(model, _x(6), betas=betas, sampler="ddpm", num_steps=T, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_guidance_without_labels_or_at_scale_one_is_a_single_plain_pass():
    calls = []

    def rec(x, t, labels=None):
        calls.append(None if labels is None else labels.tolist())
        return x * 2

    x, t = _x(), torch.tensor([3, 3])
    assert torch.equal(guided(rec, None, 3.0)(x, t), 2 * x)
    assert torch.equal(guided(rec, torch.tensor([1, 2]), 1.0)(x, t), 2 * x)
    assert calls == [None, [1, 2]]


# ------------------------------------------------------------------------------------------------------ losses
class Linear(torch.nn.Module):
    def __init__(self, out_factor: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Conv2d(2, 2 * out_factor, 1)

    def forward(self, x, t, y=None):
        return self.net(x) + t.float().reshape(-1, 1, 1, 1) / 1000


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_simple_loss_is_the_mse_to_the_target_at_uniform_t(kind):
    """L_simple draws t ~ U{0..T-1} then eps ~ N(0, I) from the generator (as diffusion_loss does) and is the
    plain MSE between the prediction at x_t and the target."""
    from components.diffusion import diffusion_loss, q_sample, simple_loss, target_for

    net, x0 = Linear(), _x(8, (6, 2, 3, 3))
    got = simple_loss(net, x0, None, AC, kind, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    t = torch.randint(0, 1000, (6,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    x_t = q_sample(x0, t, noise, AC)
    expected = ((net(x_t, t) - target_for(kind, x0, noise, t, AC)) ** 2).mean()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, diffusion_loss(net, x0, None, BETAS, kind, generator=torch.Generator().manual_seed(9)))


def test_min_snr_weight_of_the_x0_target_is_the_clipped_snr():
    from components.diffusion import min_snr_weight

    t = torch.tensor([0, 50, 300, 999])
    s = AC[t] / (1 - AC[t])
    torch.testing.assert_close(min_snr_weight(AC, t, 5.0, "sample").double(), s.clamp(max=5.0), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="unknown prediction_type"):
        min_snr_weight(AC, t, 5.0, "score")


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_diffusion_loss_with_given_t_and_noise_is_the_weighted_per_example_mse(kind):
    from components.diffusion import diffusion_loss, min_snr_weight, q_sample, target_for

    net, x0 = Linear(), _x(10, (4, 2, 3, 3))
    t, noise = torch.tensor([0, 10, 500, 999]), _x(11, (4, 2, 3, 3))
    x_t = q_sample(x0, t, noise, AC.float())
    per = ((net(x_t, t) - target_for(kind, x0, noise, t, AC.float())) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(diffusion_loss(net, x0, None, BETAS, kind, t=t, noise=noise), per.mean())
    w = min_snr_weight(AC, t, 2.0, kind)
    torch.testing.assert_close(diffusion_loss(net, x0, None, BETAS, kind, t=t, noise=noise, min_snr_gamma=2.0), (per * w).mean())


@pytest.mark.parametrize("steps", [14, 15])
def test_dpm_solver_last_step_order_switches_at_15_steps_as_diffusers(steps):
    """lower_order_final: with a final sigma > 0, runs of fewer than 15 steps end with a first-order step,
    runs of 15 or more stay second order (diffusers' DPMSolverMultistepScheduler). Trailing spacing: the last step
    (t = T/N - 1 down to alpha_bar_0) is a long one, where the order shows most."""
    from diffusers import DPMSolverMultistepScheduler

    dpm = DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                      lower_order_final=True, final_sigmas_type="sigma_min")
    dpm.set_timesteps(timesteps=sampling_timesteps(1000, steps, "trailing"))
    x = _x(12, (2, 4, 8, 8))
    for t in dpm.timesteps:
        x = dpm.step(model(x, t.expand(2)), t, x).prev_sample
    ours = sample(model, _x(12, (2, 4, 8, 8)), betas=BETAS, sampler="dpmpp_2m", num_steps=steps, set_alpha_to_one=False,
                  timestep_spacing="trailing")
    assert (ours - x).abs().max() <= 1e-5 * x.abs().max()  # the other order at the last step is off by ~1.5e-4


def test_guidance_mixes_only_the_prediction_channels_of_a_learned_variance_model():
    """C = 2 prediction channels (+ 2 variance channels) on 3x3 latents: channels are read from dim 1, never
    from the batch or spatial sizes."""

    def two_c(x, t, labels):
        y = labels.float()[:, None, None, None]
        is_null = (labels < 0)[:, None, None, None]
        pred = torch.where(is_null, -x, x + y)
        var = torch.where(is_null, torch.full_like(x, -0.5), torch.full_like(x, 0.25))
        return torch.cat([pred, var], dim=1)

    x, labels = _x(13, (2, 2, 3, 3)), torch.tensor([1, 3])
    out = guided(two_c, labels, 2.0)(x, torch.tensor([5, 5]))
    assert out.shape == (2, 4, 3, 3)
    torch.testing.assert_close(out[:, :2], -x + 2.0 * (2 * x + labels.float()[:, None, None, None]))
    assert torch.equal(out[:, 2:], torch.full_like(x, 0.25))


def test_sample_defaults_are_unguided_deterministic_leading_and_end_at_alpha_one():
    """``sample`` with labels but no guidance_scale: one conditional pass per step (scale 1); eta 0, leading
    spacing without offset and a final alpha of 1 (diffusers' DDIM defaults)."""
    calls = []

    def rec(x, t, labels=None):
        calls.append((int(t[0]), None if labels is None else labels.tolist()))
        return model(x, t)

    x, labels = _x(), torch.tensor([1, 2])
    out = sample(rec, x, betas=BETAS, sampler="ddim", num_steps=8, class_labels=labels, generator=torch.Generator().manual_seed(0))
    assert calls == [(t, [1, 2]) for t in TS]
    assert torch.equal(out, ddim(model, x, TS, AC, final_alpha=1.0, eta=0.0))


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_deterministic_samplers_ignore_the_variance_channels(sampler):
    """A learned-variance model (2C outputs) gives DDIM and DPM-Solver++ the same sample as its first C channels
    (C = 2 on 3x3 latents, so the channel count is not confused with a spatial size)."""
    w2 = torch.linspace(-0.4, 0.4, 8).reshape(4, 2)

    def two_c(x, t, labels=None):
        return torch.tanh(torch.einsum("ij,bjhw->bihw", w2, x) + t.float().reshape(-1, 1, 1, 1) / 1000)

    x = _x(14, (2, 2, 3, 3))
    kw = dict(betas=BETAS, sampler=sampler, num_steps=8)
    assert torch.equal(sample(two_c, x, **kw), sample(lambda x, t, labels=None: two_c(x, t)[:, :2], x, **kw))


# ------------------------------------------------------------------------------------------------ t = 0 and the vlb
def test_posterior_and_learned_range_at_t0_use_the_clipped_variance():
    """At t = 0 the posterior variance beta-tilde_0 is 0: its log is clipped to log beta-tilde_1 (improved DDPM),
    and the posterior mean is x0 itself."""
    from components.diffusion import learned_range_log_variance, q_posterior

    b = BETAS.double()
    tilde_1 = b[1] * (1 - AC[0]) / (1 - AC[1])
    x0, xt = _x(15, (2, 1, 2, 2)).double(), _x(16, (2, 1, 2, 2)).double()
    t = torch.tensor([0, 0])
    mean, log_var = q_posterior(x0, xt, t, BETAS)
    torch.testing.assert_close(mean, x0)
    torch.testing.assert_close(log_var, torch.full_like(x0, float(tilde_1.log())))
    v = torch.tensor([-1.0, 1.0]).reshape(2, 1)
    torch.testing.assert_close(learned_range_log_variance(v, t, BETAS)[:, 0], torch.stack([tilde_1.log(), b[0].log()]))


def test_vlb_at_t0_is_the_gaussian_nll_of_x0_in_bits():
    from components.diffusion import learned_range_log_variance, q_posterior, q_sample, vlb_terms

    x0, noise = _x(17, (3, 2, 2, 2)).double(), _x(18, (3, 2, 2, 2)).double()
    t = torch.zeros(3, dtype=torch.long)
    v = torch.rand(3, 2, 2, 2, generator=torch.Generator().manual_seed(19), dtype=torch.float64) * 2 - 1
    log_var = learned_range_log_variance(v, t, BETAS)
    x_t = q_sample(x0, t, noise, AC)
    x0_hat = x0 + 0.01 * noise  # a "sample" prediction a little off
    got = vlb_terms(x0_hat, log_var, x0, x_t, t, BETAS, "sample")
    model_mean, _ = q_posterior(x0_hat, x_t, t, BETAS)
    nll = -torch.distributions.Normal(model_mean, (0.5 * log_var).exp()).log_prob(x0)
    torch.testing.assert_close(got, nll.flatten(1).mean(1) / math.log(2.0))


def test_hybrid_loss_default_vlb_weight_is_one_thousandth():
    from components.diffusion import diffusion_loss, learned_range_log_variance, q_sample, vlb_terms

    net, x0 = Linear(out_factor=2), _x(20, (4, 2, 3, 3))
    t, noise = torch.tensor([0, 3, 400, 999]), _x(21, (4, 2, 3, 3))
    simple = diffusion_loss(net, x0, None, BETAS, "epsilon", t=t, noise=noise)
    hybrid = diffusion_loss(net, x0, None, BETAS, "epsilon", learned_variance=True, t=t, noise=noise)
    x_t = q_sample(x0, t, noise, AC.float())
    out = net(x_t, t)
    vlb = vlb_terms(out[:, :2].detach(), learned_range_log_variance(out[:, 2:], t, BETAS), x0, x_t, t, BETAS, "epsilon").mean()
    torch.testing.assert_close(hybrid, simple + 0.001 * vlb.float())
    assert torch.isfinite(hybrid) and (0.001 * vlb).abs() > 1e-4


# ------------------------------------------------------------------------------------------------ schedules
def test_schedule_and_timestep_bounds():
    assert make_betas("linear", 1).tolist() == [pytest.approx(1e-4)]
    with pytest.raises(ValueError, match="num_timesteps must be >= 1"):
        make_betas("linear", 0)
    assert sampling_timesteps(10, 10) == list(range(9, -1, -1)) and sampling_timesteps(10, 1) == [0]
    for bad in (0, 11):
        with pytest.raises(ValueError, match="num_steps must be in"):
            sampling_timesteps(10, bad)
    assert sampling_timesteps(1000, 10, steps_offset=99)[0] == 999
    with pytest.raises(ValueError, match="past T-1"):
        sampling_timesteps(1000, 10, steps_offset=100)
    with pytest.raises(ValueError, match="unknown timestep_spacing"):
        sampling_timesteps(1000, 10, "karras")


def test_dpm_solver_timestep_bounds():
    """DPM-Solver's grid (N + 1 points, the last, t = 0, being the end of the run): its bounds and errors."""
    assert dpm_solver_timesteps(10, 1) == [5] and dpm_solver_timesteps(10, 1, "linspace") == [9]
    assert dpm_solver_timesteps(10, 9) == list(range(9, 0, -1)) == dpm_solver_timesteps(10, 9, "linspace")
    for bad in (0, 11):
        with pytest.raises(ValueError, match="num_steps must be in"):
            dpm_solver_timesteps(10, bad)
    for spacing in ("leading", "linspace"):  # 11 points on 0..9 cannot be distinct
        with pytest.raises(ValueError, match="too many for 10 training timesteps"):
            dpm_solver_timesteps(10, 10, spacing)
    assert dpm_solver_timesteps(10, 10, "trailing") == list(range(9, -1, -1))
    assert dpm_solver_timesteps(1000, 10, steps_offset=99)[0] == 999  # ratio 1000 // 11 = 90: 900 + 99
    with pytest.raises(ValueError, match="past T-1"):
        dpm_solver_timesteps(1000, 10, steps_offset=100)
    with pytest.raises(ValueError, match="unknown timestep_spacing"):
        dpm_solver_timesteps(1000, 10, "karras")


def test_karras_levels_bounds_and_their_sampler_takes_only_their_timesteps():
    """Karras levels run from the schedule's sigma_max to its sigma_min (Karras et al. 2022, eq. 5); one step is
    sigma_max alone; dpmpp_2m_karras refuses a timestep list other than theirs (it would pair the model's timesteps
    with other noise levels)."""
    ts, alphas = karras_timesteps(AC, 4)
    assert ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    assert alphas[0] == pytest.approx(float(AC[-1]), rel=1e-9) and alphas[-1] == pytest.approx(float(AC[0]), rel=1e-9)
    assert karras_timesteps(AC, 1) == ([999], [pytest.approx(float(AC[-1]), rel=1e-9)])
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        karras_timesteps(AC, 0)
    with pytest.raises(ValueError, match="dpmpp_2m_karras runs on karras_timesteps"):
        dpmpp_2m_karras(model, _x(), [750, 500, 250, 0], AC)
    direct = dpmpp_2m_karras(model, _x(), ts, AC)
    assert torch.equal(direct, sample(model, _x(), betas=BETAS, sampler="dpmpp_2m_karras", num_steps=4, timestep_spacing="trailing"))
    assert (direct - sample(model, _x(), betas=BETAS, sampler="dpmpp_2m", num_steps=4)).abs().max() > 1e-3


def test_zero_terminal_alpha_bar_is_raised_to_two_to_the_minus_24():
    """As diffusers: only the zero at t = T-1 (zero terminal SNR) is lifted; any positive alpha_bar is left alone,
    however small: the cosine schedule's alpha_bar_{T-1} (~2.4e-9, below 2**-24) is its own (issue 13: raising it
    moved cosine epsilon-prediction samples by up to ~0.8 of their scale)."""
    zero = make_betas("linear", 1000, zero_terminal_snr=True)
    ac = alphas_cumprod(zero)
    raw = torch.cumprod(1.0 - zero.double(), dim=0)
    assert raw[-1] == 0 and ac[-1] == 2.0**-24
    torch.testing.assert_close(ac[:-1], raw[:-1], rtol=0, atol=0)
    assert torch.equal(AC, torch.cumprod(1.0 - BETAS.double(), dim=0))
    cosine = make_betas("cosine", 1000)
    raw_cos = torch.cumprod(1.0 - cosine.double(), dim=0)
    assert 0 < raw_cos[-1] < 2.0**-26 and torch.equal(alphas_cumprod(cosine), raw_cos)
    tiny = alphas_cumprod(torch.tensor([0.5, 1 - 8e-8], dtype=torch.float64))  # 4e-8, just under 2**-24
    assert tiny[0] == 0.5 and tiny[1] == pytest.approx(4e-8, rel=1e-6)
    # epsilon-prediction sampling from t = T-1 of a zero-SNR schedule stays finite
    out = sample(model, _x(), betas=zero, sampler="ddim", num_steps=5, timestep_spacing="trailing")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_karras"])
def test_start_may_be_the_end_of_the_grid_but_not_outside_it(sampler: str):
    """``start = num_steps`` runs no step (x_T comes back as it is: an edit of strength 0); a start before the
    grid (-1, which Python would read as the last step) or past it is a clear error."""
    x = _x()
    kw = dict(betas=make_betas("linear", 1000), sampler=sampler, num_steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample(model, x, start=5, **kw), x)
    for bad in (-1, 6):
        with pytest.raises(ValueError, match=r"start index must be in \[0, 5\]"):
            sample(model, x, start=bad, **kw)


def test_denoiser_and_single_step_defaults_are_plain_conditioning_and_deterministic_ddim():
    """``denoiser`` without a guidance scale is the conditional model alone (guidance 1, one forward pass);
    ``single_step`` without eta is DDIM's deterministic step: no draw from the generator, the eta = 0 result."""
    x, t = _x(), torch.full((2,), 500)
    labels = torch.tensor([1, 2])

    def labelled(x, t, class_labels=None):  # the null class (-1) and the labels give different outputs
        return model(x, t) + (0.0 if class_labels is None else class_labels.float().reshape(-1, 1, 1, 1))

    assert torch.equal(denoiser(labelled, "ddim", 4, labels)(x, t), labelled(x, t, labels))
    ac = alphas_cumprod(make_betas("linear", 1000)).double()
    den = denoiser(labelled, "ddim", 4, labels)
    gen = torch.Generator().manual_seed(0)
    default = single_step("ddim", den, x, 500, ac[500], ac[250], generator=gen)
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())
    assert torch.equal(default, single_step("ddim", den, x, 500, ac[500], ac[250], eta=0.0))


def test_karras_levels_refuse_tables_they_cannot_invert_and_accept_the_smallest_one():
    """sigma -> t needs a table of at least 2 alpha_bar values, strictly decreasing (a plateau has no unique t);
    2 values are enough. The first two levels on one timestep are refused (the cosine schedule at 10 steps)."""
    two = torch.tensor([0.9, 0.5], dtype=torch.float64)
    assert karras_timesteps(two, 2)[0] == [1, 0]
    with pytest.raises(ValueError, match="at least 2 training timesteps"):
        karras_timesteps(two[:1], 1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        karras_timesteps(torch.tensor([0.9, 0.9, 0.5], dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="first two of 10 Karras noise levels fall on the same timestep 999"):
        karras_timesteps(alphas_cumprod(make_betas("cosine", 1000)), 10)


def test_dpm_solver_grid_refuses_a_first_point_on_t_0():
    """linspace over 2 training timesteps with 2 steps puts its N + 1 = 3 points on 0, 0.5 -> 0, 1: the model
    would be evaluated at t = 0, the end of the run; refused (at most T - 1 steps), where 1 step is fine."""
    assert dpm_solver_timesteps(2, 1, "linspace") == [1]
    with pytest.raises(ValueError, match="needs num_steps \\+ 1 distinct timesteps"):
        dpm_solver_timesteps(2, 2, "linspace")


# ---- components/diffusion/options.py: the documented defaults, and the package's lazy exports ----

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_sampling_and_editing_defaults_are_the_documented_ones():
    """The defaults a user reads in the README (the REST columns of "Serving a registered model") and in params.yaml
    are the ones the code applies when a row, a flag or a params key is left out."""
    import re

    import yaml

    from components.diffusion import options

    readme = " ".join((ROOT / "README.md").read_text().split())
    guidance = re.search(r"`guidance` \(([\d.]+), classifier-free scale\)", readme)
    strength = re.search(r"`strength` \(([\d.]+) without a mask, ([\d.]+) with one\) and `resample_steps` \((\d+)\)", readme)
    assert guidance and strength, "the README's REST defaults paragraph moved: update this test's patterns"
    assert options.DEFAULT_GUIDANCE == float(guidance.group(1)) == 3.0
    assert options.DEFAULT_STRENGTH == float(strength.group(1)) == 0.6
    assert options.DEFAULT_INPAINT_STRENGTH == float(strength.group(2)) == 1.0
    assert options.DEFAULT_RESAMPLE_STEPS == int(strength.group(3)) == 0
    # a params.yaml without sample.guidance samples like the committed one
    assert yaml.safe_load((ROOT / "params.yaml").read_text())["sample"]["guidance"] == options.DEFAULT_GUIDANCE


def test_lazy_exports_are_listed_by_dir_and_resolved_once():
    """``components.diffusion`` imports its submodules on first use (PEP 562): ``dir()`` lists every export before any
    is touched (tab completion, ``help()``), and a resolved name is cached in the module so the next access is a plain
    attribute read."""
    import subprocess
    import sys

    code = (
        "import components.diffusion as d\n"
        "names = dir(d)\n"
        "missing = sorted(set(d.__all__) - set(names))\n"
        "assert not missing, missing\n"
        "assert '__getattr__' in names and 'importlib' in names\n"
        "assert 'sample' not in vars(d)\n"
        "f = d.sample\n"
        "assert vars(d)['sample'] is f\n"
        "print('ok')\n"
    )
    import os

    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # keeps a tracer's site dir
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": path})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
