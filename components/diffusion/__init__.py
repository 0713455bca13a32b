"""Diffusion math: schedules, the forward process and losses, samplers, guidance."""

from components.diffusion.forward import (
    diffusion_loss,
    gaussian_kl,
    learned_range_log_variance,
    min_snr_weight,
    q_posterior,
    q_sample,
    simple_loss,
    snr,
    target_for,
    to_x0_eps,
    vlb_terms,
)
from components.diffusion.samplers import SAMPLERS, ddim, ddpm, dpmpp_2m, guided, sample
from components.diffusion.schedules import alphas_cumprod, make_betas, rescale_zero_terminal_snr, sampling_timesteps

__all__ = [
    "SAMPLERS",
    "alphas_cumprod",
    "ddim",
    "ddpm",
    "diffusion_loss",
    "dpmpp_2m",
    "gaussian_kl",
    "guided",
    "learned_range_log_variance",
    "make_betas",
    "min_snr_weight",
    "q_posterior",
    "q_sample",
    "rescale_zero_terminal_snr",
    "sample",
    "sampling_timesteps",
    "simple_loss",
    "snr",
    "target_for",
    "to_x0_eps",
    "vlb_terms",
]
