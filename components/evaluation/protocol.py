"""The evaluation protocol of the pipeline: which extractors, reference statistics on disk, distribution
metrics of a sample set against them, and quality vs sampler steps (with its plot)."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from components.io import atomic_write_bytes

log = logging.getLogger("latentflow")


def build_extractors(names: Sequence[str], classifier, *, inception_weights: str | None = None,
                     require_inception: bool = False, device=None) -> tuple[dict, dict[str, str]]:
    """The named feature extractors; an unavailable Inception is skipped (or fatal with ``require_inception``).
    The pretrained networks are built on ``device`` (``None``: CUDA when present, else the CPU); the classifier
    extractor runs where ``classifier`` is. Returns ``(extractors, skipped)`` where ``skipped`` maps a name to the reason."""
    from components.evaluation.classifier import ClassifierExtractor
    from components.evaluation.features import FeatureExtractorUnavailable, get_extractor

    extractors, skipped = {}, {}
    for name in names:
        if name == "classifier":
            extractors[name] = ClassifierExtractor(classifier)
            continue
        try:
            kwargs = {"weights_path": inception_weights, "device": device} if name == "inception" else {"device": device}
            extractors[name] = get_extractor(name, **kwargs)
        except FeatureExtractorUnavailable as exc:
            if name == "inception" and require_inception:
                raise
            log.warning("skipping extractor %s: %s", name, exc)
            skipped[name] = str(exc)
    return extractors, skipped


IMAGENET_CPU_BATCH = 4  # images per forward pass of an ImageNet network by default (see extractor_batch_size)


def extractor_batch_size(extractor: str, batch_size: int | None = None) -> int:
    """Images per forward pass of ``extractor``: ``batch_size`` (``evaluate.feature_batch_size``) when given, else the
    default, 500 for the small classifier and :data:`IMAGENET_CPU_BATCH` (4) for the ImageNet networks. Small batches
    are fastest for them on a CPU: at 224x224 a batch's activations outgrow the cache. EfficientNet-Lite0 (BatchNorm
    folded, channels-last) on the 2-core machine: 2.2x the images/s at 4 as at 16, bit-identical features
    (``benchmarks/eval_speed.py``, ``effnet_lite0_batch``). On a GPU set evaluate.feature_batch_size to a few hundred."""
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"feature batch size must be >= 1, got {batch_size}")
        return batch_size
    return 500 if extractor == "classifier" else IMAGENET_CPU_BATCH


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


def distribution_metrics(feats: np.ndarray, ref: dict, prefix: str, *, kid_subsets: int, kid_subset_size: int, pr_k: int,
                         seed: int) -> dict:
    """Fréchet distance, KID (mean, std) and precision/recall of ``feats`` against reference arrays
    (``features``, ``mu``, ``sigma``), keyed ``fd_<prefix>``, ``kid_<prefix>``, ... ."""
    from components.evaluation import feature_statistics, frechet_distance
    from components.evaluation.kid_pr import kernel_inception_distance, precision_recall

    kid, kid_std = kernel_inception_distance(ref["features"].astype(np.float64), feats, num_subsets=kid_subsets,
                                             subset_size=kid_subset_size, seed=seed)
    precision, recall = precision_recall(ref["features"].astype(np.float64), feats, k=pr_k, seed=seed)
    return {f"fd_{prefix}": frechet_distance(*feature_statistics(feats), ref["mu"], ref["sigma"]),
            f"kid_{prefix}": kid, f"kid_{prefix}_std": kid_std, f"precision_{prefix}": precision, f"recall_{prefix}": recall}


def judge_record(ref_manifest: dict) -> dict:
    """The ``judge`` record of a reference manifest (``requested``, ``used``, ``val_accuracy`` per trained judge,
    ``probe``); a manifest written before judges existed was judged by the classifier."""
    return ref_manifest.get("judge") or {"requested": "classifier", "used": "classifier", "probe": None,
                                         "val_accuracy": {"classifier": ref_manifest["classifier_val_accuracy"]}}


def judge_candidates(record: dict) -> list[str]:
    """The judges ``evaluate`` loads: the one ``record`` names, or under ``evaluate.judge: auto`` every judge
    reference_stats trained (``val_accuracy``'s keys), of which ``evaluate`` keeps the one that reads the autoencoder's
    reconstructions of val images better (:func:`~components.evaluation.probe.choose_judge`)."""
    if record.get("requested") == "auto":
        return list(record["val_accuracy"])
    return [record["used"]]


def load_judge(ref_dir: Path, used: str, classifier, extractors: dict, *, device=None, feature_batch_size: int | None = None):
    """The judge of class consistency called ``used`` and its batch size: the classifier
    (:class:`~components.evaluation.classifier.ClassifierExtractor`), or the EfficientNet-Lite0 linear probe of
    ``ref_dir/effnet_probe`` (:class:`~components.evaluation.probe.ProbeJudge`; the extractor of ``extractors`` when
    there is one, else built on ``device``). Both have ``predict(images, batch_size) -> labels``."""
    from components.evaluation.classifier import ClassifierExtractor
    from components.evaluation.features import get_extractor
    from components.evaluation.probe import ProbeJudge, load_probe

    if used == "classifier":
        return ClassifierExtractor(classifier), extractor_batch_size("classifier", feature_batch_size)
    if used != "effnet_probe":
        raise ValueError(f"{ref_dir}/manifest.json names judge {used!r}, which this code does not know; re-run reference_stats")
    probe, _ = load_probe(Path(ref_dir) / "effnet_probe")
    extractor = extractors.get(probe.config.extractor) or get_extractor(probe.config.extractor, device=device)
    return ProbeJudge(extractor, probe), extractor_batch_size(probe.config.extractor, feature_batch_size)


def quality_vs_steps(generator, classifier, ref: dict, *, samplers: Sequence[str], steps: Sequence[int], num_per_class: int,
                     seed: int, guidance: float, eta: float, timestep_spacing: str, batch_size: int = 500,
                     feature_batch_size: int = 500, judge=None, judge_batch_size: int = IMAGENET_CPU_BATCH,
                     generate_kwargs: Mapping | None = None) -> list[dict]:
    """Class consistency and classifier-feature FD for each sampler x number of steps, sampled on the generator's
    device ``batch_size`` images per sampler call and classified ``feature_batch_size`` at a time. ``judge`` (anything
    with ``predict(images, batch_size)``, :func:`load_judge`) gives the class consistency when set; default the classifier.
    ``generate_kwargs`` go to every ``generate`` call (``sample.guidance_rescale`` / ``guidance_interval``)."""
    from components.evaluation import class_consistency, feature_statistics, frechet_distance
    from components.evaluation.classifier import classify

    labels = np.repeat(np.arange(generator.num_classes), num_per_class)
    rows = []
    for sampler in samplers:
        for n in steps:
            t0 = time.perf_counter()
            images = generator.generate(labels, seed=seed, sampler=sampler, steps=n, guidance=guidance, eta=eta,
                                        timestep_spacing=timestep_spacing, batch_size=batch_size, **dict(generate_kwargs or {}))
            seconds = time.perf_counter() - t0
            feats, pred = classify(classifier, images, feature_batch_size)
            extra = {}
            if judge is not None:  # the classifier's verdict too, as in metrics.json
                extra["class_consistency_classifier"] = class_consistency(pred, labels, generator.num_classes)["overall"]
                pred = judge.predict(images, judge_batch_size)
            rows.append({"sampler": sampler, "steps": n, "class_consistency": class_consistency(pred, labels, generator.num_classes)["overall"],
                         **extra,
                         "fd_classifier": frechet_distance(*feature_statistics(feats), ref["mu"], ref["sigma"]),
                         "images_per_second": round(len(labels) / seconds, 2), "num_generated": int(len(labels))})
            log.info("quality_vs_steps: %s", rows[-1])
    return rows


def quality_by_steps(rows: list[dict], samplers: Sequence[str] | None = None) -> list[dict]:
    """The rows of :func:`quality_vs_steps` reshaped for ``dvc plots``: one row per step count, with the class
    consistency of each sampler in a column named after it and its Fréchet distance in ``fd_<sampler>``. Every sampler
    of ``samplers`` (default: all that exist) has its columns, null where the grid did not run it, so ``dvc.yaml`` can
    name the columns once and DVC draws one series per sampler (and per experiment) instead of one zig-zag line."""
    from components.diffusion.options import SAMPLERS

    samplers = list(SAMPLERS if samplers is None else samplers)
    unknown = sorted({r["sampler"] for r in rows} - set(samplers))
    if unknown:
        raise ValueError(f"quality rows have samplers {unknown} that are not columns {samplers}")
    by_key = {(r["sampler"], r["steps"]): r for r in rows}
    table = []
    for n in sorted({r["steps"] for r in rows}):
        row: dict = {"steps": n}
        row.update({s: by_key[(s, n)]["class_consistency"] if (s, n) in by_key else None for s in samplers})
        row.update({f"fd_{s}": by_key[(s, n)]["fd_classifier"] if (s, n) in by_key else None for s in samplers})
        table.append(row)
    return table


def plot_quality(rows: list[dict], out: Path) -> None:
    """Class consistency and FD against sampler steps, one line per sampler, as a PNG at ``out`` (atomic)."""
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
