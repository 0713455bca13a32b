"""Where a model came from: the code commit and the DVC-recorded hashes of the pipeline's outputs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


DVC_ROOT_ENV = "DVC_ROOT"  # set by DVC in every stage's environment: the project root (for a queued experiment, the workspace's)
SQLITE_PREFIX = "sqlite:///"


def resolve_tracking_uri(params_value: str | None) -> str:
    """Where MLflow runs and models go: ``$MLFLOW_TRACKING_URI`` when set (the environment: a team's server),
    else ``register.tracking_uri`` from params (the local default ``sqlite:///mlflow.db``).

    Inside a DVC stage a relative SQLite path is anchored at ``$DVC_ROOT``: ``dvc exp run --queue`` runs each
    experiment in a temporary copy of the project, whose own ``mlflow.db`` would be deleted with it; DVC points
    ``DVC_ROOT`` at the workspace, so every experiment logs into the workspace's store."""
    uri = os.environ.get(TRACKING_URI_ENV) or params_value or "sqlite:///mlflow.db"
    root = os.environ.get(DVC_ROOT_ENV)
    if root and uri.startswith(SQLITE_PREFIX) and not uri[len(SQLITE_PREFIX):].startswith("/"):
        path = uri[len(SQLITE_PREFIX):]
        if path and not path.startswith(":memory:"):
            return SQLITE_PREFIX + str((Path(root) / path).resolve())
    return uri


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: for a local SQLite store, ``mlruns/<experiment>`` beside the
    database file (MLflow's default is ``mlruns/<id>`` under the current directory, which for a queued DVC
    experiment is a temporary copy of the project); None (the server's default) for any other store."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    db = Path(tracking_uri[len(SQLITE_PREFIX):])
    if not db.is_absolute():
        db = Path.cwd() / db
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment) or "experiment"
    return str(db.resolve().parent / "mlruns" / safe)


def git_commit(cwd: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of the checkout, with ``-dirty`` when tracked files have uncommitted changes;
    ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10, cwd=cwd)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10,
                               cwd=cwd).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lock_hashes(lock_path: Path = Path("dvc.lock")) -> dict[str, str]:
    """md5 of each stage's outputs as recorded in ``dvc.lock``, keyed ``dvc.<stage>.<path>``."""
    import yaml

    if not lock_path.is_file():
        return {}
    stages = (yaml.safe_load(lock_path.read_text()) or {}).get("stages", {})
    out = {}
    for name, entry in stages.items():
        for o in entry.get("outs", []):
            out[f"dvc.{name}.{o['path']}"] = o.get("md5", "")
    return out


class LineageError(ValueError):
    """Artifacts that should come from one dataset (or one run) do not."""


def check_same_dataset(digests: dict[str, str | None]) -> str:
    """The dataset digest every artifact in ``digests`` (name -> digest its metadata records) agrees on.

    The first entry is the reference (the dataset itself); any other that differs, or records none, is named
    with both digests in the error."""
    (ref_name, ref), *others = digests.items()
    bad = [(name, d) for name, d in others if d != ref]
    if ref is None or bad:
        detail = "; ".join(f"{name} was made from dataset {str(d)[:12] if d else '(none recorded)'}" for name, d in bad)
        raise LineageError(f"lineage mismatch: {ref_name} is dataset {str(ref)[:12]}, but {detail or 'it records no digest'}. "
                           "These artifacts come from different data: run `dvc repro` so every stage is rebuilt from the same dataset.")
    return ref


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def raw_data_hash(lock_path: Path, root: str) -> str | None:
    """The DVC hash (md5) of the raw-data dependency ``root`` of the ``ingest`` stage, as ``dvc.lock`` records it."""
    import yaml

    if not Path(lock_path).is_file():
        return None
    ingest = ((yaml.safe_load(Path(lock_path).read_text()) or {}).get("stages") or {}).get("ingest") or {}
    for dep in ingest.get("deps") or []:
        if dep.get("path") == root:
            return dep.get("md5")
    return None
