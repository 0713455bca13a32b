"""The diffusion API's names and defaults, in one place: the sampler names, the guidance default, the latent kinds
and scales.

Pure Python (no torch), so ``components.config`` and the CLI can validate against them without importing torch.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

# what the U-Net learns of the autoencoder's posterior: a fresh draw z = mean + std * n each batch (LDM), or its mean
LatentKind = Literal["posterior_sample", "posterior_mean"]
LATENT_KINDS: tuple[str, ...] = get_args(LatentKind)
# the scale those latents are multiplied by: the autoencoder's scale factor (1/std of its posterior draws, LDM), or 1/std
# of the latents the U-Net learns (the same for posterior draws; for the means, which vary less, a larger one)
LatentScale = Literal["autoencoder", "unit"]
LATENT_SCALES: tuple[str, ...] = get_args(LatentScale)
SAMPLERS: tuple[str, ...] = ("ddim", "ddpm", "dpmpp_2m", "dpmpp_2m_karras")
DEFAULT_GUIDANCE = 3.0  # classifier-free guidance scale (Ho & Salimans 2022); 1 = no guidance
# image editing (``latentflow edit``, the pyfunc's ``image`` rows): SDEdit strength without a mask (Meng et al. 2022 use
# about 0.5; diffusers' img2img defaults to 0.8); with a mask the masked region is repainted from pure noise (strength 1,
# diffusers' inpainting default). RePaint resampling is off by default (each resample costs one more model call per step).
DEFAULT_STRENGTH = 0.6
DEFAULT_INPAINT_STRENGTH = 1.0
DEFAULT_RESAMPLE_STEPS = 0


def guidance_interval_ok(lo: float, hi: float) -> bool:
    """The rule for a guidance interval (sigma_lo, sigma_hi] (Kynkäänniemi et al. 2024): finite, 0 <= lo < hi.
    Each caller (the sampler, ``sample.guidance_interval``, ``--guidance-interval``) words its own error."""
    return math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi
