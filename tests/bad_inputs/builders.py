"""Builders of bad inputs: odd and broken images, model folders, params; the small project they are put into.

Nothing here runs a stage; :mod:`tests.bad_inputs.cases` combines these into named cases.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

RAW = Path("data/raw/digits")  # the image folder of the corpus project (10 classes of real MNIST digits)
PER_CLASS = 6
NUM_CLASSES = 10
SCHEDULE = {"schedule": "linear", "num_timesteps": 50, "beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "epsilon"}
SAMPLE = ["sample", "--model", "models", "--out", "samples", "--steps", "2", "--num-per-class", "1"]


# ---- the project ------------------------------------------------------------------------------------------------

def corpus_params(root: Path) -> dict:
    """Tiny params for a project whose ingest reads ``data/raw/digits`` (60 digits, 2 per class to val)."""
    from tests.conftest import tiny_params

    p = tiny_params()
    p["ingest"].update(source="image_folder", root=str(RAW), channels=1, image_size=32, val_fraction=0.34, max_per_class=None)
    p["sample"].update(steps=2, num_per_class=1)
    p["register"]["tracking_uri"] = f"sqlite:///{root / 'mlflow.db'}"
    return p


def edit_params(project: Path, change) -> None:
    """Apply ``change(params_dict)`` to ``project/params.yaml``."""
    path = project / "params.yaml"
    p = yaml.safe_load(path.read_text())
    change(p)
    path.write_text(yaml.safe_dump(p, sort_keys=False))


def build_tiny_model(model_dir: Path, *, latent_channels: int = 2, unet_channels: tuple[int, ...] = (8, 16), seed: int = 0) -> None:
    """``autoencoder/`` + ``diffusion/`` of a 32x32 greyscale, 10-class generator with random weights (no training):
    what ``latentflow sample`` loads, in a fraction of a second."""
    import torch

    from components.models.autoencoder import AutoencoderConfig, build_autoencoder
    from components.models.checkpoint import save_checkpoint
    from components.models.unet import UNet, UNetConfig

    torch.manual_seed(seed)
    ae_cfg = AutoencoderConfig(in_channels=1, image_size=32, channels=(8, 8, 16), latent_channels=latent_channels, regularizer="kl")
    ae = build_autoencoder(ae_cfg, scale_factor=0.8)
    save_checkpoint(model_dir / "autoencoder", ae, ae_cfg.to_dict(), {"scale_factor": 0.8, "dataset_digest": "x"})
    unet = UNet(UNetConfig(in_channels=latent_channels, out_channels=latent_channels, sample_size=8, num_classes=NUM_CLASSES,
                           channels=unet_channels, num_heads=2))
    with torch.no_grad():  # zero-initialised output layers would give identical images
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape) * 0.1)
    save_checkpoint(model_dir / "diffusion", unet, unet.config.to_dict(),
                    {"schedule": SCHEDULE, "class_names": [str(i) for i in range(NUM_CLASSES)], "dataset_digest": "x"})


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root`` (hidden ones too): file bytes, a symlink's target, or ``<dir>``."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts or p.name == "mlflow.db":
            continue
        rel = p.relative_to(root).as_posix()
        out[rel] = f"-> {p.readlink()}" if p.is_symlink() else "<dir>" if p.is_dir() else p.read_bytes()
    return out


# ---- images --------------------------------------------------------------------------------------------------------

def png_bytes(arr: np.ndarray, mode: str | None = None, **save) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    img.save(buf, format=save.pop("format", "PNG"), **save)
    return buf.getvalue()


def bomb_png(side: int = 30000) -> bytes:
    """A valid ``side x side`` greyscale PNG of zeros (900 M pixels at 30000) that compresses to under 1 MB.

    The IDAT stream is one raw-deflate block of 100 zero rows, full-flushed so it is byte-aligned and repeats
    identically, then the zlib trailer (adler32 of n zeros is ``(n % 65521) << 16 | 1``): built in milliseconds."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    rows = 100
    assert side % rows == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(b"\x00" * ((side + 1) * rows)) + c.flush(zlib.Z_FULL_FLUSH)
    adler = (((side + 1) * side % 65521) << 16) | 1
    idat = b"\x78\xda" + piece * (side // rows) + b"\x03\x00" + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gradient16() -> np.ndarray:
    """32x32 16-bit horizontal ramp over the full range 0..65535."""
    return np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))


def exif_rotated_jpeg() -> bytes:
    """A 32x32 JPEG stored with its left half white and EXIF orientation 6 (viewers rotate it 90° clockwise:
    the white half is on top)."""
    arr = np.zeros((32, 32), np.uint8)
    arr[:, :16] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    return png_bytes(arr, format="JPEG", quality=95, exif=exif.tobytes())


def animated_gif(first: int = 200, second: int = 40) -> bytes:
    frames = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in (first, second)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def palette_png() -> tuple[bytes, np.ndarray]:
    """A P-mode PNG whose palette maps index i to grey 255 - 8 i; and the greyscale image it shows."""
    idx = (np.arange(32 * 32).reshape(32, 32) % 32).astype(np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette([c for i in range(256) for c in (max(0, 255 - 8 * i),) * 3])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), np.maximum(0, 255 - 8 * idx.astype(int)).astype(np.uint8)


def mixed_modes() -> dict[str, bytes]:
    """One image per odd mode and size: RGBA 40x40, LA, 1-bit, CMYK JPEG, RGB 20x30, greyscale BMP and WebP."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return {
        "rgba40.png": png_bytes(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)),
        "la.png": png_bytes(np.stack([grey, grey], -1), mode="LA"),
        "bilevel.png": png_bytes(grey, mode="1"),
        "cmyk.jpg": png_bytes(rgb, mode="CMYK", format="JPEG"),
        "rgb20x30.png": png_bytes(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)),
        "grey.bmp": png_bytes(grey, format="BMP"),
        "grey.webp": png_bytes(grey, format="WEBP", lossless=True),
    }


class Payload:
    """Unpickling this runs ``pathlib.Path(marker).touch()``: a stand-in for arbitrary code in a planted checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps({"state_dict": Payload(str(marker))})


def truncated_tar(folder: Path, keep: float = 0.5) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname="digits")
    data = buf.getvalue()
    return data[: int(len(data) * keep)]


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2))
