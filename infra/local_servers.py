"""Real servers on 127.0.0.1 for development and the team-setup tests: S3 (moto), MLflow (proxied S3 artifacts), Prefect.

Each server gets a free port, a folder and a log file under one temporary root; readiness is a
bounded poll of its health endpoint, and a server that does not come up fails with the tail of its
log. A free port is only free when asked: another process can take it before the server binds it.
So a start that finds its port taken (in use before the start, the server exiting with "address
already in use", or a health endpoint answered by a listener that is not ours) retries on a fresh
port, a bounded number of times; a restart prefers the old port and moves only when it stays taken.
Processes run in their own process group and are stopped with SIGTERM, then SIGKILL after a grace
period (``prefect worker`` ignores SIGTERM).

S3 credentials go to the S3 server and the MLflow server only (and to DVC, which talks to S3
directly); MLflow clients use the proxied ``mlflow-artifacts:`` scheme and need none.

``python -m infra.local_servers [ROOT]`` starts the three servers for manual use (``make servers``) and
prints their URLs; Ctrl-C stops them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from components.io import TELEMETRY_OFF, env_overrides

BIN = Path(sys.executable).parent
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "latentflow-test", "AWS_SECRET_ACCESS_KEY": "latentflow-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}
MLFLOW_BUCKET, DVC_BUCKET = "lf-mlflow", "lf-dvc"


PORT_ATTEMPTS = 5
_handed_out: set[int] = set()  # ports given out by this process: two servers never draw the same one
_handed_out_lock = threading.Lock()


def port_is_free(port: int) -> bool:
    """Whether a server could bind ``127.0.0.1:port`` now (with SO_REUSEADDR, as servers do: a port held
    only by connections in TIME_WAIT counts as free, one with a listener does not)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port that is free now and was not handed out before by this process (the OS may repeat one)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with _handed_out_lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("no fresh free port after 100 tries")


class PortTaken(RuntimeError):
    """The server could not have its port: another process holds it."""


def _proc_stat(pid: str) -> list[str]:
    """Fields of /proc/PID/stat after the command name: state, ppid, pgrp, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(fields[9])
    return inodes


def _descends_from(pid: str, root: int) -> bool:
    for _ in range(64):
        if int(pid) == root:
            return True
        try:
            pid = _proc_stat(pid)[1]
        except (OSError, IndexError):
            return False
        if pid in ("0", "1"):
            return False
    return False


def listener_is_ours(port: int, root_pid: int) -> bool:
    """False when the listener on ``port`` is a process other than ``root_pid`` and its descendants (read from
    /proc); True when it is ours or cannot be told (no /proc, or no listener seen)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return True
    owners = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        owners.append(proc.name)
                        break
    return not owners or any(_descends_from(pid, root_pid) for pid in owners)


def _says_port_taken(log: Path, offset: int) -> bool:
    text = log.read_text(errors="replace")[offset:].lower() if log.exists() else ""
    return any(s in text for s in ("address already in use", "already in use", f"errno {errno.EADDRINUSE}"))


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

    def _serve(self, name: str, what: str, cmd: Callable[[int], list[str]], env: dict[str, str], health: Callable[[int], str], *,
               timeout: float, port: int = 0, cwd: Path | None = None) -> int:
        """Start ``cmd(port)`` and wait for ``health(port)``; on a port that turns out to be taken, retry on a fresh one
        (``PORT_ATTEMPTS`` in all). ``port``: try this one first (waiting up to 15 s for it to be released). Returns the port."""
        log = self.log(name)
        tried = []
        for attempt in range(PORT_ATTEMPTS):
            if attempt == 0 and port:
                deadline = time.monotonic() + 15
                while not port_is_free(port) and time.monotonic() < deadline:
                    time.sleep(0.5)
                candidate = port
            else:
                candidate = free_port()
            tried.append(candidate)
            if not port_is_free(candidate):
                continue
            offset = log.stat().st_size if log.exists() else 0
            proc = Proc(name, cmd(candidate), env, log, cwd=cwd).start()
            self.procs[name] = proc
            try:
                wait_until(lambda c=candidate, p=proc: http_ok(health(c)) and self._ours(c, p), timeout=timeout, what=what, log=log,
                           proc=proc.popen)
                return candidate
            except RuntimeError:  # PortTaken included
                taken = _says_port_taken(log, offset) or not listener_is_ours(candidate, proc.popen.pid)
                proc.stop()
                if not taken:
                    raise
        raise RuntimeError(f"{what}: every port tried was taken by another process: {tried}; log {log}")

    @staticmethod
    def _ours(port: int, proc: Proc) -> bool:
        """Readiness also needs the listener to be ours: a foreign server on the port fails the poll (and the start then
        sees the port as taken) instead of passing it."""
        if listener_is_ours(port, proc.popen.pid):
            return True
        raise PortTaken(port)

    # ------------------------------------------------------------------ S3
    def start_s3(self) -> None:
        """moto's S3 server (in-memory) as a subprocess; the buckets are created with boto3."""
        env = {**base_env(), **S3_CREDENTIALS}
        self.s3_port = self._serve("s3", "S3 server (moto)", lambda port: [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                   env, lambda port: f"http://127.0.0.1:{port}/moto-api/", timeout=60, port=self.s3_port)
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
        env = {**base_env(), **S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        db = self.root / "mlflow" / "mlflow.db"
        db.parent.mkdir(parents=True, exist_ok=True)

        def cmd(port: int) -> list[str]:
            return [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--backend-store-uri",
                    f"sqlite:///{db}", "--serve-artifacts", "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/artifacts"]

        self.mlflow_port = self._serve("mlflow", "MLflow server", cmd, env, lambda port: f"http://127.0.0.1:{port}/health", timeout=120,
                                       port=self.mlflow_port)

    def restart_mlflow(self) -> None:
        """Stop MLflow (if running) and start it again on the same SQLite store: on the same port when it is released within
        15 s, else on a fresh one (``mlflow_uri`` follows; clients must read it after the restart)."""
        if "mlflow" in self.procs:
            self.procs["mlflow"].stop()
        self.start_mlflow()

    # ------------------------------------------------------------------ Prefect
    def prefect_env(self) -> dict[str, str]:
        """Environment of a Prefect client (CLI, worker) talking to this server."""
        return {**base_env(), "PREFECT_API_URL": self.prefect_api, "PREFECT_HOME": str(self.root / "prefect-client"),
                "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5", "PREFECT_LOGGING_LEVEL": "INFO"}

    def start_prefect(self) -> None:
        home = self.root / "prefect-server"
        env = {**base_env(), "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false",
               "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db"}
        home.mkdir(parents=True, exist_ok=True)
        self.prefect_port = self._serve(
            "prefect", "Prefect server", lambda port: [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env, lambda port: f"http://127.0.0.1:{port}/api/health", timeout=120, port=self.prefect_port)

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
    print(f"S3 (moto)     {servers.s3_endpoint}  buckets {MLFLOW_BUCKET}, {DVC_BUCKET}; credentials: {', '.join(S3_CREDENTIALS)} as in infra/local_servers.py")
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
