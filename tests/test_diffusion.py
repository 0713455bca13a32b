"""Diffusion math: schedules, the forward process and the samplers on an exact model."""

import math

import pytest
import torch

from components.diffusion import alphas_cumprod, make_betas, q_sample, sample, sampling_timesteps, target_for, to_x0_eps


def test_schedules():
    lin = make_betas("linear", 1000)
    assert lin[0].item() == pytest.approx(1e-4) and lin[-1].item() == pytest.approx(0.02)
    sl = make_betas("scaled_linear", 1000, 0.00085, 0.012)
    assert sl[0].item() == pytest.approx(0.00085) and sl[-1].item() == pytest.approx(0.012)
    assert torch.allclose(sl.sqrt()[1:] - sl.sqrt()[:-1], (sl.sqrt()[1] - sl.sqrt()[0]).expand(999), atol=1e-6)
    cos = make_betas("cosine", 1000)
    assert cos.max().item() == pytest.approx(0.999)
    ac = alphas_cumprod(cos)
    # Nichol & Dhariwal eq. 17 for alpha_bar(t) / alpha_bar(0)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert ac[499].item() == pytest.approx(f(500) / f(0), rel=1e-5)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_betas("sigmoid", 10)


def test_timestep_spacings():
    assert sampling_timesteps(1000, 10, "leading") == list(range(900, -1, -100))
    assert sampling_timesteps(1000, 10, "leading", steps_offset=1) == list(range(901, 0, -100))
    assert sampling_timesteps(1000, 10, "trailing") == list(range(999, 0, -100))
    assert sampling_timesteps(1000, 4, "linspace") == [999, 666, 333, 0]


def test_targets_invert():
    ac = alphas_cumprod(make_betas("linear", 1000))
    x0, eps = torch.randn(4, 2, 3, 3, dtype=torch.float64), torch.randn(4, 2, 3, 3, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    xt = q_sample(x0, t, eps, ac)
    a = ac[t].reshape(-1, 1, 1, 1)
    for kind in ("epsilon", "sample", "v_prediction"):
        rx0, reps = to_x0_eps(kind, target_for(kind, x0, eps, t, ac), xt, a)
        assert torch.allclose(rx0, x0, atol=1e-8) and torch.allclose(reps, eps, atol=1e-8)


class ExactModel(torch.nn.Module):
    """The Bayes-optimal denoiser for a data distribution that is a single point ``x0``."""

    def __init__(self, x0: torch.Tensor, ac: torch.Tensor):
        super().__init__()
        self.x0, self.ac = x0, ac

    def forward(self, x, t, class_labels=None):
        a = self.ac[t].reshape(-1, 1, 1, 1).to(x.dtype)
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_samplers_recover_the_data_point_and_are_reproducible(sampler, eta):
    betas = make_betas("linear", 1000)
    ac = alphas_cumprod(betas)
    x0 = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0)).expand(3, -1, -1, -1)
    model = ExactModel(x0, ac)
    xT = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    kw = dict(betas=betas, sampler=sampler, num_steps=20, eta=eta)
    out1 = sample(model, xT, generator=torch.Generator().manual_seed(2), **kw)
    out2 = sample(model, xT, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(out1, out2)
    assert torch.allclose(out1, x0, atol=1e-3)
    if sampler == "ddpm" or eta > 0:  # stochastic samplers use the generator
        out3 = sample(model, xT + 0.0, generator=torch.Generator().manual_seed(3), **kw)
        assert not torch.equal(out1, out3)


def test_guidance_batches_cond_and_uncond_in_one_call():
    calls = []

    def model(x, t, labels):
        calls.append(labels.clone())
        return torch.zeros_like(x) + labels[:, None, None, None].float()

    betas = make_betas("linear", 100)
    sample(model, torch.zeros(2, 1, 2, 2), betas=betas, sampler="ddim", num_steps=3, class_labels=torch.tensor([3, 4]), guidance_scale=2.5)
    assert len(calls) == 3 and all(c.tolist() == [3, 4, -1, -1] for c in calls)


def test_sampler_names_have_one_source():
    """components.diffusion.options.SAMPLERS names exactly the sampler functions; params and the CLI use it."""
    from components.config import QualityGridParams, SampleParams
    from components.diffusion import DEFAULT_GUIDANCE, SAMPLERS
    from components.diffusion.samplers import _SAMPLER_FNS

    assert tuple(_SAMPLER_FNS) == SAMPLERS == ("ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_karras")
    assert SampleParams().guidance == DEFAULT_GUIDANCE
    for name in SAMPLERS:
        SampleParams(sampler=name)
        QualityGridParams(samplers=(name,))
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        sample(lambda x, t: x, torch.zeros(1, 1, 2, 2), betas=make_betas("linear", 10), sampler="euler", num_steps=2)
