"""U-Net layout experiment: does seed 004's finding (two residual blocks per level are best) hold here?

Trains one U-Net per layout preset on the same latents (same autoencoder, data, training budget and
seed), samples with the configured sampler, and scores the samples with the pipeline's classifier:
class consistency and Fréchet distance / KID / precision / recall in classifier features against the
reference statistics of the val split. Reuses the stage functions of ``pipelines/stages/``.

    python -m benchmarks.unet_layouts                       # after `make run` (needs its data, models, reference_stats)
    python -m benchmarks.unet_layouts --layouts res-clsAtn-chnAtn res-large --max-images 55000

Writes ``reports/benchmarks/unet_layouts.json`` (one row per layout, rewritten after each) and prints
a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import provenance
from components.config import load_params
from components.data.samples import read_samples
from components.evaluation.protocol import distribution_metrics, load_reference
from components.io import atomic_write_json
from components.models.unet_presets import PRESET_NAMES
from pipelines.stages import sample, train_diffusion
from pipelines.stages.paths import DATA_DIR, MODELS_DIR, REFERENCE_DIR
from pipelines.stages.runtime import setup

DEFAULT_LAYOUTS = ("res-clsAtn-chnAtn", "res-res-clsAtn-chnAtn", "res-res-clsAtn-atn-chnAtn")


def _with_layout(params, preset: str, max_images: int | None):
    """``params`` with ``train_diffusion.unet.preset`` (and optionally the budget) replaced."""
    cfg = params.train_diffusion
    unet = cfg.unet.model_copy(update={"preset": preset, "blocks": None})
    update = {"unet": unet} | ({"max_images": max_images} if max_images else {})
    return params.model_copy(update={"train_diffusion": cfg.model_copy(update=update)})


def run_layout(params, preset: str, *, data_dir: Path, autoencoder: Path, classifier: Path, reference: Path, work: Path,
               max_images: int | None) -> dict:
    """Train, sample and score one layout; returns its table row."""
    from components.evaluation import class_consistency
    from components.evaluation.classifier import ClassifierExtractor, load_classifier

    p = _with_layout(params, preset, max_images)
    models = work / preset / "models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copytree(autoencoder, models / "autoencoder", dirs_exist_ok=True)
    t0 = time.perf_counter()
    train = train_diffusion.run(p, data_dir=data_dir, models_dir=models, metrics_dir=work / preset / "metrics")
    train_wall = time.perf_counter() - t0
    s = p.sample
    info = sample.run(model=models, out_dir=work / preset / "samples", num_per_class=s.num_per_class, seed=p.base.seed,
                      sampler=s.sampler, steps=s.steps, guidance=s.guidance, eta=s.eta, timestep_spacing=s.timestep_spacing)
    images, labels = read_samples(work / preset / "samples")
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    _, refs = load_reference(reference, manifest["dataset_digest"])
    clf = load_classifier(classifier)
    extractor = ClassifierExtractor(clf)
    consistency = class_consistency(extractor.predict(images), labels, len(manifest["class_names"]))
    dist = distribution_metrics(extractor(images, batch_size=500), refs["classifier"], "classifier", kid_subsets=p.evaluate.kid_subsets,
                                kid_subset_size=p.evaluate.kid_subset_size, pr_k=p.evaluate.pr_k, seed=p.base.seed)
    config = json.loads((models / "diffusion" / "config.json").read_text())["model"]
    return {
        "layout": preset,
        "channels": config["channels"],
        "level_blocks": config["level_blocks"],
        "parameters": train["parameters"],
        "macs_per_forward": train["macs_per_forward"],
        "images_seen": train["images_seen"],
        "train_seconds": train["train_seconds"],
        "train_stage_seconds": round(train_wall, 1),
        "final_loss": train["final_loss"],
        "sample_seconds": info["seconds"],
        "num_generated": int(len(labels)),
        "class_consistency": consistency["overall"],
        "class_consistency_min_class": float(min(consistency["per_class"].values())),
        **{k: float(v) for k, v in dist.items()},
    }


def markdown(rows: list[dict]) -> str:
    head = "| layout | channels | params | MACs/forward | train s | sample s | class consistency | FD (classifier) | KID (classifier) | precision | recall |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['layout']} | {tuple(r['channels'])} | {r['parameters']:,} | {r['macs_per_forward'] / 1e6:.1f} M | {r['train_seconds']:.0f} | "
            f"{r['sample_seconds']:.0f} | {r['class_consistency']:.3f} | {r['fd_classifier']:.2f} | {r['kid_classifier']:.3f} | "
            f"{r['precision_classifier']:.3f} | {r['recall_classifier']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--layouts", nargs="+", default=list(DEFAULT_LAYOUTS), choices=PRESET_NAMES)
    ap.add_argument("--max-images", type=int, default=None, help="training budget per layout (default: params.yaml)")
    ap.add_argument("--data", type=Path, default=DATA_DIR)
    ap.add_argument("--autoencoder", type=Path, default=MODELS_DIR / "autoencoder")
    ap.add_argument("--classifier", type=Path, default=MODELS_DIR / "classifier")
    ap.add_argument("--reference", type=Path, default=REFERENCE_DIR)
    ap.add_argument("--num-threads", type=int, default=None,
                    help="torch CPU threads (default: base.num_threads); 1 is much faster on a CPU shared with other jobs")
    ap.add_argument("--work", type=Path, default=None, help="keep models and samples here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/unet_layouts.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    params = load_params(args.params)
    if args.num_threads is not None:
        params = params.model_copy(update={"base": params.base.model_copy(update={"num_threads": args.num_threads})})
    setup(params)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="unet_layouts_") as tmp:
        work = args.work or Path(tmp)
        for preset in args.layouts:
            row = run_layout(params, preset, data_dir=args.data, autoencoder=args.autoencoder, classifier=args.classifier,
                             reference=args.reference, work=work, max_images=args.max_images)
            rows.append(row)
            atomic_write_json(args.out, {"seed": params.base.seed, "num_threads": params.base.num_threads,
                                         "sampler": params.sample.model_dump(), "rows": rows,
                                         "provenance": provenance()})
            print(markdown(rows), flush=True)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
