"""Loading runs no code from model folders or registry artifacts; servers stay on loopback; credentials only from the environment."""

from __future__ import annotations

import ast
import io
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from components.models.checkpoint import CheckpointError, load_unet, read_checkpoint
from tests.bad_inputs import builders as b
from tests.conftest import ROOT

CODE_DIRS = ("components", "pipelines", "benchmarks")


def unsafe_loads(source: str, name: str = "<snippet>") -> list[str]:
    """Calls that can run code while loading data: pickle/cloudpickle/dill/joblib loads, ``torch.load`` without
    ``weights_only=True``, ``np.load`` without ``allow_pickle=False``, ``yaml.load`` / ``yaml.unsafe_load``."""
    found = []
    tree = ast.parse(source)
    # classes of this module that subclass yaml.SafeLoader: yaml.load(..., Loader=<one of them>) builds no objects either
    safe_loaders = {c.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
                    and any(isinstance(b, ast.Attribute) and isinstance(b.value, ast.Name) and b.value.id == "yaml"
                            and b.attr in ("SafeLoader", "CSafeLoader") for b in c.bases)}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)):
            continue
        owner, attr = node.func.value.id, node.func.attr
        kw = {k.arg: k.value for k in node.keywords}

        def is_const(key: str, value: bool, kw=kw) -> bool:
            return isinstance(kw.get(key), ast.Constant) and kw[key].value is value

        bad = ((owner in ("pickle", "cloudpickle", "dill", "joblib") and attr in ("load", "loads"))
               or (owner == "torch" and attr == "load" and not is_const("weights_only", True))
               or (owner in ("np", "numpy") and attr == "load" and not is_const("allow_pickle", False))
               or (owner == "yaml" and attr in ("unsafe_load", "full_load"))
               or (owner == "yaml" and attr == "load" and not (isinstance(kw.get("Loader"), ast.Name) and kw["Loader"].id in safe_loaders)))
        if bad:
            found.append(f"{name}:{node.lineno}: {owner}.{attr}")
    return found


def test_the_scan_finds_unsafe_loads():
    """The scan below would catch each kind of unsafe load (so its passing means something)."""
    snippet = ("import pickle, torch, numpy as np, yaml\npickle.loads(b'')\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
               "np.load('x')\nyaml.load('x')\ntorch.load('x', weights_only=True)\nnp.load('x', allow_pickle=False)\nyaml.safe_load('x')\n")
    assert [f.split(": ")[1] for f in unsafe_loads(snippet)] == ["pickle.loads", "torch.load", "torch.load", "np.load", "yaml.load"]
    # yaml.load with a SafeLoader subclass of the same module is safe; with the full Loader or a subclass of it, not
    snippet = ("import yaml\nclass Safe(yaml.SafeLoader):\n    pass\nclass Full(yaml.Loader):\n    pass\n"
               "yaml.load('x', Loader=Safe)\nyaml.load('x', Loader=Full)\nyaml.load('x', Loader=yaml.Loader)\nyaml.load('x')\n")
    assert [f.split(": ")[0].split(":")[1] for f in unsafe_loads(snippet)] == ["7", "8", "9"]


def test_no_code_runs_when_loading_data():
    """Everywhere in the product code: safetensors, JSON, YAML (safe), npy/npz without pickles, ``torch.load(weights_only=True)``."""
    found = []
    for folder in CODE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += unsafe_loads(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, found


class _Marker:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_a_torch_save_pickle_planted_as_a_checkpoint_is_refused(tmp_path: Path):
    """A ``torch.save`` file (a zip holding a pickle whose payload would run on unpickling) in place of
    ``model.safetensors``: refused with a message naming the file; the payload never runs."""
    b.build_tiny_model(tmp_path / "models")
    marker = tmp_path / "PAYLOAD_RAN"
    weights = tmp_path / "models/diffusion/model.safetensors"
    buffer = io.BytesIO()
    torch.save({"state_dict": _Marker(marker)}, buffer)
    weights.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match=r"diffusion/model\.safetensors is not a valid safetensors file.*pickled"):
        read_checkpoint(tmp_path / "models/diffusion")
    with pytest.raises(CheckpointError):
        load_unet(tmp_path / "models/diffusion")
    assert not marker.exists()
    torch.load(io.BytesIO(weights.read_bytes()), weights_only=False)  # a real payload: unpickling it does run it
    assert marker.exists()


def test_a_registry_model_loads_without_running_its_packaged_code(tmp_path: Path):
    """``latentflow sample --model <MLflow URI>`` reads the model's weights and configs only: the model's pyfunc
    code (here a file that would leave a marker when imported) is not run."""
    from components.registry.mlflow_registry import load_generator_from_uri

    model = tmp_path / "model"
    b.build_tiny_model(model / "artifacts" / "bundle")
    marker = tmp_path / "CODE_RAN"
    (model / "pyfunc_model.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    (model / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": {
        "loader_module": "mlflow.pyfunc.model", "python_model": "pyfunc_model.py", "env": {"virtualenv": "python_env.yaml"},
        "artifacts": {"model_dir": {"path": "artifacts/bundle", "uri": "bundle"}}}}}))
    generator = load_generator_from_uri(model.as_uri(), tracking_uri=f"sqlite:///{tmp_path / 'unused.db'}")
    assert generator.num_classes == b.NUM_CLASSES and generator.image_shape == (32, 32, 1)
    assert not marker.exists(), "the model's packaged code ran while loading it"
    # an MLmodel pointing outside the model is refused
    (model / "MLmodel").write_text((model / "MLmodel").read_text().replace("artifacts/bundle", "../../elsewhere"))
    from components.registry.mlflow_registry import RegistryError

    with pytest.raises(RegistryError, match="outside the model"):
        load_generator_from_uri(model.as_uri(), tracking_uri=f"sqlite:///{tmp_path / 'unused.db'}")


LOOPBACK_PORT = re.compile(r"^\$\{LATENTFLOW_BIND_ADDRESS:-127\.0\.0\.1\}:\d+:\d+$")


def test_servers_listen_on_loopback_by_default():
    compose = yaml.safe_load((ROOT / "infra/docker-compose.yml").read_text())
    published = {name: s.get("ports", []) for name, s in compose["services"].items()}
    assert any(published.values())
    for name, ports in published.items():
        for port in ports:
            assert LOOPBACK_PORT.match(str(port)), f"{name} publishes {port} on every interface of the host"
    dockerfile = (ROOT / "infra/docker/mlflow.Dockerfile").read_text()
    assert '"--host", "127.0.0.1"' in dockerfile
    for path in ("infra/local_servers.py", "pipelines/deployments.py", "Makefile"):
        text = (ROOT / path).read_text()
        assert "0.0.0.0" not in text and "--host 0.0.0.0" not in text, path


SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\bA(KIA|SIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "credentials in a URI": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@${}'\"]+:[^\s@/${}'\"<>]{6,}@"),
    "assigned secret": re.compile(r"(?i)\b(aws_secret_access_key|secret_key|password|token)\b\s*[:=]\s*['\"]?[A-Za-z0-9/+]{16,}"),
}


def test_no_credentials_in_params_or_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for rel in tracked:
        path = ROOT / rel
        if not path.is_file() or path.stat().st_size > 2_000_000 or path.suffix in (".png", ".jpg", ".npz", ".npy", ".tar", ".db"):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{rel}: {what}" for what, pattern in SECRET_PATTERNS.items() if pattern.search(text)]
    assert not found, found
    # params hold no credential keys at all; the tracking URI carries no user:password
    for params in [ROOT / "params.yaml", *sorted((ROOT / "presets").rglob("params.yaml"))]:
        flat = yaml.safe_dump(yaml.safe_load(params.read_text()))
        assert not re.search(r"(?i)(password|secret|access_key|token)\s*:", flat), params
    assert "infra/.env" not in tracked and ".dvc/config.local" not in tracked
    ignored = subprocess.run(["git", "check-ignore", "infra/.env", ".dvc/config.local"], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == ["infra/.env", ".dvc/config.local"]


def test_the_secret_scan_would_find_a_planted_secret():
    # assembled here so that this file itself holds no match (it is scanned with the rest of the repository)
    planted = ["aws_secret_access_key = " + "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY", "AKIA" + "IOSFODNN7EXAMPLE",
               "postgresql://latentflow:" + "hunter2secret@db:5432/mlflow"]
    for text in planted:
        assert any(p.search(text) for p in SECRET_PATTERNS.values()), text
    assert not any(p.search("postgresql://${POSTGRES_USER:-latentflow}:${POSTGRES_PASSWORD}@postgres:5432/mlflow")
                   for p in SECRET_PATTERNS.values())
