"""Training of the class-conditional latent U-Net (epsilon/x0/v targets, condition dropout, EMA)."""

from __future__ import annotations

from pathlib import Path

import torch

from components.config import DiffusionParams
from components.diffusion import diffusion_loss, make_betas
from components.models.unet import UNet, UNetConfig
from components.training.distributed import DistContext
from components.training.loop import Batch, LogFn, LoopConfig, LoopResult, Trainer


def train_diffusion(
    latent_mean: torch.Tensor,
    latent_logvar: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    cfg: DiffusionParams,
    *,
    seed: int,
    device: torch.device | None = None,
    ctx: DistContext | None = None,
    checkpoint_dir: str | Path | None = None,
    fingerprint: str = "",
    progress: bool = True,
    on_log: LogFn | None = None,
) -> tuple[UNet, LoopResult]:
    """Train on scaled latents ``z = scale * (mean + std * n)`` drawn afresh each batch (LDM, sec. 3.3),
    with :func:`components.diffusion.diffusion_loss` (simple, min-SNR or hybrid).

    Labels are replaced by the null class with probability ``cfg.cond_dropout`` (classifier-free
    guidance, Ho & Salimans 2022, alg. 1). Runs under :class:`~components.training.loop.Trainer`
    (DDP when ``ctx`` is a torchrun world, resumable from ``checkpoint_dir``). Returns the EMA model
    and the run's :class:`~components.training.loop.LoopResult` (loss curve, images seen, ...). ``on_log``
    receives each point of the loss curve as it is made (:class:`~components.training.loop.Trainer`).
    """
    _, c, h, _ = latent_mean.shape
    unet_cfg = UNetConfig.from_params(
        cfg.unet,
        in_channels=c,
        out_channels=2 * c if cfg.variance_type == "learned_range" else c,
        sample_size=h,
        num_classes=num_classes,
    )
    torch.manual_seed(seed)
    model = UNet(unet_cfg)
    ctx = ctx or DistContext(device=device or torch.device("cpu"))
    device = ctx.device
    betas = make_betas(cfg.schedule, cfg.num_timesteps, cfg.beta_start, cfg.beta_end, zero_terminal_snr=cfg.zero_terminal_snr).to(device)
    std = torch.exp(0.5 * latent_logvar)
    latent_shape = tuple(latent_mean.shape[1:])
    trainer = Trainer(model, LoopConfig.from_section(cfg), dataset_size=len(labels), seed=seed, ctx=ctx,
                      checkpoint_dir=checkpoint_dir, fingerprint=fingerprint, desc="train_diffusion", progress=progress,
                      on_log=on_log)

    def loss_fn(net: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
        g = batch.generator(device)
        z_noise = batch.draw(torch.randn, latent_shape, g, device=device)
        drop = batch.draw(torch.rand, (), g, device=device) < cfg.cond_dropout
        t = batch.draw(torch.randint, (), g, device=device, low=0, high=cfg.num_timesteps)
        eps = batch.draw(torch.randn, latent_shape, g, device=device)
        mean, s, y = latent_mean[batch.indices].to(device), std[batch.indices].to(device), labels[batch.indices].to(device)
        z0 = mean + s * z_noise
        y = torch.where(drop, torch.full_like(y, -1), y)
        if trainer.cfg.channels_last:
            z0 = z0.contiguous(memory_format=torch.channels_last)
        loss = diffusion_loss(
            net, z0, y, betas, cfg.prediction_type, learned_variance=cfg.variance_type == "learned_range",
            vlb_weight=cfg.vlb_weight, min_snr_gamma=cfg.min_snr_gamma, t=t, noise=eps,
        )
        return loss, {}

    result = trainer.run(loss_fn)
    return trainer.final_model(), result
