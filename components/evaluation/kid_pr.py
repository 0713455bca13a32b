"""Kernel Inception Distance and k-NN precision/recall on feature vectors (float64 throughout).

* KID: Bińkowski, Sutherland, Arbel & Gretton 2018, "Demystifying MMD GANs" (ICLR): the unbiased estimator of
  the squared maximum mean discrepancy (Gretton et al. 2012, JMLR, Lemma 6, MMD²_u) with the cubic polynomial
  kernel k(x, y) = (x·y / d + 1)^3, averaged over random equal-size subsets (sec. 4 and appendix of Bińkowski
  et al.).
* Precision/recall: Kynkäänniemi, Karras, Laine, Lehtinen & Aila 2019, "Improved Precision and Recall Metric for
  Assessing Generative Models" (NeurIPS), sec. 2: the manifold of a set is the union of balls around
  each of its samples with radius the distance to its k-th nearest neighbour within the set.

Every random draw goes through ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import numpy as np

# Rows of a distance block: block_rows * n float64 entries stay around 128 MiB (10k x 10k runs in ~7 blocks).
_BLOCK_ELEMENTS = 1 << 24


def _as_features(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-d [N, D] feature array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf; check the feature extractor's inputs")
    return x


def _check_pair(a: np.ndarray, b: np.ndarray, names: tuple[str, str], min_n: int) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} have different feature dims ({a.shape[1]} vs {b.shape[1]}); use one extractor for both")
    for x, name in zip((a, b), names, strict=True):
        if x.shape[0] < min_n:
            raise ValueError(f"{name} needs at least {min_n} samples, got {x.shape[0]}")


# ---------------------------------------------------------------------------------------------------------------
# KID
# ---------------------------------------------------------------------------------------------------------------


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x·y / d + 1)^3 for all pairs of rows, ``[len(x), len(y)]`` (Bińkowski et al. 2018, sec. 4)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_from_kernels(k_aa: np.ndarray, k_bb: np.ndarray, k_ab: np.ndarray) -> float:
    """MMD²_u of :func:`polynomial_mmd2` from the three kernel matrices of the two samples."""
    m, n = k_aa.shape[0], k_bb.shape[0]
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2.0 * k_ab.mean())


def polynomial_mmd2(feats_a, feats_b) -> float:
    """Unbiased MMD² between two samples with the cubic polynomial kernel (Gretton et al. 2012, Lemma 6):

    MMD²_u = Σ_{i≠j} k(a_i, a_j) / (m(m-1)) + Σ_{i≠j} k(b_i, b_j) / (n(n-1)) - 2 Σ_{i,j} k(a_i, b_j) / (mn).

    Its expectation is the population MMD², so it can be (slightly) negative when the distributions match.
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    _check_pair(a, b, ("feats_a", "feats_b"), min_n=2)
    return _mmd2_from_kernels(polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b))


# Up to this many entries per kernel matrix (8 bytes each: 32 MiB), KID computes the three kernels of the whole sets once
# and reads each subset's from them (evaluate's 500 x 500 EfficientNet-Lite0 sets: 100 subsets of 250 in a sixth of the
# time of 100 x 3 products of 1280-d features, measured); above it, each subset's kernels are computed on their own.
_KID_FULL_KERNEL_ELEMENTS = 1 << 22


def kernel_inception_distance(feats_a, feats_b, *, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0,
                              max_kernel_elements: int = _KID_FULL_KERNEL_ELEMENTS) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): mean and standard deviation (ddof=0) of :func:`polynomial_mmd2` over
    ``num_subsets`` pairs of random subsets of ``m = min(subset_size, len(a), len(b))`` samples each.

    Subset ``s`` draws, in this order, ``rng.choice(len(a), m, replace=False)`` then
    ``rng.choice(len(b), m, replace=False)`` with ``rng = numpy.random.default_rng(seed)``.
    Features are usually Inception pool3 (2048-d); values are often reported x 1e3.
    When no kernel matrix of the whole sets has more than ``max_kernel_elements`` entries they are computed once and
    each subset's kernels are read from them (the same values up to the summation order of a dot product).
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    _check_pair(a, b, ("feats_a", "feats_b"), min_n=2)
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    if subset_size < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    m = min(subset_size, a.shape[0], b.shape[0])
    rng = np.random.default_rng(seed)
    whole = max(a.shape[0], b.shape[0]) ** 2 <= max_kernel_elements
    if whole:
        k_aa, k_bb, k_ab = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
    mmds = np.empty(num_subsets, dtype=np.float64)
    for s in range(num_subsets):
        ia = rng.choice(a.shape[0], m, replace=False)
        ib = rng.choice(b.shape[0], m, replace=False)
        if whole:
            mmds[s] = _mmd2_from_kernels(k_aa[np.ix_(ia, ia)], k_bb[np.ix_(ib, ib)], k_ab[np.ix_(ia, ib)])
        else:
            mmds[s] = polynomial_mmd2(a[ia], b[ib])
    return float(mmds.mean()), float(mmds.std())


# ---------------------------------------------------------------------------------------------------------------
# Precision / recall
# ---------------------------------------------------------------------------------------------------------------


def _row_blocks(n_rows: int, n_cols: int):
    step = max(1, _BLOCK_ELEMENTS // max(n_cols, 1))
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


def _sq_dists(x: np.ndarray, x_sq: np.ndarray, y: np.ndarray, y_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``|x|² + |y|² - 2 x·y``, clipped at 0 (float64)."""
    d2 = x_sq[:, None] + y_sq[None, :] - 2.0 * (x @ y.T)
    return np.maximum(d2, 0.0, out=d2)


def _knn_sq_radii(x: np.ndarray, k: int) -> np.ndarray:
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must satisfy 1 <= k < number of samples ({n}), got k={k}")
    x_sq = np.einsum("ij,ij->i", x, x)
    radii = np.empty(n, dtype=np.float64)
    for s, e in _row_blocks(n, n):
        d2 = _sq_dists(x[s:e], x_sq[s:e], x, x_sq)
        d2[np.arange(e - s), np.arange(s, e)] = np.inf  # exclude each sample itself (not its duplicates)
        radii[s:e] = np.partition(d2, k - 1, axis=1)[:, k - 1]
    return radii


def knn_radii(feats, k: int = 3) -> np.ndarray:
    """Distance of each sample to its k-th nearest neighbour among the *other* samples of the same set, float64 ``[N]``
    (Kynkäänniemi et al. 2019, sec. 2: NN_k)."""
    return np.sqrt(_knn_sq_radii(_as_features(feats, "feats"), k))


def precision_recall(real_feats, fake_feats, *, k: int = 3, max_samples: int | None = None, seed: int = 0) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, sec. 2).

    f(φ, Φ) = 1 if |φ - φ'| <= |φ' - NN_k(φ', Φ)| for at least one φ' in Φ (closed balls), else 0;
    precision = mean over fake φ of f(φ, Φ_real) (how much of the fakes lies on the real manifold);
    recall = mean over real φ of f(φ, Φ_fake) (how much of the real data the fakes cover).

    ``max_samples``: if a set is larger, a random subset of that size is used (real drawn first, then fake,
    ``numpy.random.default_rng(seed).choice(n, max_samples, replace=False)``). Distances are float64 and computed
    in row blocks of ~128 MiB, so 10k x 10k sets need no more than that at once.
    """
    real, fake = _as_features(real_feats, "real_feats"), _as_features(fake_feats, "fake_feats")
    _check_pair(real, fake, ("real_feats", "fake_feats"), min_n=k + 1)
    if max_samples is not None:
        if max_samples < k + 1:
            raise ValueError(f"max_samples must be > k ({k}), got {max_samples}")
        rng = np.random.default_rng(seed)
        if real.shape[0] > max_samples:
            real = real[rng.choice(real.shape[0], max_samples, replace=False)]
        if fake.shape[0] > max_samples:
            fake = fake[rng.choice(fake.shape[0], max_samples, replace=False)]

    real_r2, fake_r2 = _knn_sq_radii(real, k), _knn_sq_radii(fake, k)
    real_sq, fake_sq = np.einsum("ij,ij->i", real, real), np.einsum("ij,ij->i", fake, fake)
    fake_on_real = np.zeros(fake.shape[0], dtype=bool)
    real_on_fake = np.zeros(real.shape[0], dtype=bool)
    for s, e in _row_blocks(fake.shape[0], real.shape[0]):
        d2 = _sq_dists(fake[s:e], fake_sq[s:e], real, real_sq)  # [fake block, real]
        fake_on_real[s:e] = (d2 <= real_r2[None, :]).any(axis=1)
        real_on_fake |= (d2 <= fake_r2[s:e, None]).any(axis=0)
    return float(fake_on_real.mean()), float(real_on_fake.mean())
