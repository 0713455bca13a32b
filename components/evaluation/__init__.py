"""Evaluation: feature extractors and the metrics computed on their features."""

from components.evaluation.features import (
    ExtractorInfo,
    FeatureExtractor,
    FeatureExtractorUnavailable,
    effnet_lite0_extractor,
    get_extractor,
    inception_extractor,
)
from components.evaluation.kid_pr import kernel_inception_distance, precision_recall
from components.evaluation.metrics import class_consistency, feature_statistics, frechet_distance

__all__ = [
    "ExtractorInfo",
    "FeatureExtractor",
    "FeatureExtractorUnavailable",
    "class_consistency",
    "effnet_lite0_extractor",
    "feature_statistics",
    "frechet_distance",
    "get_extractor",
    "inception_extractor",
    "kernel_inception_distance",
    "precision_recall",
]
