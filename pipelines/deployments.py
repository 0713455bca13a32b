"""Prefect deployments of the team setup (declared in ``prefect.yaml``).

- ``latentflow-retrain`` (``retrain``): the scheduled retraining flow on the CPU ``process`` pool.
  Data stages (ingest, validate) run here; the training stages run here too, or — with
  ``train_deployment`` set — on another pool through ``run_deployment`` (the Kubernetes GPU pool);
  sampling, evaluation and registration run here again.
- ``latentflow-stages`` (``run_stages``): runs a subset of ``dvc.yaml`` stages on whatever machine its
  work pool starts it: pull inputs from the DVC remote, ``dvc repro --single-item`` each stage,
  push outputs. The GPU deployment of the training stage is this flow.

Stages on different machines exchange DVC-cached outputs through the DVC remote and the rest
(``dvc.lock``, uncached reports/metrics) through a hand-off archive on the same remote
(``pipelines/remote.py``). A failed stage raises; DVC's outputs of the previous good run stay
where they are (stages write atomically, outputs are ``persist: true``) and nothing is pushed.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from pipelines import remote
from pipelines.flow import stage_order, stage_task

DATA_STAGES = ("ingest", "validate")
TRAIN_STAGES = ("train_autoencoder", "train_diffusion")
SUMMARY_KEY = "latentflow-retrain"  # the Prefect artifact key of each retraining run's summary


@task(name="dvc pull", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=3), retry_jitter_factor=0.2)
def dvc_pull(project_dir: str) -> None:
    """Fetch the outputs recorded in ``dvc.lock`` from the default remote (missing ones are skipped), and the raw
    data of ``.dvc`` files only where this machine does not have it yet.

    The targets are named: a bare ``dvc pull --allow-missing`` was seen to delete a ``dvc add``-ed folder that was
    complete in the local cache ("D data/raw/digits/"), which would lose the user's images on the machine that runs
    ``ingest``."""
    targets = [*remote.missing_dvc_files(project_dir)]
    if Path(project_dir, "dvc.lock").is_file():
        targets += stage_order(project_dir)
    if targets:
        get_run_logger().info("dvc pull: %s", remote.dvc(["pull", "--allow-missing", *targets], project_dir).strip()[-500:])


@task(name="dvc push", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=3), retry_jitter_factor=0.2)
def dvc_push(project_dir: str) -> None:
    """Upload every cached output to the default remote (idempotent: present objects are skipped)."""
    get_run_logger().info("dvc push: %s", remote.dvc(["push"], project_dir).strip()[-500:])


@task(name="hand-off upload", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=3))
def handoff_upload(project_dir: str, key: str, direction: str) -> str:
    return remote.upload_handoff(project_dir, key, direction)


@task(name="hand-off download", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=3))
def handoff_download(project_dir: str, key: str, direction: str) -> list[str]:
    return remote.download_handoff(project_dir, key, direction)


def _run(stages: list[str], project_dir: str) -> list[str]:
    return [stage_task(stage)(stage, project_dir) for stage in stages]


@flow(name="latentflow-stages", log_prints=True)
def run_stages(stages: list[str], project_dir: str = ".", handoff: str | None = None) -> list[str]:
    """Run ``stages`` (in DAG order) on this machine with inputs and outputs on the DVC remote.

    With ``handoff`` the caller's ``dvc.lock`` and uncached outputs are fetched first (``handoff/<key>/in``)
    and this machine's are returned the same way (``handoff/<key>/out``).
    """
    project = str(Path(project_dir).resolve())
    order = stage_order(project)
    unknown = set(stages) - set(order)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; dvc.yaml has {order}")
    if handoff:
        handoff_download(project, handoff, "in")
    dvc_pull(project)
    done = _run([s for s in order if s in stages], project)
    dvc_push(project)
    if handoff:
        handoff_upload(project, handoff, "out")
    return done


@flow(name="latentflow-retrain", log_prints=True)
def retrain(project_dir: str = ".", train_deployment: str | None = None, train_project_dir: str = ".",
            train_timeout_s: float = 6 * 3600, push: bool = True) -> list[str]:
    """The retraining pipeline: data stages here, training here or on ``train_deployment``, then evaluation here.

    ``train_deployment`` (e.g. ``latentflow-stages/train-gpu``) sends the training stages to another
    work pool with ``run_deployment``; ``train_project_dir`` is the project folder on that machine.
    """
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import get_run_context
    from prefect.deployments import run_deployment

    from pipelines.summary import changed_stages, lock_fingerprints, retrain_markdown

    logger = get_run_logger()
    project = str(Path(project_dir).resolve())
    order = stage_order(project)
    remote_configured = _has_remote(project)
    if remote_configured:
        dvc_pull(project)
    changed = changed_stages(remote.dvc(["status", "--json"], project))
    if not changed:
        logger.info("nothing changed: every dvc.yaml stage is up to date (raw data, code and params); nothing to retrain")
        create_markdown_artifact(retrain_markdown(project, changed={}, reran=[]), key=SUMMARY_KEY,
                                 description="latentflow retraining: nothing changed")
        return []
    logger.info("changed since the last run: %s", changed)
    before = lock_fingerprints(project)
    done = _run([s for s in order if s in DATA_STAGES], project)
    train = [s for s in order if s in TRAIN_STAGES]
    if train_deployment:
        if not remote_configured:
            raise RuntimeError("train_deployment needs a DVC remote to exchange artifacts; run `dvc remote add -d storage s3://bucket/path`")
        key = str(get_run_context().flow_run.id)
        dvc_push(project)
        handoff_upload(project, key, "in")
        logger.info("training stages %s -> deployment %s (hand-off %s)", train, train_deployment, key)
        child = run_deployment(train_deployment, parameters={"stages": train, "project_dir": train_project_dir, "handoff": key},
                               timeout=train_timeout_s, poll_interval=2)
        if not child.state or not child.state.is_completed():
            raise RuntimeError(f"training deployment {train_deployment} ended {child.state.name if child.state else 'without a state'} "
                               f"(flow run {child.id}: {child.state.message if child.state else ''}); nothing was pulled back, "
                               "the outputs of the previous good run are unchanged")
        handoff_download(project, key, "out")
        dvc_pull(project)
        done += train
    else:
        done += _run(train, project)
    done += _run([s for s in order if s not in DATA_STAGES and s not in TRAIN_STAGES], project)
    if push and remote_configured:
        dvc_push(project)
    after = lock_fingerprints(project)
    reran = [s for s in order if before.get(s) != after.get(s)]
    create_markdown_artifact(retrain_markdown(project, changed=changed, reran=reran), key=SUMMARY_KEY,
                             description=f"latentflow retraining: re-ran {', '.join(reran) or 'nothing'}")
    return done


def _has_remote(project_dir: str) -> bool:
    """Whether the project has a default DVC remote (of any kind)."""
    from dvc.repo import Repo

    with Repo(project_dir) as repo:
        return bool(repo.config["core"].get("remote"))
