"""Record what a ``make run`` (``dvc repro``) measured, as committed JSON the README and ``reports/benchmarks.md`` can quote.

    make run && .venv/bin/python -m benchmarks.pipeline_run      # same shell, same OMP_NUM_THREADS as the run

Reads the pipeline's DVC-tracked (not committed) outputs: ``metrics/autoencoder.json``, ``metrics/diffusion.json``,
``metrics.json`` (``evaluate``), ``data/dataset/manifest.json`` and ``params.yaml``; writes
``reports/benchmarks/pipeline_run.json``: training seconds, images seen and the val PSNR of each training stage,
the evaluation figures (class consistency, Fréchet distance per extractor, the classifier's val accuracy, the
sampler) and the provenance (``benchmarks/provenance.py``; torch threads are ``base.num_threads``, or this
process's default when that is 0, so run it in the environment of the run). ``--wall-minutes`` adds the
``make run`` wall time when you timed it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from benchmarks.provenance import provenance
from components.io import atomic_write_json

STAGE_KEYS = ("train_seconds", "images_seen", "val_psnr", "parameters", "macs_per_forward", "processes", "resumed_from_step",
              "stopped_by_max_time")
EVAL_KEYS = ("class_consistency", "classifier_val_accuracy", "fd_classifier", "fd_effnet_lite0", "fd_inception", "kid_classifier",
             "precision_classifier", "recall_classifier", "judge", "judge_val_accuracy", "effnet_probe_val_accuracy",
             "class_consistency_classifier", "fd_ratio_classifier", "fd_ratio_effnet_lite0", "recall_ratio_classifier",
             "recall_ratio_effnet_lite0", "fd_ratio_reconstruction_classifier", "fd_ratio_reconstruction_effnet_lite0",
             "recall_ratio_reconstruction_classifier", "recall_ratio_reconstruction_effnet_lite0", "reconstruction_consistency")


def collect(root: Path, wall_minutes: float | None = None) -> dict:
    """The record of the pipeline run whose outputs are under ``root``."""
    def read(rel: str) -> dict:
        path = root / rel
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run the pipeline first (`make run`)")
        return json.loads(path.read_text())

    params = yaml.safe_load((root / "params.yaml").read_text())
    metrics = read("metrics.json")
    protocol = metrics.get("protocol", {})
    manifest = read("data/dataset/manifest.json")
    threads = (params.get("base") or {}).get("num_threads") or None
    return {
        "dataset_digest": manifest.get("dataset_digest"),
        "autoencoder": {k: v for k, v in read("metrics/autoencoder.json").items() if k in STAGE_KEYS},
        "diffusion": {k: v for k, v in read("metrics/diffusion.json").items() if k in STAGE_KEYS},
        "evaluate": {k: metrics[k] for k in EVAL_KEYS if k in metrics}
        | {"num_generated": protocol.get("num_generated"), "sampler": protocol.get("sampler")},
        "make_run_wall_minutes": wall_minutes,
        "provenance": provenance(threads=threads),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."), help="project directory of the run")
    ap.add_argument("--wall-minutes", type=float, default=None, help="wall time of the whole `make run`, if you timed it")
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/pipeline_run.json"))
    a = ap.parse_args()
    result = collect(a.root, a.wall_minutes)
    atomic_write_json(a.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
