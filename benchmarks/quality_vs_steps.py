"""Quality vs number of sampler steps for the trained default model.

For each sampler and step count: class consistency (the evaluator classifier's predictions) and the
Fréchet distance in its feature space against the real val split, on the same initial noise and
labels for every run. Writes ``reports/benchmarks/quality_vs_steps.json`` and ``.png`` (the evaluate stage keeps its own, smaller grid in ``reports/``).

    .venv/bin/python -m benchmarks.quality_vs_steps --num-per-class 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.provenance import provenance
from components.data.artifact import read_dataset
from components.evaluation import class_consistency, feature_statistics, frechet_distance
from components.evaluation.classifier import Classifier, ClassifierConfig, classify
from components.generation import LatentDiffusionGenerator
from components.io import atomic_write_bytes, atomic_write_json
from components.models.checkpoint import read_checkpoint


def load_classifier(path: Path) -> Classifier:
    state, meta = read_checkpoint(path)
    model = Classifier(ClassifierConfig.from_dict(meta["model"]))
    model.load_state_dict(state)
    return model.eval()


def plot(rows: list[dict], out: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for sampler in sorted({r["sampler"] for r in rows}):
        rs = [r for r in rows if r["sampler"] == sampler]
        axes[0].plot([r["steps"] for r in rs], [r["class_consistency"] for r in rs], marker="o", label=sampler)
        axes[1].plot([r["steps"] for r in rs], [r["fd_classifier"] for r in rs], marker="o", label=sampler)
    for ax, name in zip(axes, ("class consistency", "Fréchet distance (classifier features)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("sampler steps")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(out, buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--data", type=Path, default=Path("data/dataset"))
    ap.add_argument("--num-per-class", type=int, default=20)
    ap.add_argument("--samplers", default="ddim,dpmpp_2m,ddpm")
    ap.add_argument("--steps", default="5,10,20,50,100,250,1000")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/quality_vs_steps.json"))
    args = ap.parse_args()

    gen = LatentDiffusionGenerator.from_dir(args.models)
    clf = load_classifier(args.models / "classifier")
    ds = read_dataset(args.data)
    ref_feats, _ = classify(clf, ds.images["val"])
    mu_ref, sig_ref = feature_statistics(ref_feats)
    labels = np.repeat(np.arange(gen.num_classes), args.num_per_class)
    rows = []
    for sampler in args.samplers.split(","):
        for steps in [int(s) for s in args.steps.split(",")]:
            t0 = time.perf_counter()
            images = gen.generate(labels, seed=args.seed, sampler=sampler, steps=steps, guidance=args.guidance)
            seconds = time.perf_counter() - t0
            feats, pred = classify(clf, images)
            row = {
                "sampler": sampler,
                "steps": steps,
                "class_consistency": class_consistency(pred, labels, gen.num_classes)["overall"],
                "fd_classifier": frechet_distance(*feature_statistics(feats), mu_ref, sig_ref),
                "seconds": round(seconds, 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "protocol": {"num_generated": int(len(labels)), "guidance": args.guidance, "seed": args.seed, "reference": "val split",
                     "num_reference": int(len(ds.labels["val"])), "extractor": "evaluate stage classifier (models/classifier)"},
        "rows": rows,
        "provenance": provenance(),
    }
    atomic_write_json(args.out, result)
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
