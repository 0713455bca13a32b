"""Stage ``register``: log the run to MLflow, register the generator, move ``champion`` when it wins."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

from components.config import Params, params_dict
from components.io import atomic_write_json
from pipelines.stages.paths import DATA_DIR, EVAL_METRICS, GRID_PATH, METRICS_DIR, MODELS_DIR, QUALITY_PATH, REGISTRY_REPORT

log = logging.getLogger("latentflow")


def run(params: Params, models_dir: Path = MODELS_DIR, metrics_path: Path = EVAL_METRICS, grid_path: Path = GRID_PATH,
        data_dir: Path = DATA_DIR, out_path: Path = REGISTRY_REPORT) -> dict:
    """Log the run to MLflow, register the generator and move ``champion`` if it wins."""
    from components.registry.lineage import git_commit, lock_hashes
    from components.registry.mlflow_registry import RetryPolicy, register_model

    cfg = params.register_
    metrics = json.loads(Path(metrics_path).read_text())
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    for k, v in metrics.get("class_consistency_per_class", {}).items():
        numeric[f"class_consistency_class_{k}"] = float(v)
    for name in ("autoencoder", "diffusion"):
        p = METRICS_DIR / f"{name}.json"
        if p.is_file():
            numeric.update({f"{name}_{k}": float(v) for k, v in json.loads(p.read_text()).items() if isinstance(v, int | float)})
    if cfg.primary_metric not in numeric:
        raise KeyError(f"register.primary_metric {cfg.primary_metric!r} is not in {metrics_path}; choose one of {sorted(numeric)}")
    tags = {"git_commit": git_commit(), "dataset_digest": manifest["digest"], "dataset_source": manifest["source"],
            "params_sha256": hashlib.sha256(json.dumps(params_dict(params), sort_keys=True).encode()).hexdigest()}
    tags.update(lock_hashes())
    with tempfile.TemporaryDirectory() as bundle:
        # the registered model holds only what generation needs: autoencoder/ and diffusion/
        for part in ("autoencoder", "diffusion"):
            shutil.copytree(Path(models_dir) / part, Path(bundle) / part)
        result = register_model(
            tracking_uri=cfg.tracking_uri, experiment=cfg.experiment, model_name=cfg.model_name, model_dir=Path(bundle),
            params=params_dict(params), metrics=numeric,
            artifacts=[p for p in (Path(grid_path), Path(metrics_path), QUALITY_PATH.with_suffix(".png")) if p.is_file()],
            primary_metric=cfg.primary_metric, greater_is_better=cfg.greater_is_better, min_improvement=cfg.min_improvement, tags=tags,
            dataset={"name": f"{manifest['source']}-{manifest['digest'][:12]}", "digest": manifest["digest"], "source": str(data_dir),
                     "source_type": "local", "profile": json.dumps({"digest": manifest["digest"], "counts": manifest.get("counts")})},
            retry=RetryPolicy(cfg.http_max_retries, cfg.http_backoff_factor, cfg.http_timeout_s),
        )
    report = {"model_name": result.model_name, "version": result.version, "alias": result.alias, "model_uri": result.model_uri,
              "run_id": result.run_id, "promoted": result.decision.promote, "reason": result.decision.reason,
              "tracking_uri": cfg.tracking_uri}
    atomic_write_json(out_path, report)
    log.info("register: %s", report)
    return report
