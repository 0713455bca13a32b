"""Stage ``train_autoencoder``: the KL / VQ / plain autoencoder, its reconstruction metrics and loss curve."""

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


def run(params: Params, data_dir: Path = DATA_DIR, out_dir: Path = MODELS_DIR / "autoencoder", metrics_dir: Path = METRICS_DIR,
        track: bool = False) -> dict:
    """Train the autoencoder (``regularizer``: kl | vq | none); save checkpoint (with ``kind`` and the latent
    scale factor), reconstruction metrics, parameter count and MACs, and the loss history. ``track`` (what
    ``latentflow train_autoencoder`` passes): log loss, lr and images/s live to the execution's MLflow run."""
    from components.data.artifact import read_dataset
    from components.models.checkpoint import save_checkpoint
    from components.training.autoencoder import autoencoder_summary, fit_autoencoder, reconstruction_metrics
    from components.training.distributed import init_distributed

    device = setup(params)
    ds = read_dataset(data_dir, stream=True)  # images read from the shards batch by batch
    ctx = init_distributed(device)
    # resumable state lives beside the models folder: <project>/checkpoints/train_autoencoder
    ckpt_dir = Path(out_dir).resolve().parent.parent / CHECKPOINTS_DIR / "train_autoencoder"
    fingerprint = training_fingerprint(params, "train_autoencoder", ds.manifest["dataset_digest"])
    # rank 0 opens (or joins) the execution's MLflow run and logs loss, lr and images/s as it trains
    with training_run("train_autoencoder", params, "autoencoder") if track and ctx.is_main else contextlib.nullcontext() as on_log:
        model, result = fit_autoencoder(ds.images["train"], params.train_autoencoder, seed=params.base.seed, ctx=ctx,
                                        checkpoint_dir=ckpt_dir, fingerprint=fingerprint, progress=ctx.is_main, on_log=on_log)
        if on_log is not None:
            on_log.backfill(result.history)  # the points from before a resume
    if not ctx.is_main:  # rank 0 writes the outputs
        return {}
    history = result.history
    metrics = reconstruction_metrics(model, ds.images["val"], ctx.device, workers=params.train_autoencoder.runtime.data_workers)
    metrics.update(scale_factor=float(model.scale_factor), train_seconds=result.train_seconds, images_seen=result.images_seen,
                   processes=ctx.world_size, resumed_from_step=result.resumed_from_step, stopped_by_max_time=result.stopped_by_max_time,
                   **autoencoder_summary(model))
    save_checkpoint(out_dir, model, model.config.to_dict(), {
        "scale_factor": float(model.scale_factor),
        "training": params_dict(params)["train_autoencoder"],
        "dataset_digest": ds.manifest["dataset_digest"],
        "metrics": metrics,
    })
    atomic_write_json(Path(metrics_dir) / "autoencoder.json", metrics)
    atomic_write_json(Path(metrics_dir) / "autoencoder_loss.json", history)
    log.info("train_autoencoder: %s", metrics)
    return metrics
