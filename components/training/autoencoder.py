"""Training of the KL autoencoder and computation of its latent scale factor."""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from components.config import AutoencoderParams
from components.models.autoencoder import AutoencoderConfig, KLAutoencoder
from components.training.common import autocast, batch_indices, check_finite, to_model_range, warmup_lr


def train_autoencoder(
    train_images: np.ndarray,
    cfg: AutoencoderParams,
    *,
    seed: int,
    device: torch.device,
    progress: bool = True,
) -> tuple[KLAutoencoder, list[dict]]:
    """Train a :class:`KLAutoencoder` on uint8 images for ``cfg.max_images`` images seen.

    Returns the model (with ``scale_factor`` set to 1/std of the training latents) and the loss history.
    """
    _, h, w, c = train_images.shape
    model_cfg = AutoencoderConfig(
        in_channels=c, image_size=h, channels=cfg.channels, latent_channels=cfg.latent_channels, num_res_blocks=cfg.num_res_blocks
    )
    if h % model_cfg.downsampling_factor or h != w:
        raise ValueError(f"images {h}x{w} must be square and divisible by f={model_cfg.downsampling_factor}")
    torch.manual_seed(seed)
    model = KLAutoencoder(model_cfg).to(device)
    data = to_model_range(train_images)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device).manual_seed(seed + 1)
    warmup_steps = math.ceil(cfg.warmup_images / cfg.batch_size)
    total_steps = math.ceil(cfg.max_images / cfg.batch_size)
    history: list[dict] = []
    bar = tqdm(total=cfg.max_images, unit="img", desc="train_autoencoder", disable=not progress, mininterval=2.0)
    model.train()
    for step, idx in enumerate(batch_indices(len(data), cfg.batch_size, cfg.max_images, gen)):
        for group in opt.param_groups:
            group["lr"] = warmup_lr(step, cfg.lr, warmup_steps, total_steps if cfg.lr_schedule == "cosine" else None)
        x = data[idx].to(device)
        with autocast(device):
            loss, parts = model.loss(x, cfg.kl_weight, noise_gen)
        check_finite(loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        bar.update(len(idx))
        if step % 25 == 0:
            history.append({"step": step, "images": (step + 1) * cfg.batch_size, "loss": loss.item(), "mse": parts["mse"].item(), "kl": parts["kl"].item()})
            bar.set_postfix(mse=f"{parts['mse'].item():.4f}")
    bar.close()
    model.eval()
    model.scale_factor.fill_(1.0 / latent_std(model, data, device, seed))
    return model, history


@torch.no_grad()
def encode_dataset(model: KLAutoencoder, data: torch.Tensor, device: torch.device, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, logvar) of every image, on the CPU."""
    means, logvars = [], []
    for start in range(0, len(data), batch_size):
        post = model.encode(data[start : start + batch_size].to(device))
        means.append(post.mean.float().cpu())
        logvars.append(post.logvar.float().cpu())
    return torch.cat(means), torch.cat(logvars)


@torch.no_grad()
def latent_std(model: KLAutoencoder, data: torch.Tensor, device: torch.device, seed: int) -> float:
    """Std of posterior samples over the training set (Rombach et al. 2022, sec. G: scale = 1/std)."""
    mean, logvar = encode_dataset(model, data, device)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    return float(z.std())


@torch.no_grad()
def reconstruction_metrics(model: KLAutoencoder, images: np.ndarray, device: torch.device) -> dict[str, float]:
    """MSE on [-1, 1] and PSNR in dB on [0, 255] uint8 round trips of ``images`` (posterior mean)."""
    data = to_model_range(images)
    sq_err = []
    for start in range(0, len(data), 500):
        x = data[start : start + 500].to(device)
        recon = model.decode(model.encode(x).mean).float().clamp(-1, 1)
        sq_err.append(((recon - x) ** 2).flatten(1).mean(1).cpu())
    mse = torch.cat(sq_err)
    # MSE on [-1, 1] is 4x the MSE on [0, 1]; PSNR per image, then averaged.
    psnr = 10 * torch.log10(4.0 / mse.clamp(min=1e-10))
    return {"val_mse": float(mse.mean()), "val_psnr": float(psnr.mean())}
