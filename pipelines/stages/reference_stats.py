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
PROBE_DIR = "effnet_probe"  # reference_stats/effnet_probe/: the linear probe (model.safetensors + config.json), when trained


def _judges(params: Params, ds, device, extractors: dict, val_feats: dict, classifier_val_accuracy: float):
    """Train the EfficientNet-Lite0 linear probe when ``evaluate.judge`` asks for it. Returns ``(probe or None,
    record)``; the record (``reference_stats/manifest.json``'s ``judge``) has ``requested``, ``used`` (the judge, or
    ``None`` under ``auto``: ``evaluate`` picks the one that reads the autoencoder's reconstructions of val images better,
    which needs the autoencoder), each trained judge's val accuracy and the probe's weight-decay selection."""
    from components.evaluation.features import FeatureExtractorUnavailable, get_extractor
    from components.evaluation.probe import train_probe_judge
    from components.evaluation.protocol import extractor_batch_size

    cfg = params.evaluate
    accuracy = {"classifier": classifier_val_accuracy}
    record: dict = {"requested": cfg.judge, "used": "classifier", "val_accuracy": accuracy, "probe": None}
    if cfg.judge == "classifier":
        return None, record
    try:
        extractor = extractors.get("effnet_lite0") or get_extractor("effnet_lite0", device=device)
    except FeatureExtractorUnavailable as exc:
        if cfg.judge == "effnet_probe":
            raise FeatureExtractorUnavailable(f"evaluate.judge is effnet_probe but {exc} (or set evaluate.judge: classifier)") from exc
        log.warning("evaluate.judge auto: no EfficientNet-Lite0 here, the classifier judges (%s)", exc)
        record["probe_skipped"] = str(exc)
        return None, record
    batch = extractor_batch_size("effnet_lite0", cfg.feature_batch_size)
    t0 = time.perf_counter()
    pc = cfg.probe
    probe, report = train_probe_judge(extractor, ds.images["train"], ds.labels["train"], ds.num_classes, max_train_images=pc.max_train_images,
                                      weight_decays=pc.weight_decays, holdout_fraction=pc.holdout_fraction, seed=params.base.seed,
                                      max_iter=pc.max_iter, batch_size=batch)
    feats = val_feats["effnet_lite0"] if "effnet_lite0" in val_feats else extractor(ds.images["val"], batch_size=batch)
    accuracy["effnet_probe"] = probe.accuracy(feats, ds.labels["val"])
    used = None if cfg.judge == "auto" else cfg.judge
    record.update(used=used, probe=report)  # no timings in it: the outputs stay deterministic
    log.info("reference_stats: judge %s (val accuracy %s; requested %s); the probe took %.1f s", used or "picked in evaluate", accuracy,
             cfg.judge, time.perf_counter() - t0)
    return probe, record


def run(params: Params, data_dir: Path = DATA_DIR, models_dir: Path = MODELS_DIR, out_dir: Path = REFERENCE_DIR) -> dict:
    """Train the domain classifier on the real train split, then compute per-extractor features and
    statistics of the real val split (the reference of every distribution metric)."""
    from components.data.artifact import read_dataset
    from components.evaluation import feature_statistics
    from components.evaluation.classifier import classify, train_classifier
    from components.evaluation.probe import save_probe
    from components.evaluation.protocol import build_extractors, extractor_batch_size
    from components.models.checkpoint import save_checkpoint

    device = setup(params)
    cfg = params.evaluate
    ds = read_dataset(data_dir, stream=True)  # images read from the shards batch by batch
    clf = train_classifier(ds.images["train"], ds.labels["train"], ds.num_classes, epochs=cfg.classifier_epochs,
                           batch_size=cfg.classifier_batch_size, lr=cfg.classifier_lr, seed=params.base.seed, device=device,
                           workers=cfg.data_workers, max_side=cfg.classifier_max_side)
    val_pred = classify(clf, ds.images["val"], extractor_batch_size("classifier", cfg.feature_batch_size), workers=cfg.data_workers)[1]
    val_accuracy = float((val_pred == ds.labels["val"]).mean())
    extractors, skipped = build_extractors(cfg.extractors, clf, inception_weights=cfg.inception_weights, require_inception=cfg.require_inception,
                                           device=device)
    manifest = {"dataset_digest": ds.manifest["dataset_digest"], "reference_split": "val", "num_reference": int(len(ds.labels["val"])),
                "classifier_val_accuracy": val_accuracy, "extractors": {}, "skipped": skipped}
    val_feats = {}  # only EfficientNet-Lite0's are kept (the probe's val accuracy reads them); the others are written and dropped
    with atomic_dir(out_dir) as tmp:
        for name, extractor in extractors.items():
            t0 = time.perf_counter()
            feats = extractor(ds.images["val"], batch_size=extractor_batch_size(name, cfg.feature_batch_size))
            mu, sigma = feature_statistics(feats)
            np.savez(tmp / f"{name}.npz", features=feats.astype(np.float32), mu=mu, sigma=sigma)
            manifest["extractors"][name] = dataclasses.asdict(extractor.info)
            if name == "effnet_lite0":
                val_feats[name] = feats
            log.info("reference_stats: %s features of %d images in %.1f s", name, len(feats), time.perf_counter() - t0)
        probe, manifest["judge"] = _judges(params, ds, device, extractors, val_feats, val_accuracy)
        if probe is not None:
            save_probe(tmp / PROBE_DIR, probe, {"val_accuracy": manifest["judge"]["val_accuracy"]["effnet_probe"],
                                                "dataset_digest": ds.manifest["dataset_digest"], "selection": manifest["judge"]["probe"]})
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    save_checkpoint(Path(models_dir) / "classifier", clf, clf.config.to_dict(), {"val_accuracy": val_accuracy, "dataset_digest": ds.manifest["dataset_digest"]})
    log.info("reference_stats: %s", {k: v for k, v in manifest.items() if k != "extractors"} | {"extractors": list(manifest["extractors"])})
    return manifest
