"""Real servers on 127.0.0.1 for the team-setup tests: S3 (moto), MLflow (proxied S3 artifacts), Prefect.

Each server gets a free port, a folder and a log file under one temporary root; readiness is a
bounded poll of its health endpoint, and a server that does not come up fails with the tail of its
log. Processes run in their own process group and are stopped with SIGTERM, then SIGKILL after a
grace period (``prefect worker`` ignores SIGTERM).

S3 credentials go to the S3 server and the MLflow server only (and to DVC, which talks to S3
directly); MLflow clients use the proxied ``mlflow-artifacts:`` scheme and need none.

``python -m tests.servers [ROOT]`` starts the three servers for manual use (``make servers``) and
prints their URLs; Ctrl-C stops them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from components.io import TELEMETRY_OFF, env_overrides

BIN = Path(sys.executable).parent
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "latentflow-test", "AWS_SECRET_ACCESS_KEY": "latentflow-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}
MLFLOW_BUCKET, DVC_BUCKET = "lf-mlflow", "lf-dvc"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


def wait_until(ready: Callable[[], bool], *, timeout: float, what: str, log: Path | None = None, proc: subprocess.Popen | None = None) -> None:
    """Poll ``ready`` every 0.25 s for at most ``timeout`` s; fail with the log tail otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
    state = f"exited with {proc.returncode}" if proc is not None and proc.poll() is not None else f"not ready after {timeout:.0f} s"
    raise RuntimeError(f"{what} {state}; log {log}:\n{tail}")


@dataclass
class Proc:
    """A server subprocess in its own process group, logging to ``log``."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path | None = None
    popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds."""
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        with contextlib.suppress(ProcessLookupError):  # leftovers of the group (gunicorn/uvicorn workers)
            os.killpg(self.popen.pid, signal.SIGKILL)


def base_env() -> dict[str, str]:
    """The current environment without S3 credentials or tracking/API URLs, telemetry off, venv first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MLFLOW_", "PREFECT_")) and k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env.update(TELEMETRY_OFF)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass
class TeamServers:
    root: Path
    s3_port: int = 0
    mlflow_port: int = 0
    prefect_port: int = 0
    procs: dict[str, Proc] = field(default_factory=dict)
    workers: list[Proc] = field(default_factory=list)

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    # ------------------------------------------------------------------ S3
    def start_s3(self) -> None:
        """moto's S3 server (in-memory) as a subprocess; the buckets are created with boto3."""
        self.s3_port = self.s3_port or free_port()
        env = {**base_env(), **S3_CREDENTIALS}
        proc = Proc("s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.s3_port)], env, self.log("s3")).start()
        self.procs["s3"] = proc
        wait_until(lambda: http_ok(f"{self.s3_endpoint}/moto-api/"), timeout=60, what="S3 server (moto)", log=proc.log, proc=proc.popen)
        self.create_buckets()

    def create_buckets(self) -> None:
        with self.s3_credentials():
            from pipelines.remote import ensure_bucket

            for bucket in (MLFLOW_BUCKET, DVC_BUCKET):
                ensure_bucket(bucket, self.s3_endpoint)

    @contextlib.contextmanager
    def s3_credentials(self) -> Iterator[None]:
        """The S3 credentials in this process's environment for the duration of the block."""
        with env_overrides(S3_CREDENTIALS):
            yield

    def s3_objects(self, bucket: str) -> list[str]:
        with self.s3_credentials():
            from pipelines.remote import s3_client

            pages = s3_client(self.s3_endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket)
            return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    # ------------------------------------------------------------------ MLflow
    def start_mlflow(self) -> None:
        """``mlflow server`` with a SQLite backend and proxied artifacts in s3://lf-mlflow (only it holds S3 credentials)."""
        self.mlflow_port = self.mlflow_port or free_port()
        env = {**base_env(), **S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        db = self.root / "mlflow" / "mlflow.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{db}", "--serve-artifacts", "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/artifacts"]
        proc = Proc("mlflow", cmd, env, self.log("mlflow")).start()
        self.procs["mlflow"] = proc
        wait_until(lambda: http_ok(f"{self.mlflow_uri}/health"), timeout=120, what="MLflow server", log=proc.log, proc=proc.popen)

    # ------------------------------------------------------------------ Prefect
    def prefect_env(self) -> dict[str, str]:
        """Environment of a Prefect client (CLI, worker) talking to this server."""
        return {**base_env(), "PREFECT_API_URL": self.prefect_api, "PREFECT_HOME": str(self.root / "prefect-client"),
                "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5", "PREFECT_LOGGING_LEVEL": "INFO"}

    def start_prefect(self) -> None:
        self.prefect_port = self.prefect_port or free_port()
        home = self.root / "prefect-server"
        env = {**base_env(), "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false",
               "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db"}
        home.mkdir(parents=True, exist_ok=True)
        cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.prefect_port)]
        proc = Proc("prefect", cmd, env, self.log("prefect")).start()
        self.procs["prefect"] = proc
        wait_until(lambda: http_ok(f"{self.prefect_api}/health"), timeout=120, what="Prefect server", log=proc.log, proc=proc.popen)

    def start_worker(self, pool: str, env: dict[str, str], cwd: Path) -> Proc:
        """``prefect worker start --pool POOL`` (process type); stopped at teardown with SIGTERM, then SIGKILL."""
        cmd = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", f"test-{pool}"]
        proc = Proc(f"worker-{pool}", cmd, env, self.log(f"worker-{pool}"), cwd=cwd).start()
        self.workers.append(proc)
        return proc

    # ------------------------------------------------------------------ all
    def start(self) -> TeamServers:
        """S3 first (MLflow needs it); MLflow and Prefect start in parallel."""
        self.start_s3()
        self.mlflow_port, self.prefect_port = free_port(), free_port()
        import threading

        errors: list[BaseException] = []

        def run(fn: Callable[[], None]) -> None:
            try:
                fn()
            except BaseException as exc:  # re-raised below, with the log tail
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(fn,)) for fn in (self.start_mlflow, self.start_prefect)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.stop()
            raise errors[0]
        return self

    def stop(self) -> None:
        for proc in [*self.workers, *reversed(list(self.procs.values()))]:
            proc.stop(grace=5.0)

    def logs_tail(self, limit: int = 3000) -> str:
        parts = []
        for path in sorted((self.root / "logs").glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-limit:]}")
        return "\n".join(parts)


def main() -> None:
    import tempfile

    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="latentflow-servers-"))
    servers = TeamServers(root).start()
    print(f"S3 (moto)     {servers.s3_endpoint}  buckets {MLFLOW_BUCKET}, {DVC_BUCKET}; credentials: {', '.join(S3_CREDENTIALS)} as in tests/servers.py")
    print(f"MLflow        {servers.mlflow_uri}")
    print(f"Prefect API   {servers.prefect_api}")
    print(f"logs          {root / 'logs'}   (Ctrl-C or SIGTERM stops everything)", flush=True)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):  # a background job ignores SIGINT unless told otherwise
        signal.signal(sig, interrupt)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        servers.stop()


if __name__ == "__main__":
    main()
