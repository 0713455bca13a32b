"""Training of the class-conditional latent U-Net (epsilon/x0/v targets, condition dropout, EMA)."""

from __future__ import annotations

from pathlib import Path

import torch

from components.config import DiffusionParams
from components.diffusion import diffusion_loss, make_betas
from components.models.text import TextConfig, Tokenizer, build_vocab
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
    captions: list[list[str]] | None = None,
) -> tuple[UNet, LoopResult]:
    """Train on scaled latents ``z = scale * (mean + std * n)`` drawn afresh each batch (LDM, sec. 3.3),
    with :func:`components.diffusion.diffusion_loss` (simple, min-SNR or hybrid).

    Labels are replaced by the null class with probability ``cfg.cond_dropout`` (classifier-free
    guidance, Ho & Salimans 2022, alg. 1). Runs under :class:`~components.training.loop.Trainer`
    (DDP when ``ctx`` is a torchrun world, resumable from ``checkpoint_dir``). Returns the EMA model
    and the run's :class:`~components.training.loop.LoopResult` (loss curve, images seen, ...). ``on_log``
    receives each point of the loss curve as it is made (:class:`~components.training.loop.Trainer`).

    Text conditioning (``cfg.conditioning == "text"``): ``captions[i]`` are image i's captions. The tokenizer's
    vocabulary is built from them (:func:`~components.models.text.build_vocab`), the text encoder is trained with the
    U-Net (LDM, sec. 4.3.1), each step picks one caption per image at random (a draw after the class path's, from the
    same step generator), and condition dropout replaces it by the empty caption, the null condition.
    """
    _, c, h, _ = latent_mean.shape
    text_cfg, caption_ids, caption_counts = None, None, None
    if cfg.conditioning == "text":
        text_cfg, caption_ids, caption_counts = tokenize_captions(captions, len(labels), cfg.text_encoder)
    unet_cfg = UNetConfig.from_params(
        cfg.unet,
        in_channels=c,
        out_channels=2 * c if cfg.variance_type == "learned_range" else c,
        sample_size=h,
        num_classes=num_classes,
        text=text_cfg,
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
        if caption_ids is not None:  # text: one of the image's captions, the empty caption (null) where dropped
            u = batch.draw(torch.rand, (), g, device=device)
            idx = batch.indices
            pick = torch.clamp((u.cpu() * caption_counts[idx]).long(), max=caption_ids.shape[1] - 1)
            y = caption_ids[idx, pick].to(device)
            y = torch.where(drop[:, None], torch.full_like(y, -1), y)
        if trainer.cfg.channels_last:
            z0 = z0.contiguous(memory_format=torch.channels_last)
        loss = diffusion_loss(
            net, z0, y, betas, cfg.prediction_type, learned_variance=cfg.variance_type == "learned_range",
            vlb_weight=cfg.vlb_weight, min_snr_gamma=cfg.min_snr_gamma, t=t, noise=eps,
        )
        return loss, {}

    result = trainer.run(loss_fn)
    return trainer.final_model(), result


def tokenize_captions(captions: list[list[str]] | None, n: int, p) -> tuple[TextConfig, torch.Tensor, torch.Tensor]:
    """The text config (vocabulary from the captions and ``p``, the ``train_diffusion.text_encoder`` section), the
    token ids ``[n, K, max_length]`` of each image's captions (K = the most captions of any image; unused slots
    repeat the first caption) and the caption count per image ``[n]``."""
    if captions is None:
        raise ValueError("train_diffusion.conditioning is 'text' but the dataset has no captions: set ingest.captions "
                         "('generate' for MNIST, or a captions.jsonl) and re-run ingest, or set train_diffusion.conditioning: class")
    if len(captions) != n:
        raise ValueError(f"{len(captions)} caption lists for {n} training images")
    empty = [i for i, caps in enumerate(captions) if not caps or not all(isinstance(c, str) and c.strip() for c in caps)]
    if empty:
        raise ValueError(f"training images {empty[:5]} have no caption or an empty one; every image needs at least one")
    vocab = build_vocab((c for caps in captions for c in caps), p.min_word_count)
    text_cfg = TextConfig(vocab=vocab, max_length=p.max_length, width=p.width, layers=p.layers, heads=p.heads)
    tok = Tokenizer.from_config(text_cfg)
    k = max(len(caps) for caps in captions)
    ids = torch.tensor([[tok.encode(caps[j] if j < len(caps) else caps[0]) for j in range(k)] for caps in captions], dtype=torch.long)
    counts = torch.tensor([len(caps) for caps in captions], dtype=torch.long)
    return text_cfg, ids, counts
