"""Noise schedules beta_1..beta_T and the sampler timestep grids."""

from __future__ import annotations

import math

import torch


def make_betas(
    schedule: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, *, zero_terminal_snr: bool = False
) -> torch.Tensor:
    """Betas of a named schedule, float32 ``[T]``; optionally rescaled to zero terminal SNR.

    - ``linear``: Ho et al. 2020, sec. 4 (beta linear from 1e-4 to 0.02).
    - ``scaled_linear``: Rombach et al. 2022 (linear in sqrt(beta)), as diffusers' ``scaled_linear``.
    - ``cosine``: Nichol & Dhariwal 2021, eq. 17 (alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2),
      s = 0.008), betas from eq. under 17, capped at 0.999.
    """
    betas = _named_betas(schedule, num_timesteps, beta_start, beta_end)
    return rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so that alpha_bar_T = 0 and alpha_bar_1 is unchanged
    (Lin et al. 2024, alg. 1). The last beta becomes 1: pair it with v-prediction."""
    sq = torch.cumprod(1 - betas.double(), dim=0).sqrt()
    first, last = sq[0].clone(), sq[-1].clone()
    sq = (sq - last) * first / (first - last)
    ab = sq**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return (1 - alphas).float()


def _named_betas(schedule: str, num_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float32) ** 2
    if schedule == "cosine":

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [
            min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
            for i in range(num_timesteps)
        ]
        return torch.tensor(betas, dtype=torch.float32)
    raise ValueError(f"unknown schedule {schedule!r}; expected linear, scaled_linear or cosine")


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s) (Ho et al. 2020, notation above eq. 4), float64.

    A zero terminal alpha_bar (zero-terminal-SNR schedules) is raised to 2**-24, as diffusers does, so
    that x0 stays defined for epsilon-prediction at t = T - 1."""
    ac = torch.cumprod(1.0 - betas.double(), dim=0)
    return ac.clamp(min=2.0**-24) if ac[-1] < 2.0**-24 else ac


def sampling_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "leading", steps_offset: int = 0) -> list[int]:
    """Descending timesteps for an ``num_steps``-step sampler, as diffusers' ``timestep_spacing``
    (Lin et al. 2024, table 2: leading, trailing, linspace)."""
    T, N = num_train_timesteps, num_steps
    if not 1 <= N <= T:
        raise ValueError(f"num_steps must be in [1, {T}], got {N}")
    if spacing == "leading":
        ratio = T // N
        ts = [i * ratio + steps_offset for i in range(N)]
    elif spacing == "trailing":
        ratio = T / N
        ts = [int(round(T - i * ratio)) - 1 for i in range(N)][::-1]
    elif spacing == "linspace":
        ts = torch.linspace(0, T - 1, N, dtype=torch.float64).round().long().tolist()
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; expected leading, trailing or linspace")
    if max(ts) >= T:
        raise ValueError(f"steps_offset={steps_offset} pushes timesteps past T-1={T - 1}")
    return sorted(ts, reverse=True)
