"""Training of the class-conditional latent U-Net (epsilon/x0/v targets, condition dropout, EMA)."""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from components.config import DiffusionParams
from components.diffusion import diffusion_loss, make_betas
from components.models.unet import UNet, UNetConfig
from components.training.common import autocast, batch_indices, check_finite, ema_model, warmup_lr


def train_diffusion(
    latent_mean: torch.Tensor,
    latent_logvar: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    cfg: DiffusionParams,
    *,
    seed: int,
    device: torch.device,
    progress: bool = True,
) -> tuple[UNet, list[dict]]:
    """Train on scaled latents ``z = scale * (mean + std * n)`` drawn afresh each batch (LDM, sec. 3.3),
    with :func:`components.diffusion.diffusion_loss` (simple, min-SNR or hybrid).

    Labels are replaced by the null class with probability ``cfg.cond_dropout`` (classifier-free
    guidance, Ho & Salimans 2022, alg. 1). Returns the EMA model and the loss curve.
    """
    _, c, h, _ = latent_mean.shape
    unet_cfg = UNetConfig(
        in_channels=c,
        out_channels=2 * c if cfg.variance_type == "learned_range" else c,
        sample_size=h,
        num_classes=num_classes,
        channels=cfg.unet.channels,
        num_res_blocks=cfg.unet.num_res_blocks,
        attention_levels=cfg.unet.attention_levels,
        num_heads=cfg.unet.num_heads,
        dropout=cfg.unet.dropout,
    )
    torch.manual_seed(seed)
    model = UNet(unet_cfg).to(device)
    ema = ema_model(model, cfg.ema_decay)
    betas = make_betas(cfg.schedule, cfg.num_timesteps, cfg.beta_start, cfg.beta_end, zero_terminal_snr=cfg.zero_terminal_snr).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    batch_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    warmup_steps = math.ceil(cfg.warmup_images / cfg.batch_size)
    total_steps = math.ceil(cfg.max_images / cfg.batch_size)
    std = torch.exp(0.5 * latent_logvar)
    curve: list[dict] = []
    running = 0.0
    bar = tqdm(total=cfg.max_images, unit="img", desc="train_diffusion", disable=not progress, mininterval=2.0)
    model.train()
    for step, idx in enumerate(batch_indices(len(labels), cfg.batch_size, cfg.max_images, batch_gen)):
        for group in opt.param_groups:
            group["lr"] = warmup_lr(step, cfg.lr, warmup_steps, total_steps if cfg.lr_schedule == "cosine" else None)
        mean, s, y = latent_mean[idx].to(device), std[idx].to(device), labels[idx].to(device)
        z0 = mean + s * torch.randn(mean.shape, generator=noise_gen, device=device)
        drop = torch.rand(y.shape, generator=noise_gen, device=device) < cfg.cond_dropout
        y = torch.where(drop, torch.full_like(y, -1), y)
        with autocast(device):
            loss = diffusion_loss(
                model, z0, y, betas, cfg.prediction_type, learned_variance=cfg.variance_type == "learned_range",
                vlb_weight=cfg.vlb_weight, min_snr_gamma=cfg.min_snr_gamma, generator=noise_gen,
            )
        check_finite(loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema.update_parameters(model)
        running += loss.item()
        bar.update(len(idx))
        if (step + 1) % cfg.log_every == 0:
            curve.append({"step": step + 1, "images": (step + 1) * cfg.batch_size, "loss": running / cfg.log_every})
            bar.set_postfix(loss=f"{running / cfg.log_every:.4f}")
            running = 0.0
    bar.close()
    ema_unet = ema.module.eval()
    return ema_unet, curve
