"""Training of the autoencoders (KL, VQ or plain) and computation of their latent scale factor.

Loss per step (Rombach et al. 2022, appendix G; Esser et al. 2021, eq. 5-7):
``MSE(x, x_hat) + perceptual_weight * P(x, x_hat) + w_reg * R + disc_factor * lambda * disc_weight * L_G``
with ``R`` the KL (``w_reg = kl_weight``) or the VQ loss (``w_reg = 1``; its beta is in the model), ``L_G``
the PatchGAN hinge generator loss and ``lambda`` the adaptive weight at the decoder's last layer.
The discriminator takes one hinge step per generator step once ``disc_start_images`` images were seen.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from components.config import AutoencoderParams
from components.models.autoencoder import Autoencoder, AutoencoderConfig, build_autoencoder
from components.models.discriminator import PatchDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss
from components.models.summary import model_summary
from components.training.common import autocast, batch_indices, check_finite, to_model_range, warmup_lr


def autoencoder_config(cfg: AutoencoderParams, in_channels: int, image_size: int) -> AutoencoderConfig:
    """The model config of a ``train_autoencoder`` params section for images of the given shape."""
    model_cfg = AutoencoderConfig(
        in_channels=in_channels, image_size=image_size, channels=tuple(cfg.channels), latent_channels=cfg.latent_channels,
        num_res_blocks=cfg.num_res_blocks, regularizer=cfg.regularizer, codebook_size=cfg.codebook_size,
        commitment_beta=cfg.commitment_beta, vq_ema=cfg.vq_ema, vq_decay=cfg.vq_decay,
    )
    if image_size % model_cfg.downsampling_factor:
        raise ValueError(
            f"images {image_size}x{image_size} are not divisible by f={model_cfg.downsampling_factor}; "
            "change ingest.image_size or the number of train_autoencoder.channels levels"
        )
    return model_cfg


def train_autoencoder(
    train_images: np.ndarray,
    cfg: AutoencoderParams,
    *,
    seed: int,
    device: torch.device,
    progress: bool = True,
    log_every: int = 25,
) -> tuple[Autoencoder, list[dict]]:
    """Train the autoencoder of ``cfg.regularizer`` on uint8 images ``[N, H, W, C]`` for ``cfg.max_images``
    images seen. Returns the model (``scale_factor`` = 1/std of the training latents) and the loss history
    (one point every ``log_every`` steps)."""
    _, h, w, c = train_images.shape
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}; set ingest.image_size")
    model_cfg = autoencoder_config(cfg, c, h)
    torch.manual_seed(seed)
    model = build_autoencoder(model_cfg).to(device)
    disc = PatchDiscriminator(c, num_layers=cfg.disc_layers).to(device) if cfg.disc_weight > 0 else None
    perceptual = None
    if cfg.perceptual_weight > 0:
        from components.models.perceptual import EffNetPerceptualLoss

        perceptual = EffNetPerceptualLoss(cfg.perceptual_input_size).to(device)
    data = to_model_range(train_images)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    disc_lr = cfg.disc_lr or cfg.lr
    opt_d = torch.optim.Adam(disc.parameters(), lr=disc_lr, betas=(0.5, 0.9)) if disc is not None else None
    gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    warmup_steps = math.ceil(cfg.warmup_images / cfg.batch_size)
    total_steps = math.ceil(cfg.max_images / cfg.batch_size)
    reg_weight = cfg.kl_weight if cfg.regularizer == "kl" else 1.0
    history: list[dict] = []
    bar = tqdm(total=cfg.max_images, unit="img", desc=f"train_autoencoder ({cfg.regularizer})", disable=not progress, mininterval=2.0)
    model.train()
    for step, idx in enumerate(batch_indices(len(data), cfg.batch_size, cfg.max_images, gen)):
        lr_factor = warmup_lr(step, 1.0, warmup_steps, total_steps if cfg.lr_schedule == "cosine" else None)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor
        x = data[idx].to(device)
        gan_on = disc is not None and step * cfg.batch_size >= cfg.disc_start_images
        with autocast(device):
            recon, reg, parts = model(x, noise_gen)
            mse = F.mse_loss(recon, x)
            rec_loss = mse
            if perceptual is not None:
                p_loss = perceptual(x, recon).mean()
                rec_loss = rec_loss + cfg.perceptual_weight * p_loss
                parts["perceptual"] = p_loss.detach()
            loss = rec_loss + reg_weight * reg
            if gan_on:
                g_loss = hinge_g_loss(disc(recon))
                lam = adaptive_weight(rec_loss, g_loss, model.last_layer())
                loss = loss + cfg.disc_weight * lam * g_loss
                parts.update(g_loss=g_loss.detach(), adaptive_weight=lam)
        check_finite(loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if gan_on:
            for group in opt_d.param_groups:
                group["lr"] = disc_lr * lr_factor
            with autocast(device):
                d_loss = hinge_d_loss(disc(x), disc(recon.detach()))
            check_finite(d_loss, step)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            parts["d_loss"] = d_loss.detach()
        bar.update(len(idx))
        if step % log_every == 0:
            history.append({"step": step, "images": (step + 1) * cfg.batch_size, "loss": loss.item(), "mse": mse.item(),
                            "reg": reg.item(), **{k: float(v) for k, v in parts.items()}})
            bar.set_postfix(mse=f"{mse.item():.4f}")
    bar.close()
    model.eval()
    model.scale_factor.fill_(1.0 / latent_std(model, data, device, seed))
    return model, history


@torch.no_grad()
def encode_dataset(model: Autoencoder, data: torch.Tensor, device: torch.device, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, logvar) of every image, on the CPU. For the deterministic kinds (``vq``: the
    pre-quantisation encoder output; ``none``) ``logvar`` is ``-inf``, i.e. z = mean exactly."""
    means, logvars = [], []
    for start in range(0, len(data), batch_size):
        post = model.encode(data[start : start + batch_size].to(device))
        means.append(post.mean.float().cpu())
        logvars.append(post.logvar.float().cpu())
    return torch.cat(means), torch.cat(logvars)


@torch.no_grad()
def latent_std(model: Autoencoder, data: torch.Tensor, device: torch.device, seed: int) -> float:
    """Std of the training latents the diffusion model will see (posterior samples for KL, encoder outputs
    otherwise) over every element of the training set (Rombach et al. 2022, sec. G: scale = 1/std)."""
    mean, logvar = encode_dataset(model, data, device)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    std = float(z.std())
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"training latents have std {std}; the autoencoder collapsed, lower the learning rate")
    return std


@torch.no_grad()
def reconstruction_metrics(model: Autoencoder, images: np.ndarray, device: torch.device) -> dict[str, float]:
    """MSE on [-1, 1] and PSNR in dB on [0, 255] uint8 round trips of ``images`` (posterior mean; VQ: quantised)."""
    data = to_model_range(images)
    sq_err = []
    for start in range(0, len(data), 500):
        x = data[start : start + 500].to(device)
        recon = model.reconstruct(x).float().clamp(-1, 1)
        sq_err.append(((recon - x) ** 2).flatten(1).mean(1).cpu())
    mse = torch.cat(sq_err)
    # MSE on [-1, 1] is 4x the MSE on [0, 1]; PSNR per image, then averaged.
    psnr = 10 * torch.log10(4.0 / mse.clamp(min=1e-10))
    return {"val_mse": float(mse.mean()), "val_psnr": float(psnr.mean())}


class _Reconstruct(nn.Module):
    def __init__(self, model: Autoencoder):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.reconstruct(x)


def autoencoder_summary(model: Autoencoder) -> dict[str, int]:
    """Parameters and MACs of one deterministic round trip (encode + decode) of a single image."""
    cfg = model.config
    x = torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size, device=model.scale_factor.device)
    out = model_summary(_Reconstruct(model), x)
    enc = model_summary(model.encoder, x)
    return {**out, "encoder_macs": enc["macs_per_forward"], "decoder_macs": out["macs_per_forward"] - enc["macs_per_forward"]}
