"""Diffusion math: schedules, the forward process and losses, samplers, guidance.

Names are imported from their submodules on first use (PEP 562), so ``components.diffusion.options`` (the sampler
names and the guidance default, pure Python) can be read by the params layer without importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS: dict[str, str] = {
    # options: pure Python
    "DEFAULT_GUIDANCE": "options",
    "DEFAULT_INPAINT_STRENGTH": "options",
    "DEFAULT_RESAMPLE_STEPS": "options",
    "DEFAULT_STRENGTH": "options",
    "SAMPLERS": "options",
    # image editing: SDEdit and inpainting in latent space
    "edit_latents": "editing",
    "renoise": "editing",
    "strength_start": "editing",
    # forward process and losses
    "diffusion_loss": "forward",
    "gaussian_kl": "forward",
    "learned_range_log_variance": "forward",
    "min_snr_weight": "forward",
    "q_posterior": "forward",
    "q_sample": "forward",
    "simple_loss": "forward",
    "snr": "forward",
    "target_for": "forward",
    "to_x0_eps": "forward",
    "vlb_terms": "forward",
    # samplers
    "ddim": "samplers",
    "ddpm": "samplers",
    "dpmpp_2m": "samplers",
    "dpmpp_2m_karras": "samplers",
    "guided": "samplers",
    "denoiser": "samplers",
    "sample": "samplers",
    "sampling_grid": "samplers",
    "single_step": "samplers",
    # schedules
    "alphas_cumprod": "schedules",
    "dpm_solver_timesteps": "schedules",
    "karras_timesteps": "schedules",
    "make_betas": "schedules",
    "rescale_zero_terminal_snr": "schedules",
    "sampling_timesteps": "schedules",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
