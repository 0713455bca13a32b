"""The MLflow run of one pipeline execution, as the stages see it (``components/registry/tracking.py`` does the work).

A training stage opens the run (or joins the one an earlier training stage of the same execution opened) and logs
its step metrics live through the training loop's ``on_log`` hook; ``register`` logs the model into the same run
and finishes it; ``latentflow <stage>`` marks it FAILED when any stage fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from components.config import Params, params_dict

log = logging.getLogger("latentflow")


def tracking_target(params: Params) -> tuple[str, str]:
    """(tracking URI, experiment name): ``$MLFLOW_TRACKING_URI`` or ``register.tracking_uri``, and ``register.experiment``."""
    from components.registry.lineage import resolve_tracking_uri

    return resolve_tracking_uri(params.register_.tracking_uri), params.register_.experiment


def run_tags(stage: str) -> dict[str, str]:
    """Tags of the execution's run: the git commit, the DVC experiment name and baseline rev (under ``dvc exp run``),
    and which stage opened it."""
    from components.registry.lineage import git_commit
    from components.registry.tracking import dvc_experiment_tags

    return {"git_commit": git_commit(), **dvc_experiment_tags(), "latentflow.opened_by": stage}


@contextlib.contextmanager
def training_run(stage: str, params: Params, prefix: str) -> Iterator[object | None]:
    """Open or join the execution's MLflow run for training stage ``stage`` and yield its step logger (the ``on_log``
    hook of the training loop, metrics ``<prefix>/<name>``), or None when the tracking store cannot be reached
    (one warning: training does not depend on MLflow). HTTP retries follow ``register.http_*`` inside the block."""
    from mlflow import MlflowClient

    from components.registry.lineage import default_artifact_location
    from components.registry.tracking import (
        DVC_EXP_NAME,
        RetryPolicy,
        StepLogger,
        candidate_run,
        end_run,
        experiment_id,
        flatten_params,
        read_state,
        record_stage,
        resume_or_create_run,
    )

    cfg = params.register_
    uri, experiment = tracking_target(params)
    with RetryPolicy(cfg.http_max_retries, cfg.http_backoff_factor, cfg.http_timeout_s).applied():
        logger = None
        try:
            client = MlflowClient(uri)
            exp_id = experiment_id(client, experiment, default_artifact_location(uri, experiment))
            previous = read_state()
            candidate = candidate_run(stage, tracking_uri=uri, experiment=experiment)
            run_id, reused = resume_or_create_run(client, exp_id, candidate, tags=run_tags(stage),
                                                  run_name=os.environ.get(DVC_EXP_NAME) or None)
            if previous and previous["run_id"] != run_id and previous.get("tracking_uri") == uri:
                with contextlib.suppress(Exception):  # a run this execution abandons (e.g. a re-run of an earlier stage)
                    end_run(client, previous["run_id"], "KILLED")
            record_stage(stage, run_id, tracking_uri=uri, experiment=experiment)
            section = {stage: params_dict(params)[stage]}
            flat = list(flatten_params(section).items())
            from mlflow.entities import Param

            for i in range(0, len(flat), 100):
                client.log_batch(run_id, params=[Param(k, v) for k, v in flat[i:i + 100]])
            logger = StepLogger(client, run_id, prefix)
            log.info("%s: MLflow run %s (%s) at %s", stage, run_id, "joined" if reused else "opened", uri)
        except Exception as exc:  # the tracking store is optional for training
            log.warning("%s: no MLflow run (tracking URI %s): %s; training goes on, `register` logs the curves later",
                        stage, uri, exc)
        yield logger


def mark_failed(stage: str, exc: BaseException) -> None:
    """``stage`` failed: the execution's open MLflow run (if any) ends FAILED, naming the stage and the error."""
    from components.registry.tracking import mark_open_run_failed

    run_id = mark_open_run_failed(reason=f"{stage}: {type(exc).__name__}: {exc}")
    if run_id:
        log.info("%s failed: MLflow run %s marked FAILED", stage, run_id)
