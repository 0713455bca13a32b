"""What a Fréchet-distance ratio of a run means: the judges' response to small, known degradations of real images.

``evaluate`` reports FD(samples, val) / FD(real train subset, val) per extractor (issue 14's "FD ratio"). This script
takes that real train subset of a finished run (``evaluate``'s seeded subset, the samples' per-class counts) and scores
copies of it with one known change each, against the run's own val reference and judges, exactly as ``evaluate``
scores samples:

- ``blur_<s>``: a Gaussian blur of standard deviation ``s`` pixels (separable, edges repeated), rounded to uint8;
- ``noise_<s>``: Gaussian noise of standard deviation ``s`` grey levels (of 255), clipped and rounded;
- ``haze``: the exactly-0 pixels (MNIST's background) set to 0, 1 or 2 at random: a change no eye sees;
- ``reconstruction``: the run's autoencoder (decoded posterior means: ``evaluate``'s ``fd_ratio_reconstruction_*``,
  so this row must reproduce the run's metrics.json, and the JSON records whether it does);
- ``reconstruction_floor_<t>``: those reconstructions with every value <= ``t`` set to 0 (a diagnostic, not a
  proposal: how much of the autoencoder's ceiling is a faint background).

Each row has its PSNR against the unchanged images, its fraction of exactly-0 pixels and, per extractor, the FD,
precision and recall ratios over the real-vs-real baseline. A degradation of the same PSNR as the autoencoder's that
moves a ratio far more than the autoencoder does says the judge reads that kind of change; one that moves it at no
visible cost says the ratio's target asks for more than looks.

    .venv/bin/python -m benchmarks.judge_sensitivity --run RUN --out reports/benchmarks/judge_sensitivity.json

RUN is a finished run folder (params.yaml, data/dataset, reference_stats/, models/{classifier,autoencoder},
metrics.json). CPU, ``--num-threads``. Heusel et al. 2017, eq. 6 (FD); Kynkäänniemi et al. 2019 (precision, recall).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.provenance import provenance
from components.io import atomic_write_json

EXTRACTORS = ("classifier", "effnet_lite0")
BLURS = (0.4, 0.5, 0.7)
NOISES = (1.0, 2.0, 5.0)
FLOORS = (2, 8)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 ``[N, H, W, C]`` blurred by a separable Gaussian of std ``sigma`` pixels (radius ceil(3 sigma), edges
    repeated), rounded back to uint8."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    r = max(1, int(np.ceil(3 * sigma)))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).float()
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def gaussian_noise(images: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """uint8 images plus Gaussian noise of std ``sigma`` grey levels (a seeded ``torch.Generator``), clipped, rounded."""
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(images)).double()
    x = x + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x.round().clamp(0, 255).to(torch.uint8).numpy()


def background_haze(images: np.ndarray, seed: int, top: int = 2) -> np.ndarray:
    """uint8 images whose exactly-0 pixels become 0..``top`` uniformly at random (seeded); every other pixel as it was."""
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(images)).clone()
    zero = x == 0
    x[zero] = torch.randint(0, top + 1, (int(zero.sum()),), generator=g).to(torch.uint8)
    return x.numpy()


def floor(images: np.ndarray, at: int) -> np.ndarray:
    """uint8 images with every value <= ``at`` set to 0."""
    out = np.array(images, copy=True)
    out[out <= at] = 0
    return out


def psnr(images: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over the whole set (peak 255); infinite for identical sets."""
    mse = float(np.mean((images.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def degraded_sets(real: np.ndarray, reconstruction: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Every row's images, in the order of the report's table."""
    sets = {"reconstruction": reconstruction}
    sets |= {f"reconstruction_floor_{t}": floor(reconstruction, t) for t in FLOORS}
    sets |= {f"blur_{s:g}": gaussian_blur(real, s) for s in BLURS}
    sets |= {f"noise_{s:g}": gaussian_noise(real, s, seed) for s in NOISES}
    sets["haze"] = background_haze(real, seed)
    return sets


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished run folder")
    ap.add_argument("--extractors", nargs="+", default=list(EXTRACTORS), choices=list(EXTRACTORS))
    ap.add_argument("--num-threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--note", default=None, help="a sentence saying what the run is, kept in the JSON and the report")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.num_threads)

    from components.config import load_params
    from components.data.artifact import read_dataset
    from components.evaluation.ceiling import reconstruct
    from components.evaluation.classifier import load_classifier
    from components.evaluation.protocol import build_extractors, distribution_metrics, extractor_batch_size, load_reference
    from components.evaluation.tradeoff import REAL_SUFFIX, ratio_metrics, stratified_subset
    from components.models.checkpoint import load_autoencoder

    run = args.run.resolve()
    params = load_params(run / "params.yaml")
    cfg = params.evaluate
    ds = read_dataset(run / "data/dataset", stream=True)
    _, refs = load_reference(run / "reference_stats", ds.manifest["dataset_digest"])
    missing = [e for e in args.extractors if e not in refs]
    if missing:
        raise SystemExit(f"{run / 'reference_stats'} has no reference for {', '.join(missing)}: pass --extractors "
                         f"{' '.join(e for e in args.extractors if e in refs)} or re-run reference_stats with them")
    like = np.repeat(np.arange(ds.num_classes), params.sample.num_per_class)  # evaluate's real-vs-real subset
    real = np.asarray(ds.images["train"][stratified_subset(ds.labels["train"], like, params.base.seed)])
    extractors, _ = build_extractors(args.extractors, load_classifier(run / "models/classifier"))
    autoencoder, _ = load_autoencoder(run / "models/autoencoder", torch.device("cpu"))

    def figures(images: np.ndarray, name: str) -> dict:
        out: dict = {}
        for e in args.extractors:
            feats = extractors[e](images, batch_size=extractor_batch_size(e, cfg.feature_batch_size))
            out |= distribution_metrics(feats, refs[e], f"{name}_{e}", kid_subsets=cfg.kid_subsets,
                                        kid_subset_size=cfg.kid_subset_size, pr_k=cfg.pr_k, seed=params.base.seed)
        return out

    t0 = time.perf_counter()
    real_figures = figures(real, REAL_SUFFIX)
    rows = []
    for name, images in degraded_sets(real, reconstruct(autoencoder.eval(), real, params.sample.batch_size), params.base.seed).items():
        m = {**real_figures, **figures(images, name)}
        row = {"set": name, "psnr": psnr(images, real), "zero_fraction": float(np.mean(images == 0))}
        for e in args.extractors:
            ratios = ratio_metrics(m, e, of=name)
            row[e] = {k: ratios[f"{k}_ratio_{name}_{e}"] for k in ("fd", "precision", "recall")}
        rows.append(row)
        print(f"{name:26} PSNR {row['psnr']:6.2f} dB  zeros {row['zero_fraction']:.3f}  "
              + "  ".join(f"{e}: FD ratio {row[e]['fd']:.2f} recall ratio {row[e]['recall']:.2f}" for e in args.extractors), flush=True)
    check = None
    metrics_path = run / "metrics.json"
    if metrics_path.is_file():  # the reconstruction row is evaluate's ceiling: the same figures, or this script is wrong
        m = json.loads(metrics_path.read_text())
        rec = rows[0]
        pairs = {e: (rec[e]["fd"], m.get(f"fd_ratio_reconstruction_{e}")) for e in args.extractors}
        check = {"pairs": pairs, "reconstruction_row_matches": all(v is not None and abs(ours - v) <= 1e-3 * abs(v)
                                                                   for ours, v in pairs.values())}
    result = {"command": "python -m benchmarks.judge_sensitivity " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "run": str(run), "num": int(len(real)), "real": {e: real_figures[f"fd_{REAL_SUFFIX}_{e}"] for e in args.extractors},
              "real_zero_fraction": float(np.mean(real == 0)), "rows": rows, "evaluate": check, "note": args.note,
              "seconds": round(time.perf_counter() - t0, 1), "provenance": provenance(threads=args.num_threads)}
    atomic_write_json(args.out, result)
    if check is not None:
        print(f"the reconstruction row reproduces the run's metrics.json: {check['reconstruction_row_matches']}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
