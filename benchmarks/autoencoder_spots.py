"""Spot artifacts of trained autoencoders, side by side: how far the decoder's features spike at one position, and what
the round trip keeps (README "The spots are GroupNorm's").

A decoder whose normalisation statistics span the whole feature map (GroupNorm) can plant one small, very bright spot to
steer them (the "droplet" of Karras et al. 2020, StyleGAN2 sec. 2.1); on shapes64 every reconstruction and every sample
showed such a spot. For each autoencoder (``NAME=DIR``, a ``models/autoencoder`` folder) this script reconstructs the
val split of ``--data`` from the posterior mean and records:

* ``spot_ratio``: the largest per-position feature norm over the median one, at the input of the decoder's last
  normalisation layer, median over the images (1-2 for a smooth map; a spot makes it 10x and more);
* ``val_psnr``: PSNR of the uint8 reconstructions (the pipeline's ``val_psnr`` is computed in float);
* ``reconstruction_consistency`` (the judge, ``--classifier``, on the reconstructions, as ``evaluate`` reports it) and
  the confusion matrix (rows: true class);
* ``fd_ratio_classifier``: FD(reconstructions of one half of val, the other half real) / FD(real half, real half) in
  the classifier's features (the halves split by index parity, so both hold every class).

    .venv/bin/python -m benchmarks.autoencoder_spots --data /tmp/s64/data/dataset --classifier /tmp/s64/models/classifier \\
        --autoencoders group=/tmp/s64/models/autoencoder layer=/tmp/s64L/models/autoencoder \\
        --out reports/benchmarks/autoencoder_spots_shapes64.json --grid reports/shapes64_autoencoder_spots.png

The grid shows the first ``--grid-images`` val images (top row) and each autoencoder's reconstructions (one row each),
``--grid-scale`` times their size.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from benchmarks.provenance import provenance
from components.images import encode_png
from components.io import atomic_write_bytes, atomic_write_json


@contextlib.contextmanager
def last_norm_inputs(autoencoder: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """While open, every decode appends its per-position feature norms ``[B, H*W]`` at the input of the decoder's last
    normalisation layer to the yielded list (a forward hook, removed on exit)."""
    from components.models.blocks import ChannelLayerNorm

    norms = [m for m in autoencoder.decoder.modules() if isinstance(m, (torch.nn.GroupNorm, ChannelLayerNorm))]
    seen: list[torch.Tensor] = []
    handle = norms[-1].register_forward_hook(lambda m, i, o: seen.append(i[0].detach().float().norm(dim=1).flatten(1)))
    try:
        yield seen
    finally:
        handle.remove()


def spot_ratio(norm_inputs: list[torch.Tensor]) -> float:
    """Median over images of max / median per-position feature norm (``norm_inputs`` from :func:`last_norm_inputs`)."""
    a = torch.cat(norm_inputs)
    return float((a.max(1).values / a.median(1).values).median())


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from components.evaluation.metrics import frechet_distance

    return float(frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a dataset artifact (data/dataset of a run)")
    ap.add_argument("--classifier", type=Path, required=True, help="the run's models/classifier (the judge)")
    ap.add_argument("--autoencoders", nargs="+", required=True, metavar="NAME=DIR", help="models/autoencoder folders to compare")
    ap.add_argument("--num-threads", type=int, default=2)
    ap.add_argument("--grid", type=Path, default=None, help="PNG: val images and each autoencoder's reconstructions")
    ap.add_argument("--grid-images", type=int, default=12)
    ap.add_argument("--grid-scale", type=int, default=2, help="nearest-neighbour upscaling of the grid, so the spots are visible")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.num_threads)

    from components.data.artifact import read_dataset
    from components.evaluation.ceiling import reconstruct
    from components.evaluation.classifier import classify, load_classifier
    from components.models.checkpoint import load_autoencoder

    named = []
    for item in args.autoencoders:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path, "config.json").is_file():
            ap.error(f"--autoencoders wants NAME=DIR with DIR a models/autoencoder folder (config.json inside), got {item!r}")
        named.append((name, Path(path)))
    ds = read_dataset(args.data)
    val, labels = np.asarray(ds.images["val"]), np.asarray(ds.labels["val"])
    num_classes = len(ds.class_names)
    clf = load_classifier(args.classifier)
    real_feats, real_pred = classify(clf, val)
    even, odd = np.arange(0, len(val), 2), np.arange(1, len(val), 2)
    fd_real = frechet(real_feats[even], real_feats[odd])
    rows, grid_rows = [], [np.concatenate(list(val[: args.grid_images]), axis=1)]
    for name, path in named:
        ae, meta = load_autoencoder(path)
        ae.eval()
        with torch.inference_mode(), last_norm_inputs(ae) as norm_inputs:
            rec = reconstruct(ae, val, 100)
        feats, pred = classify(clf, rec)
        mse = ((rec.astype(np.float64) - val) ** 2).mean(axis=(1, 2, 3))
        confusion = np.zeros((num_classes, num_classes), dtype=int)
        np.add.at(confusion, (labels, pred), 1)
        fd = frechet(feats[even], real_feats[odd])
        row = {
            "name": name, "path": str(path), "norm": meta["model"].get("norm", "group"),
            "train_seconds": meta.get("metrics", {}).get("train_seconds"), "images_seen": meta.get("metrics", {}).get("images_seen"),
            "spot_ratio": spot_ratio(norm_inputs),
            "val_psnr": float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12)))),
            "reconstruction_consistency": float((pred == labels).mean()),
            "fd_classifier": fd, "fd_ratio_classifier": fd / fd_real,
            "confusion": confusion.tolist(),
        }
        rows.append(row)
        grid_rows.append(np.concatenate(list(rec[: args.grid_images]), axis=1))
        print(f"{name}: spot ratio {row['spot_ratio']:.1f}, val PSNR {row['val_psnr']:.2f} dB, reconstruction consistency "
              f"{row['reconstruction_consistency']:.3f}, FD ratio (classifier) {row['fd_ratio_classifier']:.2f}", flush=True)
    result = {
        "command": "python -m benchmarks.autoencoder_spots " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "class_names": list(ds.class_names), "num_val": int(len(val)),
        "real_accuracy": float((real_pred == labels).mean()), "fd_real_classifier": fd_real,
        "rows": rows, "provenance": provenance(),
    }
    atomic_write_json(args.out, result)
    if args.grid is not None:
        grid = np.concatenate(grid_rows, axis=0)
        grid = grid.repeat(args.grid_scale, axis=0).repeat(args.grid_scale, axis=1)
        atomic_write_bytes(args.grid, encode_png(grid))
    return result


if __name__ == "__main__":
    main()
