"""Guided progressive distillation of the EMA U-Net into a few-step student (Meng et al. 2023; Salimans & Ho 2022).

A round trains a student that samples with DDIM (eta 0) in ``N`` steps on the *trailing* timestep grid
(``sampling_timesteps(T, N, "trailing")``: it starts at t = T - 1, where x_T ~ N(0, I) is the right input) to land,
in one step, where its teacher lands in ``K`` DDIM steps (Salimans & Ho 2022, alg. 2; K = 2 is their halving).

* Round 1, the teacher is the trained EMA U-Net under classifier-free guidance with the fixed weight ``w``
  (``sample.guidance``, with ``sample.guidance_rescale`` and ``sample.guidance_interval`` as the sampler applies
  them, so the student learns the trajectory ``latentflow sample`` draws): each teacher evaluation is the CFG combination ``u + w (c - u)`` of two passes
  (Ho & Salimans 2022, eq. 6), so the student, conditioned on the class alone, learns the *guided* trajectory in one
  pass per step: guidance is folded into it (Meng et al. 2023, sec. 3, stage one with a fixed ``w``; their stage two is
  this halving with the guided model as the teacher). The teacher takes ``teacher_steps`` DDIM steps in all.
* Later rounds halve (or divide by any K) the step count: the teacher is the previous round's student (one pass per
  evaluation, no guidance: it is already folded in), the student starts from the teacher's weights.

The target of a student step from ``z_t`` (t a point of the student grid, t'' the next one; the end of the run has
alpha_bar = 1) is the x for which one DDIM step of the student from ``z_t`` lands on the teacher's ``z_t''``
(Salimans & Ho 2022, alg. 2)::

    x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t),

with alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t). The student may predict v, x0 or eps
(``to_x0_eps``); its loss is the "SNR + 1" weighted x-space error (Salimans & Ho 2022, sec. 4 and eq. 9 with
w(lambda) = 1 + SNR), which is the plain v-space MSE: it stays finite at t = T - 1, where an eps-predicting
student's x0 = (z - sigma eps) / alpha amplifies every error by 1 / alpha (~15x for the scaled-linear schedule).

``z_t`` is the forward process of a training latent (q_sample, Ho et al. 2020 eq. 4) at a student grid point drawn
uniformly per example, with the image's own class label (no condition dropout: the student is conditional only).
Each round is one run of :class:`~components.training.loop.Trainer`: seeded per-step draws, EMA, atomic safetensors
checkpoints, exact resume after SIGKILL. A finished round is not re-trained: its last checkpoint holds the final
step, so the rerun's Trainer loads it and takes no step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from components.diffusion.distilled import STUDENT_SPACING, DistilledInfo
from components.diffusion.forward import to_x0_eps
from components.diffusion.samplers import guided
from components.diffusion.schedules import alphas_cumprod as _alphas_cumprod
from components.diffusion.schedules import sampling_timesteps
from components.models.unet import UNet
from components.training.distributed import DistContext
from components.training.loop import Batch, CheckpointFn, LogFn, LoopConfig, LoopResult, Trainer

__all__ = [
    "STUDENT_SPACING",
    "DistillRound",
    "DistilledInfo",
    "distill_round",
    "plan_rounds",
    "student_loss",
    "teacher_substeps",
    "teacher_target",
    "x_target",
]
Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (z, t, labels) -> prediction


@dataclass(frozen=True)
class DistillRound:
    """One round: a ``student_steps``-step student matching ``teacher_steps`` DDIM steps of its teacher, which is
    evaluated under guidance ``teacher_guidance`` (1.0: one conditional pass) with the sampler's rescale and interval
    (``sample.guidance_rescale``, ``sample.guidance_interval``; see :func:`~components.diffusion.samplers.guided`)."""

    student_steps: int
    teacher_steps: int
    teacher_guidance: float
    teacher_guidance_rescale: float = 0.0
    teacher_guidance_interval: tuple[float, float] | None = None


def plan_rounds(steps: Sequence[int], teacher_steps: int, guidance: float, num_timesteps: int, *, guidance_rescale: float = 0.0,
                guidance_interval: tuple[float, float] | None = None) -> list[DistillRound]:
    """The rounds that reach ``steps`` (descending student step counts, e.g. ``[8, 4]``) from a ``teacher_steps``-step
    guided teacher (guidance, its rescale and its interval in round 1 only: later teachers have it folded in). Each
    student grid must be nested in its teacher's (every student interval holding the same number of teacher steps); a
    ``ValueError`` names the pair that is not."""
    steps = list(steps)
    if not steps:
        raise ValueError("distill.steps is empty: give the student step counts, e.g. [8, 4]")
    rounds, teacher = [], teacher_steps
    for i, n in enumerate(steps):
        if n >= teacher:
            raise ValueError(f"distill.steps must fall below the teacher's steps: {n} after {teacher} "
                             f"(distill.teacher_steps {teacher_steps}, steps {steps})")
        teacher_substeps(num_timesteps, n, teacher)  # raises when the grids do not nest
        rounds.append(DistillRound(n, teacher, guidance, guidance_rescale, None if guidance_interval is None else tuple(guidance_interval))
                      if i == 0 else DistillRound(n, teacher, 1.0))
        teacher = n
    return rounds


def teacher_substeps(num_timesteps: int, student_steps: int, teacher_steps: int) -> torch.Tensor:
    """``[N, K + 1]`` timesteps: row i runs from student grid point i through the teacher's grid points below it to
    student grid point i + 1, where ``-1`` stands for the end of the run (alpha_bar = 1). Both grids are trailing; the
    student's must be a subset of the teacher's with K = teacher_steps / student_steps teacher steps per interval."""
    student = sampling_timesteps(num_timesteps, student_steps, STUDENT_SPACING)
    teacher = sampling_timesteps(num_timesteps, teacher_steps, STUDENT_SPACING)
    k, rem = divmod(teacher_steps, student_steps)
    pos = {t: j for j, t in enumerate(teacher)}
    if rem or any(t not in pos for t in student) or any(pos[t] != i * k for i, t in enumerate(student)):
        raise ValueError(f"a {student_steps}-step student cannot be distilled from a {teacher_steps}-step teacher: the "
                         f"{STUDENT_SPACING} grids do not nest ({student} vs {teacher}); use teacher steps that are a multiple "
                         f"(e.g. 2x) of the student's, such as 16 -> 8 -> 4 -> 2 -> 1")
    rows = [[*teacher[i * k:(i + 1) * k], student[i + 1] if i + 1 < student_steps else -1] for i in range(student_steps)]
    return torch.tensor(rows, dtype=torch.long)


def alpha_bar_at(ac: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t (float64) per element of ``t``, with alpha_bar = 1 at ``t = -1`` (the end of the run)."""
    return torch.where(t < 0, torch.ones((), dtype=torch.float64, device=ac.device), ac.double()[t.clamp(min=0)])


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def ddim_to(x0: torch.Tensor, eps: torch.Tensor, a_next: torch.Tensor) -> torch.Tensor:
    """One DDIM step (eta = 0, Song et al. 2021 eq. 12) given the step's (x0, eps): sqrt(a') x0 + sqrt(1 - a') eps."""
    a = _bcast(a_next, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def x_target(z_t: torch.Tensor, z_next: torch.Tensor, a_t: torch.Tensor, a_next: torch.Tensor) -> torch.Tensor:
    """The x that one DDIM step from ``z_t`` (alpha_bar ``a_t``) to alpha_bar ``a_next`` must predict to land on
    ``z_next`` (Salimans & Ho 2022, alg. 2): x~ = (z'' - (sigma''/sigma) z) / (alpha'' - (sigma''/sigma) alpha).
    At the end of the run (``a_next = 1``, sigma'' = 0) it is ``z_next`` itself. Computed in float64."""
    a, an = _bcast(a_t, z_t).double(), _bcast(a_next, z_t).double()
    ratio = ((1 - an) / (1 - a)).sqrt()
    return (z_next.double() - ratio * z_t.double()) / (an.sqrt() - ratio * a.sqrt())


def teacher_denoiser(model: torch.nn.Module, guidance: float, *, guidance_rescale: float = 0.0,
                     guidance_interval: tuple[float, float] | None = None, alphas_cumprod: torch.Tensor | None = None) -> Denoise:
    """``denoise(z, t, labels)``: the teacher's prediction under classifier-free guidance with weight ``guidance``
    (Ho & Salimans 2022, eq. 6; 1.0 = one conditional pass), rescaled (Lin et al. 2024, eq. 15-16) and limited to the
    noise levels of ``guidance_interval`` (Kynkäänniemi et al. 2024) as the sampler does, judged per example (each
    sits at its own timestep); first C channels."""

    # bad arguments raise here, not at the first training step
    guided(model, None, guidance, guidance_rescale=guidance_rescale, guidance_interval=guidance_interval, alphas_cumprod=alphas_cumprod)

    def denoise(z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return guided(model, labels, guidance, guidance_rescale=guidance_rescale, guidance_interval=guidance_interval,
                      alphas_cumprod=alphas_cumprod)(z, t)[:, : z.shape[1]]

    return denoise


@torch.no_grad()
def teacher_target(denoise: Denoise, z_t: torch.Tensor, labels: torch.Tensor, path: torch.Tensor, ac: torch.Tensor,
                   prediction_type: str) -> torch.Tensor:
    """x~ for the student's step along ``path`` (``[B, K + 1]`` timesteps, the first z_t's, the last the student's next
    grid point or -1): K DDIM steps of the teacher (Song et al. 2021 eq. 12) from ``z_t``, then :func:`x_target`."""
    z = z_t.double()
    for k in range(path.shape[1] - 1):
        t, t_next = path[:, k], path[:, k + 1]
        a, a_next = alpha_bar_at(ac, t), alpha_bar_at(ac, t_next)
        out = denoise(z.to(z_t.dtype), t, labels).double()
        x0, eps = to_x0_eps(prediction_type, out, z, _bcast(a, z))
        z = ddim_to(x0, eps, a_next)
    return x_target(z_t, z, alpha_bar_at(ac, path[:, 0]), alpha_bar_at(ac, path[:, -1]))


def student_loss(student: torch.nn.Module, z_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, target: torch.Tensor,
                 ac: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Mean over the batch of (1 + SNR_t) ||x^ - x~||^2 / D (Salimans & Ho 2022, sec. 4, "SNR+1" weighting), x^ the
    student's x0 (``to_x0_eps`` of its prediction); equal to the MSE of v^ against the v of x~."""
    a = _bcast(alpha_bar_at(ac, t), z_t)
    out = student(z_t, t, labels)[:, : z_t.shape[1]].float()
    x_hat, _ = to_x0_eps(prediction_type, out, z_t.float(), a.float())
    weight = (1.0 / (1 - a)).float()  # 1 + SNR = 1 / (1 - alpha_bar)
    return (weight * (x_hat - target.float()) ** 2).flatten(1).mean(1).mean()


def state_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's weights (keys, shapes and bytes): what a round's fingerprint records of its teacher."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def distill_round(
    teacher: torch.nn.Module,
    teacher_prediction_type: str,
    rnd: DistillRound,
    latent_mean: torch.Tensor,
    latent_logvar: torch.Tensor,
    labels: torch.Tensor,
    betas: torch.Tensor,
    loop: LoopConfig,
    *,
    student_prediction_type: str,
    seed: int,
    ctx: DistContext,
    checkpoint_dir: str | Path | None = None,
    fingerprint: str = "",
    progress: bool = True,
    on_log: LogFn | None = None,
    on_checkpoint: CheckpointFn | None = None,
) -> tuple[UNet, LoopResult]:
    """Train one student (initialised from ``teacher``'s weights, same architecture and class conditioning) for
    ``rnd`` through the resumable :class:`~components.training.loop.Trainer`; returns its EMA weights."""
    device = ctx.device
    student = UNet(teacher.config)
    student.load_state_dict(teacher.state_dict())
    teacher = teacher.to(device).eval().requires_grad_(False)
    ac = _alphas_cumprod(betas).to(device)
    paths = teacher_substeps(len(betas), rnd.student_steps, rnd.teacher_steps).to(device)
    denoise = teacher_denoiser(teacher, rnd.teacher_guidance, guidance_rescale=rnd.teacher_guidance_rescale,
                               guidance_interval=rnd.teacher_guidance_interval, alphas_cumprod=ac)
    std = torch.exp(0.5 * latent_logvar)
    shape = tuple(latent_mean.shape[1:])
    trainer = Trainer(student, loop, dataset_size=len(labels), seed=seed, ctx=ctx, checkpoint_dir=checkpoint_dir,
                      fingerprint=fingerprint, desc=f"distill {rnd.teacher_steps}->{rnd.student_steps} steps", progress=progress,
                      on_log=on_log, on_checkpoint=on_checkpoint)

    def loss_fn(net: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
        g = batch.generator(device)
        z_noise = batch.draw(torch.randn, shape, g, device=device)
        i = batch.draw(torch.randint, (), g, device=device, low=0, high=rnd.student_steps)
        eps = batch.draw(torch.randn, shape, g, device=device)
        idx = batch.indices
        z0 = latent_mean[idx].to(device) + std[idx].to(device) * z_noise
        y = labels[idx].to(device)
        path = paths[i]
        a = _bcast(alpha_bar_at(ac, path[:, 0]), z0).float()
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps  # q_sample (Ho et al. 2020, eq. 4) at the student's grid point
        target = teacher_target(denoise, z_t, y, path, ac, teacher_prediction_type)
        return student_loss(net, z_t, path[:, 0], y, target, ac, student_prediction_type), {}

    result = trainer.run(loss_fn)
    return trainer.final_model(), result


def round_fingerprint(base: str, rnd: DistillRound, teacher_digest: str, student_prediction_type: str) -> str:
    """A round resumes only checkpoints of the same params and data (``base``), round and teacher weights."""
    text = f"{base}|{rnd.student_steps}|{rnd.teacher_steps}|{rnd.teacher_guidance}|{student_prediction_type}|{teacher_digest}"
    if rnd.teacher_guidance_rescale or rnd.teacher_guidance_interval is not None:  # (absent: the fingerprints of older rounds)
        text += f"|rescale={rnd.teacher_guidance_rescale}|interval={rnd.teacher_guidance_interval}"
    return hashlib.sha256(text.encode()).hexdigest()
