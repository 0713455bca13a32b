"""Training losses: min-SNR weights, the learned-variance interpolation, the hybrid loss's vlb term."""

import math

import pytest
import torch

from components.diffusion import (
    alphas_cumprod,
    diffusion_loss,
    gaussian_kl,
    learned_range_log_variance,
    make_betas,
    min_snr_weight,
    q_posterior,
    q_sample,
    target_for,
    to_x0_eps,
    vlb_terms,
)

BETAS = make_betas("linear", 1000)
AC = alphas_cumprod(BETAS)


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(gaussian_kl(m1, lv1, m2, lv2), ref)


def test_q_posterior_matches_bayes_rule():
    """Posterior of x_{t-1} from the Gaussian product q(x_t|x_{t-1}) q(x_{t-1}|x_0), computed directly."""
    t = torch.tensor([1, 10, 500, 999])
    x0, xt = torch.randn(4, 1, 2, 2, dtype=torch.float64), torch.randn(4, 1, 2, 2, dtype=torch.float64)
    mean, logvar = q_posterior(x0, xt, t, BETAS)
    b = BETAS.double()[t].reshape(-1, 1, 1, 1)
    a_prev = AC[t - 1].reshape(-1, 1, 1, 1)
    # precision-weighted combination of N(x_{t-1}; sqrt(a_prev) x0, 1-a_prev) and x_t = sqrt(1-b) x_{t-1} + sqrt(b) e
    prec = 1 / (1 - a_prev) + (1 - b) / b
    direct_mean = (a_prev.sqrt() * x0 / (1 - a_prev) + (1 - b).sqrt() * xt / b) / prec
    torch.testing.assert_close(mean, direct_mean)
    torch.testing.assert_close(logvar, torch.log(1 / prec).expand_as(logvar))


def test_vlb_term_equals_direct_gaussian_kl_in_bits():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([5, 300, 999])
    xt = q_sample(x0, t, noise, AC)
    eps_hat = noise + 0.1 * torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    v = torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    log_var = learned_range_log_variance(v, t, BETAS)
    got = vlb_terms(eps_hat, log_var, x0, xt, t, BETAS, "epsilon")
    # direct: true posterior vs model Gaussian with mean from the predicted x0, via torch.distributions
    a = AC[t].reshape(-1, 1, 1, 1)
    x0_hat = (xt - (1 - a).sqrt() * eps_hat) / a.sqrt()
    tm, tlv = q_posterior(x0, xt, t, BETAS)
    mm, _ = q_posterior(x0_hat, xt, t, BETAS)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(tm, (0.5 * tlv).exp()), torch.distributions.Normal(mm, (0.5 * log_var).exp()))
    torch.testing.assert_close(got, kl.flatten(1).mean(1) / math.log(2))
    # t = 0 is the decoder NLL, not a KL
    t0 = torch.zeros(3, dtype=torch.long)
    nll = vlb_terms(x0, learned_range_log_variance(v, t0, BETAS), x0, q_sample(x0, t0, noise, AC), t0, BETAS, "sample")
    assert torch.all(nll < 0)  # tiny variance, exact mean: the density of x0 is > 1


def test_learned_range_endpoints():
    t = torch.tensor([10, 10])
    v = torch.stack([-torch.ones(1), torch.ones(1)]).reshape(2, 1)
    lv = learned_range_log_variance(v, t, BETAS)
    b = BETAS.double()[10]
    tilde = b * (1 - AC[9]) / (1 - AC[10])
    torch.testing.assert_close(lv[:, 0], torch.stack([tilde.log(), b.log()]))


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_targets_convert_to_the_same_epsilon(kind):
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64), torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 100, 600, 998])
    xt = q_sample(x0, t, eps, AC)
    _, eps_back = to_x0_eps(kind, target_for(kind, x0, eps, t, AC), xt, AC[t].reshape(-1, 1, 1, 1))
    torch.testing.assert_close(eps_back, eps)


def test_min_snr_weights():
    t = torch.tensor([0, 50, 999])
    snr = AC[t] / (1 - AC[t])
    w_eps = min_snr_weight(AC, t, 5.0, "epsilon")
    torch.testing.assert_close(w_eps.double(), snr.clamp(max=5) / snr, rtol=1e-5, atol=0)
    assert w_eps[0] < 1e-2 and w_eps[2] == pytest.approx(1.0)  # low noise down-weighted, high noise untouched
    torch.testing.assert_close(min_snr_weight(AC, t, 5.0, "v_prediction").double(), snr.clamp(max=5) / (snr + 1), rtol=1e-5, atol=0)


def test_hybrid_loss_trains_the_variance_head_only_through_vlb():
    """With the stop-gradient, the mean channels get no gradient from L_vlb, the variance channels only from it."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(2, 4, 1)
    model = lambda x, t, y=None: net(x)  # noqa: E731
    x0 = torch.randn(8, 2, 4, 4)
    loss = diffusion_loss(model, x0, None, BETAS, "epsilon", learned_variance=True, vlb_weight=1.0, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert net.weight.grad[2:].abs().sum() > 0  # variance channels learn (from vlb)
    grad_mean_hybrid = net.weight.grad[:2].clone()
    net.zero_grad()
    diffusion_loss(model, x0, None, BETAS, "epsilon", learned_variance=False, generator=torch.Generator().manual_seed(0)).backward()
    torch.testing.assert_close(net.weight.grad[:2], grad_mean_hybrid)  # mean channels: L_simple only
    with pytest.raises(ValueError, match="output channels"):
        diffusion_loss(lambda x, t, y=None: x, x0, None, BETAS, "epsilon", learned_variance=True)
