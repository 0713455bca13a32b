"""Checkpoints: a folder with ``model.safetensors`` and ``config.json``, written atomically.

Models are rebuilt from their JSON config; nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from components.io import atomic_dir
from components.models.autoencoder import KINDS, Autoencoder, AutoencoderConfig, build_autoencoder
from components.models.unet import UNet, UNetConfig


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete or of the wrong kind."""


def save_checkpoint(out_dir: str | Path, model: torch.nn.Module, config: dict, extra: dict | None = None) -> None:
    """Write ``model``'s state dict as safetensors and ``{"model": config, **extra}`` as JSON, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps({"model": config, **(extra or {})}, indent=2, sort_keys=True) + "\n")


def read_checkpoint(ckpt_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Return ``(state_dict, config_json)`` of a checkpoint folder.

    Only safetensors (tensors and a JSON header) and JSON are read, so no code can run: a pickle (``torch.save``
    output) planted as ``model.safetensors`` is refused as not a safetensors file, never unpickled. Any problem
    (missing, truncated or corrupt file, invalid JSON) is a :class:`CheckpointError` naming the file."""
    ckpt_dir = Path(ckpt_dir)
    weights, cfg = ckpt_dir / "model.safetensors", ckpt_dir / "config.json"
    for p in (weights, cfg):
        if not p.is_file():
            raise CheckpointError(f"{p} not found: train the model first (dvc repro) or pass a complete checkpoint folder")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{weights} is not a valid safetensors file ({exc}): it is truncated or corrupt, or another format (pickled "
            "PyTorch checkpoints are refused, never unpickled); re-run the stage that wrote it or restore it (dvc checkout)"
        ) from None
    try:
        meta = json.loads(cfg.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg} is not valid JSON ({exc}); re-run the stage that wrote it or restore it (dvc checkout)") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{cfg} has no 'model' section (the model's config); re-run the stage that wrote it")
    return state, meta


def _mismatch(ckpt_dir: Path, exc: BaseException, stage: str) -> CheckpointError:
    text = " ".join(str(exc).split())
    detail = text if len(text) <= 300 else text[:300] + " ..."
    return CheckpointError(f"{ckpt_dir}: config.json and model.safetensors do not match ({type(exc).__name__}: {detail}); "
                           f"re-run {stage} or restore the folder (dvc checkout)")


def load_autoencoder(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Autoencoder, dict]:
    """Rebuild the autoencoder of any kind (``kl_autoencoder``, ``vq_autoencoder``, ``plain_autoencoder``; see
    ``config.json``'s ``model.kind``) with its latent scale factor, from a checkpoint folder."""
    state, meta = read_checkpoint(ckpt_dir)
    kind = meta["model"].get("kind")
    if kind not in KINDS.values():
        raise CheckpointError(f"{ckpt_dir} holds a {kind!r}, not an autoencoder (expected one of {sorted(KINDS.values())})")
    try:
        model = build_autoencoder(AutoencoderConfig.from_dict(meta["model"]))
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise _mismatch(Path(ckpt_dir), exc, "train_autoencoder") from exc
    return model.to(device).eval(), meta


def load_unet(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> tuple[UNet, dict]:
    """Rebuild the (EMA) :class:`UNet` from a checkpoint folder."""
    state, meta = read_checkpoint(ckpt_dir)
    if meta["model"].get("kind") != "unet":
        raise CheckpointError(f"{ckpt_dir} holds a {meta['model'].get('kind')!r}, not a unet")
    try:
        model = UNet(UNetConfig.from_dict(meta["model"]))
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise _mismatch(Path(ckpt_dir), exc, "train_diffusion") from exc
    return model.to(device).eval(), meta
