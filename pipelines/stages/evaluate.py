"""Stage ``evaluate``: score the samples on every reference extractor against the val reference and against a
real-vs-real baseline (a train subset of the same size), then quality vs sampler steps and the guidance sweep."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from components.config import Params
from components.io import atomic_write_json
from pipelines.stages.paths import (
    DATA_DIR,
    EVAL_METRICS,
    GUIDANCE_SWEEP,
    MODELS_DIR,
    QUALITY_PATH,
    QUALITY_PLOT,
    REFERENCE_DIR,
    SAMPLES_DIR,
)
from pipelines.stages.runtime import setup

log = logging.getLogger("latentflow")


def run(params: Params, data_dir: Path = DATA_DIR, samples_dir: Path = SAMPLES_DIR, models_dir: Path = MODELS_DIR,
        ref_dir: Path = REFERENCE_DIR, out_path: Path = EVAL_METRICS, quality_path: Path = QUALITY_PATH,
        quality_plot: Path = QUALITY_PLOT, sweep_path: Path = GUIDANCE_SWEEP) -> dict:
    """Score the generated samples on every reference extractor, each metric also for a real-vs-real baseline (a
    seeded train subset with the samples' per-class counts, ``<metric>_real_<extractor>``) and as a ratio to it
    (``fd_ratio_<extractor>`` ...); then quality vs sampler steps, and the guidance sweep with its recommendation."""
    from components.data.artifact import read_dataset
    from components.data.samples import read_samples
    from components.evaluation import class_consistency
    from components.evaluation.ceiling import judges_on_reconstructions, reconstruct
    from components.evaluation.classifier import ClassifierExtractor, load_classifier
    from components.evaluation.probe import pick_judge
    from components.evaluation.protocol import (
        build_extractors,
        distribution_metrics,
        extractor_batch_size,
        judge_candidates,
        judge_record,
        load_judge,
        load_reference,
        plot_quality,
        quality_by_steps,
        quality_vs_steps,
    )
    from components.evaluation.tradeoff import (
        REAL_SUFFIX,
        RECONSTRUCTION,
        RULE,
        guidance_sweep,
        ratio_metrics,
        recommend_guidance,
        stratified_subset,
    )
    from components.generation import LatentDiffusionGenerator

    device = setup(params)
    cfg = params.evaluate
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    ref_manifest, refs = load_reference(ref_dir, manifest["dataset_digest"])  # fail fast, before any work
    gen_images, gen_labels = read_samples(samples_dir)
    if list(gen_images.shape[1:]) != manifest["shape"]:
        raise ValueError(f"samples are {gen_images.shape[1:]} but the dataset is {tuple(manifest['shape'])}; re-run sample")
    ds = read_dataset(data_dir, stream=True)  # the train split, read from its shards: the real-vs-real baseline (sha256-verified)
    real_images = ds.images["train"][stratified_subset(ds.labels["train"], gen_labels, params.base.seed)]  # fails fast, too
    sweep = cfg.guidance_sweep
    if sweep.guidances:  # the sweep's baseline too, before any work
        stratified_subset(ds.labels["train"], np.repeat(np.arange(ds.num_classes), sweep.num_per_class), params.base.seed)
    clf = load_classifier(Path(models_dir) / "classifier", device)
    extractors, _ = build_extractors(cfg.extractors, clf, inception_weights=cfg.inception_weights, require_inception=cfg.require_inception,
                                     device=device)
    clf_batch = extractor_batch_size("classifier", cfg.feature_batch_size)
    # the judge of class consistency (evaluate.judge; under auto every judge reference_stats trained, see below)
    record = judge_record(ref_manifest)
    judges = {name: load_judge(ref_dir, name, clf, extractors, device=device, feature_batch_size=cfg.feature_batch_size)
              for name in judge_candidates(record)}
    num_classes = len(manifest["class_names"])
    grid, s = cfg.quality_grid, params.sample
    generator = LatentDiffusionGenerator.from_dir(models_dir, device=device)
    # the autoencoder's ceiling: each judge on real val images passed through it (as many per class as the samples). The
    # samples are decoded images, so under auto the judge that reads these decoded images of known class clearly better
    # judges (pick_judge: by more than 2 paired standard errors; else the one that reads the real val images better)
    val_idx = stratified_subset(ds.labels["val"], gen_labels, params.base.seed, at_most=True)
    ceilings = judges_on_reconstructions({name: (lambda images, j=j, b=b: j.predict(images, b)) for name, (j, b) in judges.items()},
                                         generator.autoencoder, ds.images["val"][val_idx], np.asarray(ds.labels["val"])[val_idx],
                                         num_classes, batch_size=s.batch_size)
    decoded = {name: c["reconstructed"] for name, c in ceilings.items()}
    used, why = pick_judge(decoded, record["val_accuracy"], len(val_idx),  # a single candidate unless auto
                           decoded_correct={name: c["reconstructed_correct"] for name, c in ceilings.items()})
    (judge, judge_batch), ceiling = judges[used], ceilings[used]
    judge_info = {**record, "used": used}
    if record["requested"] == "auto":
        judge_info.update(reconstruction_accuracy=decoded, picked_on=why)
    by_classifier = class_consistency(ClassifierExtractor(clf).predict(gen_images, clf_batch), gen_labels, num_classes)
    consistency = by_classifier if used == "classifier" else class_consistency(judge.predict(gen_images, judge_batch), gen_labels, num_classes)
    metrics: dict = {"class_consistency": consistency["overall"], "class_consistency_per_class": consistency["per_class"],
                     "classifier_val_accuracy": ref_manifest["classifier_val_accuracy"], "judge": used,
                     "judge_val_accuracy": record["val_accuracy"][used], "class_consistency_classifier": by_classifier["overall"]}
    other_judge = None if used == "classifier" else judge  # the grid and the sweep classify with the classifier anyway
    if "effnet_probe" in record["val_accuracy"]:
        metrics["effnet_probe_val_accuracy"] = record["val_accuracy"]["effnet_probe"]
    # the autoencoder's ceiling on the distribution figures: the baseline's own images decoded from their latent mean;
    # a U-Net that matched the latent distribution exactly would score about these
    reconstructed = reconstruct(generator.autoencoder, real_images, s.batch_size)
    for name in ref_manifest["extractors"]:
        if name not in extractors:
            raise ValueError(f"reference stats have extractor {name!r} but it is not available now; re-run reference_stats")
        for images, prefix in ((gen_images, name), (real_images, f"{REAL_SUFFIX}_{name}"), (reconstructed, f"{RECONSTRUCTION}_{name}")):
            feats = extractors[name](images, batch_size=extractor_batch_size(name, cfg.feature_batch_size))
            metrics.update(distribution_metrics(feats, refs[name], prefix, kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size,
                                                pr_k=cfg.pr_k, seed=params.base.seed))
        metrics.update(ratio_metrics(metrics, name))
        metrics.update(ratio_metrics(metrics, name, of=RECONSTRUCTION))
    metrics.update({"reconstruction_consistency": ceiling["reconstructed"], "reconstruction_real_accuracy": ceiling["real"],
                    "reconstruction_consistency_per_class": ceiling["reconstructed_per_class"]})
    # the sample stage's guidance options apply to every set generated here, so the grid and the sweep measure its sampler
    guidance_options = s.guidance_options()
    rows = quality_vs_steps(generator, clf, refs["classifier"], samplers=grid.samplers,
                            steps=grid.steps, num_per_class=grid.num_per_class, seed=params.base.seed + 1, guidance=s.guidance, eta=s.eta,
                            timestep_spacing=s.timestep_spacing, batch_size=s.batch_size, feature_batch_size=clf_batch,
                            judge=other_judge, judge_batch_size=judge_batch, generate_kwargs=guidance_options)
    sweep_rows: list[dict] = []
    swept = [e for e in sweep.extractors if e in extractors]  # an Inception skipped for want of weights is skipped here too
    if sweep.guidances:
        sweep_rows = guidance_sweep(
            generator, clf, {e: extractors[e] for e in swept}, refs, ds.images["train"], ds.labels["train"],
            guidances=sweep.guidances, num_per_class=sweep.num_per_class, sampler=sweep.sampler, steps=sweep.steps,
            seed=params.base.seed + 2, baseline_seed=params.base.seed, eta=s.eta, timestep_spacing=s.timestep_spacing, pr_k=cfg.pr_k,
            batch_size=s.batch_size, feature_batch_sizes={e: extractor_batch_size(e, cfg.feature_batch_size) for e in sweep.extractors},
            judge=other_judge, judge_batch_size=judge_batch, generate_kwargs=guidance_options)
    metrics["recommended_guidance"] = recommend_guidance(sweep_rows, max_fd_ratio=sweep.max_fd_ratio, min_recall_ratio=sweep.min_recall_ratio,
                                                         extractors=swept)
    metrics["protocol"] = {
        "extractors": ref_manifest["extractors"],
        "skipped_extractors": ref_manifest["skipped"],
        "judge": judge_info,  # who judged class_consistency (and the grid and sweep): requested, used, val (auto: reconstruction) accuracies
        "reference_split": ref_manifest["reference_split"],
        "num_reference": ref_manifest["num_reference"],
        "num_generated": int(len(gen_labels)),
        "sampler": {"name": s.sampler, "steps": s.steps, "guidance": s.guidance, "eta": s.eta},
        "kid": {"kernel": "(x.y/d + 1)^3", "subsets": cfg.kid_subsets, "subset_size": cfg.kid_subset_size},
        "precision_recall": {"k": cfg.pr_k},
        "dataset_digest": manifest["dataset_digest"],
        "reconstruction": {"split": "val", "num": ceiling["num"], "what": "the judge's accuracy on real val images decoded from their "
                           "latent mean (reconstruction_consistency: what the autoencoder lets through; guided samples can exceed it, "
                           "guidance drawing prototypical images) and on the images themselves (reconstruction_real_accuracy)"},
        "reconstruction_baseline": {"split": "train", "num": int(len(reconstructed)),
                                    "what": "the real-vs-real baseline's images decoded from their latent mean: <metric>_reconstruction_<extractor> "
                                            "and <metric>_ratio_reconstruction_<extractor> (over the real baseline) are the autoencoder's "
                                            "ceiling on the samples' distribution figures"},
        "real_vs_real": {"split": "train", "num": int(len(real_images)),
                         "subset": f"per class the samples' count, torch.randperm with torch.Generator seeded {params.base.seed}",
                         "keys": "<metric>_real_<extractor>; fd_ratio / precision_ratio / recall_ratio_<extractor> = samples / real"},
        "guidance_sweep": {"guidances": list(sweep.guidances), "num_per_class": sweep.num_per_class, "sampler": sweep.sampler,
                           "steps": sweep.steps, "seed": params.base.seed + 2, "extractors": swept,
                           "max_fd_ratio": sweep.max_fd_ratio, "min_recall_ratio": sweep.min_recall_ratio, "rule": RULE},
    }
    atomic_write_json(sweep_path, sweep_rows)
    atomic_write_json(quality_path, rows)
    atomic_write_json(quality_plot, quality_by_steps(rows))
    plot_quality(rows, Path(quality_path).with_suffix(".png"))
    atomic_write_json(out_path, metrics)
    log.info("evaluate: %s", {k: v for k, v in metrics.items() if isinstance(v, float)})
    return metrics
