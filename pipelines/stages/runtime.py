"""What every stage does before its work (seed, threads, device) and the fingerprint of a training run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from components.config import Params, params_dict


def setup(params: Params):
    """Seed torch, apply ``base.num_threads`` and return the device ``base.device`` resolves to (every stage that runs a
    network calls this and passes the device down; ``base.device: cuda`` without CUDA stops here with a clear error)."""
    from components.device import resolve_device
    from components.training.common import setup_torch

    device = resolve_device(params.base.device, key="base.device")  # before any work (seeding changes nothing on disk)
    setup_torch(params.base.seed, params.base.num_threads)
    return device


CODE_ROOTS = (Path(__file__).resolve().parents[2] / "components", Path(__file__).resolve().parents[1])  # components/, pipelines/


def code_digest(roots: tuple[Path, ...] = CODE_ROOTS) -> str:
    """sha256 of every ``.py`` file under ``roots`` (its path relative to its root and its bytes, in sorted order): the
    project's code. It is part of :func:`training_fingerprint`, so a checkpoint written by other code is never resumed
    (``dvc repro`` re-runs a training stage when its code changes; without this, the stage would find its own finished
    checkpoint, "resume" at the last step and keep the model the old code trained). Any change to the project's code
    counts, a conservative superset of a stage's ``dvc.yaml`` code deps: resuming after a crash with unchanged code
    is what checkpoints are for."""
    h = hashlib.sha256()
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            h.update(f"{root.name}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
            h.update(b"\0")
    return h.hexdigest()


def training_fingerprint(params: Params, stage: str, *inputs: str | Path) -> str:
    """Hash of what a training run's result depends on: its params section (less ``runtime``, which changes
    how it runs, not what it learns), the seed, the project's code (:func:`code_digest`) and the contents of its input
    files. A resumable checkpoint is only resumed by a run with the same fingerprint."""
    section = {k: v for k, v in params_dict(params)[stage].items() if k != "runtime"}
    h = hashlib.sha256(json.dumps({"seed": params.base.seed, stage: section, "code": code_digest()}, sort_keys=True).encode())
    for item in inputs:
        p = Path(item)
        h.update(p.read_bytes() if p.is_file() else str(item).encode())
    return h.hexdigest()
