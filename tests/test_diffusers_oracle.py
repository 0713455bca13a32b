"""Our samplers against Hugging Face diffusers' schedulers on the same model function and noise.

The grid tests at the end cover the full product schedule (with and without zero terminal SNR) x prediction type x
timestep spacing x steps for DDIM, DDPM and DPM-Solver++(2M), each scheduler configured with the same knobs as ours
(``timestep_spacing``, ``prediction_type``, ``final_sigmas_type``), so the timestep list is diffusers' own.
"""

import copy
import functools
import itertools

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from components.diffusion import alphas_cumprod, dpm_solver_timesteps, karras_timesteps, make_betas, sample, sampling_timesteps

pytestmark = pytest.mark.usefixtures("one_torch_thread")

W2 = torch.linspace(-0.4, 0.4, 32).reshape(8, 4)


def learned_variance_model(x, t, class_labels=None):
    """2C output channels: a prediction and a variance interpolation value in [-1, 1]."""
    return torch.tanh(torch.einsum("ij,bjhw->bihw", W2, x) + t.float().reshape(-1, 1, 1, 1) / 1000)

W = torch.linspace(-0.4, 0.4, 16).reshape(4, 4)


def model(x, t, class_labels=None):
    """A smooth, bounded stand-in for a trained epsilon network."""
    return torch.tanh(torch.einsum("ij,bjhw->bihw", W, x) + t.float().reshape(-1, 1, 1, 1) / 1000)


def _diffusers_loop(scheduler, x, steps, generator, **step_kw):
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.expand(x.shape[0])), t, x, generator=generator, **step_kw).prev_sample
    return x


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_ddim_matches_diffusers(eta, schedule):
    xT = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    kw = {"beta_start": 0.00085, "beta_end": 0.012} if schedule == "scaled_linear" else {}
    ref = _diffusers_loop(
        DDIMScheduler(num_train_timesteps=1000, beta_schedule=schedule, clip_sample=False, set_alpha_to_one=True,
                      timestep_spacing="leading", **kw),
        xT.clone(), 50, torch.Generator().manual_seed(5), eta=eta,
    )
    ours = sample(model, xT.clone(), betas=make_betas(schedule, 1000, **kw), sampler="ddim", num_steps=50, eta=eta,
                  generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_ddpm_matches_diffusers():
    xT = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    ref = _diffusers_loop(DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False),
                          xT.clone(), 50, torch.Generator().manual_seed(7))
    ours = sample(model, xT.clone(), betas=make_betas("linear", 1000), sampler="ddpm", num_steps=50,
                  generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_clip_sample_matches_diffusers(sampler):
    """Pixel-space x0 clipping (diffusers' clip_sample) gives diffusers' result, and it does change the samples."""
    xT = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    ref = _diffusers_loop(cls(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, clip_sample_range=0.5),
                          xT.clone(), 50, torch.Generator().manual_seed(9))
    kw = {"betas": make_betas("linear", 1000), "sampler": sampler, "num_steps": 50}
    ours = sample(model, xT.clone(), **kw, clip_sample=0.5, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    unclipped = sample(model, xT.clone(), **kw, generator=torch.Generator().manual_seed(9))
    assert (unclipped - ref).abs().max() > 1e-2
    assert ours.abs().max() <= 0.5 + 1e-6


def test_a_wrong_final_alpha_is_caught():
    """The oracle comparison is sensitive: set_alpha_to_one=False differs from diffusers' True."""
    xT = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = _diffusers_loop(DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True), xT.clone(), 20, None)
    ours = sample(model, xT.clone(), betas=make_betas("linear", 1000), sampler="ddim", num_steps=20, set_alpha_to_one=False)
    assert (ours - ref).abs().max() > 1e-3


DIFFUSERS_SCHEDULE = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_make_betas_matches_diffusers(schedule, zero_snr):
    kw = {"beta_start": 0.00085, "beta_end": 0.012} if schedule == "scaled_linear" else {}
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_SCHEDULE[schedule], rescale_betas_zero_snr=zero_snr, **kw).betas
    # diffusers rescales in float32, we in float64
    torch.testing.assert_close(make_betas(schedule, 1000, zero_terminal_snr=zero_snr, **kw), ref, rtol=0, atol=1e-5)


def _scale(x: torch.Tensor) -> float:
    return float(x.abs().max())


@pytest.mark.parametrize("seed", range(12))
def test_random_configurations_match_diffusers(seed):
    """Random steps, offsets, final alphas, etas and prediction types: DDIM, DDPM (fixed_small and
    learned_range) and DPM-Solver++(2M) within 2e-3 of the output's scale."""
    rng = torch.Generator().manual_seed(seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=rng))]  # noqa: E731
    steps, offset = pick([5, 10, 14, 20, 37, 50]), pick([0, 1])
    set_alpha_to_one, eta = pick([True, False]), pick([0.0, 0.3, 1.0])
    prediction = pick(["epsilon", "sample", "v_prediction"])
    schedule = pick(["linear", "scaled_linear", "cosine"])
    sched_kw = {"beta_start": 0.00085, "beta_end": 0.012} if schedule == "scaled_linear" else {}
    diff_kw = {"beta_schedule": DIFFUSERS_SCHEDULE[schedule], **sched_kw}
    betas = make_betas(schedule, 1000, **sched_kw)
    xT = torch.randn(2, 4, 8, 8, generator=rng)
    g = lambda: torch.Generator().manual_seed(seed + 100)  # noqa: E731

    ddim = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, **diff_kw, set_alpha_to_one=set_alpha_to_one, steps_offset=offset,
                         prediction_type=prediction)
    ref = _diffusers_loop(ddim, xT.clone(), steps, g(), eta=eta)
    ours = sample(model, xT.clone(), betas=betas, sampler="ddim", num_steps=steps, eta=eta, steps_offset=offset,
                  set_alpha_to_one=set_alpha_to_one, prediction_type=prediction, generator=g())
    assert (ours - ref).abs().max() <= 2e-3 * _scale(ref), ("ddim", schedule, steps, offset, set_alpha_to_one, eta, prediction)

    for variance_type, fn in (("fixed_small", model), ("learned_range", learned_variance_model)):
        ddpm = DDPMScheduler(num_train_timesteps=1000, clip_sample=False, variance_type=variance_type, prediction_type=prediction, **diff_kw)
        ddpm.set_timesteps(steps)
        x, gen = xT.clone(), g()
        for t in ddpm.timesteps:
            x = ddpm.step(fn(x, t.expand(2)), t, x, generator=gen).prev_sample
        ours = sample(fn, xT.clone(), betas=betas, sampler="ddpm", num_steps=steps, prediction_type=prediction, generator=g())
        assert (ours - x).abs().max() <= 2e-3 * _scale(x), ("ddpm", variance_type, steps, prediction)

    dpm = DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                      lower_order_final=True, prediction_type=prediction, **diff_kw, timestep_spacing="leading",
                                      steps_offset=offset, final_sigmas_type="zero" if set_alpha_to_one else "sigma_min")
    dpm.set_timesteps(steps)
    x = xT.clone()
    for t in dpm.timesteps:
        x = dpm.step(model(x, t.expand(2)), t, x).prev_sample
    ours = sample(model, xT.clone(), betas=betas, sampler="dpmpp_2m", num_steps=steps, steps_offset=offset,
                  set_alpha_to_one=set_alpha_to_one, prediction_type=prediction)
    assert (ours - x).abs().max() <= 2e-3 * _scale(x), ("dpmpp_2m", steps, offset, set_alpha_to_one, prediction)


@pytest.mark.parametrize("steps", [10, 25])
def test_ddim_trailing_equals_first_order_dpm_solver(steps):
    """diffusers' DDIMScheduler computes the previous timestep as t - T//N, which is wrong for trailing
    spacing (diffusers issues 9261, 11347); its first-order DPM-Solver++ takes the timestep list and is
    right. Our DDIM takes the previous timestep from the list, so it agrees with the latter."""
    xT = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    dpm = DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=1,
                                      timestep_spacing="trailing", final_sigmas_type="zero")
    dpm.set_timesteps(steps)
    x = xT.clone()
    for t in dpm.timesteps:
        x = dpm.step(model(x, t.expand(2)), t, x).prev_sample
    ours = sample(model, xT.clone(), betas=make_betas("linear", 1000), sampler="ddim", num_steps=steps, timestep_spacing="trailing")
    assert (ours - x).abs().max() <= 2e-3 * _scale(x)


# ---------------------------------------------------------------------------------------------------------------------
# Timestep lists and the full grid
# ---------------------------------------------------------------------------------------------------------------------

SPACINGS = ("leading", "linspace", "trailing")


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_timestep_lists_equal_diffusers(spacing, offset):
    """Every step count 1..999 (T = 1000), the DDIM/DDPM grid and DPM-Solver's own grid (which, for linspace and
    leading, spaces N + 1 points and drops t = 0: the end of the run), bit for bit. Trailing counts for which diffusers'
    np.arange overshoots to N + 1 entries, the last t = -1, are ill-defined there; we keep the first N, which are
    diffusers' own."""
    ddim = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=offset)
    ddpm = DDPMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=offset)
    dpm = DPMSolverMultistepScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=offset)
    overshoots = 0
    for n in range(1, 1000):
        ddim.set_timesteps(n)
        theirs = ddim.timesteps.tolist()
        if len(theirs) == n + 1:
            assert spacing == "trailing" and theirs[-1] == -1
            overshoots += 1
            theirs = theirs[:n]
        if spacing == "leading" and theirs[0] >= 1000:  # steps_offset past T - 1: an error here
            with pytest.raises(ValueError, match="steps_offset"):
                sampling_timesteps(1000, n, spacing, offset)
            continue
        assert sampling_timesteps(1000, n, spacing, offset) == theirs, n
        ddpm.set_timesteps(n)
        assert ddpm.timesteps.tolist()[:n] == theirs, n
        dpm.set_timesteps(n)
        if spacing == "leading" and dpm.timesteps[0] >= 1000:
            with pytest.raises(ValueError, match="steps_offset"):
                dpm_solver_timesteps(1000, n, spacing, offset)
            continue
        assert dpm_solver_timesteps(1000, n, spacing, offset) == dpm.timesteps.tolist()[:n], n
    assert (overshoots > 50) == (spacing == "trailing")  # 62 of 999 step counts


def test_dpm_solver_grid_differs_from_ddims_where_diffusers_does():
    """The cause of issue 13: for linspace and leading, DPM-Solver++ evaluates the model on N of N + 1 grid points,
    DDIM on N; taking DDIM's list made DPM-Solver++ spend its last step on t = 0 and start lower (leading)."""
    assert sampling_timesteps(1000, 5, "leading") == [800, 600, 400, 200, 0]
    assert dpm_solver_timesteps(1000, 5, "leading") == [830, 664, 498, 332, 166]
    assert dpm_solver_timesteps(1000, 5, "leading", steps_offset=1) == [831, 665, 499, 333, 167]
    assert sampling_timesteps(1000, 5, "linspace") == [999, 749, 500, 250, 0]
    assert dpm_solver_timesteps(1000, 5, "linspace") == [999, 799, 599, 400, 200]
    assert dpm_solver_timesteps(1000, 5, "trailing") == sampling_timesteps(1000, 5, "trailing") == [999, 799, 599, 399, 199]
    with pytest.raises(ValueError, match="too many"):
        dpm_solver_timesteps(1000, 1000, "linspace")
    with pytest.raises(ValueError, match="too many"):
        dpm_solver_timesteps(1000, 1000, "leading")
    assert dpm_solver_timesteps(1000, 1000, "trailing") == list(range(999, -1, -1))


SCHEDULES = ("linear", "scaled_linear", "cosine")
PREDICTIONS = ("epsilon", "sample", "v_prediction")
GRID_STEPS = (5, 8, 10, 15, 20, 25, 50)
GRID = pytest.mark.parametrize(
    ("schedule", "zero_snr", "prediction", "spacing", "steps"),
    list(itertools.product(SCHEDULES, (False, True), PREDICTIONS, SPACINGS, GRID_STEPS)),
)
TOL = 2e-3  # of the output's scale (max |x|)


def _sched_kw(schedule: str) -> dict:
    return {"beta_start": 0.00085, "beta_end": 0.012} if schedule == "scaled_linear" else {}


def _diffusers_kw(schedule: str, zero_snr: bool, prediction: str) -> dict:
    return {"num_train_timesteps": 1000, "beta_schedule": DIFFUSERS_SCHEDULE[schedule], "rescale_betas_zero_snr": zero_snr,
            "prediction_type": prediction, **_sched_kw(schedule)}


@functools.cache
def _scheduler(cls, **kw):
    """One scheduler per configuration for the whole grid (constructing one recomputes its betas, in a Python loop for
    the cosine schedule); set_timesteps resets all of a scheduler's per-run state."""
    return cls(**kw)


@functools.cache
def _betas(schedule: str, zero_snr: bool) -> torch.Tensor:
    return make_betas(schedule, 1000, zero_terminal_snr=zero_snr, **_sched_kw(schedule))


def _x_T(steps: int) -> torch.Tensor:
    return torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(steps))


def _run(scheduler, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    """diffusers' loop over ``scheduler.timesteps`` (set_timesteps already called)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    kw = {"generator": gen} if seed is not None else {}
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.expand(x.shape[0])), t, x, **kw).prev_sample
    return x


def _close(ours: torch.Tensor, ref: torch.Tensor, what) -> None:
    assert torch.isfinite(ref).all(), what
    err, scale = float((ours - ref).abs().max()), float(ref.abs().max())
    assert err <= TOL * scale, (what, err, scale)


def _ours(sampler: str, schedule: str, zero_snr: bool, prediction: str, spacing: str, steps: int, **kw) -> torch.Tensor:
    return sample(model, _x_T(steps), betas=_betas(schedule, zero_snr), sampler=sampler, num_steps=steps, timestep_spacing=spacing,
                  prediction_type=prediction, **kw)


@GRID
def test_dpm_solver_matches_diffusers_on_the_grid(schedule, zero_snr, prediction, spacing, steps):
    """DPM-Solver++(2M) (Lu et al. 2022b, alg. 2) against DPMSolverMultistepScheduler(algorithm_type="dpmsolver++",
    solver_order=2, solver_type="midpoint", lower_order_final=True) with its own timestep_spacing, ending at sigma
    zero (set_alpha_to_one) or at sigma_min (alpha_bar_0). With zero terminal SNR diffusers raises alpha_bar_{T-1}
    from 0 to 2**-24 (so epsilon-prediction's x0 = (x - sigma eps)/alpha is finite at t = T - 1); so do we."""
    for set_alpha_to_one, final in ((True, "zero"), (False, "sigma_min")):
        dpm = _scheduler(DPMSolverMultistepScheduler, **_diffusers_kw(schedule, zero_snr, prediction), algorithm_type="dpmsolver++",
                         solver_order=2, solver_type="midpoint", lower_order_final=True, timestep_spacing=spacing, final_sigmas_type=final)
        dpm.set_timesteps(steps)
        ref = _run(dpm, _x_T(steps))
        ours = _ours("dpmpp_2m", schedule, zero_snr, prediction, spacing, steps, set_alpha_to_one=set_alpha_to_one)
        _close(ours, ref, final)


def _ddim_scheduler_steps_off_its_list(timesteps: list[int], steps: int) -> bool:
    """diffusers' DDIMScheduler.step goes from t to t - T//N whatever its list holds (diffusers issues 9261, 11347): right
    for leading, wrong for linspace and for trailing when N does not divide T (N = 15 here)."""
    ratio = 1000 // steps
    return any(a - ratio != b for a, b in itertools.pairwise(timesteps)) or timesteps[-1] - ratio >= 0


def _visits_zero_alpha_with_epsilon(zero_snr: bool, prediction: str, timesteps: list[int]) -> bool:
    """DDIMScheduler and DDPMScheduler keep alpha_bar_{T-1} = 0 under rescale_betas_zero_snr, so epsilon-prediction's
    x0 = (x - eps)/sqrt(alpha_bar) is a division by zero at t = T - 1: their output is not finite (asserted)."""
    return zero_snr and prediction == "epsilon" and 999 in timesteps


@GRID
def test_ddim_matches_diffusers_on_the_grid(schedule, zero_snr, prediction, spacing, steps):
    """DDIM (eta = 0, final alpha 1) on diffusers' DDIM timestep list, against DDIMScheduler where it is well-defined.

    Where it is not (asserted, with the reason: it steps off its own list, or divides by alpha_bar_{T-1} = 0), the
    reference is diffusers' first-order DPM-Solver++ (DPMSolverMultistepScheduler, solver_order=1,
    final_sigmas_type="zero") on the same list: DDIM's update (Lu et al. 2022b, sec. 4: DPM-Solver++1 is DDIM), stepping
    from each timestep to the next one of the list and raising a zero alpha_bar_{T-1} to 2**-24, as we do."""
    ours = _ours("ddim", schedule, zero_snr, prediction, spacing, steps)
    ddim = _scheduler(DDIMScheduler, **_diffusers_kw(schedule, zero_snr, prediction), clip_sample=False, set_alpha_to_one=True,
                      timestep_spacing=spacing)
    ddim.set_timesteps(steps)
    timesteps = ddim.timesteps.tolist()
    assert timesteps == sampling_timesteps(1000, steps, spacing)

    direct = _run(ddim, _x_T(steps))
    if _visits_zero_alpha_with_epsilon(zero_snr, prediction, timesteps):
        assert not torch.isfinite(direct).all() and torch.isfinite(ours).all()
    elif _ddim_scheduler_steps_off_its_list(timesteps, steps):
        assert spacing == "linspace" or (spacing == "trailing" and 1000 % steps)
    else:
        _close(ours, direct, "DDIMScheduler")
        return
    dpm1 = _scheduler(DPMSolverMultistepScheduler, **_diffusers_kw(schedule, zero_snr, prediction), algorithm_type="dpmsolver++",
                      solver_order=1, final_sigmas_type="zero")
    dpm1.set_timesteps(timesteps=timesteps)
    _close(ours, _run(dpm1, _x_T(steps)), "first-order DPM-Solver++")


@GRID
def test_ddpm_matches_diffusers_on_the_grid(schedule, zero_snr, prediction, spacing, steps):
    """Ancestral DDPM (fixed_small) against DDPMScheduler with its own timestep_spacing, same generator, same draws.
    Where DDPMScheduler divides by alpha_bar_{T-1} = 0 (zero terminal SNR, epsilon, T - 1 visited) its output is not
    finite (asserted); there the reference is the same scheduler with alpha_bar_{T-1} raised to 2**-24, which is
    diffusers' own convention for that point (DPMSolverMultistepScheduler, EulerDiscreteScheduler) and ours."""
    ours = _ours("ddpm", schedule, zero_snr, prediction, spacing, steps, generator=torch.Generator().manual_seed(7))
    ddpm = _scheduler(DDPMScheduler, **_diffusers_kw(schedule, zero_snr, prediction), clip_sample=False, variance_type="fixed_small",
                      timestep_spacing=spacing)
    ddpm.set_timesteps(steps)
    timesteps = ddpm.timesteps.tolist()
    assert timesteps == sampling_timesteps(1000, steps, spacing)
    ref = _run(ddpm, _x_T(steps), seed=7)
    if _visits_zero_alpha_with_epsilon(zero_snr, prediction, timesteps):
        assert not torch.isfinite(ref).all()
        ddpm = copy.deepcopy(ddpm)
        ddpm.alphas_cumprod[-1] = 2.0**-24
        ref = _run(ddpm, _x_T(steps), seed=7)
    _close(ours, ref, "DDPMScheduler")


@pytest.mark.parametrize(("schedule", "zero_snr", "prediction", "steps"),
                         list(itertools.product(SCHEDULES, (False, True), PREDICTIONS, GRID_STEPS)))
def test_dpm_solver_karras_matches_diffusers_on_the_grid(schedule, zero_snr, prediction, steps):
    """dpmpp_2m_karras against DPMSolverMultistepScheduler(use_karras_sigmas=True), otherwise configured as the
    dpmpp_2m grid, ending at sigma zero and at sigma_min. Karras levels replace the timestep spacing (diffusers ignores
    ``timestep_spacing`` with them), so the grid has no spacing axis.

    Ill-defined in diffusers itself, and refused by ours with a ValueError (asserted, with the reason):
    - zero terminal SNR where alpha_bar_{T-1} = 2**-24 is above alpha_bar_{T-2} (the linear schedule): sigma is not
      monotone in t and the timestep of sigma_max is not unique (diffusers finds 995 or 999 depending on float32
      rounding, and at 50 steps puts 995 first twice, which its step() cannot run);
    - wherever the first two levels round to t = 999 (the cosine schedule, whose sigma jumps ~30x from t = 998 to 999,
      and the zero-SNR ones, whose sigma_max is 4096): diffusers' step() then runs off its sigma list (IndexError,
      asserted). diffusers does not round timesteps for
      ``beta_schedule="squaredcos_cap_v2"`` (fractional timesteps, which our integer-timestep models do not take), so the
      cosine reference is the same betas given as ``trained_betas``, where it rounds as for every other schedule.
    """
    betas = _betas(schedule, zero_snr)
    ac = alphas_cumprod(betas)
    kw = _diffusers_kw(schedule, zero_snr, prediction)
    if schedule == "cosine":
        assert DPMSolverMultistepScheduler(**kw, use_karras_sigmas=True).set_timesteps(steps) is None
        del kw["beta_schedule"]
        kw["trained_betas"] = tuple(make_betas("cosine", 1000).tolist())
    if not (ac[1:] < ac[:-1]).all():
        assert zero_snr and ac[-1] > ac[-2]
        with pytest.raises(ValueError, match="strictly decreasing"):
            _ours("dpmpp_2m_karras", schedule, zero_snr, prediction, "leading", steps)
        return
    for set_alpha_to_one, final in ((True, "zero"), (False, "sigma_min")):
        dpm = _scheduler(DPMSolverMultistepScheduler, **kw, algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                         lower_order_final=True, use_karras_sigmas=True, final_sigmas_type=final)
        dpm.set_timesteps(steps)
        timesteps = dpm.timesteps.tolist()
        if timesteps[0] == timesteps[1]:
            assert (schedule == "cosine" or zero_snr) and timesteps[0] == 999
            with pytest.raises(IndexError):
                _run(dpm, _x_T(steps))
            with pytest.raises(ValueError, match="same timestep 999"):
                _ours("dpmpp_2m_karras", schedule, zero_snr, prediction, "leading", steps, set_alpha_to_one=set_alpha_to_one)
            continue
        assert karras_timesteps(ac, steps)[0] == timesteps
        ours = _ours("dpmpp_2m_karras", schedule, zero_snr, prediction, "leading", steps, set_alpha_to_one=set_alpha_to_one)
        _close(ours, _run(dpm, _x_T(steps)), final)
        if final == "sigma_min":  # the timestep spacing is ignored, as by diffusers
            trailing = _ours("dpmpp_2m_karras", schedule, zero_snr, prediction, "trailing", steps, set_alpha_to_one=False)
            assert torch.equal(ours, trailing)
