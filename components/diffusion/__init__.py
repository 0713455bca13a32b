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
    "diffusion_loss",
    "gaussian_kl",
    "learned_range_log_variance",
    "min_snr_weight",
    "q_posterior",
    "rescale_zero_terminal_snr",
    "snr",
    "vlb_terms",
    "alphas_cumprod",
    "ddim",
    "ddpm",
    "dpmpp_2m",
    "SAMPLERS",
    "guided",
    "make_betas",
    "q_sample",
    "sample",
    "sampling_timesteps",
    "simple_loss",
    "target_for",
    "to_x0_eps",
]
