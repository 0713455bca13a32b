"""Checkpoints: a folder with ``model.safetensors`` and ``config.json``, written atomically.

Models are rebuilt from their JSON config; nothing is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
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
    """Return ``(state_dict, config_json)`` of a checkpoint folder."""
    ckpt_dir = Path(ckpt_dir)
    weights, cfg = ckpt_dir / "model.safetensors", ckpt_dir / "config.json"
    for p in (weights, cfg):
        if not p.is_file():
            raise CheckpointError(f"{p} not found: train the model first (dvc repro) or pass a complete checkpoint folder")
    return load_file(str(weights)), json.loads(cfg.read_text())


def load_autoencoder(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Autoencoder, dict]:
    """Rebuild the autoencoder of any kind (``kl_autoencoder``, ``vq_autoencoder``, ``plain_autoencoder``; see
    ``config.json``'s ``model.kind``) with its latent scale factor, from a checkpoint folder."""
    state, meta = read_checkpoint(ckpt_dir)
    kind = meta.get("model", {}).get("kind")
    if kind not in KINDS.values():
        raise CheckpointError(f"{ckpt_dir} holds a {kind!r}, not an autoencoder (expected one of {sorted(KINDS.values())})")
    try:
        model = build_autoencoder(AutoencoderConfig.from_dict(meta["model"]))
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{ckpt_dir}: config.json and model.safetensors do not match ({exc}); re-run train_autoencoder") from exc
    return model.to(device).eval(), meta


def load_unet(ckpt_dir: str | Path, device: str | torch.device = "cpu") -> tuple[UNet, dict]:
    """Rebuild the (EMA) :class:`UNet` from a checkpoint folder."""
    state, meta = read_checkpoint(ckpt_dir)
    if meta["model"].get("kind") != "unet":
        raise CheckpointError(f"{ckpt_dir} holds a {meta['model'].get('kind')!r}, not a unet")
    model = UNet(UNetConfig.from_dict(meta["model"]))
    model.load_state_dict(state)
    return model.to(device).eval(), meta
