"""Stage ``register``: check the lineage, log the run to MLflow, register the generator, move ``champion`` when it wins."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from components.config import Params, params_dict
from components.io import atomic_write_json
from pipelines.stages.paths import (
    DATA_DIR,
    DISTILLED_DIR,
    EVAL_METRICS,
    GRID_PATH,
    METRICS_DIR,
    MODELS_DIR,
    QUALITY_PATH,
    REFERENCE_DIR,
    REGISTRY_REPORT,
)

log = logging.getLogger("latentflow")
LOCK_PATH = Path("dvc.lock")


def _read_json(path: Path, what: str) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found ({what}): run `dvc repro` to build it first")
    return json.loads(Path(path).read_text())


def lineage(params: Params, *, models_dir: Path, data_dir: Path, ref_dir: Path, metrics: dict) -> dict:
    """Where the model came from, read from each artifact's own metadata and checked: the dataset the
    autoencoder, the U-Net, the reference statistics and the evaluation were made from must be the dataset
    (``LineageError`` names both digests otherwise); the code commit; the raw data's DVC hash; the params."""
    from components.registry.lineage import check_same_dataset, file_sha256, git_commit, lock_hashes, raw_data_hash

    manifest = _read_json(Path(data_dir) / "manifest.json", "the dataset manifest")
    models = {part: _read_json(Path(models_dir) / part / "config.json", f"the {part} checkpoint") for part in ("autoencoder", "diffusion")}
    reference = _read_json(Path(ref_dir) / "manifest.json", "the reference statistics")
    digest = check_same_dataset({
        f"{data_dir}": manifest.get("dataset_digest"),
        f"{models_dir}/autoencoder": models["autoencoder"].get("dataset_digest"),
        f"{models_dir}/diffusion": models["diffusion"].get("dataset_digest"),
        f"{ref_dir}": reference.get("dataset_digest"),
        "metrics.json (evaluate)": (metrics.get("protocol") or {}).get("dataset_digest"),
    })
    commit = git_commit()
    return {
        "git_commit": commit,
        "git_dirty": commit.endswith("-dirty"),
        "raw_data": {"source": manifest.get("source"), "root": params.ingest.root, "dvc_md5": raw_data_hash(LOCK_PATH, params.ingest.root)},
        "dataset_digest": digest,
        "dataset_counts": manifest.get("counts"),
        "params_sha256": hashlib.sha256(json.dumps(params_dict(params), sort_keys=True).encode()).hexdigest(),
        "weights_sha256": {part: file_sha256(Path(models_dir) / part / "model.safetensors") for part in models},
        "dvc_lock_outs": lock_hashes(LOCK_PATH),
    }


def describe(manifest: dict, diffusion_meta: dict, params: Params, metrics: dict) -> str:
    """The version's description on the registry page: what it generates, from which data, how to sample it."""
    s, names = params.sample, diffusion_meta.get("class_names") or []
    shape = "x".join(str(v) for v in manifest.get("shape", []))
    primary = params.register_.primary_metric
    judged = ""
    if primary.startswith("class_consistency") and primary != "class_consistency_classifier" and metrics.get("judge"):
        judged = f" (judged by {metrics['judge']}, val accuracy {metrics.get('judge_val_accuracy', float('nan')):.3f})"
    return (f"Class-conditional latent diffusion generator: {len(names)} classes ({', '.join(map(str, names[:12]))}), "
            f"{shape} images. Trained on {manifest.get('source')} (dataset {str(manifest.get('dataset_digest'))[:12]}, "
            f"{(manifest.get('counts') or {}).get('train')} training images). Default sampling: {s.sampler}, {s.steps} steps, "
            f"guidance {s.guidance}. {primary} = {metrics.get(primary, float('nan')):.4g}{judged}. "
            "Load: mlflow.pyfunc.load_model('models:/<name>@champion').predict(pd.DataFrame({'class_label': [3]})).")


def run(params: Params, models_dir: Path = MODELS_DIR, metrics_path: Path = EVAL_METRICS, grid_path: Path = GRID_PATH,
        data_dir: Path = DATA_DIR, out_path: Path = REGISTRY_REPORT, ref_dir: Path = REFERENCE_DIR,
        distilled_dir: Path = DISTILLED_DIR) -> dict:
    """Check the lineage, log into the execution's MLflow run (opened by a training stage; a new run when no training
    stage ran), register the generator and move ``champion`` if it wins. The run gets the step metrics of both
    training stages it does not have yet, from their loss histories.

    When the ``distill`` stage made a student (``distilled_dir/status.json`` says enabled), it is registered too, as its
    own version in its own run, with alias ``fast`` and its teacher's version as lineage (:func:`register_student`)."""
    from components.registry.lineage import default_artifact_location, resolve_tracking_uri
    from components.registry.mlflow_registry import RetryPolicy, register_model
    from components.registry.tracking import DVC_EXP_NAME, candidate_run, clear_state, dvc_experiment_tags

    cfg = params.register_
    tracking_uri = resolve_tracking_uri(cfg.tracking_uri)
    metrics = _read_json(metrics_path, "the evaluation metrics")
    manifest = _read_json(Path(data_dir) / "manifest.json", "the dataset manifest")
    origin = lineage(params, models_dir=Path(models_dir), data_dir=Path(data_dir), ref_dir=Path(ref_dir), metrics=metrics)
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    for k, v in metrics.get("class_consistency_per_class", {}).items():
        numeric[f"class_consistency_class_{k}"] = float(v)
    for name in ("autoencoder", "diffusion"):
        p = METRICS_DIR / f"{name}.json"
        if p.is_file():
            numeric.update({f"{name}_{k}": float(v) for k, v in json.loads(p.read_text()).items() if isinstance(v, int | float)})
    if cfg.primary_metric not in numeric:
        raise KeyError(f"register.primary_metric {cfg.primary_metric!r} is not in {metrics_path}; choose one of {sorted(numeric)}")
    tags = {"git_commit": origin["git_commit"], "dataset_digest": origin["dataset_digest"], "dataset_source": manifest["source"],
            "raw_data_md5": origin["raw_data"]["dvc_md5"] or "unknown", "params_sha256": origin["params_sha256"],
            # who judged class_consistency: versions judged by different judges are not comparable on it
            "class_consistency_judge": metrics.get("judge", "classifier")}
    diffusion_meta = _read_json(Path(models_dir) / "diffusion" / "config.json", "the diffusion checkpoint")
    histories = {prefix: json.loads(p.read_text()) for prefix, p in
                 (("autoencoder", METRICS_DIR / "autoencoder_loss.json"), ("diffusion", METRICS_DIR / "diffusion_loss.json")) if p.is_file()}
    with tempfile.TemporaryDirectory() as tmp:
        bundle, extra = Path(tmp) / "bundle", Path(tmp) / "extra"
        # the registered model holds what generation needs (autoencoder/, diffusion/) and, for the registry
        # page, its sample grid and lineage
        for part in ("autoencoder", "diffusion"):
            shutil.copytree(Path(models_dir) / part, bundle / part)
        extra.mkdir()
        (extra / "lineage.json").write_text(json.dumps(origin, indent=2, sort_keys=True) + "\n")
        shutil.copy(extra / "lineage.json", bundle / "lineage.json")
        if Path(grid_path).is_file():
            shutil.copy(grid_path, bundle / Path(grid_path).name)
        result = register_model(
            tracking_uri=tracking_uri, experiment=cfg.experiment, model_name=cfg.model_name, model_dir=bundle,
            params=params_dict(params), metrics=numeric,
            artifacts=[p for p in (Path(grid_path), Path(metrics_path), QUALITY_PATH.with_suffix(".png"), extra / "lineage.json") if p.is_file()],
            primary_metric=cfg.primary_metric, greater_is_better=cfg.greater_is_better, min_improvement=cfg.min_improvement, tags=tags,
            dataset={"name": f"{manifest['source']}-{manifest['dataset_digest'][:12]}", "digest": manifest["dataset_digest"], "source": str(data_dir),
                     "source_type": "local", "profile": json.dumps({"dataset_digest": manifest["dataset_digest"], "counts": manifest.get("counts")})},
            retry=RetryPolicy(cfg.http_max_retries, cfg.http_backoff_factor, cfg.http_timeout_s),
            description=describe(manifest, diffusion_meta, params, metrics),
            run_id=candidate_run("register", tracking_uri=tracking_uri, experiment=cfg.experiment), histories=histories,
            run_tags=dvc_experiment_tags(), run_name=os.environ.get(DVC_EXP_NAME) or None,
            artifact_location=default_artifact_location(tracking_uri, cfg.experiment),
        )
    clear_state()  # the execution's run is finished
    fast = register_student(params, Path(distilled_dir), Path(models_dir), teacher=result, origin=origin, manifest=manifest,
                            tracking_uri=tracking_uri)
    report = {"model_name": result.model_name, "version": result.version, "alias": result.alias, "model_uri": result.model_uri,
              "run_id": result.run_id, "experiment_id": result.experiment_id, "promoted": result.decision.promote, "reason": result.decision.reason,
              "tracking_uri": tracking_uri, "dataset_digest": origin["dataset_digest"], "git_commit": origin["git_commit"], "fast": fast}
    atomic_write_json(out_path, report)
    log.info("register: %s", report)
    return report


def read_student_status(distilled_dir: Path) -> dict | None:
    """``distilled_dir/status.json`` when the distill stage made a student, else None (stage disabled or never run)."""
    path = Path(distilled_dir) / "status.json"
    if not path.is_file():
        return None
    status = json.loads(path.read_text())
    return status if status.get("enabled") else None


def register_student(params: Params, distilled_dir: Path, models_dir: Path, *, teacher, origin: dict, manifest: dict,
                     tracking_uri: str) -> dict | None:
    """Register the distilled student as a new version with alias ``fast``, in a run of its own, tagged with its
    teacher's version, run and weights (lineage); None when there is no student. A student distilled from other
    teacher weights than ``models_dir/diffusion`` is a ``LineageError``: re-run distill."""
    from components.registry.lineage import LineageError, default_artifact_location, file_sha256
    from components.registry.mlflow_registry import RetryPolicy, register_model

    status = read_student_status(distilled_dir)
    if status is None:
        return None
    teacher_sha = file_sha256(Path(models_dir) / "diffusion" / "model.safetensors")
    if status.get("teacher_weights_sha256") != teacher_sha:
        raise LineageError(f"{distilled_dir} was distilled from other teacher weights ({str(status.get('teacher_weights_sha256'))[:12]}) "
                           f"than {models_dir}/diffusion ({teacher_sha[:12]}): re-run the distill stage (dvc repro distill)")
    cfg = params.register_
    meta = _read_json(Path(distilled_dir) / "diffusion" / "config.json", "the distilled student")
    info = meta.get("distilled") or {}
    lineage_record = {**origin, "weights_sha256": {part: file_sha256(Path(distilled_dir) / part / "model.safetensors")
                                                   for part in ("autoencoder", "diffusion")},
                      "teacher": {"model_name": teacher.model_name, "version": teacher.version, "run_id": teacher.run_id,
                                  "weights_sha256": teacher_sha}, "distilled": info}
    tags = {"git_commit": origin["git_commit"], "dataset_digest": origin["dataset_digest"], "params_sha256": origin["params_sha256"],
            "teacher_version": str(teacher.version), "teacher_run_id": teacher.run_id, "teacher_model_uri": teacher.model_uri,
            "distilled_steps": str(info.get("steps")), "folded_guidance": str(info.get("guidance"))}
    rounds = status.get("rounds") or []
    metrics = {"distilled_steps": float(info.get("steps", 0)), "folded_guidance": float(info.get("guidance", 0))}
    for rec in rounds:
        for key in ("final_loss", "train_seconds", "images_seen"):
            if isinstance(rec.get(key), int | float):
                metrics[f"round_{rec['student_steps']}_steps_{key}"] = float(rec[key])
    description = (f"Distilled student of version {teacher.version}: samples with DDIM in {info.get('steps')} steps, one forward pass "
                   f"per step (classifier-free guidance {info.get('guidance')} folded in). Load: models:/{cfg.model_name}@fast; "
                   f"`latentflow sample --model models:/{cfg.model_name}@fast` uses its step count.")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        for part in ("autoencoder", "diffusion"):
            shutil.copytree(Path(distilled_dir) / part, bundle / part)
        (bundle / "lineage.json").write_text(json.dumps(lineage_record, indent=2, sort_keys=True) + "\n")
        result = register_model(
            tracking_uri=tracking_uri, experiment=cfg.experiment, model_name=cfg.model_name, model_dir=bundle,
            params={"distill": params_dict(params)["distill"], "sample.guidance": params.sample.guidance}, metrics=metrics,
            artifacts=[bundle / "lineage.json"], primary_metric=cfg.primary_metric, greater_is_better=cfg.greater_is_better,
            min_improvement=cfg.min_improvement, tags=tags, alias="fast", description=description,
            retry=RetryPolicy(cfg.http_max_retries, cfg.http_backoff_factor, cfg.http_timeout_s),
            run_name=f"distill-{info.get('steps')}-steps-of-v{teacher.version}",
            artifact_location=default_artifact_location(tracking_uri, cfg.experiment),
        )
    return {"version": result.version, "alias": result.alias, "model_uri": result.model_uri, "run_id": result.run_id,
            "teacher_version": str(teacher.version), "steps": info.get("steps"), "guidance": info.get("guidance")}
