"""One MLflow run per pipeline execution, shared by the stages that run in it.

DVC runs each stage as its own process, so the run is handed from stage to stage through a small state
file (:data:`STATE_PATH`, beside ``dvc.yaml``; not a DVC output). The first training stage that runs opens
the run; the next training stage of the same execution logs into it; ``register`` logs the model into it
and finishes it. A stage that fails marks it FAILED. Which execution a run belongs to follows from the
order of the stages that log (:data:`STAGE_ORDER`): a stage reuses the open run only while every stage that
already logged into it comes before it, so a re-run of ``train_autoencoder`` after ``train_diffusion`` logged
starts a new run (the abandoned one ends KILLED).

Everything goes through an explicit ``MlflowClient`` (no fluent active run, no global tracking URI).
Step metrics are logged as ``<prefix>/<name>`` with the training step as MLflow's ``step``. Logging never
changes training: the training loop hands the logger plain floats (:class:`StepLogger`), and a tracking
server that fails mid-training only costs the live curve (one warning; :func:`backfill` fills it from the
stage's loss history at the end, and ``register`` again from the committed history files).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, RunStatus

from components.io import atomic_write_json, env_overrides

log = logging.getLogger(__name__)

STATE_PATH = Path(".latentflow/mlflow_run.json")
STAGE_ORDER = ("train_autoencoder", "train_diffusion", "register")
# the DVC experiment of a stage: `dvc exp run` sets these in every stage's environment
DVC_EXP_NAME, DVC_EXP_BASELINE_REV = "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
MAX_PARAM_LEN = 6000


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested dicts with dotted keys and stringify values (truncated to MLflow's limit)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LEN]
    return flat


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded HTTP retries for a tracking server (MLflow's ``MLFLOW_HTTP_REQUEST_*`` settings).

    MLflow's own defaults (7 retries, backoff factor 2, 120 s timeout) wait minutes before an outage
    surfaces; these bound it to roughly ``backoff_factor * 2**max_retries`` seconds per request.
    """

    max_retries: int = 3
    backoff_factor: int = 1
    timeout_s: int = 30

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Set the MLflow HTTP retry variables for the duration of the block, then restore them."""
        values = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": self.max_retries, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": self.backoff_factor,
                  "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": 0.5, "MLFLOW_HTTP_REQUEST_TIMEOUT": self.timeout_s}
        with env_overrides({key: str(value) for key, value in values.items()}):
            yield


def dvc_experiment_tags(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``dvc_exp_name`` and ``dvc_exp_baseline_rev`` of the DVC experiment this process runs in (``dvc exp run``
    sets them in each stage's environment); empty under a plain ``dvc repro``."""
    env = os.environ if environ is None else environ
    tags = {}
    if env.get(DVC_EXP_NAME):
        tags["dvc_exp_name"] = env[DVC_EXP_NAME]
    if env.get(DVC_EXP_BASELINE_REV):
        tags["dvc_exp_baseline_rev"] = env[DVC_EXP_BASELINE_REV]
    return tags


def read_state(state_path: Path = STATE_PATH) -> dict | None:
    """The open pipeline run recorded in ``state_path`` (run id, tracking URI, experiment, stages that logged), or None."""
    try:
        state = json.loads(Path(state_path).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("run_id") else None


def clear_state(state_path: Path = STATE_PATH) -> None:
    Path(state_path).unlink(missing_ok=True)


def candidate_run(stage: str, *, tracking_uri: str, experiment: str, state_path: Path = STATE_PATH) -> str | None:
    """The run id ``stage`` should log into, from the state file alone (the caller still checks it is RUNNING):
    the recorded run when it is on the same tracking URI and experiment and every stage that logged into it comes
    before ``stage`` in :data:`STAGE_ORDER`; else None (a new execution)."""
    state = read_state(state_path)
    if state is None or state.get("tracking_uri") != tracking_uri or state.get("experiment") != experiment:
        return None
    pos = STAGE_ORDER.index(stage)
    if any(s not in STAGE_ORDER or STAGE_ORDER.index(s) >= pos for s in state.get("stages", [])):
        return None
    return state["run_id"]


def record_stage(stage: str, run_id: str, *, tracking_uri: str, experiment: str, state_path: Path = STATE_PATH) -> None:
    """Note in the state file that ``stage`` logs into ``run_id`` (a new run id starts a new list)."""
    state = read_state(state_path)
    if state is None or state.get("run_id") != run_id:
        state = {"run_id": run_id, "tracking_uri": tracking_uri, "experiment": experiment, "stages": []}
    if stage not in state["stages"]:
        state["stages"].append(stage)
    atomic_write_json(state_path, state)


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """Id of experiment ``name``, created (with ``artifact_location``) when missing."""
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name, artifact_location)


def resume_or_create_run(client: MlflowClient, experiment_id: str, candidate: str | None, *, tags: dict[str, str],
                         run_name: str | None = None, superseded_status: str = "KILLED") -> tuple[str, bool]:
    """``(run_id, reused)``: ``candidate`` when it is a RUNNING run of ``experiment_id`` (``tags`` it lacks are added),
    else a new run with ``tags``; a RUNNING candidate that is not reused ends ``superseded_status``."""
    if candidate:
        try:
            run = client.get_run(candidate)
        except Exception:  # deleted, or from another store
            run = None
        if run is not None and run.info.status == "RUNNING" and run.info.experiment_id == experiment_id:
            for key, value in tags.items():
                if key not in run.data.tags:  # the stage that opened the run keeps its tags (e.g. latentflow.opened_by)
                    client.set_tag(candidate, key, value)
            return candidate, True
    run_id = client.create_run(experiment_id, tags=dict(tags), run_name=run_name).info.run_id
    return run_id, False


def end_run(client: MlflowClient, run_id: str, status: str) -> None:
    """Terminate ``run_id`` with ``status`` (FINISHED, FAILED, KILLED) unless it already ended."""
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.from_string(status)))


def mark_open_run_failed(state_path: Path = STATE_PATH, reason: str = "") -> str | None:
    """A stage failed: the pipeline run recorded in ``state_path`` ends FAILED (with tag ``failed_stage_error``) and
    the state file is removed, so the next execution opens a new run. Returns the run id; never raises (a tracking
    server that is down must not hide the stage's own error)."""
    state = read_state(state_path)
    if state is None:
        return None
    try:
        client = MlflowClient(state["tracking_uri"])
        if reason:
            client.set_tag(state["run_id"], "failed_stage_error", reason[:4000])
        end_run(client, state["run_id"], "FAILED")
    except Exception as exc:  # best effort: the stage's own error is what the user needs
        log.warning("could not mark MLflow run %s FAILED: %s", state["run_id"], exc)
    clear_state(state_path)
    return state["run_id"]


def _metrics(prefix: str, entry: Mapping[str, float], timestamp_ms: int) -> list[Metric]:
    step = int(entry["step"])
    return [Metric(f"{prefix}/{k}", float(v), timestamp_ms, step) for k, v in entry.items()
            if k != "step" and isinstance(v, int | float) and math.isfinite(float(v))]


def log_history(client: MlflowClient, run_id: str, prefix: str, history: Iterable[Mapping[str, float]]) -> int:
    """Log the entries of ``history`` (dicts with ``step``) whose step ``<prefix>/loss`` does not have yet in ``run_id``;
    returns how many entries were logged. Idempotent: a second call logs nothing."""
    have = {m.step for m in client.get_metric_history(run_id, f"{prefix}/loss")}
    now = int(time.time() * 1000)
    pending = [m for entry in history if int(entry["step"]) not in have for m in _metrics(prefix, entry, now)]
    for i in range(0, len(pending), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=pending[i:i + MAX_METRICS_PER_BATCH])
    return len({m.step for m in pending})


@dataclass
class StepLogger:
    """The training loop's ``on_log`` hook: each call logs one history entry (``step`` plus floats such as
    ``loss``, ``lr``, ``images_per_s``) as ``<prefix>/<name>`` at that step. After the first failure of the tracking
    server it warns once and stops trying (training goes on)."""

    client: MlflowClient
    run_id: str
    prefix: str
    logged: int = 0
    failed: bool = False

    def __call__(self, entry: Mapping[str, float]) -> None:
        if self.failed:
            return
        try:
            self.client.log_batch(self.run_id, metrics=_metrics(self.prefix, entry, int(time.time() * 1000)))
            self.logged += 1
        except Exception as exc:  # a tracking outage must not stop training
            self.failed = True
            log.warning("MLflow step metrics for %s stopped (run %s): %s; training continues, the curve is logged "
                        "from the loss history at the end", self.prefix, self.run_id, exc)

    def backfill(self, history: Iterable[Mapping[str, float]]) -> int:
        """Log the entries of ``history`` the run does not have (e.g. steps before a resume); never raises."""
        try:
            return log_history(self.client, self.run_id, self.prefix, history)
        except Exception as exc:
            log.warning("could not log the %s loss history to MLflow run %s: %s", self.prefix, self.run_id, exc)
            return 0
