"""Imports point down: every module under components/ imports only its own component or lower layers, and never
the orchestration (pipelines/, Prefect, DVC). The import graph is read with ``ast`` (imports inside functions
included), so nothing is imported to check it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ROOT / "components"

# component (a module components/<name>.py or a package components/<name>/) -> layer. A module may import its own
# component and components of LOWER layers; siblings on one layer do not import each other.
LAYERS: dict[str, int] = {
    # neutral helpers: import nothing of the project
    "io": 0,  # atomic writes, environment (telemetry, overrides)
    "images": 0,  # uint8 <-> model-range conversions
    "errors": 0,  # ConfigError
    "device": 1,  # base.device -> torch.device (clear error for a missing CUDA) and the bf16-autocast rule
    "diffusion": 1,  # schedules, forward process, samplers; options.py (sampler names, guidance default) is torch-free
    "models": 2,  # networks, their configs and checkpoint I/O (safetensors + JSON), the EfficientNet-Lite0 backbone
    "data": 2,  # sources, the dataset artifact, validation
    # config (the params.yaml models) sits above the models it validates (unet_presets): no model imports it
    "config": 3,
    "evaluation": 3,  # feature extractors (use models' backbone), metrics, the domain classifier
    "training": 4,
    "generation": 5,
    "registry": 6,
}
FORBIDDEN = ("pipelines", "prefect", "dvc")  # components never import the orchestration


def component_of(module: str) -> str | None:
    """``components.models.unet`` -> ``models``; ``None`` for modules outside the project's components."""
    parts = module.split(".")
    if parts[0] != "components" or len(parts) < 2:
        return None
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import statement in ``source``, at any depth (functions included).

    ``from components import images`` yields ``components.images``; relative imports are resolved against ``module``.
    """
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "components":
                found += [(node.lineno, f"components.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Why ``module``'s imports break the layering (empty when they do not)."""
    own = component_of(module)
    if own not in LAYERS:
        return [f"{module}: component {own!r} has no layer; add it to LAYERS in tests/test_layering.py"]
    bad = []
    for line, target in imports_of(source, module, is_package):
        top = target.split(".")[0]
        if top in FORBIDDEN:
            bad.append(f"{module}:{line} imports {target} (components never import {', '.join(FORBIDDEN)})")
            continue
        other = component_of(target)
        if other is None or other == own:
            continue
        if other not in LAYERS:
            bad.append(f"{module}:{line} imports {target}: component {other!r} has no layer")
        elif LAYERS[other] >= LAYERS[own]:
            rel = "a higher" if LAYERS[other] > LAYERS[own] else "a sibling"
            bad.append(f"{module}:{line} imports {target}: {rel} layer ({other}={LAYERS[other]} vs {own}={LAYERS[own]})")
    return bad


def component_modules() -> list[Path]:
    return sorted(p for p in COMPONENTS.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_component_has_a_layer():
    names = {p.stem for p in COMPONENTS.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in COMPONENTS.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert names <= set(LAYERS), f"components without a layer: {sorted(names - set(LAYERS))}"


def test_components_import_only_lower_layers():
    bad = []
    for path in component_modules():
        if path == COMPONENTS / "__init__.py":
            continue
        bad += violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("components.models.vq", "def f():\n    from components.training.common import autocast\n", "higher layer"),
        ("components.models.unet", "from components.config import UNetParams\n", "higher layer"),
        ("components.models.perceptual", "from components.evaluation import features\n", "higher layer"),
        ("components.models.unet", "from components import config\n", "higher layer"),
        ("components.data.sources", "import components.models.blocks\n", "sibling layer"),
        ("components.training.loop", "import prefect\n", "never import"),
        ("components.generation", "from pipelines.stages import sample\n", "never import"),
        ("components.newthing", "import os\n", "has no layer"),
    ],
)
def test_the_checker_catches(module, source, expected):
    (message,) = violations(source, module)
    assert expected in message


def test_the_checker_allows_own_component_lower_layers_and_relative_imports():
    source = (
        "import torch\nfrom . import blocks\nfrom .vq import VectorQuantizer\nfrom components.io import atomic_dir\n"
        "def f():\n    from components.diffusion import sample\n"
    )
    assert violations(source, "components.models.autoencoder") == []
    assert imports_of("from . import forward\n", "components.diffusion", is_package=True) == [(1, "components.diffusion")]


def test_params_layer_imports_without_torch():
    """config validates params.yaml from names in pure-Python modules (block registry, sampler names): no torch."""
    code = (
        "import sys, components.config, components.diffusion.options, components.errors, components.io;"
        "components.config.Params(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
