"""Samplers: small functions with one shared signature (k-diffusion style).

``sampler(denoise, x, timesteps, alphas_cumprod, *, final_alpha, eta, generator, prediction_type)``
where ``denoise(x_t, t)`` returns the model's prediction (guidance already applied) and
``timesteps`` is descending. Every random draw uses the caller's ``generator``; draw order follows
diffusers' schedulers so the same generator gives the same samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from components.diffusion.forward import to_x0_eps
from components.diffusion.options import SAMPLERS, guidance_interval_ok
from components.diffusion.schedules import alphas_cumprod as _alphas_cumprod
from components.diffusion.schedules import dpm_solver_timesteps, karras_timesteps, sampling_timesteps

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# ``callback(i, x)``: called after step ``i`` with the new x (at the noise level of step i + 1, or the run's end); what it
# returns replaces x (the hook image editing uses to blend in the known region; diffusers' ``callback_on_step_end``)
StepCallback = Callable[[int, torch.Tensor], torch.Tensor]


def _randn_like(x: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``. A list of generators (one per row of ``x``, as diffusers'
    ``randn_tensor`` takes) draws each row from its own stream, so a row's noise does not depend on the batch it is in."""
    if isinstance(generator, list | tuple):
        if len(generator) != x.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]}: pass one generator per image")
        rows = [torch.randn((1, *x.shape[1:]), generator=g, device=g.device, dtype=x.dtype) for g in generator]
        return torch.cat(rows).to(x.device)
    gen_device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype).to(x.device)


def _t_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def _clip(x0: torch.Tensor, clip_sample: float | None) -> torch.Tensor:
    """Clamp the x0 prediction to [-r, r] (``clip_sample``; DDPM's pixel-space sampling, Ho et al. 2020, whose data
    lie in [-1, 1]); ``None`` leaves it alone, as latents are unbounded."""
    return x0 if clip_sample is None else x0.clamp(-clip_sample, clip_sample)


def _steps(timesteps: Sequence[int], alphas_cumprod: torch.Tensor, final_alpha: float, start: int = 0):
    """Yield ``(i, t, alpha_bar_t, alpha_bar_prev)`` from index ``start`` on, with the previous timestep taken from the
    list itself (``final_alpha`` after the last step), which keeps every timestep spacing correct."""
    if not 0 <= start <= len(timesteps):
        raise ValueError(f"start index must be in [0, {len(timesteps)}], got {start}")
    ac = alphas_cumprod.double()
    for i in range(start, len(timesteps)):
        t = timesteps[i]
        a_prev = ac[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(final_alpha, dtype=torch.float64)
        yield i, t, ac[t], a_prev


def ddim(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    *,
    final_alpha: float,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    prediction_type: str = "epsilon",
    clip_sample: float | None = None,
    start: int = 0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12, sigma from eq. 16 scaled by ``eta``).

    x_{t-1} = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - a_prev)/(1 - a_t)) sqrt(1 - a_t/a_prev). ``eta=1`` gives DDPM's
    posterior variance. The previous timestep is the next entry of ``timesteps`` (correct for every
    spacing); after the last step ``a_prev = final_alpha``. One normal draw per step when eta > 0.
    ``start``/``callback``: see :func:`sample`.
    """
    for i, t, a_t, a_prev in _steps(timesteps, alphas_cumprod, final_alpha, start):
        out = denoise(x, _t_batch(t, x))
        x0, eps = to_x0_eps(prediction_type, out.double(), x.double(), a_t)
        x0 = _clip(x0, clip_sample)
        sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
        x_prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            x_prev = x_prev + sigma * _randn_like(x, generator).double()
        x = x_prev.to(x.dtype)
        if callback is not None:
            x = callback(i, x)
    return x


def ddpm(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    *,
    final_alpha: float = 1.0,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
    prediction_type: str = "epsilon",
    clip_sample: float | None = None,
    start: int = 0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Ancestral DDPM (Ho et al. 2020, eq. 6-7; respaced as Nichol & Dhariwal 2021, sec. 4).

    With a_t, a_prev the cumulative alphas of consecutive timesteps, beta_t = 1 - a_t/a_prev,
    mean = sqrt(a_prev) beta_t/(1-a_t) x0 + sqrt(1-beta_t)(1-a_prev)/(1-a_t) x_t, variance
    beta-tilde = (1-a_prev)/(1-a_t) beta_t ("fixed_small"), or, when the model returns 2C channels, the
    learned interpolation exp(f log beta_t + (1-f) log beta-tilde), f = (v+1)/2 ("learned_range",
    Nichol & Dhariwal 2021, eq. 15). Noise is drawn for every t > 0.
    ``eta`` is unused (DDPM is stochastic by definition); it is kept for the shared signature.
    ``start``/``callback``: see :func:`sample`.
    """
    c = x.shape[1]
    for i, t, a_t, a_prev in _steps(timesteps, alphas_cumprod, final_alpha, start):
        beta_t = 1 - a_t / a_prev
        out = denoise(x, _t_batch(t, x)).double()
        x0, _ = to_x0_eps(prediction_type, out[:, :c], x.double(), a_t)
        x0 = _clip(x0, clip_sample)
        mean = (a_prev.sqrt() * beta_t / (1 - a_t)) * x0 + ((1 - beta_t).sqrt() * (1 - a_prev) / (1 - a_t)) * x.double()
        if t > 0:
            var = ((1 - a_prev) / (1 - a_t) * beta_t).clamp(min=1e-20)
            if out.shape[1] == 2 * c:  # learned_range: interpolate log beta-tilde and log beta (IDDPM eq. 15)
                frac = (out[:, c:] + 1) / 2
                std = torch.exp(0.5 * (frac * torch.log(beta_t) + (1 - frac) * torch.log(var)))
            else:
                std = var.sqrt()
            mean = mean + std * _randn_like(x, generator).double()
        x = mean.to(x.dtype)
        if callback is not None:
            x = callback(i, x)
    return x


def dpmpp_2m(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    *,
    final_alpha: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    prediction_type: str = "epsilon",
    clip_sample: float | None = None,
    start: int = 0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M), multistep, midpoint form (Lu et al. 2022b, alg. 2; eq. 9 for the first order).

    With alpha_t = sqrt(a_t), sigma_t = sqrt(1 - a_t), lambda_t = log(alpha_t / sigma_t), h = lambda_t - lambda_s:
    first order  x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) D0,
    second order adds - 0.5 alpha_t (e^{-h} - 1) D1 with D1 = (h/h_0)(m0 - m1) (the previous x0 prediction).
    The first step and the last step are first order when the run ends at alpha = 1 or has fewer than 15
    steps (``lower_order_final``, as diffusers). ``timesteps`` are the first N of the N + 1 grid points
    (``dpm_solver_timesteps``); the run ends at ``final_alpha``. Deterministic: ``eta`` and ``generator`` are unused.
    """
    ac = alphas_cumprod.double()
    return _dpmpp_2m(denoise, x, timesteps, [ac[t] for t in timesteps], final_alpha, prediction_type, clip_sample, start, callback)


def dpmpp_2m_karras(
    denoise: Denoise,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    *,
    final_alpha: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    prediction_type: str = "epsilon",
    clip_sample: float | None = None,
    start: int = 0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022b, alg. 2) on the noise levels of Karras et al. 2022 (eq. 5, rho = 7), as
    diffusers' ``DPMSolverMultistepScheduler(use_karras_sigmas=True)``: ``len(timesteps)`` steps whose levels come
    from ``karras_timesteps``, whose timesteps ``timesteps`` must be (the grid replaces any timestep spacing); the
    model sees each level's rounded timestep, the solver the level itself. Deterministic.
    """
    ts, alphas = karras_timesteps(alphas_cumprod, len(timesteps))
    if list(timesteps) != ts:
        raise ValueError(f"dpmpp_2m_karras runs on karras_timesteps(alphas_cumprod, {len(timesteps)})[0] = {ts}, got {list(timesteps)}")
    return _dpmpp_2m(denoise, x, ts, [torch.tensor(a, dtype=torch.float64) for a in alphas], final_alpha, prediction_type, clip_sample,
                     start, callback)


def _dpmpp_2m(denoise: Denoise, x: torch.Tensor, timesteps: Sequence[int], alphas: Sequence[torch.Tensor], final_alpha: float,
              prediction_type: str, clip_sample: float | None, start: int = 0, callback: StepCallback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) evaluating the model at ``timesteps[i]`` where the solver's alpha_bar is ``alphas[i]``, from index
    ``start`` on (its first step first order, as any first step; ``lower_order_final`` still counts the whole grid, as
    diffusers' img2img, which runs the tail of the full list)."""
    n = len(timesteps)
    if len(alphas) != n:
        raise ValueError(f"{n} timesteps but {len(alphas)} alphas")
    if not 0 <= start <= n:
        raise ValueError(f"start index must be in [0, {n}], got {start}")
    prev_x0: torch.Tensor | None = None
    lam_prev: torch.Tensor | None = None
    for i in range(start, n):
        t, a_s = timesteps[i], alphas[i]
        a_t = alphas[i + 1] if i + 1 < n else torch.tensor(final_alpha, dtype=torch.float64)
        out = denoise(x, _t_batch(t, x))
        x0, _ = to_x0_eps(prediction_type, out.double(), x.double(), a_s)
        x0 = _clip(x0, clip_sample)
        lam_s = 0.5 * torch.log(a_s / (1 - a_s))
        if a_t >= 1.0:  # the final sigma is zero: the update lands exactly on x0
            x = x0.to(x.dtype)
            if callback is not None:
                x = callback(i, x)
            break
        lam_t = 0.5 * torch.log(a_t / (1 - a_t))
        h = lam_t - lam_s
        alpha_t, ratio = a_t.sqrt(), ((1 - a_t) / (1 - a_s)).sqrt()
        first_order = prev_x0 is None or (i == n - 1 and n < 15)
        d = x0 if first_order else x0 + 0.5 * (h / (lam_s - lam_prev)) * (x0 - prev_x0)
        x = (ratio * x.double() - alpha_t * torch.expm1(-h) * d).to(x.dtype)
        prev_x0, lam_prev = x0, lam_s
        if callback is not None:
            x = callback(i, x)
    return x


_SAMPLER_FNS = {"ddim": ddim, "ddpm": ddpm, "dpmpp_2m": dpmpp_2m, "dpmpp_2m_karras": dpmpp_2m_karras}  # keyed by options.SAMPLERS (a test checks they agree)


def guided(model, class_labels: torch.Tensor | None, guidance_scale: float, *, guidance_rescale: float = 0.0,
           guidance_interval: tuple[float, float] | None = None, alphas_cumprod: torch.Tensor | None = None) -> Denoise:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): out = u + s (c - u), with the
    conditional and unconditional (label -1, the null class) passes batched in one forward call.

    ``guidance_rescale`` phi (Lin et al. 2024, sec. 3.4, eq. 15-16): out is rescaled per image to the standard deviation
    of the conditional prediction, out' = phi * out * std(c) / std(out) + (1 - phi) * out, which undoes the
    over-exposure that large scales cause (0 = off; applied to the model output, whatever it predicts, as diffusers'
    ``guidance_rescale``). ``guidance_interval`` (sigma_lo, sigma_hi) (Kynkäänniemi et al. 2024, sec. 3): guidance only
    where the noise level sigma_t = sqrt((1 - a_t) / a_t) lies in (sigma_lo, sigma_hi]; elsewhere the conditional
    prediction alone, in one forward pass instead of two. It is judged per example, so a batch whose examples sit at
    different timesteps (distillation's teacher) is split; a sampler's batch shares one timestep and is never split.
    It needs ``alphas_cumprod``; ``None`` = every step.
    """
    if guidance_rescale < 0.0 or guidance_rescale > 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1] (0 = off), got {guidance_rescale}")
    if guidance_interval is not None:
        lo, hi = (float(v) for v in guidance_interval)
        if not guidance_interval_ok(lo, hi):
            raise ValueError(f"guidance_interval must be (sigma_lo, sigma_hi) with 0 <= sigma_lo < sigma_hi, got {guidance_interval}")
        if alphas_cumprod is None:
            raise ValueError("guidance_interval needs alphas_cumprod (the noise level of each timestep)")
        sigmas = ((1 - alphas_cumprod.double()) / alphas_cumprod.double()).sqrt()
    if class_labels is None:
        return lambda x, t: model(x, t)
    if guidance_scale == 1.0:
        return lambda x, t: model(x, t, class_labels)

    def both_passes(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        labels = torch.cat([class_labels, torch.full_like(class_labels, -1)])  # -1: the null class
        cond, uncond = model(torch.cat([x, x]), torch.cat([t, t]), labels).chunk(2)
        c = x.shape[1]
        out = uncond[:, :c] + guidance_scale * (cond[:, :c] - uncond[:, :c])
        if guidance_rescale > 0.0:
            dims = tuple(range(1, out.ndim))
            std_cond = cond[:, :c].std(dim=dims, keepdim=True)
            std_out = out.std(dim=dims, keepdim=True).clamp(min=1e-12)
            out = guidance_rescale * out * (std_cond / std_out) + (1 - guidance_rescale) * out
        # learned variance channels (if any) come from the conditional pass, as in GLIDE
        return torch.cat([out, cond[:, c:]], dim=1) if cond.shape[1] > c else out

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance_interval is None:
            return both_passes(x, t, class_labels)
        sigma = sigmas.to(t.device)[t.long()]
        inside = (sigma > lo) & (sigma <= hi)
        if bool(inside.all()):
            return both_passes(x, t, class_labels)
        if not bool(inside.any()):
            return model(x, t, class_labels)
        guided_part = both_passes(x[inside], t[inside], class_labels[inside])
        plain_part = model(x[~inside], t[~inside], class_labels[~inside])
        out = guided_part.new_empty((x.shape[0], *guided_part.shape[1:]))
        out[inside], out[~inside] = guided_part, plain_part
        return out

    return denoise


def sampling_grid(
    sampler: str,
    betas: torch.Tensor,
    num_steps: int,
    *,
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
) -> tuple[list[int], list[torch.Tensor], float]:
    """The run of ``sampler``: ``(timesteps, alphas, final_alpha)``, where ``timesteps`` (descending) are where the
    model is evaluated, ``alphas[i]`` is the alpha_bar the solver assigns to step i (``alphas_cumprod[t]``, or the
    Karras level for ``dpmpp_2m_karras``) and ``final_alpha`` is where the run ends. :func:`sample` runs on this
    grid; image editing (SDEdit, inpainting) noises its input to ``alphas[k]`` and runs the grid from index k."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {sorted(SAMPLERS)}")
    ac = _alphas_cumprod(betas)
    if sampler == "dpmpp_2m_karras":
        timesteps, levels = karras_timesteps(ac, num_steps)
        alphas = [torch.tensor(a, dtype=torch.float64) for a in levels]
    else:
        grid = dpm_solver_timesteps if sampler == "dpmpp_2m" else sampling_timesteps
        timesteps = grid(len(betas), num_steps, timestep_spacing, steps_offset)
        alphas = [ac[t] for t in timesteps]
    final_alpha = 1.0 if (set_alpha_to_one or sampler == "ddpm") else float(ac[0])
    return timesteps, alphas, final_alpha


def denoiser(model, sampler: str, channels: int, class_labels: torch.Tensor | None = None, guidance_scale: float = 1.0, *,
             guidance_rescale: float = 0.0, guidance_interval: tuple[float, float] | None = None,
             alphas_cumprod: torch.Tensor | None = None) -> Denoise:
    """The ``denoise(x_t, t)`` that ``sampler`` runs on: :func:`guided` (classifier-free guidance, with its rescale and
    interval options), with the learned-variance channels (if any) dropped for the deterministic samplers, which do
    not use them."""
    denoise = guided(model, class_labels, guidance_scale, guidance_rescale=guidance_rescale, guidance_interval=guidance_interval,
                     alphas_cumprod=alphas_cumprod)
    if sampler == "ddpm":
        return denoise
    return lambda x, t: denoise(x, t)[:, :channels]


def single_step(
    sampler: str,
    denoise: Denoise,
    x: torch.Tensor,
    t: int,
    alpha_t: torch.Tensor,
    alpha_next: torch.Tensor | float,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    prediction_type: str = "epsilon",
    clip_sample: float | None = None,
) -> torch.Tensor:
    """One step of ``sampler`` from noise level ``alpha_t`` (model evaluated at timestep ``t``) to ``alpha_next``:
    DDIM's eq. 12 or DDPM's ancestral step (Ho et al. eq. 6-7) exactly as in a full run; for the DPM-Solver++
    samplers the first-order update (Lu et al. 2022b, eq. 9; a multistep history does not carry over a
    re-noised x). Used by RePaint's resampling (Lugmayr et al. 2022, alg. 1), which repeats a step."""
    a_next = float(alpha_next)
    if sampler in ("ddim", "ddpm"):
        ac = torch.zeros(t + 1, dtype=torch.float64)
        ac[t] = alpha_t
        return _SAMPLER_FNS[sampler](denoise, x, [t], ac, final_alpha=a_next, eta=eta, generator=generator,
                                     prediction_type=prediction_type, clip_sample=clip_sample)
    if sampler in ("dpmpp_2m", "dpmpp_2m_karras"):
        return _dpmpp_2m(denoise, x, [t], [torch.as_tensor(alpha_t, dtype=torch.float64)], a_next, prediction_type, clip_sample)
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {sorted(SAMPLERS)}")


@torch.no_grad()
def sample(
    model,
    x_T: torch.Tensor,
    *,
    betas: torch.Tensor,
    sampler: str,
    num_steps: int,
    eta: float = 0.0,
    timestep_spacing: str = "leading",
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
    prediction_type: str = "epsilon",
    generator: torch.Generator | None = None,
    class_labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
    clip_sample: float | None = None,
    start: int = 0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run ``sampler`` ("ddim" | "ddpm" | "dpmpp_2m" | "dpmpp_2m_karras") from ``x_T`` for ``num_steps`` steps and return x_0.

    ``model(x_t, t[, class_labels])`` returns the prediction of type ``prediction_type``; knob names
    follow diffusers' scheduler configs, and so do the timestep grids: DDIM and DDPM evaluate the model on
    ``sampling_timesteps`` (diffusers' DDIMScheduler/DDPMScheduler), DPM-Solver++ on ``dpm_solver_timesteps``
    (DPMSolverMultistepScheduler: N + 1 grid points for N steps, the last one the end of the run); ``dpmpp_2m_karras``
    on Karras et al.'s noise levels (``use_karras_sigmas=True``), which ignore ``timestep_spacing``. ``set_alpha_to_one`` chooses the DDIM final alpha (1, or
    alpha_bar_0; for DPM-Solver++ this is diffusers' ``final_sigmas_type`` "zero" or "sigma_min"); DDPM
    always ends at alpha 1, as in Ho et al. ``clip_sample=r`` clamps every x0 prediction to [-r, r] (diffusers'
    ``clip_sample``/``clip_sample_range``; the model output itself is kept, as diffusers'
    ``use_clipped_model_output=False``): for pixel-space models only, never for latents.

    ``start=k`` runs only steps k .. N-1 of the same grid (:func:`sampling_grid`), ``x_T`` then being x at step k's
    noise level (SDEdit, Meng et al. 2022: diffusers' img2img runs the tail of the full list the same way);
    ``start=0`` is the full run. ``callback(i, x)`` is called after each step with the new x and returns the x to go
    on with (known-region replacement for inpainting); ``None`` leaves the run untouched. ``guidance_rescale`` and
    ``guidance_interval``: see :func:`guided` (the interval is judged at the timestep the model is evaluated at).
    """
    timesteps, _, final_alpha = sampling_grid(sampler, betas, num_steps, timestep_spacing=timestep_spacing,
                                              steps_offset=steps_offset, set_alpha_to_one=set_alpha_to_one)
    alphas_cumprod = _alphas_cumprod(betas)
    denoise = denoiser(model, sampler, x_T.shape[1], class_labels, guidance_scale, guidance_rescale=guidance_rescale,
                       guidance_interval=guidance_interval, alphas_cumprod=alphas_cumprod)
    return _SAMPLER_FNS[sampler](
        denoise, x_T, timesteps, alphas_cumprod, final_alpha=final_alpha, eta=eta, generator=generator,
        prediction_type=prediction_type, clip_sample=clip_sample, start=start, callback=callback,
    )
