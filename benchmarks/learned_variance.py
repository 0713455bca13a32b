"""Learned variance (improved DDPM's hybrid loss) vs fixed variance, sampled with respaced DDPM.

Trains a ``variance_type: learned_range`` U-Net with the pipeline's own stage function on the same
autoencoder, data, budget and seed as the default model in ``models/``, then scores both with DDPM at
the given step counts (same noise, same labels): class consistency and Fréchet distance in the
evaluator classifier's features against the val split. Writes ``reports/learned_variance.json``.

    .venv/bin/python -m benchmarks.learned_variance --steps 50,100
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.provenance import provenance
from benchmarks.quality_vs_steps import load_classifier
from components.config import load_params
from components.data.artifact import read_dataset
from components.evaluation import class_consistency, feature_statistics, frechet_distance
from components.evaluation.classifier import classify
from components.generation import LatentDiffusionGenerator
from components.io import atomic_write_json
from pipelines.stages import train_diffusion


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--data", type=Path, default=Path("data/dataset"))
    ap.add_argument("--steps", default="50,100")
    ap.add_argument("--num-per-class", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path("reports/learned_variance.json"))
    args = ap.parse_args()

    params = load_params(args.params)
    variant = params.model_copy(update={"train_diffusion": params.train_diffusion.model_copy(update={"variance_type": "learned_range"})})
    ds = read_dataset(args.data)
    clf = load_classifier(args.models / "classifier")
    mu_ref, sig_ref = feature_statistics(classify(clf, ds.images["val"])[0])
    labels = np.repeat(np.arange(ds.num_classes), args.num_per_class)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_models = Path(tmp) / "models"
        shutil.copytree(args.models / "autoencoder", tmp_models / "autoencoder")
        train_metrics = train_diffusion.run(variant, args.data, tmp_models, Path(tmp) / "metrics")
        generators = {"fixed_small": LatentDiffusionGenerator.from_dir(args.models), "learned_range": LatentDiffusionGenerator.from_dir(tmp_models)}
        rows = []
        for steps in [int(s) for s in args.steps.split(",")]:
            for name, gen in generators.items():
                images = gen.generate(labels, seed=99, sampler="ddpm", steps=steps, guidance=params.sample.guidance)
                feats, pred = classify(clf, images)
                row = {"variance_type": name, "sampler": "ddpm", "steps": steps,
                       "class_consistency": class_consistency(pred, labels, ds.num_classes)["overall"],
                       "fd_classifier": frechet_distance(*feature_statistics(feats), mu_ref, sig_ref)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    atomic_write_json(args.out, {"learned_range_training": train_metrics, "num_generated": int(len(labels)), "rows": rows,
                                 "provenance": provenance()})


if __name__ == "__main__":
    main()
