"""The fidelity/diversity trade-off of classifier-free guidance, measured against real data.

A Fréchet distance or a recall figure alone has no scale: FD is biased upward at a finite number of images n, and the
k-NN recall of Kynkäänniemi et al. 2019 depends on n through the k-th-neighbour radii. Both are therefore reported
against a *real-vs-real baseline*: a seeded subset of the train split with the same number of images per class as the
generated set (so the same n and the same label histogram), scored by the same extractor against the same reference
(the val split, ``reference_stats``). Then

* ``fd_ratio = FD(samples, val) / FD(train subset, val)`` (1 = as close to the val split as other real digits are),
* ``recall_ratio = recall(samples) / recall(train subset)`` and ``precision_ratio`` likewise.

The guidance sweep generates one set per guidance scale, all from the same seed (the same initial noise and per-image
generators, so the rows differ by the guidance only: common random numbers), and :func:`recommend_guidance` picks a
guidance from its rows by a stated rule. It recommends; it never edits params.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from components.evaluation.protocol import IMAGENET_CPU_BATCH, extractor_batch_size

log = logging.getLogger("latentflow")

REAL_SUFFIX = "real"  # fd_real_<extractor>: the real-vs-real baseline of fd_<extractor>
RECONSTRUCTION = "reconstruction"  # fd_reconstruction_<extractor>: the baseline's images passed through the autoencoder

RULE = ("among guidances whose FD ratio is <= max_fd_ratio and recall ratio >= min_recall_ratio in every swept extractor, "
        "the one with the highest class consistency (ties: the lower classifier FD ratio, then the lower guidance); if none "
        "qualifies, the one with the lowest classifier FD ratio (ties: the lower guidance)")


def stratified_subset(labels: np.ndarray, like: np.ndarray, seed: int, at_most: bool = False) -> np.ndarray:
    """Indices into ``labels`` of a random subset with exactly the per-class counts of ``like`` (sorted by class, then
    by draw). Class by class in increasing order, ``torch.randperm(n_c, generator=g)`` with one ``torch.Generator``
    seeded with ``seed`` picks the first ``count_c`` of that class's images, so a smaller request with the same seed is
    a subset of a larger one. A ``ValueError`` names the class that has fewer images than requested, unless ``at_most``
    (then such a class gives all it has)."""
    labels, like = np.asarray(labels), np.asarray(like)
    classes, counts = np.unique(like, return_counts=True)
    g = torch.Generator().manual_seed(int(seed))
    picked = []
    for c, count in zip(classes.tolist(), counts.tolist(), strict=True):
        pool = np.flatnonzero(labels == c)
        if len(pool) < count and not at_most:
            raise ValueError(f"the real-vs-real baseline needs {count} real images of class {c} (as many as the generated set has) but "
                             f"the train split has {len(pool)}: lower the number of images per class (sample.num_per_class or "
                             f"evaluate.guidance_sweep.num_per_class) to at most {len(pool)}")
        picked.append(pool[torch.randperm(len(pool), generator=g)[:count].numpy()])
    return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)


def real_key(metric: str, extractor: str) -> str:
    """``fd`` + ``classifier`` -> ``fd_real_classifier``: the name of a metric's real-vs-real baseline."""
    return f"{metric}_{REAL_SUFFIX}_{extractor}"


def _ratio(value: float, baseline: float, what: str) -> float | None:
    if not np.isfinite(value) or not np.isfinite(baseline):
        raise ValueError(f"{what}: cannot take a ratio of non-finite values ({value} / {baseline})")
    if baseline <= 0.0:
        log.warning("%s: the real-vs-real baseline is %s, so the ratio is undefined (null)", what, baseline)
        return None
    return float(value / baseline)


def ratio_metrics(metrics: Mapping[str, float], extractor: str, of: str | None = None) -> dict:
    """``fd_ratio_<e>``, ``precision_ratio_<e>``, ``recall_ratio_<e>``: a sample set's Fréchet distance (Heusel et al.
    2017, eq. 6) and improved precision/recall (Kynkäänniemi et al. 2019, sec. 2) over those of the real-vs-real
    baseline at the same n. ``metrics`` holds both, ``fd_<e>`` ... and ``fd_real_<e>`` ... (:func:`real_key`).
    ``of`` names another image set measured the same way (``fd_<of>_<e>`` ...): its ratios are ``fd_ratio_<of>_<e>``
    ... (``of=RECONSTRUCTION``: the autoencoder's ceiling). A ratio whose baseline is 0 is ``None`` (undefined) rather
    than infinite."""
    name = f"{of}_{extractor}" if of else extractor
    return {f"{m}_ratio_{name}": _ratio(metrics[f"{m}_{name}"], metrics[real_key(m, extractor)], f"{m}_ratio_{name}")
            for m in ("fd", "precision", "recall")}


def recommend_guidance(rows: Sequence[Mapping], *, max_fd_ratio: float = 1.3, min_recall_ratio: float = 0.9,
                       extractors: Sequence[str] = ("classifier",)) -> float | None:
    """The guidance scale the sweep recommends (``RULE``): keep the rows whose ``fd_ratio_<e>`` <= ``max_fd_ratio`` and
    ``recall_ratio_<e>`` >= ``min_recall_ratio`` for every extractor ``e`` (as close to the val split as real digits,
    within the margin, and covering nearly as much of it); of those, the highest ``class_consistency`` (faithfulness to
    the requested class), ties broken by the lower classifier FD ratio, then the lower guidance. If no row qualifies,
    the lowest classifier FD ratio (the set nearest the real distribution), ties to the lower guidance.

    Why this rule: issue 14's target for the default run is exactly "class consistency as high as possible (>= 0.98) at
    FD ratio <= 1.3 and recall >= 0.9x real", so the constraints are the distribution targets and the objective is the
    one figure guidance buys. The fallback prefers distribution match over consistency because a high-guidance set
    can reach consistency 1.0 while covering a fraction of the data (mode collapse onto prototypes). A row with an
    undefined ratio (``None``) does not qualify. ``None`` for no rows."""
    if not rows:
        return None
    for r in rows:
        missing = [k for e in extractors for k in (f"fd_ratio_{e}", f"recall_ratio_{e}") if k not in r] + \
                  [k for k in ("guidance", "class_consistency") if k not in r]
        if missing:
            raise KeyError(f"sweep row {dict(r)} lacks {missing}")

    primary = "classifier" if "classifier" in extractors else extractors[0]

    def fd(r) -> float:
        v = r[f"fd_ratio_{primary}"]
        return float("inf") if v is None else v

    def ok(r) -> bool:
        return all(r[f"fd_ratio_{e}"] is not None and r[f"fd_ratio_{e}"] <= max_fd_ratio and r[f"recall_ratio_{e}"] is not None
                   and r[f"recall_ratio_{e}"] >= min_recall_ratio for e in extractors)

    qualified = [r for r in rows if ok(r)]
    if qualified:
        best = min(qualified, key=lambda r: (-r["class_consistency"], fd(r), r["guidance"]))
    else:
        best = min(rows, key=lambda r: (fd(r), r["guidance"]))
    return float(best["guidance"])


def set_metrics(feats: np.ndarray, ref: Mapping[str, np.ndarray], extractor: str, *, pr_k: int, seed: int) -> dict:
    """Fréchet distance (Heusel et al. 2017, eq. 6) and improved precision/recall (Kynkäänniemi et al. 2019, sec. 2)
    of features ``feats`` against the reference arrays (``features``, ``mu``, ``sigma``), keyed ``fd_<extractor>``,
    ``precision_<extractor>``, ``recall_<extractor>`` (KID is left to the full evaluation: its real baseline is ~0)."""
    from components.evaluation import feature_statistics, frechet_distance
    from components.evaluation.kid_pr import precision_recall

    precision, recall = precision_recall(np.asarray(ref["features"], dtype=np.float64), feats, k=pr_k, seed=seed)
    return {f"fd_{extractor}": frechet_distance(*feature_statistics(feats), ref["mu"], ref["sigma"]),
            f"precision_{extractor}": precision, f"recall_{extractor}": recall}


def guidance_sweep(generator, classifier, extractors: Mapping, refs: Mapping[str, Mapping], train_images: np.ndarray,
                   train_labels: np.ndarray, *, guidances: Sequence[float], num_per_class: int, sampler: str, steps: int, seed: int,
                   baseline_seed: int, eta: float, timestep_spacing: str, pr_k: int, batch_size: int = 500,
                   feature_batch_sizes: Mapping[str, int] | None = None, judge=None, judge_batch_size: int = IMAGENET_CPU_BATCH,
                   generate_kwargs: Mapping | None = None) -> list[dict]:
    """One row per guidance scale (Ho & Salimans 2022, eq. 6): ``num_per_class`` images per class generated with
    ``sampler`` x ``steps`` from ``seed`` (the same seed for every guidance: same noise, same per-image generators),
    scored by the classifier (``class_consistency``) and, for every extractor in ``extractors`` (name -> extractor,
    the classifier's ``"classifier"`` entry included), ``fd_<e>``, ``precision_<e>``, ``recall_<e>`` against ``refs[e]``
    and their ratios to the real-vs-real baseline at the same n (``fd_real_<e>`` ... also in every row, constant).
    The baseline is :func:`stratified_subset` of the train split drawn with ``baseline_seed``. ``judge`` (anything with
    ``predict(images, batch_size)``, ``protocol.load_judge``) gives ``class_consistency`` when set (the classifier's then in ``class_consistency_classifier``);
    default the classifier. ``feature_batch_sizes`` (name -> images per forward pass) default per extractor to
    :func:`~components.evaluation.protocol.extractor_batch_size`'s, the judge's to :data:`~components.evaluation.protocol.IMAGENET_CPU_BATCH`.
    ``generate_kwargs`` go to every ``generator.generate`` call (e.g. ``guidance_rescale``)."""
    from components.evaluation import class_consistency
    from components.evaluation.classifier import classify

    if "classifier" not in extractors:
        raise ValueError("the guidance sweep needs the 'classifier' extractor (class consistency and the rule's FD ratio)")
    missing = [e for e in extractors if e not in refs]
    if missing:
        raise ValueError(f"evaluate.guidance_sweep.extractors {missing} have no reference statistics (skipped or not computed by "
                         "reference_stats); drop them from the sweep or re-run reference_stats with them")
    sizes = {name: extractor_batch_size(name, (feature_batch_sizes or {}).get(name)) for name in extractors}
    labels = np.repeat(np.arange(generator.num_classes), num_per_class)
    subset = stratified_subset(train_labels, labels, baseline_seed)
    baseline: dict = {}
    for name, extractor in extractors.items():
        feats = extractor(train_images[subset], batch_size=sizes[name])
        baseline.update(set_metrics(feats, refs[name], f"{REAL_SUFFIX}_{name}", pr_k=pr_k, seed=seed))
    rows = []
    for guidance in guidances:
        t0 = time.perf_counter()
        images = generator.generate(labels, seed=seed, sampler=sampler, steps=steps, guidance=float(guidance), eta=eta,
                                    timestep_spacing=timestep_spacing, batch_size=batch_size, **dict(generate_kwargs or {}))
        seconds = time.perf_counter() - t0
        row: dict = {"guidance": float(guidance), "num_generated": int(len(labels))}
        for name, extractor in extractors.items():
            if name == "classifier":
                feats, pred = classify(classifier, images, sizes[name])
                if judge is not None:  # the classifier's verdict too, as in metrics.json
                    row["class_consistency_classifier"] = class_consistency(pred, labels, generator.num_classes)["overall"]
                    pred = judge.predict(images, judge_batch_size)
                row["class_consistency"] = class_consistency(pred, labels, generator.num_classes)["overall"]
            else:
                feats = extractor(images, batch_size=sizes[name])
            row.update(set_metrics(feats, refs[name], name, pr_k=pr_k, seed=seed))
            row.update({real_key(m, name): baseline[real_key(m, name)] for m in ("fd", "precision", "recall")})
            row.update(ratio_metrics(row, name))
        rows.append(row)
        log.info("guidance_sweep: %s (%.1f s to sample)", row, seconds)  # timing in the log only: metrics stay deterministic
    return rows
