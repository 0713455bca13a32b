"""How much the classifier-feature figures of one run depend on which reference classifier reads them.

``evaluate``'s classifier-feature Fréchet distance, precision/recall and class consistency are measured in the
feature space of the small CNN that ``reference_stats`` trains (``components.evaluation.classifier``). That network is
retrained by every ``make run``; a different seed, or the same seed on a CPU that rounds differently, gives a different
feature space. This script retrains it with several seeds (everything else as ``reference_stats``: params, data,
epochs) and scores the *same* finished run in each: the run's samples, the real-vs-real baseline (``evaluate``'s
seeded train subset with the samples' per-class counts) and that baseline decoded from its latent means (the
autoencoder's ceiling, ``fd_ratio_reconstruction_classifier``), against the val reference. The spread over seeds is
the uncertainty a single run's classifier figure carries before any sampling noise; EfficientNet-Lite0's figures have
no such term (fixed weights).

    .venv/bin/python -m benchmarks.judge_spread --run RUN --seeds 0 1 2 3 --out reports/benchmarks/judge_spread.json

RUN is a finished run folder (params.yaml, data/dataset, samples/, models/autoencoder). CPU, ``--num-threads``.
Heusel et al. 2017, eq. 6 (FD); Kynkäänniemi et al. 2019 (precision, recall).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.provenance import provenance
from components.io import atomic_write_json


def _summary(values: list[float]) -> dict:
    """min, max, mean, std and max/min of one figure over the seeds; max/min is ``None`` (undefined) when the
    smallest value is not positive (a recall ratio of 0 on a barely trained run, say)."""
    low = min(values)
    return {"min": low, "max": max(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "max_over_min": max(values) / low if low > 0 else None}


# this script's row keys -> the run's metrics.json keys for the same figures (evaluate's classifier-feature ones)
EVALUATE_KEYS = {"val_accuracy": "classifier_val_accuracy", "class_consistency": "class_consistency_classifier",
                 "fd_real": "fd_real_classifier", "fd_ratio_samples": "fd_ratio_classifier",
                 "recall_ratio_samples": "recall_ratio_classifier", "fd_ratio_reconstruction": "fd_ratio_reconstruction_classifier",
                 "recall_ratio_reconstruction": "recall_ratio_reconstruction_classifier"}


def _evaluate_figures(metrics_path: Path) -> dict | None:
    """The run's own figures (``evaluate``, with ``reference_stats``' classifier trained at ``base.seed``) under this
    script's row keys; ``None`` when the run has no metrics.json."""
    if not metrics_path.is_file():
        return None
    m = json.loads(metrics_path.read_text())
    return {"figures": {ours: m[theirs] for ours, theirs in EVALUATE_KEYS.items() if m.get(theirs) is not None}}


def parse_spread_args(doc: str, argv: list[str] | None, seeds: list[int], seeds_help: str, what: str) -> argparse.Namespace:
    """The arguments of a spread benchmark (``--run``, ``--seeds``, ``--num-threads``, ``--out``, ``--note``), with the
    torch thread count applied; fewer than two distinct seeds is a usage error (a spread needs two ``what``)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished run folder")
    ap.add_argument("--seeds", nargs="+", type=int, default=seeds, help=seeds_help)
    ap.add_argument("--num-threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--note", default=None, help="a sentence saying what the run is, kept in the JSON and the report")
    args = ap.parse_args(argv)
    if len(set(args.seeds)) < 2:
        ap.error(f"give at least two distinct --seeds: a spread needs two {what}")
    torch.set_num_threads(args.num_threads)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_spread_args(__doc__, argv, [0, 1, 2, 3], "reference classifier training seeds", "classifiers")

    from components.config import load_params
    from components.data.artifact import read_dataset
    from components.data.samples import read_samples
    from components.evaluation import feature_statistics
    from components.evaluation.ceiling import reconstruct
    from components.evaluation.classifier import classify, train_classifier
    from components.evaluation.protocol import distribution_metrics, extractor_batch_size
    from components.evaluation.tradeoff import REAL_SUFFIX, ratio_metrics, stratified_subset
    from components.models.checkpoint import load_autoencoder

    run = args.run.resolve()
    params = load_params(run / "params.yaml")
    cfg = params.evaluate
    ds = read_dataset(run / "data/dataset", stream=True)
    samples, gen_labels = read_samples(run / "samples")
    real = ds.images["train"][stratified_subset(ds.labels["train"], gen_labels, params.base.seed)]
    autoencoder, _ = load_autoencoder(run / "models/autoencoder", torch.device("cpu"))
    sets = {"samples": samples, "reconstruction": reconstruct(autoencoder.eval(), real, 100)}
    batch = extractor_batch_size("classifier", cfg.feature_batch_size)
    t0 = time.perf_counter()
    rows = []
    for seed in args.seeds:
        t_seed = time.perf_counter()
        clf = train_classifier(ds.images["train"], ds.labels["train"], ds.num_classes, epochs=cfg.classifier_epochs,
                               batch_size=cfg.classifier_batch_size, lr=cfg.classifier_lr, seed=seed, progress=False,
                               device="cpu", workers=cfg.data_workers, max_side=cfg.classifier_max_side)
        val_feats, val_pred = classify(clf, ds.images["val"], batch)
        mu, sigma = feature_statistics(val_feats)
        ref = {"features": val_feats.astype(np.float32), "mu": mu, "sigma": sigma}  # as reference_stats stores it
        metrics: dict = {}
        for name, images in (("real", real), *sets.items()):
            feats, pred = classify(clf, images, batch)
            prefix = f"{REAL_SUFFIX}_classifier" if name == "real" else f"{name}_classifier"
            metrics.update(distribution_metrics(feats, ref, prefix, kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size,
                                                pr_k=cfg.pr_k, seed=params.base.seed))
            if name == "samples":
                metrics["class_consistency"] = float((pred == gen_labels).mean())
        row = {"seed": seed, "val_accuracy": float((val_pred == ds.labels["val"]).mean()),
               "class_consistency": metrics["class_consistency"], "fd_real": metrics[f"fd_{REAL_SUFFIX}_classifier"]}
        for name in sets:
            ratios = ratio_metrics(metrics, "classifier", of=name)
            row |= {f"fd_{name}": metrics[f"fd_{name}_classifier"],
                    **{f"{m}_ratio_{name}": ratios[f"{m}_ratio_{name}_classifier"] for m in ("fd", "precision", "recall")}}
        row["seconds"] = round(time.perf_counter() - t_seed, 1)
        rows.append(row)
        print(f"seed {seed}: val accuracy {row['val_accuracy']:.3f}, class consistency {row['class_consistency']:.3f}, "
              f"FD ratio samples {row['fd_ratio_samples']:.2f}, reconstruction {row['fd_ratio_reconstruction']:.2f}", flush=True)
    keys = [k for k in rows[0] if k not in ("seed", "seconds")]
    evaluate = _evaluate_figures(run / "metrics.json")
    base = next((r for r in rows if r["seed"] == params.base.seed), None)
    if evaluate is not None and base is not None:  # the base seed's classifier is reference_stats' own: the same figures
        evaluate["base_seed_row_matches"] = all(abs(base[k] - v) <= 1e-3 * abs(v) for k, v in evaluate["figures"].items())
    result = {"command": "python -m benchmarks.judge_spread " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "run": str(run), "num": int(len(real)), "seeds": args.seeds, "rows": rows,
              "spread": {k: _summary([r[k] for r in rows]) for k in keys}, "evaluate": evaluate, "note": args.note,
              "seconds": round(time.perf_counter() - t0, 1), "provenance": provenance()}
    atomic_write_json(args.out, result)
    if evaluate is not None and "base_seed_row_matches" in evaluate:
        print(f"seed {params.base.seed} (reference_stats' own) reproduces the run's metrics.json: {evaluate['base_seed_row_matches']}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
