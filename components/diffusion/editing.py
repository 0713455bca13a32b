"""Image editing in latent space with a trained class-conditional model, no retraining: image-to-image (SDEdit) and
inpainting (Blended Latent Diffusion's known-region replacement, optionally with RePaint's resampling).

Everything works on the diffusion model's latents (the autoencoder's latents times the U-Net's latent scale: the
autoencoder's ``scale_factor`` unless ``train_diffusion.latent_scale: unit``); the image side (encoding, the pixel
mask, decoding, pasting pixels) is :meth:`components.generation.LatentDiffusionGenerator.edit`.
Every random draw comes from the caller's ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from components.diffusion.samplers import _randn_like, denoiser, sample, sampling_grid, single_step


def strength_start(num_steps: int, strength: float) -> int:
    """Index of the first step an SDEdit run of ``strength`` takes on an ``num_steps``-step grid (Meng et al. 2022,
    sec. 3: start the reverse SDE at t0 = strength * T): ``int(num_steps * strength)`` steps are run, the last ones of
    the grid, as diffusers' img2img (``init_timestep = int(num_inference_steps * strength)``). Strength 1 -> 0 (the
    whole run, from pure noise), strength 0 -> ``num_steps`` (no step: the input's own latent)."""
    if not (isinstance(strength, int | float) and math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise ValueError(f"strength must be a number in [0, 1] (0 = keep the image, 1 = start from pure noise), got {strength!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return num_steps - min(int(num_steps * strength), num_steps)


def renoise(x: torch.Tensor, alpha_from: torch.Tensor | float, alpha_to: torch.Tensor | float,
            generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """Forward-diffuse ``x`` from noise level alpha_bar = ``alpha_from`` to the noisier ``alpha_to``:
    x' = sqrt(alpha_to / alpha_from) x + sqrt(1 - alpha_to / alpha_from) z, z ~ N(0, I) -- q(x_t | x_s) of Ho et al.
    2020 (eq. 2 composed over the steps between s and t), the re-noising of RePaint (Lugmayr et al. 2022, alg. 1 line 9)."""
    ratio = float(alpha_to) / float(alpha_from)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"renoise goes from a level to a noisier one: alpha_to / alpha_from = {ratio} must be in (0, 1]")
    z = _randn_like(x.double(), generator)
    return (math.sqrt(ratio) * x.double() + math.sqrt(1.0 - ratio) * z.to(x.device)).to(x.dtype)


def noised(z0: torch.Tensor, alpha: torch.Tensor | float, noise: torch.Tensor) -> torch.Tensor:
    """x = sqrt(alpha_bar) z0 + sqrt(1 - alpha_bar) noise (Ho et al. 2020, eq. 4), in float64, cast back to z0's dtype."""
    a = float(alpha)
    return (math.sqrt(a) * z0.double() + math.sqrt(max(1.0 - a, 0.0)) * noise.double()).to(z0.dtype)


def latent_mask(mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """A pixel mask ``[N, 1, H, W]`` (nonzero = repaint) on the latent grid ``(h, w)``: a latent cell is repainted when any
    pixel it covers is (max-pooling), so every masked pixel is regenerated and the known latents cover only known
    pixels. Returns float 0/1 ``[N, 1, h, w]``."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be [N, 1, H, W], got {tuple(mask.shape)}")
    return F.adaptive_max_pool2d((mask != 0).float(), latent_size)


@torch.no_grad()
def edit_latents(
    model,
    z0: torch.Tensor,
    noise: torch.Tensor,
    *,
    betas: torch.Tensor,
    sampler: str,
    num_steps: int,
    strength: float,
    mask: torch.Tensor | None = None,
    resample_steps: int = 0,
    eta: float = 0.0,
    timestep_spacing: str = "leading",
    prediction_type: str = "epsilon",
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    class_labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Edit the latents ``z0`` (already multiplied by the autoencoder's scale factor) and return the new latents.

    **Image-to-image** (SDEdit, Meng et al. 2022, alg. 1): with k = :func:`strength_start`, x_k = sqrt(a_k) z0 +
    sqrt(1 - a_k) ``noise`` (Ho et al. eq. 4; a_k the solver's alpha_bar at step k of :func:`sampling_grid`) and the
    sampler runs steps k .. N-1 with classifier-free guidance. Strength 1 starts from ``noise`` itself, so it is
    ordinary sampling from that noise; strength 0 returns ``z0`` unchanged.

    **Inpainting** (``mask``: ``[N or 1, 1, h, w]`` on the latent grid, 1 = repaint, 0 = keep): after every step, at
    the new noise level a, the kept region is replaced by the input's latent forward-noised to a with fresh noise
    (Blended Latent Diffusion, Avrahami et al. 2023, alg. 1: x <- m * x + (1 - m) * (sqrt(a) z0 + sqrt(1 - a) eps);
    RePaint's known-region sample, Lugmayr et al. 2022, eq. 8). ``resample_steps = r`` repeats each step r more times
    after re-noising its result back to the step's start (:func:`renoise`; RePaint alg. 1 with jump length 1), which
    lets the repainted region agree with the kept one. At the end the kept region is the input's latent exactly.

    Random draws, all from ``generator`` (or, given one generator per image, each image's from its own, as the samplers
    take it): the sampler's own (DDPM, DDIM with eta > 0), then per step the known region's noise and, per resample, the
    re-noising noise. ``noise`` is the caller's (the generator's initial noise).
    """
    if resample_steps < 0:
        raise ValueError(f"resample_steps must be >= 0, got {resample_steps}")
    if resample_steps and mask is None:
        raise ValueError("resample_steps (RePaint) needs a mask: it harmonises the repainted region with the kept one")
    if z0.shape != noise.shape:
        raise ValueError(f"z0 {tuple(z0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    if mask is not None:
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2:] != z0.shape[2:] or mask.shape[0] not in (1, z0.shape[0]):
            raise ValueError(f"mask must be [N or 1, 1, {z0.shape[2]}, {z0.shape[3]}] on the latent grid, got {tuple(mask.shape)}")
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError("mask values must be in [0, 1] (1 = repaint)")
        mask = mask.to(device=z0.device, dtype=z0.dtype)
    timesteps, alphas, final_alpha = sampling_grid(sampler, betas, num_steps, timestep_spacing=timestep_spacing)
    k = strength_start(num_steps, strength)
    if k == num_steps:
        return z0.clone()
    x = noise.to(z0.dtype) if k == 0 else noised(z0, alphas[k], noise)
    if mask is None:
        callback = None
    else:
        levels = [*alphas, torch.tensor(final_alpha, dtype=torch.float64)]
        denoise = denoiser(model, sampler, z0.shape[1], class_labels, guidance_scale)

        def keep_known(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
            if float(alpha) >= 1.0:
                known = z0
            else:
                eps = _randn_like(z0, generator)
                known = noised(z0, alpha, eps)
            return mask * x + (1 - mask) * known

        def callback(i: int, x: torch.Tensor) -> torch.Tensor:
            x = keep_known(x, levels[i + 1])
            for _ in range(resample_steps):
                x = renoise(x, levels[i + 1], levels[i], generator)
                x = single_step(sampler, denoise, x, timesteps[i], levels[i], levels[i + 1], eta=eta, generator=generator,
                                prediction_type=prediction_type)
                x = keep_known(x, levels[i + 1])
            return x

        if k == 0:  # the kept region starts as the input noised with the same initial noise (from k > 0 all of x_k is)
            x = mask * x + (1 - mask) * noised(z0, alphas[0], noise)
    out = sample(model, x, betas=betas, sampler=sampler, num_steps=num_steps, eta=eta, timestep_spacing=timestep_spacing,
                 prediction_type=prediction_type, generator=generator, class_labels=class_labels, guidance_scale=guidance_scale,
                 start=k, callback=callback)
    if mask is not None:
        out = mask * out + (1 - mask) * z0
    return out
