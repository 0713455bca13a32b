"""A registered version serves anywhere: ``mlflow models serve`` in a fresh venv built from the model's requirements.txt.

A tiny, untrained but deterministic generator (the project's own KL autoencoder and U-Net, random weights) is
registered into a throwaway SQLite store as ``latentflow@champion``. A new venv (not the project's; no checkout on
``sys.path``, no ``PYTHONPATH``) gets only what the model's ``requirements.txt`` pins, so ``import components``
fails there and the model must bring its own code. The REST answer must equal, bit for bit, the in-process
``LatentDiffusionGenerator`` with the pyfunc's defaults.

The venv is built once per test session (minutes: torch is in it, about 6 GB with its CUDA libraries) and deleted
when the session ends. Set ``LATENTFLOW_SERVING_VENV_CACHE`` to a folder to keep it between sessions (one venv per
requirements.txt content). Before building it the test checks the disk has room for it and names the shortfall.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow.artifacts
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from components.generation import LatentDiffusionGenerator
from components.io import TELEMETRY_OFF
from components.models.autoencoder import AutoencoderConfig, build_autoencoder
from components.models.checkpoint import save_checkpoint
from components.models.unet import UNet, UNetConfig
from components.registry.mlflow_registry import DEFAULTS, SERVING_DISTRIBUTIONS, pinned_requirements, register_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

MODEL_NAME = "latentflow"
NUM_CLASSES = 4
SCHEDULE = {"schedule": "linear", "num_timesteps": 50, "beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "epsilon"}
REQUEST = {"dataframe_split": {"columns": ["class_label", "num_images", "seed", "steps"], "data": [[3, 2, 7, 4]]}}
ROOT = Path(__file__).resolve().parents[1]


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Zero-initialised output layers would make every image the same; give every weight a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _build_model_folder(model_dir: Path) -> None:
    """``autoencoder/`` + ``diffusion/`` checkpoints of a tiny RGB 8x8 generator with deterministic random weights."""
    ae_cfg = AutoencoderConfig(in_channels=3, image_size=8, channels=(8, 16), latent_channels=2, regularizer="kl")
    ae = build_autoencoder(ae_cfg, scale_factor=0.8)
    _randomise(ae, 1)
    save_checkpoint(model_dir / "autoencoder", ae, ae_cfg.to_dict(), {"scale_factor": 0.8})
    unet = UNet(UNetConfig(in_channels=2, out_channels=2, sample_size=4, num_classes=NUM_CLASSES, channels=(8, 16), num_heads=2))
    _randomise(unet, 2)
    save_checkpoint(model_dir / "diffusion", unet, unet.config.to_dict(), {"schedule": SCHEDULE, "class_names": list("abcd")})


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> dict:
    """The tiny generator registered as ``latentflow@champion`` in a SQLite store; its model folder and files."""
    root = tmp_path_factory.mktemp("serving")
    model_dir = root / "model_dir"
    _build_model_folder(model_dir)
    tracking_uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri)
    client.create_experiment("latentflow-serving", artifact_location=(root / "artifacts").as_uri())
    result = register_model(
        tracking_uri=tracking_uri, experiment="latentflow-serving", model_name=MODEL_NAME, model_dir=model_dir,
        params={"seed": 0}, metrics={"fid": 1.0}, artifacts=[], primary_metric="fid", greater_is_better=False,
        min_improvement=0.0, tags={"git_commit": "test"},
    )
    assert result.alias == "champion"
    location = client.get_model_version_download_uri(MODEL_NAME, result.version)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(root / "downloaded"),
                                                     tracking_uri=tracking_uri))
    return {"root": root, "model_dir": model_dir, "tracking_uri": tracking_uri, "local": local}


def _clean_env(venv: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment without PYTHONPATH, venv or MLflow settings; ``venv``'s bin first on PATH, the project's not at all."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("MLFLOW_")}
    project_bin = Path(sys.executable).parent
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != project_bin]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path] if venv else path)
    return {**env, **TELEMETRY_OFF, **extra}


def _run(args: list, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def serving_venv_cache(tmp_path_factory):
    """Where the serving venv is built: ``$LATENTFLOW_SERVING_VENV_CACHE`` (kept), else a temp folder removed at the
    end of the session whatever the outcome (a 6 GB venv left in each of pytest's three kept sessions filled a disk)."""
    cache = os.environ.get("LATENTFLOW_SERVING_VENV_CACHE")
    if cache:
        yield Path(cache)
        return
    folder = tmp_path_factory.mktemp("serving-venvs")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _site_packages_bytes() -> int:
    """Bytes under this interpreter's site-packages: an upper bound on a venv with a subset of its distributions."""
    total = 0
    for root in {Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()}:
        for dirpath, _dirs, files in os.walk(root):
            total += sum(os.lstat(os.path.join(dirpath, name)).st_size for name in files)
    return total


def _require_free_space(folder: Path, needed: int) -> None:
    """Fail with the figures and the remedy, not halfway through ``pip install`` with ``No space left on device``."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        pytest.fail(f"{free / 1e9:.1f} GB free under {folder}, but the serving venv needs about {needed / 1e9:.1f} GB "
                    f"(torch with its CUDA libraries is most of it): free disk space there, or point "
                    f"LATENTFLOW_SERVING_VENV_CACHE at a folder on a disk with room")


def _serving_venv(cache: Path, requirements: Path, cwd: Path) -> Path:
    """A venv (from the base interpreter, not the project venv) with exactly ``pip install -r requirements``."""
    venv = cache / hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    if (venv / "installed").is_file():
        return venv
    cache.mkdir(parents=True, exist_ok=True)
    _require_free_space(cache, _site_packages_bytes())
    base_python = getattr(sys, "_base_executable", None) or "python3"
    env = _clean_env()
    started = time.monotonic()
    done = _run([base_python, "-m", "venv", "--clear", venv], cwd, env, 300)
    assert done.returncode == 0, done.stderr
    done = _run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", "-r", requirements], cwd, env, 1500)
    assert done.returncode == 0, f"pip install -r {requirements} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    (venv / "installed").write_text(f"{time.monotonic() - started:.0f} s\n")
    print(f"serving venv {venv}: installed {requirements} in {time.monotonic() - started:.0f} s")
    return venv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log.read_text()[-6000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(f"mlflow models serve not healthy after {timeout} s:\n{log.read_text()[-6000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it is still there after 15 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)


def test_logged_model_bundles_the_code_and_pins_the_requirements(registered):
    local = registered["local"]
    code = local / "code" / "components"
    assert (code / "generation.py").is_file() and (code / "registry" / "pyfunc_model.py").is_file()
    assert not list((local / "code").rglob("__pycache__")) and not list((local / "code").rglob("*.pyc"))
    lines = [line.strip() for line in (local / "requirements.txt").read_text().splitlines() if line.strip()]
    assert lines == pinned_requirements(), lines  # exact pins of the installed distributions, nothing else
    assert [line.split("==")[0] for line in lines] == list(SERVING_DISTRIBUTIONS)
    assert f"torch=={importlib.metadata.version('torch')}" in lines


# The project's own dependencies that neither MLflow nor torch import: loading + predicting must not need them.
NOT_FOR_SERVING = ("torchvision", "prefect", "dvc", "great_expectations", "mlxtend", "pytorch_fid", "typer", "networkx",
                   "efficientnet_lite_pytorch", "pipelines")


def test_loading_prefers_the_bundled_code_and_imports_no_project_extras(registered, tmp_path):
    """Even where ``latentflow`` is installed (the project venv), a fresh process loads the model's own copy,
    and loading + predicting imports none of the project's training/pipeline dependencies."""
    script = ("import json, sys, mlflow.pyfunc, pandas as pd; model = mlflow.pyfunc.load_model(sys.argv[1]); "
              "model.predict(pd.DataFrame({'class_label': [1], 'steps': [2]})); import components; "
              "print(json.dumps([components.__file__, sorted({m.split('.')[0] for m in sys.modules})]))")
    done = _run([sys.executable, "-c", script, registered["local"]], tmp_path, _clean_env(), 300)
    assert done.returncode == 0, done.stderr[-3000:]
    components_file, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(components_file).resolve() == (registered["local"] / "code" / "components" / "__init__.py").resolve()
    assert not set(NOT_FOR_SERVING) & set(imported)


def test_mlflow_models_serve_in_a_fresh_venv_matches_in_process_generation(registered, serving_venv_cache, tmp_path):
    venv = _serving_venv(serving_venv_cache, registered["local"] / "requirements.txt", tmp_path)
    env = _clean_env(venv, MLFLOW_TRACKING_URI=registered["tracking_uri"])
    no_code = _run([venv / "bin" / "python", "-c", "import components"], tmp_path, env, 120)
    assert no_code.returncode != 0 and "No module named 'components'" in no_code.stderr, no_code

    port, log = _free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@champion", "--env-manager", "local",
             "--host", "127.0.0.1", "-p", str(port)],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_until_healthy(proc, url, log, timeout=300)
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps(REQUEST).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            pytest.fail(f"POST /invocations: HTTP {exc.code}: {exc.read().decode()[:3000]}\n{log.read_text()[-4000:]}")
    finally:
        _stop(proc)

    rows = body["predictions"]
    assert [(r["class_label"], r["seed"], r["height"], r["width"], r["channels"]) for r in rows] == [(3, 7, 8, 8, 3)] * 2
    served = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(r["image"])))) for r in rows])
    expected = LatentDiffusionGenerator.from_dir(registered["model_dir"]).generate(
        [3, 3], seed=7, steps=4, sampler=DEFAULTS["sampler"], guidance=DEFAULTS["guidance"])
    assert served.dtype == np.uint8 and served.shape == expected.shape == (2, 8, 8, 3)
    assert np.array_equal(served, expected)
    assert not np.array_equal(served[0], served[1]) and len(np.unique(served)) > 8  # not a degenerate model


def test_a_disk_without_room_for_the_serving_venv_is_named_before_pip_starts(tmp_path):
    assert _site_packages_bytes() > 1e9  # torch alone is over a GB: the estimate measures the real installation
    _require_free_space(tmp_path, 1)
    with pytest.raises(pytest.fail.Exception, match=r"GB free under .*LATENTFLOW_SERVING_VENV_CACHE"):
        _require_free_space(tmp_path, shutil.disk_usage(tmp_path).free * 2)
