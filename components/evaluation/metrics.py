"""Distribution metrics on features: Fréchet distance and class consistency."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg


def _as_f64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``[N, D]`` features, in float64."""
    f = _as_f64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N>=2, D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al. 2017, eq. 6; Dowson & Landau 1982):

    d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}).

    Float64 throughout; when the product is near-singular (its square root is not finite), ``eps`` is
    added to both diagonals, as pytorch-fid's ``calculate_frechet_distance`` does. Accepts numpy
    arrays or torch tensors.
    """
    mu1, mu2 = np.atleast_1d(_as_f64(mu1)), np.atleast_1d(_as_f64(mu2))
    sigma1, sigma2 = np.atleast_2d(_as_f64(sigma1)), np.atleast_2d(_as_f64(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = np.atleast_2d(linalg.sqrtm(sigma1.dot(sigma2)))
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = np.atleast_2d(linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset)))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in sqrtm; statistics are degenerate")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def class_consistency(predicted: np.ndarray, requested: np.ndarray, num_classes: int) -> dict:
    """Share of generated images classified as their requested label, overall and per class."""
    predicted, requested = np.asarray(predicted), np.asarray(requested)
    per_class = {
        str(c): float((predicted[requested == c] == c).mean()) for c in range(num_classes) if (requested == c).any()
    }
    return {"overall": float((predicted == requested).mean()), "per_class": per_class}
