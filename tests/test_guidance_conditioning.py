"""Classifier-free guidance and condition dropout against hand-computed expectations.

Guidance (Ho & Salimans 2022, eq. 6) is ``out = u + s (c - u)``: s = 0 is the unconditional model, s = 1
the conditional one, s > 1 extrapolates away from the unconditional prediction. Training drops labels to
the null class with probability ``cond_dropout`` (alg. 1), and the dropped label must be the one the U-Net
treats as unconditional (the one guidance uses for its unconditional pass).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import components.training.diffusion as diffusion_training
from components.config import DiffusionParams
from components.diffusion import alphas_cumprod, make_betas, sample
from components.diffusion.samplers import guided
from components.models.unet import UNet, UNetConfig
from components.training.diffusion import train_diffusion

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models (tests/conftest.py)


class AffineToyModel(torch.nn.Module):
    """cond(x, y) = 2x + y (+ 10 on variance channels); uncond(x) = 0.5 - x (- 10 on variance channels).

    The null class is any negative label (as the U-Net); both passes are told apart only by the label.
    """

    def __init__(self, out_channels_factor: int = 1):
        super().__init__()
        self.k = out_channels_factor
        self.calls = 0

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        assert labels is not None and t.shape == (x.shape[0],)
        y = labels.float()[:, None, None, None]
        is_null = (labels < 0)[:, None, None, None]
        out = torch.where(is_null, 0.5 - x, 2 * x + y)
        if self.k == 2:
            out = torch.cat([out, torch.where(is_null, torch.full_like(x, -10.0), torch.full_like(x, 10.0))], dim=1)
        return out


X = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 3.0]]]])  # [2, 1, 1, 2]
LABELS = torch.tensor([1, 4])
T = torch.tensor([7, 7])


@pytest.mark.parametrize(
    ("scale", "expected"),
    [
        # s = 0: the unconditional output 0.5 - x
        (0.0, [[[[-0.5, 2.5]]], [[[0.0, -2.5]]]]),
        # s = 1: the conditional output 2x + y
        (1.0, [[[[3.0, -3.0]]], [[[5.0, 10.0]]]]),
        # s = 3: u + 3 (c - u) = (0.5 - x) + 3 (3x + y - 0.5) = 8x + 3y - 1
        (3.0, [[[[10.0, -14.0]]], [[[15.0, 35.0]]]]),
        # s = 0.5 interpolates: 0.5 x + 0.5 y + 0.25
        (0.5, [[[[1.25, -0.25]]], [[[2.5, 3.75]]]]),
    ],
)
def test_guided_output_is_uncond_plus_scale_times_difference(scale: float, expected: list):
    model = AffineToyModel()
    out = guided(model, LABELS, scale)(X, T)
    assert torch.allclose(out, torch.tensor(expected), atol=1e-6), out
    assert model.calls == 1  # cond and uncond batched in one forward call


def test_guided_learned_variance_channels_come_from_the_conditional_pass():
    out = guided(AffineToyModel(out_channels_factor=2), LABELS, 3.0)(X, T)
    assert out.shape == (2, 2, 1, 2)
    assert torch.allclose(out[:, :1], torch.tensor([[[[10.0, -14.0]]], [[[15.0, 35.0]]]]))
    assert torch.equal(out[:, 1:], torch.full((2, 1, 1, 2), 10.0))


@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_guidance_rescale_matches_lin_et_al_eq_15_16_by_hand(phi: float):
    """Lin et al. 2024, eq. 15-16, per image: out' = phi * out * std(cond) / std(out) + (1 - phi) * out. At s = 3 the
    toy model gives cond = 2x + y and out = 8x + 3y - 1 on two pixels, so std(cond) / std(out) = |c0 - c1| / |o0 - o1|:
    6 / 24 for image 0, 5 / 20 for image 1."""
    out = guided(AffineToyModel(), LABELS, 3.0, guidance_rescale=phi)(X, T)
    cfg = torch.tensor([[[[10.0, -14.0]]], [[[15.0, 35.0]]]])
    cond = torch.tensor([[[[3.0, -3.0]]], [[[5.0, 10.0]]]])
    ratio = cond.flatten(1).std(dim=1) / cfg.flatten(1).std(dim=1)
    assert torch.allclose(ratio, torch.tensor([6.0 / 24.0, 5.0 / 20.0]), atol=1e-6)  # |c0 - c1| / |o0 - o1| per image
    expected = phi * cfg * ratio[:, None, None, None] + (1 - phi) * cfg
    assert torch.allclose(out, expected, atol=1e-5), out
    if phi == 1.0:  # fully rescaled: the guided output has the conditional output's spread
        assert torch.allclose(out.flatten(1).std(dim=1), cond.flatten(1).std(dim=1), atol=1e-5)


def test_guidance_rescale_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="guidance_rescale must be in"):
        guided(AffineToyModel(), LABELS, 3.0, guidance_rescale=1.5)


def test_guidance_interval_guides_only_inside_sigma_range_and_skips_the_uncond_pass_outside():
    """Kynkäänniemi et al. 2024: guidance where sigma_t = sqrt((1 - a_t) / a_t) is in (lo, hi], the conditional
    prediction alone elsewhere (one forward of the batch, not two)."""
    ac = torch.tensor([0.8, 0.5, 0.2, 0.05])  # sigma_t = 0.5, 1.0, 2.0, 4.36
    cond = torch.tensor([[[[3.0, -3.0]]], [[[5.0, 10.0]]]])
    cfg = torch.tensor([[[[10.0, -14.0]]], [[[15.0, 35.0]]]])
    for t, inside in [(0, False), (1, True), (2, True), (3, False)]:
        model = AffineToyModel()
        denoise = guided(model, LABELS, 3.0, guidance_interval=(0.5, 2.0), alphas_cumprod=ac)
        out = denoise(X, torch.tensor([t, t]))
        assert torch.allclose(out, cfg if inside else cond, atol=1e-6), (t, out)
        assert model.calls == 1
    with pytest.raises(ValueError, match="needs alphas_cumprod"):
        guided(AffineToyModel(), LABELS, 3.0, guidance_interval=(0.5, 2.0))
    with pytest.raises(ValueError, match="sigma_lo < sigma_hi"):
        guided(AffineToyModel(), LABELS, 3.0, guidance_interval=(2.0, 0.5), alphas_cumprod=ac)


def test_guidance_interval_is_judged_per_example_in_a_batch_of_mixed_timesteps():
    """A batch whose examples sit at different timesteps (distillation's teacher) is split: examples inside the
    interval get the guided (and rescaled) output, the rest the conditional one, each equal to what a batch of that
    example alone gives; learned-variance channels come from the conditional pass either way."""
    ac = torch.tensor([0.8, 0.5, 0.2, 0.05])  # sigma_t = 0.5, 1.0, 2.0, 4.36
    x = torch.tensor([[[[1.0, -2.0]]], [[[0.5, 3.0]]], [[[-1.0, 0.25]]], [[[2.0, 2.0]]]])
    labels = torch.tensor([1, 4, 0, 2])
    t = torch.tensor([0, 1, 3, 2])  # inside (0.5, 2.0]: examples 1 and 3
    for rescale in (0.0, 0.7):
        model = AffineToyModel(out_channels_factor=2)
        out = guided(model, labels, 3.0, guidance_rescale=rescale, guidance_interval=(0.5, 2.0), alphas_cumprod=ac)(x, t)
        assert model.calls == 2 and out.shape == (4, 2, 1, 2)
        for i in range(4):
            alone = guided(AffineToyModel(2), labels[i : i + 1], 3.0, guidance_rescale=rescale, guidance_interval=(0.5, 2.0),
                           alphas_cumprod=ac)(x[i : i + 1], t[i : i + 1])
            torch.testing.assert_close(out[i : i + 1], alone, rtol=0, atol=1e-6)
        plain = 2 * x + labels.float()[:, None, None, None]
        torch.testing.assert_close(out[[0, 2], :1], plain[[0, 2]])  # outside: the conditional output
        assert not torch.allclose(out[[1, 3], :1], plain[[1, 3]])  # inside: guided
        assert torch.equal(out[:, 1:], torch.full_like(x, 10.0))


def test_guidance_interval_covering_every_step_changes_nothing_in_a_full_run():
    """An interval that holds every noise level of the run is plain guidance: the same samples bit for bit; one that
    holds none is guidance 1."""
    betas = make_betas("scaled_linear", 100, 0.00085, 0.012)
    ac = alphas_cumprod(betas)
    model = ExactEpsModel(ac)
    x = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    kw = dict(betas=betas, sampler="ddim", num_steps=10, class_labels=LABELS)
    plain = sample(model, x, guidance_scale=3.0, **kw)
    everywhere = sample(model, x, guidance_scale=3.0, guidance_interval=(0.0, 1e6), **kw)
    nowhere = sample(model, x, guidance_scale=3.0, guidance_interval=(1e5, 1e6), **kw)
    unguided = sample(model, x, guidance_scale=1.0, **kw)
    assert torch.equal(plain, everywhere)
    assert torch.equal(nowhere, unguided)
    assert not torch.allclose(plain, unguided, atol=1e-3)


class ExactEpsModel(torch.nn.Module):
    """The exact epsilon-predictor of a point-mass data distribution per label:
    x0 = 1 + label for a real class, x0 = -1 for the null class, so eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)."""

    def __init__(self, ac: torch.Tensor):
        super().__init__()
        self.ac = ac.double()

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        a = self.ac[t][:, None, None, None]
        x0 = torch.where(labels < 0, -1.0, 1.0 + labels.double())[:, None, None, None]
        return ((x.double() - a.sqrt() * x0) / (1 - a).sqrt()).to(x.dtype)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m"])
def test_guidance_scale_moves_the_sample_along_cond_minus_uncond(sampler: str):
    """eps is affine in x0 at fixed x_t, so guided eps is the exact eps of x0_u + s (x0_c - x0_u); every sampler's
    last step (alpha = 1) lands on that x0: the sample is -1 + s (2 + label) exactly."""
    betas = make_betas("linear", 100)
    model = ExactEpsModel(alphas_cumprod(betas))
    labels = torch.tensor([0, 2])
    x_T = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    results = {}
    for s in (0.0, 1.0, 3.0):
        out = sample(model, x_T, betas=betas, sampler=sampler, num_steps=8, class_labels=labels, guidance_scale=s,
                     generator=torch.Generator().manual_seed(1))
        expected = (-1.0 + s * (2.0 + labels.float()))[:, None, None, None].expand_as(out)
        assert torch.allclose(out, expected, atol=1e-4), (s, out[:, 0, 0, 0])
        results[s] = out
    # the sign: more guidance lands further toward (and past) the conditional target 1 + label
    target = (1.0 + labels.float())[:, None, None, None]
    assert ((results[0.0] - target).abs() > (results[1.0] - target).abs()).all()
    assert (results[3.0] > results[1.0]).all() and (results[1.0] > results[0.0]).all()


class GaussianMixtureEpsModel(torch.nn.Module):
    """The exact epsilon-predictor of a class-conditional Gaussian mixture in 2-D: class k is N(mu_k, I), the
    null class the equal-weight mixture of all of them. At noise level a = alpha_bar_t, x_t | k ~ N(sqrt(a) mu_k,
    v I) with v = a + 1 - a = 1, so eps_k = sqrt(1 - a) (x_t - sqrt(a) mu_k) and the mixture's eps is the
    responsibility-weighted sum (Tweedie; eps = -sqrt(1 - a) * score)."""

    def __init__(self, ac: torch.Tensor, means: torch.Tensor):
        super().__init__()
        self.ac, self.means = ac.double(), means.double()  # means [K, 2]

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        a = self.ac[t][:, None]
        xt = x.double().reshape(len(x), 2)
        centres = a.sqrt()[:, :, None] * self.means.T[None]  # [B, 2, K]
        eps_k = (1 - a).sqrt()[:, :, None] * (xt[:, :, None] - centres)  # [B, 2, K]
        resp = torch.softmax(-0.5 * ((xt[:, :, None] - centres) ** 2).sum(1), dim=1)  # [B, K]
        onehot = torch.nn.functional.one_hot(labels.clamp(min=0), len(self.means)).double()
        weights = torch.where((labels < 0)[:, None], resp, onehot)
        return (eps_k * weights[:, None, :]).sum(-1).reshape(x.shape).to(x.dtype)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_guidance_raises_class_consistency_of_an_exact_mixture_model(sampler: str):
    """The sign of guidance on class consistency, with the real sampler and metric: four overlapping classes, a
    Bayes classifier (nearest mean). s = 0 samples the marginal (consistency 1/4), s = 1 the class (the Bayes
    accuracy of real data), s = 3 sharpens the class (well above it). Swapping cond and uncond in ``guided``
    gives s = 1 -> 1/4 and s = 3 -> below 1/4."""
    from components.evaluation.metrics import class_consistency

    k, n = 4, 2000
    angles = torch.arange(k, dtype=torch.float64) * (2 * torch.pi / k)
    means = 1.2 * torch.stack([angles.cos(), angles.sin()], dim=1)  # close enough that classes overlap
    betas = make_betas("linear", 1000)
    model = GaussianMixtureEpsModel(alphas_cumprod(betas), means)
    labels = torch.arange(n) % k
    gen = torch.Generator().manual_seed(0)

    def bayes(x: torch.Tensor) -> np.ndarray:
        return torch.cdist(x.double().reshape(-1, 2), means).argmin(1).numpy()

    real = means[labels] + torch.randn(n, 2, generator=gen, dtype=torch.float64)
    bayes_accuracy = class_consistency(bayes(real), labels.numpy(), k)["overall"]
    assert 0.55 < bayes_accuracy < 0.8  # the classes really overlap: there is room above and below
    x_T = torch.randn(n, 1, 1, 2, generator=gen)
    cc = {}
    for s in (0.0, 1.0, 3.0):
        out = sample(model, x_T, betas=betas, sampler=sampler, num_steps=25, class_labels=labels, guidance_scale=s,
                     timestep_spacing="trailing")
        cc[s] = class_consistency(bayes(out), labels.numpy(), k)["overall"]
    assert abs(cc[0.0] - 1 / k) < 0.04, cc  # binomial sd ~0.01
    assert abs(cc[1.0] - bayes_accuracy) < 0.05, (cc, bayes_accuracy)
    assert cc[3.0] > cc[1.0] + 0.1, cc


# ------------------------------------------------------------------------------ condition dropout
NUM_CLASSES = 10


def _record_training_labels(monkeypatch, cond_dropout: float, n: int = 4096, steps: int = 2, seed: int = 0):
    """Run train_diffusion with the loss replaced by a recorder; returns (original labels, training labels)
    of every sample seen. Latent i is the constant i (log-variance -inf: no noise), so each row's dataset
    index is read back from the latent the loss receives."""
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=torch.Generator().manual_seed(seed))
    mean = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 4, 4).contiguous()
    logvar = torch.full_like(mean, float("-inf"))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recorder(net, z0, y, *args, **kwargs):
        seen.append((z0[:, 0, 0, 0].round().long(), y.clone()))
        return sum(p.sum() for p in net.parameters()) * 0.0  # no forward pass needed

    monkeypatch.setattr(diffusion_training, "diffusion_loss", recorder)
    cfg = DiffusionParams.model_validate({
        "unet": {"preset": "res-clsAtn-chnAtn", "channels": [8, 16], "num_heads": 2}, "batch_size": n,
        "max_images": steps * n, "warmup_images": 0, "cond_dropout": cond_dropout,
    })
    train_diffusion(mean, logvar, labels, NUM_CLASSES, cfg, seed=seed, device=torch.device("cpu"), progress=False)
    assert len(seen) == steps
    idx = torch.cat([s[0] for s in seen])
    y = torch.cat([s[1] for s in seen])
    assert idx.min() >= 0 and idx.max() < n
    return labels[idx], y


@pytest.mark.parametrize(("rate", "tol"), [(0.0, 0.0), (1.0, 0.0), (0.3, 0.02), (0.1, 0.015)])
def test_condition_dropout_rate(monkeypatch, rate: float, tol: float):
    original, y = _record_training_labels(monkeypatch, rate)
    dropped = y != original
    # 8192 Bernoulli draws: the std of the fraction is at most 0.0051 (p = 0.3), so tol is about 4 sigma
    assert abs(dropped.float().mean().item() - rate) <= tol, dropped.float().mean().item()
    # kept rows keep their own label; dropped rows all get one label outside the real classes
    assert torch.equal(y[~dropped], original[~dropped])
    if dropped.any():
        assert ((y[dropped] < 0) | (y[dropped] >= NUM_CLASSES)).all()
        assert len(y[dropped].unique()) == 1


def _random_unet() -> UNet:
    torch.manual_seed(0)
    unet = UNet(UNetConfig(in_channels=1, out_channels=1, sample_size=4, num_classes=NUM_CLASSES, channels=(8, 16),
                           num_heads=2))
    with torch.no_grad():  # residual branches and the output conv start at zero: give them weights so labels show
        for p in unet.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    return unet.eval()


def test_dropped_label_is_the_unets_null_class_and_the_one_guidance_uses(monkeypatch):
    original, y = _record_training_labels(monkeypatch, 0.5, n=256, steps=1)
    null_label = y[y != original].unique()
    assert len(null_label) == 1
    unet = _random_unet()
    x = torch.randn(NUM_CLASSES + 1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.full((NUM_CLASSES + 1,), 10)
    with torch.no_grad():
        uncond = unet(x, t)  # no labels: unconditional
        trained_null = unet(x, t, null_label.expand(NUM_CLASSES + 1))
        per_class = [unet(x, t, torch.full((NUM_CLASSES + 1,), k)) for k in range(NUM_CLASSES)]
    assert torch.allclose(trained_null, uncond, atol=1e-6)
    assert all((uncond - c).abs().max() > 1e-3 for c in per_class)  # the null class is none of the real ones

    # guidance's unconditional pass uses the same label as training's dropped rows
    passes = []

    def spy(x, t, labels):
        passes.append(labels.clone())
        return torch.zeros_like(x)

    guided(spy, torch.tensor([3, 7]), 2.0)(x[:2], t[:2])
    assert passes[0][:2].tolist() == [3, 7]
    with torch.no_grad():
        guidance_null = unet(x[:2], t[:2], passes[0][2:])
    assert torch.allclose(guidance_null, trained_null[:2], atol=1e-5)  # batch size changes float sums
