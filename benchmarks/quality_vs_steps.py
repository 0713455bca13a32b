"""Quality vs number of sampler steps for the trained default model.

For each sampler and step count: class consistency (the evaluator classifier's predictions) and the
Fréchet distance in its feature space against the real val split, on the same initial noise and
labels for every run. Writes ``reports/benchmarks/quality_vs_steps.json`` and ``.png`` (the evaluate stage keeps its own, smaller grid in ``reports/``).

It needs the trained default model: ``models/`` (autoencoder, diffusion, and the evaluate stage's classifier) and
``data/dataset`` from ``make run`` (``dvc repro``), then

    .venv/bin/python -m benchmarks.quality_vs_steps --num-per-class 20

A sampler/step pair the sampler cannot run (``dpmpp_2m`` with ``leading`` or ``linspace`` spacing needs N + 1 distinct
grid points, so at most T - 1 steps; ``dpmpp_2m_karras`` where its levels are ill-defined) is recorded with its error.
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
from components.evaluation.classifier import classify, load_classifier
from components.generation import LatentDiffusionGenerator
from components.io import atomic_write_bytes, atomic_write_json


def plot(rows: list[dict], out: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        rs = [r for r in rows if r["sampler"] == sampler and "error" not in r]
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
    ap.add_argument("--samplers", default="ddim,dpmpp_2m,dpmpp_2m_karras,ddpm")
    ap.add_argument("--steps", default="5,8,10,15,20,25,50,100,250,1000")
    ap.add_argument("--timestep-spacing", default="leading", choices=["leading", "trailing", "linspace"],
                    help="as sample.timestep_spacing (params.yaml's default: leading)")
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
            try:
                images = gen.generate(labels, seed=args.seed, sampler=sampler, steps=steps, guidance=args.guidance,
                                      timestep_spacing=args.timestep_spacing)
            except ValueError as e:  # a step count the sampler cannot run: recorded, not plotted
                rows.append({"sampler": sampler, "steps": steps, "error": str(e)})
                print(json.dumps(rows[-1]), flush=True)
                continue
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
                     "timestep_spacing": args.timestep_spacing,
                     "num_reference": int(len(ds.labels["val"])), "extractor": "evaluate stage classifier (models/classifier)"},
        "rows": rows,
        "provenance": provenance(),
    }
    atomic_write_json(args.out, result)
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
