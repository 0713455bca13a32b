"""Which judge of class consistency reads an RGB data set better: the pipeline's own classifier or the linear probe on
EfficientNet-Lite0 features (issue #15 part 4; ``evaluate.judge``)?

On a preset's data (ingested here into a temporary folder exactly as its ``ingest`` stage would), this trains both
judges the way ``reference_stats`` does, with the preset's merged params (the classifier: ``evaluate.classifier_*``;
the probe: ``evaluate.probe``, its weight decay chosen on a held-out part of train) and reports each one's accuracy on
the val split, the judge ``evaluate.judge: auto`` would pick, and the seconds each took. The probe's val accuracy is
also reported for other caps on its train images (``--probe-sizes``; the features of the largest subset are extracted
once and the smaller subsets are :func:`components.evaluation.probe.subset_indices` of the same seed, as
``train_probe_judge`` draws them), which is what ``evaluate.probe.max_train_images`` trades against time.

    OMP_NUM_THREADS=1 nice -n 15 taskset -c 1 .venv/bin/python -m benchmarks.rgb_judge --preset cifar10
    OMP_NUM_THREADS=1 nice -n 15 taskset -c 1 .venv/bin/python -m benchmarks.rgb_judge --preset shapes64

Results go to ``reports/benchmarks/rgb_judge.json`` under the preset's name (other presets' entries are kept), with
provenance. Runs on the CPU with ``--threads`` torch threads (default 1).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.provenance import provenance
from components.config import Params
from components.io import atomic_write_json

OUT = Path("reports/benchmarks/rgb_judge.json")


def _load_cache(path: Path | None, key: dict):
    """``(train features, val features, seconds the extraction took)`` of a ``--features-cache`` file made from the same
    data, extractor and train subset; ``None`` when there is none or it was made from anything else."""
    if path is None or not Path(path).is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        if json.loads(str(z["key"])) != key:
            return None
        return z["train"], z["val"], float(z["seconds"])


def measure(preset: str, probe_sizes: list[int], work: Path, max_per_class: int | None = None, features_cache: Path | None = None) -> dict:
    from components.data.artifact import read_dataset
    from components.evaluation.classifier import classify, train_classifier
    from components.evaluation.features import effnet_lite0_extractor
    from components.evaluation.probe import choose_judge, select_and_fit, subset_indices
    from components.evaluation.protocol import extractor_batch_size
    from pipelines.presets import preset_params
    from pipelines.stages import ingest

    merged = preset_params(preset)
    if max_per_class is not None:  # a smoke run on fewer images (recorded in the JSON)
        merged["ingest"]["max_per_class" if merged["ingest"].get("source") != "shapes" else "shapes_per_class"] = max_per_class
    params = Params.model_validate(merged)
    cfg, seed = params.evaluate, params.base.seed
    t0 = time.perf_counter()
    ingest.run(params, out_dir=work / "data", progress=False)
    ingest_s = time.perf_counter() - t0
    ds = read_dataset(work / "data", stream=True)
    y_train, y_val = np.asarray(ds.labels["train"]), np.asarray(ds.labels["val"])

    t0 = time.perf_counter()
    clf = train_classifier(ds.images["train"], y_train, ds.num_classes, epochs=cfg.classifier_epochs, batch_size=cfg.classifier_batch_size,
                           lr=cfg.classifier_lr, seed=seed, device="cpu", progress=False, max_side=cfg.classifier_max_side)
    clf_pred = classify(clf, ds.images["val"], extractor_batch_size("classifier", cfg.feature_batch_size))[1]
    clf_s = time.perf_counter() - t0
    clf_acc = float((clf_pred == y_val).mean())
    print(f"{preset}: classifier val accuracy {clf_acc:.4f} ({clf_s:.0f} s)", flush=True)

    extractor = effnet_lite0_extractor(device="cpu")
    batch = extractor_batch_size("effnet_lite0", cfg.feature_batch_size)
    sizes = sorted({min(s, len(y_train)) for s in [*probe_sizes, cfg.probe.max_train_images]})
    largest = subset_indices(y_train, sizes[-1], seed)
    t0 = time.perf_counter()
    key = {"dataset_digest": ds.manifest["dataset_digest"], "extractor": extractor.info.weights, "train_indices": largest.tolist()}
    cached = _load_cache(features_cache, key)
    if cached is None:
        train_arr, val_feats = extractor(ds.images["train"].take(largest), batch_size=batch), extractor(ds.images["val"], batch_size=batch)
        feat_s = time.perf_counter() - t0
        if features_cache is not None:
            np.savez(features_cache, train=train_arr, val=val_feats, key=json.dumps(key), seconds=feat_s)
    else:
        train_arr, val_feats, feat_s = cached
        print(f"{preset}: features read from {features_cache} (extracted in {feat_s:.0f} s by an earlier run)", flush=True)
    train_feats = dict(zip(largest.tolist(), train_arr, strict=True))
    per_image_s = feat_s / (len(largest) + len(y_val))
    print(f"{preset}: EfficientNet-Lite0 features of {len(largest)} + {len(y_val)} images in {feat_s:.0f} s", flush=True)

    curve = []
    for n in sizes:
        idx = subset_indices(y_train, n, seed)
        t0 = time.perf_counter()
        probe, report = select_and_fit(np.stack([train_feats[i] for i in idx.tolist()]), y_train[idx], ds.num_classes,
                                       weight_decays=cfg.probe.weight_decays, holdout_fraction=cfg.probe.holdout_fraction, seed=seed,
                                       max_iter=cfg.probe.max_iter)
        fit_s = time.perf_counter() - t0
        row = {"max_train_images": n, "val_accuracy": probe.accuracy(val_feats, y_val), "weight_decay": report["weight_decay"],
               "holdout_accuracy": report["holdout_accuracy"], "train_accuracy": report["train_accuracy"], "fit_seconds": round(fit_s, 1),
               "stage_seconds_estimate": round(fit_s + per_image_s * (n + len(y_val)), 1)}
        curve.append(row)
        print(f"{preset}: probe on {n} train images: val accuracy {row['val_accuracy']:.4f} (weight decay {row['weight_decay']:g})", flush=True)
    at_param = next(r for r in curve if r["max_train_images"] == min(cfg.probe.max_train_images, len(y_train)))
    accuracy = {"classifier": clf_acc, "effnet_probe": at_param["val_accuracy"]}
    manifest = ds.manifest
    return {
        "preset": preset,
        "data": {"source": params.ingest.source, "root": params.ingest.root if params.ingest.source != "shapes" else None,
                 "dataset_digest": manifest["dataset_digest"], "counts": manifest.get("counts"), "shape": manifest.get("shape"),
                 "num_classes": ds.num_classes, "ingest_seconds": round(ingest_s, 1)},
        "classifier": {"val_accuracy": clf_acc, "epochs": cfg.classifier_epochs, "batch_size": cfg.classifier_batch_size,
                       "lr": cfg.classifier_lr, "train_images": int(len(y_train)), "seconds": round(clf_s, 1)},
        "effnet_probe": {"val_accuracy": at_param["val_accuracy"], "max_train_images": cfg.probe.max_train_images,
                         "weight_decays": list(cfg.probe.weight_decays), "holdout_fraction": cfg.probe.holdout_fraction,
                         "max_iter": cfg.probe.max_iter, "weight_decay": at_param["weight_decay"],
                         "feature_seconds_per_image": round(per_image_s, 4), "features_from_cache": cached is not None,
                         "by_max_train_images": curve},
        "auto_picks": choose_judge("auto", accuracy),
        "num_val": int(len(y_val)),
        "max_per_class_override": max_per_class,
        "seed": seed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cifar10", help="a folder of presets/ (its params merged onto params.yaml)")
    ap.add_argument("--probe-sizes", type=int, nargs="*", default=[1000, 2500, 5000, 9000],
                    help="caps on the probe's train images to report (evaluate.probe.max_train_images is always one)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--features-cache", type=Path, default=None,
                    help="an .npz to keep the EfficientNet features in (read back when made from the same data and subset), for "
                         "re-fitting with other probe params without re-extracting; the seconds quoted are the extraction's")
    ap.add_argument("--max-per-class", type=int, default=None, help="smoke runs: fewer images per class than the preset")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.preset, args.probe_sizes, Path(tmp), args.max_per_class, args.features_cache)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["provenance"] = provenance()
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    doc[args.preset] = result
    atomic_write_json(args.out, doc)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
