"""A linear probe on frozen pretrained features: the class-consistency judge for RGB data.

The pipeline's own classifier (``classifier.py``) is a small CNN trained from scratch on the train split; on CIFAR-10
it reaches about half the val accuracy a linear classifier on ImageNet features does, so class consistency measured
with it measures the judge more than the samples. This module fits multinomial logistic regression (a linear probe,
as in Kornblith, Shlens & Le 2019, "Do Better ImageNet Models Transfer Better?", sec. 3: L2-regularised logistic
regression on the frozen penultimate features, the regularisation chosen on a held-out part of train) on
EfficientNet-Lite0 features (``features.effnet_lite0_extractor``, 1280-d):

    p(y = c | f) = softmax(W z + b)_c,   z = (f - mean) / std   (per-feature standardisation, from the fit set)
    minimise  (1/N) sum_i -log p(y_i | f_i)  +  (weight_decay / 2) ||W||_F^2          (the bias is not decayed)

solved in float64 by full-batch L-BFGS from zero weights: the problem is convex, there are no random draws in the
fit, and the only ones (which train images, which of them are held out) come from a seeded ``torch.Generator``, so
the same seed gives the same weights bit for bit on a CPU.

Saved as a checkpoint folder (``model.safetensors`` + ``config.json``, ``components.models.checkpoint``); never pickled.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.evaluation.protocol import IMAGENET_CPU_BATCH

log = logging.getLogger("latentflow")

JUDGES = ("classifier", "effnet_probe", "auto")
PROBE_KIND = "linear_probe"


@dataclass(frozen=True)
class ProbeConfig:
    feature_dim: int
    num_classes: int
    extractor: str = "effnet_lite0"  # the feature extractor the probe reads (features.get_extractor name)
    weight_decay: float = 0.0
    kind: str = field(default=PROBE_KIND, init=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> ProbeConfig:
        return cls(**{k: v for k, v in d.items() if k != "kind"})


class LinearProbe(nn.Module):
    """Standardise the features (the fit set's mean and std, kept as buffers), then one linear layer to logits."""

    def __init__(self, config: ProbeConfig):
        super().__init__()
        self.config = config
        d, c = config.feature_dim, config.num_classes
        self.register_buffer("mean", torch.zeros(d, dtype=torch.float64))
        self.register_buffer("std", torch.ones(d, dtype=torch.float64))
        self.linear = nn.Linear(d, c, dtype=torch.float64)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features.to(torch.float64) - self.mean) / self.std)

    @torch.no_grad()
    def predict(self, features) -> np.ndarray:
        """Predicted labels ``[N]`` (int64) of float features ``[N, feature_dim]`` (an array or a tensor)."""
        f = _check_features(features, self.config.feature_dim)
        if len(f) == 0:
            return np.zeros(0, dtype=np.int64)
        return self(f).argmax(1).numpy()

    def accuracy(self, features, labels) -> float:
        """Share of ``labels`` predicted right."""
        return float((self.predict(features) == np.asarray(labels)).mean())


def _check_features(features, feature_dim: int | None = None) -> torch.Tensor:
    f = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features).detach().cpu().to(torch.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(f.shape)}")
    if feature_dim is not None and f.shape[1] != feature_dim:
        raise ValueError(f"features have {f.shape[1]} dimensions but the probe was fitted on {feature_dim}: use the same extractor")
    if not torch.isfinite(f).all():
        raise ValueError("features contain NaN or infinite values; check the extractor's input images")
    return f


def _check_labels(labels, n: int, num_classes: int) -> torch.Tensor:
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"labels must be [N] with N = {n} (one per feature row), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers 0..{num_classes - 1}, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1} (num_classes = {num_classes}), got {y.min()}..{y.max()}")
    return torch.from_numpy(y.astype(np.int64))


def fit_linear_probe(features, labels, num_classes: int, *, weight_decay: float, max_iter: int = 300,
                     extractor: str = "effnet_lite0") -> LinearProbe:
    """Fit L2-regularised multinomial logistic regression (module docstring) by full-batch L-BFGS (strong-Wolfe line
    search) in float64, from zero weights, for at most ``max_iter`` iterations. Deterministic: no random draws."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    f = _check_features(features)
    if len(f) < 2:
        raise ValueError(f"a probe needs at least 2 training images, got {len(f)}")
    y = _check_labels(labels, len(f), num_classes)
    probe = LinearProbe(ProbeConfig(feature_dim=f.shape[1], num_classes=num_classes, extractor=extractor, weight_decay=float(weight_decay)))
    probe.mean.copy_(f.mean(0))
    probe.std.copy_(f.std(0).clamp_min(1e-6))  # a constant feature (std 0) maps to 0, not to NaN
    z = (f - probe.mean) / probe.std
    w, b = probe.linear.weight, probe.linear.bias
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return probe.eval().requires_grad_(False)


def subset_indices(labels, max_images: int | None, seed: int) -> np.ndarray:
    """At most ``max_images`` indices of ``labels``, sorted, with each class's share kept (largest remainders get the
    rounding), drawn per class with a ``torch.Generator`` seeded ``seed``. ``None`` or ``>= len(labels)``: all."""
    y = np.asarray(labels)
    n = len(y)
    if max_images is None or max_images >= n:
        return np.arange(n)
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * max_images / n
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: max_images - take.sum()]:
        take[i] += 1
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c, k in zip(classes, take, strict=True):
        members = np.flatnonzero(y == c)
        chosen.append(members[torch.randperm(len(members), generator=gen)[:k].numpy()])
    return np.sort(np.concatenate(chosen))


def holdout_split(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, holdout)`` indices: per class ``round(fraction * n_c)`` images held out (at least one, and at least one
    left to fit, for classes of 2 or more), drawn with a ``torch.Generator`` seeded ``seed``; both sorted."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    y = np.asarray(labels)
    gen = torch.Generator().manual_seed(seed)
    fit, hold = [], []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        members = members[torch.randperm(len(members), generator=gen).numpy()]
        k = min(max(1, round(fraction * len(members))), len(members) - 1) if len(members) >= 2 else 0
        hold.append(members[:k])
        fit.append(members[k:])
    fit_idx, hold_idx = np.sort(np.concatenate(fit)), np.sort(np.concatenate(hold))
    if len(hold_idx) == 0:
        raise ValueError(f"no image is left for the weight-decay holdout ({len(y)} images, fraction {fraction}): give the probe more images")
    return fit_idx, hold_idx


def select_and_fit(features, labels, num_classes: int, *, weight_decays: Sequence[float], holdout_fraction: float, seed: int,
                   max_iter: int = 300, extractor: str = "effnet_lite0") -> tuple[LinearProbe, dict]:
    """Choose the weight decay on a held-out part of the training features (:func:`holdout_split`): fit on the rest
    with each of ``weight_decays``, keep the one with the highest holdout accuracy (ties: the larger weight decay, the
    simpler model), then refit on all of them with it. Returns ``(probe, report)``; the report holds each candidate's
    holdout accuracy, the chosen one and the counts."""
    wds = [float(w) for w in weight_decays]
    if not wds:
        raise ValueError("weight_decays is empty: give at least one candidate (e.g. [1e-4, 1e-3, 1e-2, 1e-1])")
    bad = [w for w in wds if not (math.isfinite(w) and w >= 0)]
    if bad:
        raise ValueError(f"weight decays must be finite numbers >= 0, got {bad}")
    f = _check_features(features)
    _check_labels(labels, len(f), num_classes)
    y = np.asarray(labels)
    fit_idx, hold_idx = holdout_split(y, holdout_fraction, seed)
    scores = {}
    for wd in wds:
        p = fit_linear_probe(f[fit_idx], y[fit_idx], num_classes, weight_decay=wd, max_iter=max_iter, extractor=extractor)
        scores[wd] = p.accuracy(f[hold_idx], y[hold_idx])
        log.info("linear probe: weight decay %g -> holdout accuracy %.4f", wd, scores[wd])
    best = max(wds, key=lambda w: (scores[w], w))
    probe = fit_linear_probe(f, y, num_classes, weight_decay=best, max_iter=max_iter, extractor=extractor)
    report = {"weight_decay": best, "holdout_accuracy": {f"{w:g}": scores[w] for w in wds}, "num_train": int(len(f)),
              "num_fit": int(len(fit_idx)), "num_holdout": int(len(hold_idx)), "holdout_fraction": holdout_fraction,
              "train_accuracy": probe.accuracy(f, y), "max_iter": max_iter, "seed": seed}
    return probe, report


def choose_judge(requested: str, accuracy: Mapping[str, float]) -> str:
    """The judge of class consistency: ``requested`` unless it is ``auto``, which takes the one of ``accuracy``
    (judge -> its accuracy) with the higher accuracy, ties to ``classifier`` (the cheaper one). ``evaluate`` decides
    through :func:`pick_judge`, on each judge's accuracy on the autoencoder's reconstructions of val images
    (:func:`~components.evaluation.ceiling.judges_on_reconstructions`): the samples a judge reads are decoded images, and
    a judge that reads real images better can read decoded ones worse (shapes64: the probe 0.999 vs 0.997 on real val
    images, 0.68 vs 0.92 on their reconstructions)."""
    if requested not in JUDGES:
        raise ValueError(f"evaluate.judge must be one of {list(JUDGES)}, got {requested!r}")
    if requested != "auto":
        if requested not in accuracy:
            raise ValueError(f"judge {requested!r} has no accuracy (it was not trained)")
        return requested
    if not accuracy:
        raise ValueError("judge 'auto' needs at least one trained judge")
    return max(accuracy, key=lambda j: (accuracy[j], j == "classifier"))


def paired_difference_se(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Standard error of ``mean(correct_a) - mean(correct_b)`` when both judges read the same ``n`` images (boolean
    per-image correctness): ``sd(d) / sqrt(n)`` of the per-image differences ``d = a - b``, i.e.
    ``sqrt(((n10 + n01) / n - ((n10 - n01) / n) ** 2) / n)`` with ``n10``/``n01`` the discordant images (the paired
    test behind McNemar's; Agresti 2002, sec. 10.1). Images both judges read alike carry no variance, so it is at most
    the unpaired ``sqrt((p1 (1 - p1) + p2 (1 - p2)) / n)`` whenever the judges' errors are positively correlated."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired correctness must be two 1-d arrays of one length, got shapes {a.shape} and {b.shape}")
    n = len(a)
    if n == 0:
        raise ValueError("paired correctness needs at least one image")
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(math.sqrt(max(float(np.mean(d * d)) - float(np.mean(d)) ** 2, 0.0) / n))


def pick_judge(decoded_accuracy: Mapping[str, float], val_accuracy: Mapping[str, float], num_decoded: int,
               z: float = 2.0, decoded_correct: Mapping[str, np.ndarray] | None = None) -> tuple[str, str]:
    """``evaluate.judge: auto``: ``(judge, why)``. The judge that reads the autoencoder's reconstructions of val images
    (``decoded_accuracy``, on ``num_decoded`` images) right more often, when it leads the runner-up by more than ``z``
    standard errors of the difference; otherwise the one with the higher ``val_accuracy`` on the real val split. Both
    judges read the same images, so with ``decoded_correct`` (judge -> per-image correctness on those images) the
    standard error is the paired one (:func:`paired_difference_se`), which only the images they disagree on inflate;
    without it, the unpaired ``sqrt((p1 (1 - p1) + p2 (1 - p2)) / n)`` (conservative). Ties go to the classifier
    (:func:`choose_judge`). A near-chance autoencoder leaves every judge near chance on its reconstructions (the
    CIFAR-10 preset: 0.205 vs 0.18 on 200 images), where that small difference is noise and the accuracy on real images
    says more."""
    best = choose_judge("auto", decoded_accuracy)
    others = [j for j in decoded_accuracy if j != best]
    if not others:
        return best, "the only judge trained"
    second = max(others, key=lambda j: (decoded_accuracy[j], j == "classifier"))
    p1, p2 = decoded_accuracy[best], decoded_accuracy[second]
    if decoded_correct is not None and best in decoded_correct and second in decoded_correct:
        for j in (best, second):
            if len(decoded_correct[j]) != num_decoded:
                raise ValueError(f"judge {j!r}: {len(decoded_correct[j])} per-image results for {num_decoded} images")
        se, kind = paired_difference_se(decoded_correct[best], decoded_correct[second]), "paired"
    else:
        se, kind = math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / max(num_decoded, 1)), "unpaired"
    if p1 - p2 > z * se:
        return best, (f"reconstructions of val images: {p1:.3f} vs {p2:.3f}, more than {z:g} {kind} standard errors "
                      f"({se:.3f}) apart")
    return (choose_judge("auto", {j: val_accuracy[j] for j in decoded_accuracy}),
            f"val accuracy: on reconstructions of val images {p1:.3f} vs {p2:.3f} is within {z:g} {kind} standard errors "
            f"({se:.3f})")


class ProbeJudge:
    """A feature extractor + a linear probe on its features: ``predict(images)`` gives labels, as the classifier's
    :class:`~components.evaluation.classifier.ClassifierExtractor` does."""

    name = "effnet_probe"

    def __init__(self, extractor, probe: LinearProbe):
        if extractor.info.feature_dim != probe.config.feature_dim:
            raise ValueError(f"the probe reads {probe.config.feature_dim}-d features but extractor {extractor.info.name} gives "
                             f"{extractor.info.feature_dim}-d ones")
        self.extractor, self.probe = extractor, probe

    def predict(self, images, batch_size: int = IMAGENET_CPU_BATCH) -> np.ndarray:
        """Predicted labels ``[N]`` of uint8 ``[N, H, W, C]`` images, ``batch_size`` images per forward pass of the extractor."""
        return self.probe.predict(self.extractor(images, batch_size=batch_size))


def save_probe(out_dir: str | Path, probe: LinearProbe, extra: Mapping | None = None) -> None:
    """``out_dir/model.safetensors`` + ``out_dir/config.json`` (``{"model": config, **extra}``), written atomically."""
    from components.models.checkpoint import save_checkpoint

    save_checkpoint(out_dir, probe, probe.config.to_dict(), dict(extra or {}))


def load_probe(ckpt_dir: str | Path) -> tuple[LinearProbe, dict]:
    """The probe of a folder written by :func:`save_probe` (on the CPU) and its config JSON; safetensors + JSON only."""
    from components.models.checkpoint import CheckpointError, read_checkpoint

    state, meta = read_checkpoint(ckpt_dir)
    if meta["model"].get("kind") != PROBE_KIND:
        raise CheckpointError(f"{ckpt_dir} holds a {meta['model'].get('kind')!r}, not a {PROBE_KIND}")
    try:
        probe = LinearProbe(ProbeConfig.from_dict(meta["model"]))
        probe.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{ckpt_dir}: config.json and model.safetensors do not match ({type(exc).__name__}: {exc}); "
                              "re-run reference_stats") from exc
    return probe.eval().requires_grad_(False), meta


def train_probe_judge(extractor, images, labels, num_classes: int, *, max_train_images: int | None, weight_decays: Sequence[float],
                      holdout_fraction: float, seed: int, max_iter: int = 300, batch_size: int = IMAGENET_CPU_BATCH,
                      chunk: int = 512) -> tuple[LinearProbe, dict]:
    """Extract ``extractor`` features of a class-stratified subset of at most ``max_train_images`` training images
    (:func:`subset_indices`, seeded; read ``chunk`` images at a time, so memory holds one chunk of images whatever their
    size) and fit the probe on them (:func:`select_and_fit`)."""
    y = np.asarray(labels)
    idx = subset_indices(y, max_train_images, seed)
    sharded = hasattr(images, "take") and not isinstance(images, np.ndarray)  # ShardedImages: read from disk, a chunk at a time
    chunks = [idx[i : i + chunk] for i in range(0, len(idx), chunk)]
    feats = np.concatenate([extractor(images.take(c) if sharded else np.asarray(images)[c], batch_size=batch_size) for c in chunks])
    probe, report = select_and_fit(feats, y[idx], num_classes, weight_decays=weight_decays, holdout_fraction=holdout_fraction,
                                   seed=seed, max_iter=max_iter, extractor=extractor.info.name)
    return probe, report
