"""The forward process q(x_t | x_0), prediction targets, and the training losses (simple, min-SNR, hybrid)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from components.diffusion.schedules import alphas_cumprod


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device)[t].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020, eq. 4)."""
    a = _at(alphas_cumprod, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def target_for(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Regression target: eps (Ho et al. eq. 14), x0, or v = sqrt(a) eps - sqrt(1-a) x0 (Salimans & Ho 2022, sec. 4)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        a = _at(alphas_cumprod, t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected epsilon, sample or v_prediction")


def to_x0_eps(prediction_type: str, output: torch.Tensor, x_t: torch.Tensor, alpha_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a model output to (x0, eps) given alpha_bar_t (broadcastable), inverting eq. 4."""
    sa, sb = alpha_t.sqrt(), (1 - alpha_t).sqrt()
    if prediction_type == "epsilon":
        eps = output
        x0 = (x_t - sb * eps) / sa
    elif prediction_type == "sample":
        x0 = output
        eps = (x_t - sa * x0) / sb
    elif prediction_type == "v_prediction":
        x0 = sa * x_t - sb * output
        eps = sa * output + sb * x_t
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    return x0, eps


def simple_loss(
    model,
    x0: torch.Tensor,
    class_labels: torch.Tensor | None,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L_simple (Ho et al. 2020, eq. 14) with the chosen target: t ~ U{0..T-1}, eps ~ N(0, I)."""
    T = alphas_cumprod.shape[0]
    t = torch.randint(0, T, (x0.shape[0],), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = q_sample(x0, t, noise, alphas_cumprod)
    pred = model(x_t, t, class_labels)
    return F.mse_loss(pred.float(), target_for(prediction_type, x0, noise, t, alphas_cumprod).float())


def snr(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021, eq. 1)."""
    a = alphas_cumprod.to(t.device)[t]
    return a / (1 - a)


def min_snr_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, eq. 10 and sec. 3.4), per example.

    The x0-space weight min(SNR, gamma) expressed for each target: epsilon -> min(SNR, gamma)/SNR,
    v -> min(SNR, gamma)/(SNR + 1), x0 -> min(SNR, gamma).
    """
    s = snr(alphas_cumprod, t).float()
    clipped = s.clamp(max=gamma)
    if prediction_type == "epsilon":
        return clipped / s
    if prediction_type == "v_prediction":
        return clipped / (s + 1)
    if prediction_type == "sample":
        return clipped
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def q_posterior(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, betas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 6-7).

    mean = beta_t sqrt(a_{t-1})/(1-a_t) x0 + (1-a_{t-1}) sqrt(alpha_t)/(1-a_t) x_t,
    beta-tilde_t = (1-a_{t-1})/(1-a_t) beta_t, its log clipped at t=0 to beta-tilde_1 (improved DDPM).
    """
    b = betas.double().to(x0.device)
    ac = torch.cumprod(1 - b, 0)
    ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
    var = b * (1 - ac_prev) / (1 - ac)
    log_var = torch.log(torch.cat([var[1:2], var[1:]]))
    c1 = (b * ac_prev.sqrt() / (1 - ac))[t]
    c2 = ((1 - ac_prev) * (1 - b).sqrt() / (1 - ac))[t]
    shape = (-1, *([1] * (x0.ndim - 1)))
    mean = c1.reshape(shape) * x0.double() + c2.reshape(shape) * x_t.double()
    return mean, log_var[t].reshape(shape).expand_as(mean)


def learned_range_log_variance(v: torch.Tensor, t: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """log Sigma = f log beta_t + (1 - f) log beta-tilde_t, f = (v + 1)/2 (Nichol & Dhariwal 2021, eq. 15)."""
    b = betas.double().to(v.device)
    ac = torch.cumprod(1 - b, 0)
    ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
    var = b * (1 - ac_prev) / (1 - ac)
    min_log = torch.log(torch.cat([var[1:2], var[1:]]))[t]
    max_log = torch.log(b)[t]
    shape = (-1, *([1] * (v.ndim - 1)))
    frac = (v.double() + 1) / 2
    return frac * max_log.reshape(shape) + (1 - frac) * min_log.reshape(shape)


def gaussian_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def vlb_terms(
    pred: torch.Tensor, log_var: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
    betas: torch.Tensor, prediction_type: str,
) -> torch.Tensor:
    """Per-example L_vlb term in bits per dimension (Nichol & Dhariwal 2021, eq. 4-6).

    For t > 0: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)); for t = 0: the Gaussian negative log-likelihood
    of x_0 under p(x_0|x_1) (continuous latents, so no discretisation). ``pred`` is the (detached, for the
    hybrid loss) mean prediction; ``log_var`` the model's log-variance.
    """
    ac = torch.cumprod(1 - betas.double().to(x0.device), 0)
    a_t = ac[t].reshape(-1, *([1] * (x0.ndim - 1)))
    x0_hat, _ = to_x0_eps(prediction_type, pred.double(), x_t.double(), a_t)
    true_mean, true_logvar = q_posterior(x0, x_t, t, betas)
    model_mean, _ = q_posterior(x0_hat, x_t, t, betas)
    kl = gaussian_kl(true_mean, true_logvar, model_mean, log_var).flatten(1).mean(1)
    nll = (0.5 * (log_var + math.log(2 * math.pi) + (x0.double() - model_mean) ** 2 * torch.exp(-log_var))).flatten(1).mean(1)
    return torch.where(t == 0, nll, kl) / math.log(2.0)


def diffusion_loss(
    model,
    x0: torch.Tensor,
    class_labels: torch.Tensor | None,
    betas: torch.Tensor,
    prediction_type: str,
    *,
    learned_variance: bool = False,
    vlb_weight: float = 0.001,
    min_snr_gamma: float | None = None,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Training loss: L_simple (Ho et al. eq. 14) with the chosen target, optionally min-SNR-weighted,
    plus, for a learned-variance model (2C output channels), ``vlb_weight`` * L_vlb with a
    stop-gradient on the mean (the hybrid loss, Nichol & Dhariwal 2021, eq. 16).

    ``t`` and ``noise`` are drawn from ``generator`` unless given (the training loop draws them per
    global batch so that the split over processes does not change them)."""
    ac = alphas_cumprod(betas).float().to(x0.device)
    T = ac.shape[0]
    if t is None:
        t = torch.randint(0, T, (x0.shape[0],), generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = q_sample(x0, t, noise, ac)
    out = model(x_t, t, class_labels).float()
    c = x0.shape[1]
    pred = out[:, :c]
    per_example = ((pred - target_for(prediction_type, x0, noise, t, ac).float()) ** 2).flatten(1).mean(1)
    if min_snr_gamma is not None:
        per_example = per_example * min_snr_weight(ac, t, min_snr_gamma, prediction_type)
    loss = per_example.mean()
    if learned_variance:
        if out.shape[1] != 2 * c:
            raise ValueError(f"learned variance needs {2 * c} output channels, the model gives {out.shape[1]}")
        log_var = learned_range_log_variance(out[:, c:], t, betas)
        loss = loss + vlb_weight * vlb_terms(pred.detach(), log_var, x0, x_t, t, betas, prediction_type).mean().float()
    return loss
