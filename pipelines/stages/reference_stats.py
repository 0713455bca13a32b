"""Stage ``reference_stats``: the domain classifier and per-extractor statistics of the real val split."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from components.config import Params
from components.io import atomic_dir
from pipelines.stages.paths import DATA_DIR, MODELS_DIR, REFERENCE_DIR
from pipelines.stages.runtime import setup

log = logging.getLogger("latentflow")


def run(params: Params, data_dir: Path = DATA_DIR, models_dir: Path = MODELS_DIR, out_dir: Path = REFERENCE_DIR) -> dict:
    """Train the domain classifier on the real train split, then compute per-extractor features and
    statistics of the real val split (the reference of every distribution metric)."""
    from components.data.artifact import read_dataset
    from components.evaluation import feature_statistics
    from components.evaluation.classifier import classify, train_classifier
    from components.evaluation.protocol import build_extractors, extractor_batch_size
    from components.models.checkpoint import save_checkpoint

    device = setup(params)
    cfg = params.evaluate
    ds = read_dataset(data_dir, stream=True)  # images read from the shards batch by batch
    clf = train_classifier(ds.images["train"], ds.labels["train"], ds.num_classes, epochs=cfg.classifier_epochs,
                           batch_size=cfg.classifier_batch_size, lr=cfg.classifier_lr, seed=params.base.seed, device=device,
                           workers=cfg.data_workers)
    val_pred = classify(clf, ds.images["val"], extractor_batch_size("classifier", cfg.feature_batch_size), workers=cfg.data_workers)[1]
    val_accuracy = float((val_pred == ds.labels["val"]).mean())
    extractors, skipped = build_extractors(cfg.extractors, clf, inception_weights=cfg.inception_weights, require_inception=cfg.require_inception,
                                           device=device)
    manifest = {"dataset_digest": ds.manifest["dataset_digest"], "reference_split": "val", "num_reference": int(len(ds.labels["val"])),
                "classifier_val_accuracy": val_accuracy, "extractors": {}, "skipped": skipped}
    with atomic_dir(out_dir) as tmp:
        for name, extractor in extractors.items():
            t0 = time.perf_counter()
            feats = extractor(ds.images["val"], batch_size=extractor_batch_size(name, cfg.feature_batch_size))
            mu, sigma = feature_statistics(feats)
            np.savez(tmp / f"{name}.npz", features=feats.astype(np.float32), mu=mu, sigma=sigma)
            manifest["extractors"][name] = dataclasses.asdict(extractor.info)
            log.info("reference_stats: %s features of %d images in %.1f s", name, len(feats), time.perf_counter() - t0)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    save_checkpoint(Path(models_dir) / "classifier", clf, clf.config.to_dict(), {"val_accuracy": val_accuracy, "dataset_digest": ds.manifest["dataset_digest"]})
    log.info("reference_stats: %s", {k: v for k, v in manifest.items() if k != "extractors"} | {"extractors": list(manifest["extractors"])})
    return manifest
