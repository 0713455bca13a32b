"""The forward process q(x_t | x_0), prediction targets and the simple training loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
