"""What a retraining run did, as the markdown a Prefect artifact shows: what changed, what re-ran, the
registered version and its alias, the MLflow run and the headline metrics."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

HEADLINE = ("class_consistency", "fd_classifier", "kid_classifier", "precision_classifier", "recall_classifier", "fd_effnet_lite0")


def lock_fingerprints(project_dir: str | Path) -> dict[str, str]:
    """One hash per stage of ``dvc.lock`` (its deps, params and outs): a stage that re-ran gets a new one."""
    lock = Path(project_dir) / "dvc.lock"
    stages = ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}) if lock.is_file() else {}
    return {name: hashlib.sha256(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest() for name, entry in stages.items()}


def changed_stages(status_json: str, limit: int = 6) -> dict[str, list[str]]:
    """``dvc status --json`` -> stage: what changed (dep paths, params, outs), at most ``limit`` items a stage
    (then ``+N more``; a stage that never ran lists all its deps)."""
    out: dict[str, list[str]] = {}
    for name, changes in (json.loads(status_json or "{}") or {}).items():
        what = []
        for change in changes:
            if isinstance(change, dict):
                for kind, items in change.items():
                    what += [f"{kind}: {p}" for p in (items or {})] if isinstance(items, dict) else [f"{kind}: {items}"]
            else:
                what.append(str(change))
        out[name] = what[:limit] + ([f"+{len(what) - limit} more"] if len(what) > limit else [])
    return out


def _links(report: dict) -> tuple[str, str]:
    uri = str(report.get("tracking_uri", ""))
    if not uri.startswith("http"):
        return f"run `{report.get('run_id')}` in `{uri}`", f"`{report.get('model_uri')}`"
    base = uri.rstrip("/")
    run = f"[MLflow run {report.get('run_id', '')[:8]}]({base}/#/experiments/{report.get('experiment_id', '0')}/runs/{report.get('run_id')})"
    version = f"[{report.get('model_name')} v{report.get('version')}]({base}/#/models/{report.get('model_name')}/versions/{report.get('version')})"
    return run, version


def retrain_markdown(project_dir: str | Path, *, changed: dict[str, list[str]], reran: list[str]) -> str:
    """The run's summary. ``changed``: what DVC saw before the run (empty: nothing changed, nothing ran)."""
    project = Path(project_dir)
    report_path, metrics_path = project / "reports/registry.json", project / "metrics.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    run_link, version_link = _links(report) if report else ("(none yet)", "(none yet)")
    if not changed:
        return ("# latentflow retraining: nothing changed\n\n"
                "DVC reports every stage up to date (same raw data, code and params), so nothing ran and no model was registered.\n\n"
                f"Current registration: {version_link}, alias `{report.get('alias', '-')}`; {run_link}.\n")
    lines = ["# latentflow retraining", "", "## What changed", ""]
    lines += [f"- `{stage}`: {', '.join(what) or 'changed'}" for stage, what in changed.items()]
    lines += ["", f"## Re-ran: {', '.join(f'`{s}`' for s in reran) or 'nothing'}", "", "## Registered", "",
              f"- {version_link} → alias **{report.get('alias')}** ({'promoted' if report.get('promoted') else 'not promoted'})",
              f"- decision: {report.get('reason', '')}", f"- {run_link} (artifacts: `samples_grid.png`, `lineage.json`, `metrics.json`)",
              f"- dataset `{str(report.get('dataset_digest', ''))[:12]}`, commit `{report.get('git_commit', '')}`", "", "## Metrics", "",
              "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {metrics[k]:.4g} |" for k in HEADLINE if isinstance(metrics.get(k), int | float)]
    return "\n".join(lines) + "\n"
