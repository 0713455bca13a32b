"""The autoencoder's ceiling on the distribution figures, per autoencoder variant and per CPU-second (issue 14).

``evaluate`` scores the real-vs-real baseline's own train images decoded from their latent mean exactly like the
samples (``fd_ratio_reconstruction_<extractor>``, ``recall_ratio_reconstruction_<extractor>``): no U-Net can beat the
decoder it renders through, so these ratios bound the samples' from below. On the default run the bound alone is an FD
ratio of 3.9 (classifier features) / 2.5 (EfficientNet-Lite0) against issue 14's target of 1.3. This script trains
each autoencoder variant (params.yaml's defaults plus one change) on the same MNIST artifact with the same seed, and
measures its ceiling with the protocol of ``evaluate``: the same extractors (the pipeline's classifier, trained once by
``reference_stats``, and EfficientNet-Lite0), the same val reference, the same seeded, class-stratified 500-image
baseline subset (``sample.num_per_class`` per class), the same KID / precision-recall settings.

    python -m benchmarks.autoencoder_ceiling --num-threads 1                      # every variant (~1.5-2 h of one core)
    python -m benchmarks.autoencoder_ceiling --variants default latent8 --ae-images 4000   # a smoke run
    python -m benchmarks.autoencoder_ceiling --merge a.json b.json     # runs split over cores, as one file

``--merge`` refuses parts whose real-vs-real baselines differ (other data, seed or classifier) and keeps each part's
provenance in ``parts``.

Results go to ``reports/benchmarks/autoencoder_ceiling.json`` (``rows``: one per variant, with the real-vs-real
baseline once in ``real``; ``provenance``) and are printed as a table. Train seconds are one run each on whatever the
machine was doing (the load is not recorded): the rows' ``macs_per_forward`` x ``images`` is the comparable cost.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from benchmarks.provenance import provenance
from benchmarks.scratch import scratch_workdir, trained_autoencoder_variants
from components.config import Params
from components.io import atomic_write_json
from pipelines.presets import ROOT, deep_merge
from pipelines.stages import ingest, reference_stats

EXTRACTORS = ["classifier", "effnet_lite0"]


def variants(base: dict) -> dict[str, dict]:
    """``train_autoencoder`` overrides of each variant, one change from the default each (Rombach et al. 2022, sec. 3.1
    and app. G: capacity, latent channels, images seen, KL weight, the perceptual term; and the normalisation)."""
    ch = list(base["channels"])
    return {  # cheapest first, so a run cut short still has the cheap ones
        "default": {},
        "latent8": {"latent_channels": 2 * base["latent_channels"]},
        "kl_1e-6": {"kl_weight": base["kl_weight"] / 10},
        "norm_layer": {"norm": "layer"},  # per-position LayerNorm: no GroupNorm statistic for a decoder spot to steer
        "res2": {"num_res_blocks": 2 * base["num_res_blocks"]},
        "images2x": {"max_images": 2 * base["max_images"]},
        "perceptual": {"perceptual_weight": 0.01},
        "wide": {"channels": [2 * c for c in ch]},
        # LDM's PatchGAN hinge term with its adaptive weight (Rombach et al. 2022, app. G; Esser et al. 2021, eq. 7),
        # switched on halfway: sharper reconstructions at some PSNR; unlike `perceptual`, no judge's network in the loss
        "gan": {"disc_weight": 0.5, "disc_start_images": base["max_images"] // 2},
        # the pixel loss, named explicitly (params.yaml's default moved from mse to l1, LDM's, in dd29b8e; one of the two
        # rows repeats `default`): the mean absolute error's optimum is a median, so a background that is 0 in most
        # images comes back 0
        "l1": {"reconstruction_loss": "l1"},
        "mse": {"reconstruction_loss": "mse"},
        # LDM's resamp_with_conv=False: average pooling down, nearest upsampling alone up. The decoder's two upsampling
        # convolutions run at the doubled resolution (30 % of the default's MACs); without them a step costs 0.72x,
        # so 1.4x the images fit in the default's time
        "no_resample_conv": {"resample_with_conv": False},
        "no_resample_conv_images1.4x": {"resample_with_conv": False, "max_images": 7 * base["max_images"] // 5},
        # more from the same images: twice the learning rate, or twice the optimizer steps (half the batch)
        "lr2x": {"lr": 2 * base["lr"]},
        "batch_half": {"batch_size": base["batch_size"] // 2},
        "batch_quarter": {"batch_size": base["batch_size"] // 4},
        "batch_half_lr_half": {"batch_size": base["batch_size"] // 2, "lr": base["lr"] / 2},
    }


def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def ceiling_scorer(params: Params, work: Path) -> tuple[Callable[[Path], dict], dict]:
    """``(score, real)``: ``real`` holds the real-vs-real baseline's figures (``*_real_<e>``), computed once; ``score(ae_dir)``
    returns the ceiling of the autoencoder saved in ``ae_dir``, ``fd/kid/precision/recall_reconstruction_<e>`` and their
    ratios over that baseline, as ``evaluate`` computes them (same extractors, reference, subset and settings)."""
    from components.data.artifact import read_dataset
    from components.evaluation.ceiling import reconstruct
    from components.evaluation.classifier import load_classifier
    from components.evaluation.protocol import build_extractors, distribution_metrics, extractor_batch_size, load_reference
    from components.evaluation.tradeoff import REAL_SUFFIX, RECONSTRUCTION, ratio_metrics, stratified_subset
    from components.models.checkpoint import load_autoencoder

    cfg = params.evaluate
    ds = read_dataset(work / "data", stream=True)
    _, refs = load_reference(work / "reference_stats", ds.manifest["dataset_digest"])
    like = np.repeat(np.arange(ds.num_classes), params.sample.num_per_class)  # the samples' labels in the default run
    real_images = ds.images["train"][stratified_subset(ds.labels["train"], like, params.base.seed)]
    extractors, _ = build_extractors(EXTRACTORS, load_classifier(work / "models" / "classifier"))

    def metrics(images: np.ndarray, prefix: str, name: str) -> dict:
        feats = extractors[name](images, batch_size=extractor_batch_size(name, cfg.feature_batch_size))
        return distribution_metrics(feats, refs[name], f"{prefix}_{name}", kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size,
                                    pr_k=cfg.pr_k, seed=params.base.seed)

    real = {k: v for name in EXTRACTORS for k, v in metrics(real_images, REAL_SUFFIX, name).items()}

    def score(ae_dir: Path) -> dict:
        autoencoder, _ = load_autoencoder(ae_dir)
        rec = reconstruct(autoencoder.eval(), real_images, params.sample.batch_size)
        out: dict = {}
        for name in EXTRACTORS:
            out.update(metrics(rec, RECONSTRUCTION, name))
            out.update(ratio_metrics({**real, **out}, name, of=RECONSTRUCTION))
        return out

    return score, real


def run(num_threads: int, only: list[str] | None, overrides: dict, out: Path, ae_images: int | None = None) -> tuple[dict, list[dict]]:
    """Every variant in turn; ``out`` is rewritten (atomically) after each, so an interrupted run keeps what it measured."""
    raw = deep_merge(default_params(), overrides)
    raw["base"]["num_threads"] = num_threads
    raw["evaluate"]["extractors"] = EXTRACTORS  # Inception is not part of issue 14's targets
    rows: list[dict] = []
    with scratch_workdir("ae_ceiling_") as work:
        params = Params.model_validate(raw)
        ingest.run(params, out_dir=work / "data")
        reference_stats.run(params, data_dir=work / "data", models_dir=work / "models", out_dir=work / "reference_stats")
        score, real = ceiling_scorer(params, work)
        for name, override, p, models, m, seconds in trained_autoencoder_variants(raw, variants(raw["train_autoencoder"]), only, work):
            figures = score(models / "autoencoder")
            row = {"variant": name, "override": override, "val_psnr": round(m["val_psnr"], 2), "parameters": m["parameters"],
                   "macs_per_forward": m["macs_per_forward"], "train_seconds": round(seconds, 1),
                   "images": p.train_autoencoder.max_images, **figures}
            rows.append(row)
            print(json.dumps(row), flush=True)
            atomic_write_json(out, {"num_threads": num_threads, "ae_images": ae_images, "real": real, "rows": rows,
                                    "provenance": provenance(threads=num_threads)})
    return real, rows


def merge(paths: list[Path]) -> dict:
    """One result from the parts of a run split over processes: their rows in variant order (the first part's row of a
    variant measured twice), each part's provenance (a merged file's own parts); the parts must share the real-vs-real baseline to the last digit."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    for p, part in zip(paths[1:], parts[1:], strict=True):
        if part["real"] != parts[0]["real"] or part.get("ae_images") != parts[0].get("ae_images"):
            raise SystemExit(f"{p}: its real-vs-real baseline or --ae-images differs from {paths[0]}'s; these runs are not comparable")
    rows: dict[str, dict] = {}
    for part in parts:
        for row in part["rows"]:
            rows.setdefault(row["variant"], row)
    order = list(variants(default_params()["train_autoencoder"]))
    return {"num_threads": parts[0]["num_threads"], "ae_images": parts[0].get("ae_images"), "real": parts[0]["real"],
            "rows": sorted(rows.values(), key=lambda r: order.index(r["variant"]) if r["variant"] in order else len(order)),
            "provenance": parts[0]["provenance"],
            # a file merged before keeps the parts it was merged from, so merging one more variant in loses no provenance
            "parts": [q for p, part in zip(paths, parts, strict=True) for q in part.get("parts") or [{"file": str(p), "provenance": part["provenance"]}]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="*", help=f"only these variants (default: all of {', '.join(variants(default_params()['train_autoencoder']))})")
    ap.add_argument("--num-threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared CPU)")
    ap.add_argument("--ae-images", type=int, help="override train_autoencoder.max_images of the default (smoke runs)")
    ap.add_argument("--merge", nargs="+", type=Path, help="merge these result files into --out instead of running")
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/autoencoder_ceiling.json"))
    args = ap.parse_args()
    if args.merge:
        merged = merge(args.merge)
        atomic_write_json(args.out.resolve(), merged)
        rows = merged["rows"]
    else:
        overrides: dict = {}
        if args.ae_images:
            overrides["train_autoencoder"] = {"max_images": args.ae_images, "warmup_images": min(2000, args.ae_images // 4)}
        _, rows = run(args.num_threads, args.variants, overrides, args.out.resolve(), args.ae_images)
    print(f"\n{'variant':12} {'PSNR dB':>8} {'params':>8} {'train s':>8} {'FD ratio clf':>12} {'FD ratio eff':>12} {'recall r. clf':>13} {'recall r. eff':>13}")
    for r in rows:
        print(f"{r['variant']:12} {r['val_psnr']:8.2f} {r['parameters']:8,} {r['train_seconds']:8.1f} "
              f"{r['fd_ratio_reconstruction_classifier']:12.2f} {r['fd_ratio_reconstruction_effnet_lite0']:12.2f} "
              f"{r['recall_ratio_reconstruction_classifier']:13.2f} {r['recall_ratio_reconstruction_effnet_lite0']:13.2f}")
    print(f"\nwritten to {args.out.resolve()}")


if __name__ == "__main__":
    main()
