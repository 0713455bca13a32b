"""Diffusion math: schedules, the forward process and losses, samplers, guidance."""

from components.diffusion.forward import q_sample, simple_loss, target_for, to_x0_eps
from components.diffusion.samplers import ddim, ddpm, guided, sample
from components.diffusion.schedules import alphas_cumprod, make_betas, sampling_timesteps

__all__ = [
    "alphas_cumprod",
    "ddim",
    "ddpm",
    "guided",
    "make_betas",
    "q_sample",
    "sample",
    "sampling_timesteps",
    "simple_loss",
    "target_for",
    "to_x0_eps",
]
