"""The autoencoder's ceiling on the distribution figures two ways: the real-vs-real baseline's images decoded from their
latent *means* (what ``evaluate`` reports as ``fd_ratio_reconstruction_<e>``) and decoded from one *draw* of each
image's posterior q(z|x) (what a U-Net that learnt ``train_diffusion.latents: posterior_sample`` exactly would
produce), per extractor, as FD / precision / recall ratios over the real baseline at the same n:

    .venv/bin/python -m benchmarks.posterior_ceiling --run RUN --out reports/benchmarks/posterior_ceiling.json

RUN is a finished run folder (params.yaml, data/dataset, samples/, models/{autoencoder,classifier}, reference_stats).
The baseline is ``evaluate``'s: a ``base.seed``-ed train subset with the samples' per-class counts; the draws are
seeded (``--seeds``), the noise drawn for all images at once
(:func:`benchmarks.judges_decoded.posterior_samples`). Heusel et al. 2017, eq. 6 (FD); Kynkäänniemi et al. 2019
(precision, recall). CPU, ``--num-threads`` torch threads.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks.judges_decoded import posterior_samples
from benchmarks.provenance import provenance
from components.io import atomic_write_json


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished run folder")
    ap.add_argument("--models", type=Path, default=None, help="the models folder whose autoencoder to score (default: RUN/models)")
    ap.add_argument("--extractors", nargs="+", default=["classifier", "effnet_lite0"], choices=["classifier", "effnet_lite0"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="one posterior draw per image per seed")
    ap.add_argument("--num-threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.num_threads)

    from components.config import load_params
    from components.data.artifact import read_dataset
    from components.data.samples import read_samples
    from components.evaluation.ceiling import reconstruct
    from components.evaluation.classifier import load_classifier
    from components.evaluation.protocol import build_extractors, distribution_metrics, extractor_batch_size, load_reference
    from components.evaluation.tradeoff import REAL_SUFFIX, ratio_metrics, stratified_subset
    from components.models.checkpoint import load_autoencoder

    run = args.run.resolve()
    models = (args.models or run / "models").resolve()
    params = load_params(run / "params.yaml")
    cfg = params.evaluate
    manifest = json.loads((run / "data/dataset/manifest.json").read_text())
    _, refs = load_reference(run / "reference_stats", manifest["dataset_digest"])
    _, gen_labels = read_samples(run / "samples")
    ds = read_dataset(run / "data/dataset", stream=True)
    real = ds.images["train"][stratified_subset(ds.labels["train"], gen_labels, params.base.seed)]
    clf = load_classifier(run / "models/classifier", torch.device("cpu"))
    extractors, _ = build_extractors(args.extractors, clf, device=torch.device("cpu"))
    autoencoder, _ = load_autoencoder(models / "autoencoder", torch.device("cpu"))
    if autoencoder.config.regularizer != "kl":
        raise SystemExit(f"{models / 'autoencoder'} is a {autoencoder.config.regularizer!r} autoencoder: its latents are "
                         "deterministic, the means are the draws")
    t0 = time.perf_counter()
    sets = {"means": reconstruct(autoencoder.eval(), real, 100)}
    posterior = None
    for seed in args.seeds:
        sets[f"draws_seed{seed}"], posterior = posterior_samples(autoencoder, real, 100, seed=seed)
    rows: dict = {}
    for e in args.extractors:
        metrics: dict = {}
        for name, images in (("real", real), *sets.items()):
            feats = extractors[e](images, batch_size=extractor_batch_size(e, cfg.feature_batch_size))
            prefix = f"{REAL_SUFFIX}_{e}" if name == "real" else f"{name}_{e}"
            metrics.update(distribution_metrics(feats, refs[e], prefix, kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size,
                                                pr_k=cfg.pr_k, seed=params.base.seed))
        for name in sets:
            ratios = ratio_metrics(metrics, e, of=name)
            rows.setdefault(name, {})[e] = {"fd": metrics[f"fd_{name}_{e}"],
                                            **{f"{m}_ratio": ratios[f"{m}_ratio_{name}_{e}"] for m in ("fd", "precision", "recall")}}
        rows.setdefault("real", {})[e] = {"fd": metrics[f"fd_{REAL_SUFFIX}_{e}"]}
    result = {"command": "python -m benchmarks.posterior_ceiling " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "run": str(run), "autoencoder": str(models / "autoencoder"), "num": int(len(real)), "seeds": args.seeds,
              "posterior": posterior, "rows": rows, "seconds": round(time.perf_counter() - t0, 1), "provenance": provenance()}
    for name, per in rows.items():
        if name != "real":
            print(f"{name}: " + ", ".join(f"{e} FD ratio {r['fd_ratio']:.2f} recall ratio {r['recall_ratio']:.2f}" for e, r in per.items()))
    atomic_write_json(args.out, result)
    print(f"posterior variance / variance of the means: {posterior['noise_to_signal']:.2f}\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
