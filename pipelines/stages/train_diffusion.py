"""Stage ``train_diffusion``: the class- or text-conditional EMA U-Net on the autoencoder's latents."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from components.config import Params, params_dict
from components.io import atomic_write_json
from pipelines.stages.paths import CHECKPOINTS_DIR, DATA_DIR, METRICS_DIR, MODELS_DIR
from pipelines.stages.runtime import setup, training_fingerprint
from pipelines.stages.tracking import training_run

log = logging.getLogger("latentflow")


def run(params: Params, data_dir: Path = DATA_DIR, models_dir: Path = MODELS_DIR, metrics_dir: Path = METRICS_DIR,
        track: bool = False) -> dict:
    """Encode the train split with the autoencoder and train the EMA U-Net on its latents. ``track`` (what
    ``latentflow train_diffusion`` passes): log loss, lr and images/s live to the execution's MLflow run."""
    import torch

    from components.data.artifact import read_dataset
    from components.models.checkpoint import load_autoencoder, save_checkpoint
    from components.models.summary import model_summary
    from components.training.autoencoder import diffusion_latents
    from components.training.diffusion import train_diffusion as fit
    from components.training.distributed import init_distributed

    device = setup(params)
    cfg = params.train_diffusion
    ds = read_dataset(data_dir, stream=True)  # images read from the shards batch by batch
    if cfg.conditioning == "text" and ds.captions is None:
        raise ValueError("train_diffusion.conditioning is 'text' but the dataset has no captions: set ingest.captions ('generate' for "
                         "MNIST, or the path of a captions.jsonl) and re-run ingest, or set train_diffusion.conditioning: class")
    autoencoder, _ = load_autoencoder(Path(models_dir) / "autoencoder", device)
    # KL: posterior mean and log-variance (z is sampled afresh each batch; train_diffusion.latents: posterior_mean, std 0);
    # VQ: the pre-quantisation encoder output (decode quantises); plain: the encoder output (logvar -inf, std 0)
    mean, logvar, latent_scale = diffusion_latents(autoencoder, ds.images["train"], device, cfg.latents, cfg.latent_scale,
                                                   workers=cfg.runtime.data_workers)
    ctx = init_distributed(device)
    fingerprint = training_fingerprint(params, "train_diffusion", ds.manifest["dataset_digest"], Path(models_dir) / "autoencoder" / "model.safetensors")
    # rank 0 opens (or joins) the execution's MLflow run and logs loss, lr and images/s as it trains
    with training_run("train_diffusion", params, "diffusion") if track and ctx.is_main else contextlib.nullcontext() as on_log:
        ema_unet, result = fit(mean, logvar, torch.from_numpy(ds.labels["train"]), ds.num_classes, cfg, seed=params.base.seed, ctx=ctx,
                               checkpoint_dir=Path(models_dir).resolve().parent / CHECKPOINTS_DIR / "train_diffusion",
                               fingerprint=fingerprint, progress=ctx.is_main, on_log=on_log,
                               captions=ds.captions["train"] if cfg.conditioning == "text" else None)
        if on_log is not None:
            on_log.backfill(result.history)  # the points from before a resume
    if not ctx.is_main:  # rank 0 writes the outputs
        return {}
    curve = result.history
    ucfg, dev = ema_unet.config, next(ema_unet.parameters()).device
    one = torch.zeros(1, dtype=torch.long, device=dev)
    cond = one if ucfg.text is None else torch.full((1, ucfg.text.max_length), -1, dtype=torch.long, device=dev)  # text: the empty caption
    size = model_summary(ema_unet, torch.zeros(1, ucfg.in_channels, ucfg.sample_size, ucfg.sample_size, device=dev), one, cond)
    metrics = {
        "final_loss": curve[-1]["loss"] if curve else float("nan"),
        "train_seconds": result.train_seconds,
        "parameters": sum(p.numel() for p in ema_unet.parameters()),
        "macs_per_forward": size["macs_per_forward"],
        "images_seen": result.images_seen,
        "latent_scale": latent_scale,
        "processes": ctx.world_size,
        "resumed_from_step": result.resumed_from_step,
        "stopped_by_max_time": result.stopped_by_max_time,
    }
    print(f"train_diffusion: U-Net {ucfg.preset or 'custom'} {ucfg.channels}, levels {ucfg.level_blocks}: "
          f"{metrics['parameters']:,} parameters, {metrics['macs_per_forward']:,} MACs per forward", flush=True)
    save_checkpoint(Path(models_dir) / "diffusion", ema_unet, ema_unet.config.to_dict(), {
        "schedule": {"schedule": cfg.schedule, "num_timesteps": cfg.num_timesteps, "beta_start": cfg.beta_start,
                     "beta_end": cfg.beta_end, "zero_terminal_snr": cfg.zero_terminal_snr,
                     "prediction_type": cfg.prediction_type, "variance_type": cfg.variance_type},
        "class_names": ds.class_names,
        "latent_scale": latent_scale,  # what the generator divides the U-Net's latents by before decoding
        "training": params_dict(params)["train_diffusion"],
        "dataset_digest": ds.manifest["dataset_digest"],
        "weights": "ema",
        "metrics": metrics,
    })
    atomic_write_json(Path(metrics_dir) / "diffusion.json", metrics)
    atomic_write_json(Path(metrics_dir) / "diffusion_loss.json", curve)
    log.info("train_diffusion: %s", metrics)
    return metrics
