"""KID and k-NN precision/recall against naive O(n²) loops, and their behaviour on known distributions."""

import math

import numpy as np
import pytest
import torch

from components.evaluation import kid_pr
from components.evaluation.kid_pr import kernel_inception_distance, knn_radii, polynomial_mmd2, precision_recall

# ----------------------------------------------------------------------------------------------------- naive


def _k(x, y):
    return (sum(xi * yi for xi, yi in zip(x, y, strict=True)) / len(x) + 1.0) ** 3


def _naive_mmd2(a, b):
    m, n = len(a), len(b)
    aa = sum(_k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    bb = sum(_k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    ab = sum(_k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return aa + bb - 2 * ab


def _dist(x, y):
    return math.sqrt(sum((xi - yi) ** 2 for xi, yi in zip(x, y, strict=True)))


def _naive_radii(x, k):
    return [sorted(_dist(x[i], x[j]) for j in range(len(x)) if j != i)[k - 1] for i in range(len(x))]


def _naive_pr(real, fake, k):
    r_real, r_fake = _naive_radii(real, k), _naive_radii(fake, k)
    precision = sum(any(_dist(f, r) <= rr for r, rr in zip(real, r_real, strict=True)) for f in fake) / len(fake)
    recall = sum(any(_dist(r, f) <= rf for f, rf in zip(fake, r_fake, strict=True)) for r in real) / len(real)
    return precision, recall


# ------------------------------------------------------------------------------------------- exact agreement


@pytest.mark.parametrize("seed", [0, 1])
def test_polynomial_mmd2_matches_naive_loops(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(20, 6))
    b = rng.normal(size=(15, 6)) * 1.5 + 0.3  # different sizes: the general unbiased form
    assert polynomial_mmd2(a, b) == pytest.approx(_naive_mmd2(a.tolist(), b.tolist()), rel=1e-9, abs=1e-12)
    assert polynomial_mmd2(torch.from_numpy(a), b) == pytest.approx(polynomial_mmd2(a, b), rel=1e-12)


def test_kid_subsets_match_naive_loops_on_documented_draws():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(20, 5)), rng.normal(size=(25, 5)) + 0.4
    mean, std = kernel_inception_distance(a, b, num_subsets=6, subset_size=12, seed=7)
    draws = np.random.default_rng(7)
    mmds = []
    for _ in range(6):
        ia, ib = draws.choice(20, 12, replace=False), draws.choice(25, 12, replace=False)
        mmds.append(_naive_mmd2(a[ia].tolist(), b[ib].tolist()))
    assert mean == pytest.approx(np.mean(mmds), rel=1e-9)
    assert std == pytest.approx(np.std(mmds), rel=1e-9)
    assert std > 0
    assert kernel_inception_distance(a, b, num_subsets=6, subset_size=12, seed=7) == (mean, std)  # seeded
    assert kernel_inception_distance(a, b, num_subsets=6, subset_size=12, seed=8) != (mean, std)


def test_kid_from_the_whole_sets_kernels_equals_kid_from_each_subsets_own():
    """KID reads each subset's kernels from the whole sets' kernel matrices when they are small enough; the per-subset
    products (above the size limit) give the same mean and std on the same documented draws."""
    rng = np.random.default_rng(5)
    a, b = np.maximum(rng.normal(size=(40, 16)), 0), np.maximum(rng.normal(size=(30, 16)) + 0.2, 0)  # unequal sizes
    whole = kernel_inception_distance(a, b, num_subsets=8, subset_size=20, seed=3)
    apart = kernel_inception_distance(a, b, num_subsets=8, subset_size=20, seed=3, max_kernel_elements=0)
    assert whole == pytest.approx(apart, rel=1e-12) and whole[1] > 0
    assert kernel_inception_distance(a, b, num_subsets=8, subset_size=20, seed=3, max_kernel_elements=40 * 40) == whole
    draws = np.random.default_rng(3)
    first = [(draws.choice(40, 20, replace=False), draws.choice(30, 20, replace=False)) for _ in range(8)]
    assert whole[0] == pytest.approx(np.mean([polynomial_mmd2(a[i], b[j]) for i, j in first]), rel=1e-12)


def test_kid_subset_size_is_capped_at_the_smaller_set():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(20, 5)), rng.normal(size=(23, 5))
    # every subset of `a` is a permutation of all of it; the estimate is permutation invariant
    mean, std = kernel_inception_distance(a, b[:20], num_subsets=3, subset_size=1000)
    assert mean == pytest.approx(polynomial_mmd2(a, b[:20]), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)
    mean, _ = kernel_inception_distance(a, b, num_subsets=3, subset_size=1000)
    assert np.isfinite(mean)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_knn_radii_and_precision_recall_match_naive_loops(k):
    rng = np.random.default_rng(10 + k)
    real = rng.normal(size=(20, 4))
    fake = rng.normal(size=(24, 4)) * 0.8 + 0.6
    np.testing.assert_allclose(knn_radii(real, k), _naive_radii(real.tolist(), k), rtol=1e-9)
    np.testing.assert_allclose(knn_radii(fake, k), _naive_radii(fake.tolist(), k), rtol=1e-9)
    p, r = precision_recall(real, fake, k=k)
    p_naive, r_naive = _naive_pr(real.tolist(), fake.tolist(), k)
    assert (p, r) == pytest.approx((p_naive, r_naive), abs=1e-12)
    assert 0 < p < 1 and 0 < r < 1  # a non-trivial case


def test_precision_recall_blocked_equals_unblocked(monkeypatch):
    """Row blocks change the shapes of the BLAS products, and BLAS kernels (one per processor, or the one
    OPENBLAS_CORETYPE forces) do not promise bitwise-equal sums across shapes: the radii agree to float64
    rounding (seen: 4.4e-16 apart), the counts behind precision and recall exactly."""
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(300, 8)), rng.normal(size=(260, 8)) * 1.2 + 0.2
    whole = precision_recall(real, fake)
    radii = knn_radii(real)
    monkeypatch.setattr(kid_pr, "_BLOCK_ELEMENTS", 7 * 300)  # blocks of 7-8 rows
    assert len(list(kid_pr._row_blocks(300, 300))) == 43  # the monkeypatch took: many blocks, a ragged last one
    assert precision_recall(real, fake) == whole
    np.testing.assert_allclose(knn_radii(real), radii, rtol=1e-12, atol=0)
    assert 0.2 < whole[0] < 0.95 and 0.2 < whole[1] < 0.95  # neither count is trivially all or nothing


def test_radii_exclude_self_but_count_duplicates():
    x = np.array([[0.0], [0.0], [1.0], [3.0]])
    np.testing.assert_allclose(knn_radii(x, k=1), [0.0, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(knn_radii(x, k=2), [1.0, 1.0, 1.0, 3.0])


def test_max_samples_subsamples_with_the_seeded_rng():
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(80, 4)), rng.normal(size=(90, 4)) + 0.3
    got = precision_recall(real, fake, max_samples=50, seed=2)
    draws = np.random.default_rng(2)
    ir, jf = draws.choice(80, 50, replace=False), draws.choice(90, 50, replace=False)
    assert got == precision_recall(real[ir], fake[jf])
    assert precision_recall(real, fake, max_samples=1000) == precision_recall(real, fake)


# ------------------------------------------------------------------------------------------------ behaviour


def test_kid_near_zero_for_same_distribution_and_large_for_shift_or_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16))
    same_mean, same_std = kernel_inception_distance(x[:1000], x[1000:], num_subsets=20, subset_size=500)
    shift_mean, shift_std = kernel_inception_distance(x[:1000], x[1000:] + 0.5, num_subsets=20, subset_size=500)
    noise_mean, _ = kernel_inception_distance(x[:1000], rng.uniform(-3, 3, size=(1000, 16)), num_subsets=20, subset_size=500)
    assert abs(same_mean) < 0.02 * shift_mean
    assert abs(same_mean) < 3 * same_std  # unbiased: zero within its spread
    assert shift_mean > 20 * shift_std
    assert noise_mean > 50 * abs(same_mean) and noise_mean > 0.1


def test_precision_recall_near_one_for_same_distribution():
    rng = np.random.default_rng(1)
    x4 = rng.normal(size=(2000, 4))
    p, r = precision_recall(x4[:1000], x4[1000:], k=3)
    assert p >= 0.9 and r >= 0.9
    # In 16-d, k=3 balls around 1000 samples cover only ~80% of a fresh sample of the same law (the estimator's
    # finite-sample bias, which grows with the dimension); a larger k brings it back above 0.9.
    x16 = rng.normal(size=(2000, 16))
    p3, r3 = precision_recall(x16[:1000], x16[1000:], k=3)
    p10, r10 = precision_recall(x16[:1000], x16[1000:], k=10)
    assert 0.6 < p3 < 0.9 and 0.6 < r3 < 0.9
    assert p10 >= 0.9 and r10 >= 0.9
    assert p10 >= p3 and r10 >= r3  # radii grow with k, so coverage cannot shrink


def test_precision_recall_zero_for_far_apart_distributions():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(500, 16))
    assert precision_recall(real, rng.normal(size=(500, 16)) + 50.0) == (0.0, 0.0)


def test_tight_subcluster_has_high_precision_low_recall():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(1000, 8))
    fake = rng.normal(size=(1000, 8)) * 0.2  # mode-collapsed onto the densest part of the real data
    p, r = precision_recall(real, fake)
    assert p >= 0.95
    assert r <= 0.1
    # and the mirror image: swapping roles swaps the metrics' meaning
    p_swapped, r_swapped = precision_recall(fake, real)
    assert p_swapped == pytest.approx(r, abs=1e-12) and r_swapped == pytest.approx(p, abs=1e-12)


# ---------------------------------------------------------------------------------------------------- errors


def test_clear_errors():
    a = np.zeros((10, 4))
    with pytest.raises(ValueError, match="different feature dims"):
        kernel_inception_distance(a, np.zeros((10, 5)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        polynomial_mmd2(np.zeros(10), a)
    with pytest.raises(ValueError, match="at least 2 samples"):
        kernel_inception_distance(a[:1], a)
    with pytest.raises(ValueError, match="NaN"):
        precision_recall(np.full((10, 4), np.nan), a)
    with pytest.raises(ValueError, match="at least 4 samples"):
        precision_recall(a[:3], a, k=3)
    with pytest.raises(ValueError, match="k must satisfy"):
        knn_radii(a, k=10)
    with pytest.raises(ValueError, match="num_subsets"):
        kernel_inception_distance(a, a, num_subsets=0)
