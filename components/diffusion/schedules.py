"""Noise schedules beta_1..beta_T and the sampler timestep grids."""

from __future__ import annotations

import math

import numpy as np
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

    A zero terminal alpha_bar (zero-terminal-SNR schedules, whose last beta is 1) is raised to 2**-24, as diffusers'
    ``rescale_betas_zero_snr`` does, so that x0 stays defined for epsilon-prediction at t = T - 1. Only an exact zero
    is raised: a small positive alpha_bar is the schedule's own (the cosine schedule's alpha_bar_{T-1} is about
    2.4e-9, below 2**-24), and diffusers keeps it, as we do.
    """
    ac = torch.cumprod(1.0 - betas.double(), dim=0)
    if ac[-1] == 0:
        ac = ac.clone()
        ac[-1] = 2.0**-24
    return ac


def _linspace_round(stop: int, num: int) -> list[int]:
    """``num`` evenly spaced points in [0, stop] rounded half to even, bit for bit as diffusers' ``np.linspace(...).round()``
    (torch.linspace computes the points differently and rounds some x.5 cases the other way, e.g. stop 999, num 27)."""
    return np.linspace(0, stop, num).round().astype(np.int64).tolist()


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
        # np.arange's accumulated steps, as diffusers (1000 - 3 * 1000/48 is 937.4999..., not 937.5). For some N
        # (61, 103, ... of 1000) that arange overshoots to N + 1 points, the last ~0, and diffusers then steps at t = -1
        # (its alphas_cumprod[-1], i.e. t = T - 1): ill-defined there, so we keep the first N.
        ts = (np.round(np.arange(T, 0, -T / N)).astype(np.int64) - 1).tolist()[:N]
    elif spacing == "linspace":
        ts = _linspace_round(T - 1, N)
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; expected leading, trailing or linspace")
    if max(ts) >= T:
        raise ValueError(f"steps_offset={steps_offset} pushes timesteps past T-1={T - 1}")
    return sorted(ts, reverse=True)


def dpm_solver_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "leading", steps_offset: int = 0) -> list[int]:
    """Descending timesteps at which an ``num_steps``-step DPM-Solver evaluates the model, as diffusers'
    ``DPMSolverMultistepScheduler`` (``timestep_spacing``; Lin et al. 2024, table 2).

    DPM-Solver discretises [0, T] into N + 1 points t_0 > t_1 > ... > t_N (Lu et al. 2022a, sec. 3.3; Lu et al. 2022b,
    alg. 2) and evaluates the model at the first N; the last point, t_N = 0, is the end of the run (alpha = 1, or
    alpha_bar_0 with ``final_sigmas_type="sigma_min"``) and is dropped from the list. ``linspace`` and ``leading``
    therefore place N + 1 points where DDIM's grid (``sampling_timesteps``) places N; ``trailing`` is the same grid
    as DDIM's. ``steps_offset`` shifts ``leading`` only, as in diffusers.
    """
    T, N = num_train_timesteps, num_steps
    if not 1 <= N <= T:
        raise ValueError(f"num_steps must be in [1, {T}], got {N}")
    if spacing == "leading":
        ratio = T // (N + 1)
        ts = [i * ratio + steps_offset for i in range(1, N + 1)]
    elif spacing == "trailing":
        return sampling_timesteps(T, N, "trailing", steps_offset)
    elif spacing == "linspace":
        ts = _linspace_round(T - 1, N + 1)[1:]
    else:
        raise ValueError(f"unknown timestep_spacing {spacing!r}; expected leading, trailing or linspace")
    if len(set(ts)) < N or min(ts) < 1:
        raise ValueError(f"{spacing!r} spacing of DPM-Solver needs num_steps + 1 distinct timesteps in [0, {T - 1}]: "
                         f"num_steps={N} is too many for {T} training timesteps; use at most {T - 1} steps or 'trailing' spacing")
    if max(ts) >= T:
        raise ValueError(f"steps_offset={steps_offset} pushes timesteps past T-1={T - 1}")
    return sorted(ts, reverse=True)


def karras_timesteps(alphas_cumprod: torch.Tensor, num_steps: int, rho: float = 7.0) -> tuple[list[int], list[float]]:
    """The ``num_steps`` noise levels of Karras et al. 2022 (eq. 5, rho = 7) between the schedule's largest and
    smallest, as diffusers' ``use_karras_sigmas=True``: sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho with sigma = sqrt((1 - alpha_bar)/alpha_bar). Returns the timesteps at which the model is
    evaluated (each sigma mapped to t by linear interpolation in log sigma, rounded to the nearest integer) and the
    alpha_bar = 1/(1 + sigma^2) of each level, which the solver uses, as diffusers does (not the rounded t's alpha_bar).

    Two cases are refused, being ill-defined in diffusers too: a schedule whose alpha_bar is not strictly decreasing
    (zero terminal SNR: alpha_bar_{T-1} raised from 0 to 2**-24 is above alpha_bar_{T-2}, so sigma -> t has no unique
    answer near T - 1 and diffusers' answer turns on float32 rounding), and levels whose first two round to the same
    timestep (the cosine schedule, whose sigma jumps ~30x from t = T-2 to T-1: diffusers' step() then runs off its
    list; with ``beta_schedule="squaredcos_cap_v2"`` it does not round, passing the model fractional timesteps).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    ac = alphas_cumprod.double().cpu().numpy()
    if len(ac) < 2:
        raise ValueError(f"Karras noise levels need at least 2 training timesteps, got {len(ac)}")
    if not (ac[1:] < ac[:-1]).all():
        raise ValueError("Karras noise levels need alpha_bar strictly decreasing in t, and this schedule's is not (zero "
                         "terminal SNR raises alpha_bar_{T-1} from 0 to 2**-24, above alpha_bar_{T-2}): use dpmpp_2m")
    log_sigmas = 0.5 * np.log((1 - ac) / ac)
    lo, hi = math.exp(log_sigmas[0]) ** (1 / rho), math.exp(log_sigmas[-1]) ** (1 / rho)
    sigmas = (hi + np.linspace(0, 1, num_steps) * (lo - hi)) ** rho
    # diffusers' _sigma_to_t: the last index whose log sigma is <= log sigma, then linear interpolation to the next
    log_s = np.log(np.maximum(sigmas, 1e-10))
    low = np.clip(np.cumsum(log_s[None, :] - log_sigmas[:, None] >= 0, axis=0).argmax(axis=0), None, len(log_sigmas) - 2)
    w = np.clip((log_sigmas[low] - log_s) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    timesteps = np.round((1 - w) * low + w * (low + 1)).astype(np.int64).tolist()
    if num_steps > 1 and timesteps[0] == timesteps[1]:
        raise ValueError(f"the first two of {num_steps} Karras noise levels fall on the same timestep {timesteps[0]} (the "
                         "schedule's sigma jumps at t = T-1, as the cosine schedule's does): use dpmpp_2m, or fewer steps")
    return timesteps, (1 / (1 + sigmas**2)).tolist()
