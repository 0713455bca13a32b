"""Autoencoder variants compared: validation PSNR of KL f=4, KL f=8, VQ f=4 and the plain (``none``) MSE
autoencoder of the same size, on MNIST (params.yaml's budget) and on the CIFAR-10 preset (its shrunken
budget); on MNIST also the default with the perceptual term and with the PatchGAN, and, with
``--downstream``, the class consistency of a latent diffusion model trained on each of the default and
the plain autoencoder (params.yaml's diffusion budget, DDIM 50 steps, guidance 3).

    python -m benchmarks.autoencoders --datasets mnist cifar10 --downstream --num-threads 1

Each variant runs through the pipeline's own stage functions in a scratch directory; results go to
``reports/benchmarks/autoencoders.json`` (``rows``: one per dataset and variant, with ``provenance`` and ``num_threads``;
files written before provenance was recorded are a bare list of rows) and are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml

from benchmarks.provenance import provenance
from benchmarks.scratch import scratch_workdir, trained_autoencoder_variants
from components.config import Params
from components.io import atomic_write_json
from pipelines.presets import ROOT, deep_merge, preset_params
from pipelines.stages import ingest, train_diffusion


def variants(base: dict, dataset: str) -> dict[str, dict]:
    """train_autoencoder overrides of each variant; every one keeps the base's channels and latent size."""
    ch = list(base["channels"])
    out = {
        "kl_f4": {"regularizer": "kl"},
        "kl_f8": {"regularizer": "kl", "channels": [*ch, ch[-1]]},
        "vq_f4": {"regularizer": "vq"},
        "none_f4": {"regularizer": "none"},
    }
    if dataset == "mnist":
        out["kl_f4_perceptual"] = {"regularizer": "kl", "perceptual_weight": 0.01}
        out["kl_f4_gan"] = {"regularizer": "kl", "disc_weight": 0.5, "disc_start_images": base["max_images"] // 2}
    return out


def base_params(dataset: str) -> dict:
    if dataset == "mnist":
        return yaml.safe_load((ROOT / "params.yaml").read_text())
    return preset_params("cifar10")


def class_consistency(params: Params, work: Path, models_dir: Path, classifier, num_per_class: int) -> dict:
    """Sample ``num_per_class`` images per class with the params' sampler and score them with ``classifier``."""
    from components.evaluation import class_consistency as consistency
    from components.evaluation import feature_statistics, frechet_distance
    from components.evaluation.classifier import classify
    from components.generation import LatentDiffusionGenerator

    gen = LatentDiffusionGenerator.from_dir(models_dir)
    labels = np.repeat(np.arange(gen.num_classes), num_per_class)
    s = params.sample
    images = gen.generate(labels, seed=params.base.seed, sampler=s.sampler, steps=s.steps, guidance=s.guidance, eta=s.eta,
                          timestep_spacing=s.timestep_spacing)
    feats, pred = classify(classifier, images)
    from components.data.artifact import read_dataset

    real = read_dataset(work / "data")
    ref_feats, _ = classify(classifier, real.images["val"])
    return {"class_consistency": consistency(pred, labels, gen.num_classes)["overall"],
            "fd_classifier": frechet_distance(*feature_statistics(feats), *feature_statistics(ref_feats))}


def run_dataset(dataset: str, downstream: bool, num_threads: int, only: list[str] | None, overrides: dict) -> list[dict]:
    raw = deep_merge(base_params(dataset), overrides)
    raw["base"]["num_threads"] = num_threads
    rows = []
    with scratch_workdir(f"ae_bench_{dataset}_") as work:
        params = Params.model_validate(raw)
        ingest.run(params, out_dir=work / "data")
        classifier = None
        for name, override, p, models, m, seconds in trained_autoencoder_variants(raw, variants(raw["train_autoencoder"], dataset), only, work):
            row = {"dataset": dataset, "variant": name, "val_psnr": round(m["val_psnr"], 2), "val_mse": round(m["val_mse"], 5),
                   "parameters": m["parameters"], "macs_per_forward": m["macs_per_forward"], "scale_factor": round(m["scale_factor"], 4),
                   "train_seconds": round(seconds, 1), "images": p.train_autoencoder.max_images, **override}
            if downstream and dataset == "mnist" and name in ("kl_f4", "none_f4"):
                from components.data.artifact import read_dataset
                from components.evaluation.classifier import train_classifier

                if classifier is None:
                    ds = read_dataset(work / "data")
                    e = p.evaluate
                    classifier = train_classifier(ds.images["train"], ds.labels["train"], ds.num_classes, epochs=e.classifier_epochs,
                                                  batch_size=e.classifier_batch_size, lr=e.classifier_lr, seed=p.base.seed, progress=False,
                                                  max_side=e.classifier_max_side)
                t1 = time.perf_counter()
                train_diffusion.run(p, data_dir=work / "data", models_dir=models, metrics_dir=models / "metrics")
                row.update(class_consistency(p, work, models, classifier, p.sample.num_per_class),
                           diffusion_seconds=round(time.perf_counter() - t1, 1), diffusion_images=p.train_diffusion.max_images)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", choices=["mnist", "cifar10"], default=["mnist", "cifar10"])
    ap.add_argument("--variants", nargs="*", help="only these variants (default: all)")
    ap.add_argument("--downstream", action="store_true", help="MNIST: class consistency of LDMs on kl_f4 and none_f4")
    ap.add_argument("--num-threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared CPU)")
    ap.add_argument("--ae-images", type=int, help="override train_autoencoder.max_images (smoke runs)")
    ap.add_argument("--diffusion-images", type=int, help="override train_diffusion.max_images (smoke runs)")
    ap.add_argument("--num-per-class", type=int, help="override sample.num_per_class (smoke runs)")
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/autoencoders.json"))
    args = ap.parse_args()
    overrides: dict = {}
    if args.ae_images:
        overrides["train_autoencoder"] = {"max_images": args.ae_images, "warmup_images": min(2000, args.ae_images // 4)}
    if args.diffusion_images:
        overrides["train_diffusion"] = {"max_images": args.diffusion_images, "warmup_images": min(5000, args.diffusion_images // 4)}
    if args.num_per_class:
        overrides["sample"] = {"num_per_class": args.num_per_class}
    out = args.out.resolve()
    rows = []
    for dataset in args.datasets:
        rows += run_dataset(dataset, args.downstream, args.num_threads, args.variants, overrides)
        atomic_write_json(out, {"num_threads": args.num_threads, "rows": rows, "provenance": provenance(threads=args.num_threads)})
    print(f"\n{'dataset':8} {'variant':18} {'PSNR dB':>8} {'params':>8} {'MACs':>11} {'scale':>7} {'train s':>8} {'class cons.':>11} {'FD clf':>8}")
    for r in rows:
        cc = f"{r['class_consistency']:.3f}" if "class_consistency" in r else "-"
        fd = f"{r['fd_classifier']:.2f}" if "fd_classifier" in r else "-"
        print(f"{r['dataset']:8} {r['variant']:18} {r['val_psnr']:8.2f} {r['parameters']:8,} {r['macs_per_forward']:11,} "
              f"{r['scale_factor']:7.3f} {r['train_seconds']:8.1f} {cc:>11} {fd:>8}")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
