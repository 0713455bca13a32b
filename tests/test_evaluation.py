"""Fréchet distance and class consistency against direct computations."""

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from scipy import linalg

from components.evaluation import class_consistency, feature_statistics, frechet_distance


def _direct_fd(mu1, s1, mu2, s2):
    """d^2 = |mu1-mu2|^2 + Tr(s1) + Tr(s2) - 2 Tr((s1^1/2 s2 s1^1/2)^1/2), a second formulation."""
    r1 = linalg.sqrtm(s1).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(r1 @ s2 @ r1).real))


@pytest.mark.parametrize("dim", [2, 16, 64])
def test_frechet_distance_matches_direct_formula(dim):
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(500, dim))
    b = rng.normal(size=(500, dim)) @ rng.normal(size=(dim, dim)) * 0.3 + 0.5
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    fd = frechet_distance(mu1, s1, mu2, s2)
    assert fd == pytest.approx(_direct_fd(mu1, s1, mu2, s2), rel=1e-6)
    assert frechet_distance(torch.from_numpy(mu1), torch.from_numpy(s1), mu2, s2) == pytest.approx(fd, rel=1e-12)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6 * dim)


def test_frechet_distance_of_shifted_gaussians():
    # same covariance: FD = |mu1 - mu2|^2
    s = np.diag([1.0, 2.0, 3.0])
    assert frechet_distance(np.zeros(3), s, np.array([1.0, 2.0, 2.0]), s) == pytest.approx(9.0, rel=1e-9)
    # 1-d closed form: (m1-m2)^2 + (sd1-sd2)^2
    assert frechet_distance([0.0], [[4.0]], [1.0], [[9.0]]) == pytest.approx(1.0 + 1.0, rel=1e-9)


def test_frechet_distance_rank_deficient_is_finite():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 1
    fd = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert np.isfinite(fd) and fd > 50  # mean shift alone contributes 64


def test_frechet_distance_rank_deficient_high_dim_matches_sqrtm():
    """The evaluate case (EfficientNet-Lite0: 1280-d features of 500 images), scaled down: 384-d features of 150
    images (rank 149), where sigma1 sigma2 is singular. The eigh route must give pytorch-fid's sqrtm value (with its
    diagonal offset, which moves it by far less than the tolerance)."""
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(384, 384)) * 0.05
    a = np.maximum(rng.normal(size=(150, 384)) @ mix, 0)  # ReLU-like, non-negative, correlated features
    b = np.maximum(rng.normal(size=(150, 384)) @ mix + 0.1, 0)
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    expected = float(calculate_frechet_distance(mu1, s1, mu2, s2))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-6)  # symmetric in its two arguments
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6 * np.trace(s1))


@pytest.mark.parametrize("which", ["sigma1", "sigma2"])
def test_frechet_distance_refuses_a_matrix_that_is_no_covariance(which):
    good = np.diag([1.0, 2.0, 3.0])
    asymmetric = good + np.triu(np.ones((3, 3)), 1)
    indefinite = np.diag([1.0, -0.5, 3.0])
    for bad, match in ((asymmetric, "not symmetric"), (indefinite, "negative eigenvalue")):
        s1, s2 = (bad, good) if which == "sigma1" else (good, bad)
        with pytest.raises(ValueError, match=f"{which} .*{match}"):
            frechet_distance(np.zeros(3), s1, np.zeros(3), s2)
    # rounding-level negative eigenvalues (a float64 covariance of collinear features) are not refused
    x = np.random.default_rng(0).normal(size=(50, 1))
    s = np.cov(np.hstack([x, 2 * x, -x]), rowvar=False)
    assert frechet_distance(np.zeros(3), s, np.zeros(3), s) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("which", ["mu1", "sigma1", "mu2", "sigma2"])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_frechet_distance_names_non_finite_statistics(which, bad_value):
    # features of a diverged model's images are NaN; eigh of a NaN matrix either raises LinAlgError or returns NaN,
    # and NaN fails the symmetry check: the message must name NaN/inf, not call the matrix asymmetric
    args = {"mu1": np.zeros(3), "sigma1": np.eye(3), "mu2": np.zeros(3), "sigma2": np.eye(3)}
    args[which] = args[which].copy()
    args[which].flat[1 if which.startswith("sigma") else 0] = bad_value
    with pytest.raises(ValueError, match=f"{which} has 1 non-finite entries .*not finite"):
        frechet_distance(**args)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_class_consistency():
    out = class_consistency(np.array([0, 1, 1, 2, 2, 2]), np.array([0, 0, 1, 1, 2, 2]), 3)
    assert out["overall"] == pytest.approx(4 / 6)
    assert out["per_class"] == {"0": 0.5, "1": 0.5, "2": 1.0}
