"""Evaluation: feature extractors and the metrics computed on their features."""

from components.evaluation.metrics import class_consistency, feature_statistics, frechet_distance

__all__ = ["class_consistency", "feature_statistics", "frechet_distance"]
