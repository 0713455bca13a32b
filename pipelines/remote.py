"""S3 storage for the team setup: the bucket, the DVC remote, and the hand-off between machines.

Credentials never appear in params, configs or logs: boto3 and DVC (s3fs) read them from the
environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, or any other boto3 credential
source). Only the endpoint of an S3-compatible server (MinIO, moto) is configuration: the DVC
remote's ``endpointurl``, or ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` for boto3.

Stages that run on different machines (the training stage on a GPU pool, the others on a CPU pool)
exchange their DVC-cached outputs through the DVC remote (``dvc push`` / ``dvc pull``). What DVC does
not cache — ``dvc.lock`` (the hashes) and the ``cache: false`` outputs such as reports and metrics —
travels as a small *hand-off* archive on the same remote, under ``<remote>/handoff/<key>/``.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

HANDOFF_PREFIX = "handoff"
# the open MLflow run of the pipeline execution (components/registry/tracking.py STATE_PATH): the run a training
# stage opened on the GPU machine is the run `register` finishes on the CPU machine
RUN_STATE = ".latentflow/mlflow_run.json"


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    endpoint_url: str | None


def s3_client(endpoint_url: str | None = None):
    """A boto3 S3 client; credentials come from the environment (never from arguments)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=30)
    return boto3.client("s3", endpoint_url=endpoint_url, config=config)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (``bucket``, ``some/prefix``)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"expected an s3://bucket/prefix URL, got {url!r}")
    return parsed.netloc, parsed.path.strip("/")


def ensure_bucket(bucket: str, endpoint_url: str | None = None) -> bool:
    """Create ``bucket`` unless it exists; True when it was created."""
    from botocore.exceptions import ClientError

    client = s3_client(endpoint_url)
    try:
        client.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    client.create_bucket(Bucket=bucket)
    return True


def dvc(args: list[str], project_dir: str | Path, timeout: float = 1800) -> str:
    """Run ``dvc <args>`` in ``project_dir``; a failure raises with DVC's own message."""
    proc = subprocess.run(["dvc", *args], cwd=project_dir, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-3000:]
        hint = ""
        if "Could not connect to the endpoint URL" in output:
            hint = ("\nThe DVC remote's S3 endpoint is unreachable: check that the S3 server is up and the remote's "
                    "`endpointurl` (`dvc remote list --show-origin`, `dvc config -l`); nothing local was changed, so a re-run "
                    "transfers what is missing.")
        raise RuntimeError(f"`dvc {' '.join(args)}` failed in {project_dir} (exit {proc.returncode}):\n{output}{hint}")
    return proc.stdout


def default_remote(project_dir: str | Path) -> S3Location:
    """The default DVC remote of ``project_dir`` as an S3 location (bucket, prefix, endpoint)."""
    from dvc.repo import Repo

    with Repo(str(project_dir)) as repo:
        config = repo.config
        name = config["core"].get("remote")
        if not name:
            raise RuntimeError(f"{project_dir} has no default DVC remote; run `dvc remote add -d storage s3://bucket/path`")
        remote = config["remote"][name]
    bucket, prefix = parse_s3_url(remote["url"])
    return S3Location(bucket, prefix, remote.get("endpointurl"))


def missing_dvc_files(project_dir: str | Path) -> list[str]:
    """The ``.dvc`` files (``dvc add``-ed raw data) of ``project_dir`` whose data is not in the workspace."""
    project_dir = Path(project_dir)
    missing = []
    for dvc_file in sorted(project_dir.rglob("*.dvc")):
        rel = dvc_file.relative_to(project_dir)
        if rel.parts[0].startswith(".") or not dvc_file.is_file():
            continue
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
        if any(not (dvc_file.parent / o["path"]).exists() for o in outs if isinstance(o, dict) and "path" in o):
            missing.append(rel.as_posix())
    return missing


def uncached_outputs(project_dir: str | Path) -> list[str]:
    """Paths of the ``cache: false`` outs, metrics and plots in ``dvc.yaml`` (DVC does not push them)."""
    stages = (yaml.safe_load(Path(project_dir, "dvc.yaml").read_text()) or {}).get("stages", {})
    paths = []
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                if isinstance(entry, dict):
                    for path, opts in entry.items():
                        if isinstance(opts, dict) and opts.get("cache") is False:
                            paths.append(path)
    return paths


def pack_handoff(project_dir: str | Path) -> bytes:
    """A tar.gz of ``dvc.lock``, the open MLflow run's state file and every uncached output that exists in ``project_dir``."""
    project_dir = Path(project_dir)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for rel in ["dvc.lock", RUN_STATE, *uncached_outputs(project_dir)]:
            if (project_dir / rel).exists():
                tar.add(project_dir / rel, arcname=rel)
    return buffer.getvalue()


def unpack_handoff(data: bytes, project_dir: str | Path) -> list[str]:
    """Extract a hand-off archive into ``project_dir`` (regular files only, no paths outside it).

    Each output in the archive (``dvc.lock`` and every uncached output folder or file) replaces the one in
    ``project_dir`` whole: extracting on top would keep files the other machine no longer has (e.g. data docs of
    an older validation run), and DVC would then see the output as changed."""
    import shutil
    import tempfile

    project_dir = Path(project_dir)
    project_dir.mkdir(parents=True, exist_ok=True)
    roots = ["dvc.lock", RUN_STATE, *uncached_outputs(project_dir)] if (project_dir / "dvc.yaml").is_file() else None
    with tempfile.TemporaryDirectory(prefix=".handoff-", dir=project_dir) as tmp:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
            tar.extractall(tmp, members=members, filter="data")
        for rel in roots if roots is not None else [m.name for m in members if m.isfile()]:
            new, target = Path(tmp, rel), project_dir / rel
            if not new.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(new, target)
    return [m.name for m in members if m.isfile()]


def _handoff_key(location: S3Location, key: str, direction: str) -> str:
    return "/".join(p for p in (location.prefix, HANDOFF_PREFIX, key, f"{direction}.tar.gz") if p)


def upload_handoff(project_dir: str | Path, key: str, direction: str) -> str:
    """Upload ``pack_handoff(project_dir)`` to the default DVC remote; returns the s3:// URL."""
    location = default_remote(project_dir)
    object_key = _handoff_key(location, key, direction)
    s3_client(location.endpoint_url).put_object(Bucket=location.bucket, Key=object_key, Body=pack_handoff(project_dir))
    return f"s3://{location.bucket}/{object_key}"


def download_handoff(project_dir: str | Path, key: str, direction: str) -> list[str]:
    """Fetch and extract the hand-off ``key``/``direction`` from the default DVC remote into ``project_dir``."""
    location = default_remote(project_dir)
    body = s3_client(location.endpoint_url).get_object(Bucket=location.bucket, Key=_handoff_key(location, key, direction))["Body"].read()
    return unpack_handoff(body, project_dir)
