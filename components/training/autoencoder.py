"""Training of the autoencoders (KL, VQ or plain) and computation of their latent scale factor.

Loss per step (Rombach et al. 2022, appendix G; Esser et al. 2021, eq. 5-7):
``D(x, x_hat) + perceptual_weight * P(x, x_hat) + w_reg * R + disc_factor * lambda * disc_weight * L_G``
with ``D`` the mean squared error or, with ``reconstruction_loss: l1``, the mean absolute error (LDM's choice), ``P`` the
perceptual distance, ``R`` the KL (``w_reg = kl_weight``) or the VQ loss (``w_reg = 1``; its beta is in the model), ``L_G``
the PatchGAN hinge generator loss and ``lambda`` the adaptive weight at the decoder's last layer.
The discriminator takes one hinge step per generator step once ``disc_start_images`` images were seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from components.config import AutoencoderParams
from components.data.loader import iter_batches, to_model
from components.diffusion.options import LATENT_KINDS, LATENT_SCALES
from components.models.autoencoder import Autoencoder, AutoencoderConfig, build_autoencoder
from components.models.discriminator import PatchDiscriminator, adaptive_weight, hinge_d_loss, hinge_g_loss
from components.models.summary import model_summary
from components.training.common import autocast, check_finite, warmup_lr
from components.training.distributed import DistContext
from components.training.loop import Batch, LogFn, LoopConfig, LoopResult, Trainer


def autoencoder_config(cfg: AutoencoderParams, in_channels: int, image_size: int) -> AutoencoderConfig:
    """The model config of a ``train_autoencoder`` params section for images of the given shape."""
    shared = {f.name for f in fields(AutoencoderConfig)} - {"in_channels", "image_size"}
    # every model field has a params key of the same name (tests/test_autoencoders.py checks it), so a new option
    # reaches the model without being listed here
    values = {name: getattr(cfg, name) for name in shared}
    values["channels"] = tuple(values["channels"])
    model_cfg = AutoencoderConfig(in_channels=in_channels, image_size=image_size, **values)
    if image_size % model_cfg.downsampling_factor:
        raise ValueError(
            f"images {image_size}x{image_size} are not divisible by f={model_cfg.downsampling_factor}; "
            "change ingest.image_size or the number of train_autoencoder.channels levels"
        )
    return model_cfg


def train_autoencoder(train_images, cfg: AutoencoderParams, **kwargs) -> tuple[Autoencoder, list[dict]]:
    """:func:`fit_autoencoder`, returning the model and its loss history."""
    model, result = fit_autoencoder(train_images, cfg, **kwargs)
    return model, result.history


def fit_autoencoder(
    train_images,
    cfg: AutoencoderParams,
    *,
    seed: int,
    device: torch.device | None = None,
    ctx: DistContext | None = None,
    checkpoint_dir: str | Path | None = None,
    fingerprint: str = "",
    progress: bool = True,
    log_every: int = 25,
    on_log: LogFn | None = None,
) -> tuple[Autoencoder, LoopResult]:
    """Train the autoencoder of ``cfg.regularizer`` on uint8 images ``[N, H, W, C]`` (an array, or a
    :class:`~components.data.artifact.ShardedImages` read from disk) for ``cfg.max_images`` images seen. The images of
    each step come through the Trainer's DataLoader (``runtime.data_workers``), augmented per ``cfg.augment`` and
    converted to float per batch, under :class:`~components.training.loop.Trainer` (DDP under torchrun, resumable from
    ``checkpoint_dir``; the discriminator and its optimizer are checkpointed too). Returns the model
    (``scale_factor`` = 1/std of the training latents), the loss history (one point every ``log_every``
    steps, in the result) and the run's :class:`~components.training.loop.LoopResult`. ``on_log`` receives each
    point of the loss history as it is made (:class:`~components.training.loop.Trainer`)."""
    _, h, w, c = train_images.shape
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}; set ingest.image_size")
    model_cfg = autoencoder_config(cfg, c, h)
    ctx = ctx or DistContext(device=device or torch.device("cpu"))
    device = ctx.device
    torch.manual_seed(seed)
    model = build_autoencoder(model_cfg)
    disc = PatchDiscriminator(c, num_layers=cfg.disc_layers).to(device) if cfg.disc_weight > 0 else None
    perceptual = None
    if cfg.perceptual_weight > 0:
        from components.models.perceptual import EffNetPerceptualLoss

        perceptual = EffNetPerceptualLoss(cfg.perceptual_input_size).to(device)
    loop = LoopConfig.from_section(cfg, ema_decay=None, log_every=log_every)
    trainer = Trainer(model, loop, dataset_size=len(train_images), seed=seed, ctx=ctx, checkpoint_dir=checkpoint_dir,
                      fingerprint=fingerprint, desc=f"train_autoencoder ({cfg.regularizer})", progress=progress,
                      on_log=on_log, images=train_images, augment=cfg.augment.model_dump())
    disc_lr = cfg.disc_lr or cfg.lr
    opt_d = None
    disc_net = disc
    if disc is not None:
        opt_d = torch.optim.Adam(disc.parameters(), lr=disc_lr, betas=(0.5, 0.9))
        trainer.extra_state.update(discriminator=disc, discriminator_optimizer=opt_d)
        if ctx.distributed:
            disc_net = torch.nn.parallel.DistributedDataParallel(disc)
    reg_weight = cfg.kl_weight if cfg.regularizer == "kl" else 1.0
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (x, recon) of the step's micro-batches, for the discriminator

    def gan_on(step: int) -> bool:
        return disc is not None and step * cfg.batch_size >= cfg.disc_start_images

    def loss_fn(net: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
        # the posterior / codebook draws of this rank's micro-batch (seeded by step and rank)
        g = torch.Generator(device=device).manual_seed(batch.seed + ctx.rank * 7919 + int(batch.rows[0]))
        x = to_model(batch.images, device)
        recon, reg, parts = net(x, g)
        mse = F.mse_loss(recon.float(), x)
        rec_loss = mse
        if cfg.reconstruction_loss == "l1":
            rec_loss = F.l1_loss(recon.float(), x)
            parts["l1"] = rec_loss.detach()
        if perceptual is not None:
            p_loss = perceptual(x, recon).mean()
            rec_loss = rec_loss + cfg.perceptual_weight * p_loss
            parts["perceptual"] = p_loss.detach()
        loss = rec_loss + reg_weight * reg
        if gan_on(batch.step):
            g_loss = hinge_g_loss(disc(recon))  # the generator loss does not update the discriminator
            lam = adaptive_weight(rec_loss, g_loss, model.last_layer())
            loss = loss + cfg.disc_weight * lam * g_loss
            parts.update(g_loss=g_loss.detach(), adaptive_weight=lam)
            pending.append((x, recon.detach()))
        return loss, {"mse": mse.detach(), "reg": reg.detach(), **parts}

    def disc_step(step: int) -> dict | None:
        """One hinge step of the discriminator on the real and reconstructed images of generator step ``step``
        (0-based, as :meth:`Trainer.run` passes it), at that step's point of the warmup/cosine schedule (LDM, appendix G)."""
        if not pending:
            return None
        lr_factor = warmup_lr(step, 1.0, trainer.warmup_steps, trainer.total_steps if cfg.lr_schedule == "cosine" else None)
        for group in opt_d.param_groups:
            group["lr"] = disc_lr * lr_factor
        opt_d.zero_grad(set_to_none=True)
        d_total = 0.0
        for x, recon in pending:
            with autocast(device):
                d_loss = hinge_d_loss(disc_net(x), disc_net(recon)) / len(pending)
            check_finite(d_loss, step)
            d_loss.backward()
            d_total += d_loss.item()
        opt_d.step()
        pending.clear()
        return {"d_loss": d_total}

    result = trainer.run(loss_fn, after_step=disc_step if disc is not None else None)
    model = trainer.final_model()
    model.scale_factor.fill_(1.0 / latent_std(model, train_images, device, seed, workers=loop.data_workers))
    return model, result


def _model_batches(data, device: torch.device, batch_size: int, workers: int = 0) -> Iterator[torch.Tensor]:
    """Float ``[B, C, H, W]`` batches on ``device``: slices of a model-range tensor, or uint8 images (array or
    ShardedImages) read through a DataLoader and converted per batch (:func:`~components.data.loader.to_model`)."""
    if isinstance(data, torch.Tensor):
        for start in range(0, len(data), batch_size):
            yield data[start : start + batch_size].to(device)
        return
    for batch in iter_batches(data, batch_size, workers=workers, device=device):
        yield to_model(batch, device)


@torch.no_grad()
def encode_dataset(model: Autoencoder, data, device: torch.device, batch_size: int = 500, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, logvar) of every image, on the CPU; ``data`` is a model-range tensor ``[N, C, H, W]`` or uint8
    images ``[N, H, W, C]`` (read ``batch_size`` at a time). For the deterministic kinds (``vq``: the
    pre-quantisation encoder output; ``none``) ``logvar`` is ``-inf``, i.e. z = mean exactly."""
    means = logvars = None  # preallocated, filled batch by batch (no list + cat: half the peak memory)
    start = 0
    for x in _model_batches(data, device, batch_size, workers):
        post = model.encode(x)
        if means is None:
            means = torch.empty((len(data), *post.mean.shape[1:]), dtype=torch.float32)
            logvars = torch.empty_like(means)
        means[start : start + len(x)] = post.mean.float().cpu()
        logvars[start : start + len(x)] = post.logvar.float().cpu()
        start += len(x)
    return means, logvars


@torch.no_grad()
def diffusion_latents(model: Autoencoder, data, device: torch.device, latents: str = "posterior_sample",
                      scale: str | float = "autoencoder", workers: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The scaled posterior ``(mean, logvar)`` the U-Net trains on, and the scale ``s``: ``z = s * (mean + std * n)``
    (Rombach et al. 2022, sec. 3.3 and G), i.e. the mean times ``s`` and the log-variance plus ``2 log s``.
    ``latents="posterior_mean"`` sets the log-variance to -inf (std 0), so every draw is the mean: the U-Net then
    learns the distribution of the latents the decoder reconstructs from, not of its noisy draws.

    ``scale``: ``"autoencoder"`` is the autoencoder's ``scale_factor`` (1/std of its posterior draws over the training
    set, LDM sec. G); ``"unit"`` is 1/std of the latents the U-Net learns, so they have unit variance as LDM intends:
    for posterior draws that is the autoencoder's scale factor (computed so), for the means ``1 / std(mean)`` over every
    element (larger: the means vary less than the draws); a number is used as it is (``distill`` passes its teacher's)."""
    if latents not in LATENT_KINDS:
        raise ValueError(f"latents must be one of {', '.join(LATENT_KINDS)}, got {latents!r}")
    if isinstance(scale, str) and scale not in LATENT_SCALES:
        raise ValueError(f"latent scale must be one of {', '.join(LATENT_SCALES)} or a positive number, got {scale!r}")
    mean, logvar = encode_dataset(model, data, device, workers=workers)
    if isinstance(scale, str):
        if scale == "unit" and latents == "posterior_mean":
            std = float(mean.std())  # a float32 reduction (cascade-summed): no float64 copy of every latent
            if not math.isfinite(std) or std <= 0:
                raise ValueError(f"the posterior means have std {std}: the autoencoder collapsed; retrain it (lower its learning rate)")
            scale = 1.0 / std
        else:
            scale = float(model.scale_factor)
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"latent scale must be a positive number, got {scale}")
    if latents == "posterior_mean":
        return mean * scale, torch.full_like(logvar, -math.inf), scale
    return mean * scale, logvar + 2 * math.log(scale), scale


@torch.no_grad()
def latent_std(model: Autoencoder, data, device: torch.device, seed: int, workers: int = 0) -> float:
    """Std of the training latents the diffusion model will see (posterior samples for KL, encoder outputs
    otherwise) over every element of the training set (Rombach et al. 2022, sec. G: scale = 1/std)."""
    mean, logvar = encode_dataset(model, data, device, workers=workers)
    # z = mean + exp(logvar / 2) * n, computed in place (the same float operations, a third of the memory)
    z = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed))
    z.mul_(logvar.mul_(0.5).exp_()).add_(mean)
    del mean, logvar
    std = float(z.std())
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"training latents have std {std}; the autoencoder collapsed, lower the learning rate")
    return std


@torch.no_grad()
def reconstruction_metrics(model: Autoencoder, images, device: torch.device, workers: int = 0) -> dict[str, float]:
    """MSE on [-1, 1] and PSNR in dB on [0, 255] uint8 round trips of ``images`` (posterior mean; VQ: quantised),
    read 500 at a time."""
    sq_err = []
    for x in _model_batches(images, device, 500, workers):
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
