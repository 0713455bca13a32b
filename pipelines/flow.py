"""The Prefect flow: one task per ``dvc.yaml`` stage, in the order of DVC's own stage graph.

``dvc.yaml`` is the only declaration of the DAG; each task runs ``dvc repro --single-item <stage>``,
so DVC still decides what is up to date. Tasks run one at a time (parallel DVC runs in one
workspace would contend for DVC's lock).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

# Stages that only read inputs and rewrite their outputs atomically can be retried safely.
IDEMPOTENT_STAGES = {"ingest", "validate", "train_autoencoder", "train_diffusion", "distill", "sample", "evaluate"}


def stage_order(project_dir: str | Path = ".") -> list[str]:
    """Topological order of the stages in ``dvc.yaml`` (ties broken by their order in the file)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(project_dir)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        names = {stage: stage.name for stage in graph.nodes}  # not .addressing: that is relative to the cwd
    declared = list(_declared_stages(Path(project_dir) / "dvc.yaml"))
    order = nx.lexicographical_topological_sort(graph.reverse(copy=True), key=lambda s: declared.index(names[s]) if names[s] in declared else len(declared))
    return [names[s] for s in order]


def _declared_stages(dvc_yaml: Path) -> list[str]:
    import yaml

    return list((yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}))


def _repro(stage: str, project_dir: str) -> str:
    logger = get_run_logger()
    proc = subprocess.run(["dvc", "repro", "--single-item", stage], cwd=project_dir, capture_output=True, text=True)
    for line in (proc.stdout + proc.stderr).splitlines()[-40:]:
        logger.info("%s | %s", stage, line)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage!r} failed (dvc repro --single-item {stage} exited {proc.returncode}); see the log above")
    return stage


def stage_task(stage: str):
    """A Prefect task for one stage; idempotent stages retry twice with exponential backoff (5 s, 10 s, jittered).

    ``register`` does not retry: it creates MLflow runs and versions (its own HTTP retries are bounded
    in ``register.http_*``), so a second attempt would register twice.
    """
    retries = 2 if stage in IDEMPOTENT_STAGES else 0
    return task(_repro, name=f"dvc:{stage}", retries=retries, retry_delay_seconds=exponential_backoff(backoff_factor=5),
                retry_jitter_factor=0.2)


@flow(name="latentflow-pipeline", log_prints=True)
def latentflow_pipeline(project_dir: str = ".", only: list[str] | None = None) -> list[str]:
    """Run every ``dvc.yaml`` stage (or only those in ``only``) as Prefect tasks in DAG order."""
    order = stage_order(project_dir)
    if only:
        unknown = set(only) - set(order)
        if unknown:
            raise RuntimeError(f"unknown stage(s) {sorted(unknown)}; dvc.yaml has {order}")
        order = [s for s in order if s in only]
    done = []
    for stage in order:
        done.append(stage_task(stage)(stage, project_dir))
    return done
