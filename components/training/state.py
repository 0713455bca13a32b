"""Resumable training state: model, EMA, optimizers, scaler, counters and every RNG state.

A training checkpoint is a folder ``step_XXXXXXXX/`` holding ``state.safetensors`` (every tensor:
weights, optimizer moments, RNG states) and ``state.json`` (everything else, with each tensor
replaced by a reference to its key). It is written atomically (temp dir + ``os.replace``), so a
folder that exists is complete; the newest K are kept. Nothing is pickled.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from components.io import atomic_dir

_STEP_DIR = re.compile(r"^step_(\d{8})$")
_REF = "__tensor__"


def split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Copy ``obj`` (nested dicts/lists of tensors and JSON values) with every tensor moved into ``tensors``
    under a dotted key and replaced by ``{"__tensor__": key}``."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous()
        return {_REF: key}
    if isinstance(obj, dict):
        return {"__dict__": [[_json_key(k), split_tensors(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _json_key(k: Any) -> Any:
    if isinstance(k, str | int | float | bool) or k is None:
        return k
    raise TypeError(f"state dict key {k!r} of type {type(k).__name__} cannot be stored")


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`."""
    if isinstance(obj, dict):
        if _REF in obj:
            return tensors[obj[_REF]]
        if "__dict__" in obj:
            return {k: join_tensors(v, tensors) for k, v in obj["__dict__"]}
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def rng_states(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """Torch's global CPU (and CUDA) RNG states plus those of the named generators."""
    states = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"torch_cuda_{i}"] = s
    for name, g in generators.items():
        states[f"gen_{name}"] = g.get_state()
    return states


def restore_rng_states(states: dict[str, torch.Tensor], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(states["torch_cpu"])
    cuda = sorted(k for k in states if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([states[k] for k in cuda])
    for name, g in generators.items():
        if f"gen_{name}" in states:
            g.set_state(states[f"gen_{name}"])


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete training checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def save_training_state(root: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` (nested state dicts) as ``root/step_XXXXXXXX`` atomically, then drop all but the newest ``keep``."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_tensors(state, "s", tensors)
    out = Path(root) / f"step_{step:08d}"
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(skeleton, indent=1) + "\n")
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return out


def load_training_state(ckpt: str | Path) -> dict[str, Any]:
    """Read a folder written by :func:`save_training_state`."""
    ckpt = Path(ckpt)
    skeleton = json.loads((ckpt / "state.json").read_text())
    return join_tensors(skeleton, load_file(str(ckpt / "state.safetensors")))


def latest_training_state(root: str | Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None
