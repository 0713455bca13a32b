"""The outputs of the stages, relative to the project root, as ``dvc.yaml`` declares them."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path("data/dataset")
VALIDATION_DIR = Path("reports/validation")
MODELS_DIR = Path("models")
SAMPLES_DIR = Path("samples")
GRID_PATH = Path("reports/samples_grid.png")
METRICS_DIR = Path("metrics")
EVAL_METRICS = Path("metrics.json")
REFERENCE_DIR = Path("reference_stats")
QUALITY_PATH = Path("reports/quality_vs_steps.json")
QUALITY_PLOT = METRICS_DIR / "quality_vs_steps.json"  # the same, one column per sampler: what `dvc plots` draws
GUIDANCE_SWEEP = METRICS_DIR / "guidance_sweep.json"  # evaluate.guidance_sweep: one row per guidance (a `dvc plots` source)
REGISTRY_REPORT = Path("reports/registry.json")
DISTILLED_DIR = Path("models/distilled")  # distill: the few-step student (status.json alone when distill.enabled is false)
CHECKPOINTS_DIR = Path("checkpoints")  # resumable training state, one folder per training stage (not a DVC output)
