"""Image value ranges shared by every layer: uint8 ``[N, H, W, C]`` on disk, float ``[N, C, H, W]`` in [-1, 1] in models."""

from __future__ import annotations

import numpy as np
import torch


def to_model_range(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> float ``[N, C, H, W]`` in [-1, 1]."""
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float ``[N, C, H, W]`` in [-1, 1] -> uint8 ``[N, H, W, C]`` (clipped, rounded)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def encode_png(image: np.ndarray) -> bytes:
    """Encode one uint8 image of shape [H, W, C] (C in 1, 3, 4) as PNG bytes."""
    import io

    from PIL import Image

    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _open(data: bytes, what: str):
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"{what} is not a readable image (PNG expected): {exc}") from None
    return img


def decode_image(data: bytes, what: str = "image") -> np.ndarray:
    """PNG (or any format Pillow reads) bytes -> uint8 ``[H, W, C]``: greyscale (L) gives C = 1, RGB gives C = 3; a
    palette image is expanded to RGB. Other modes (alpha, 16-bit, CMYK) are a ``ValueError`` that says how to convert."""
    img = _open(data, what)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode == "1":
        img = img.convert("L")
    if img.mode not in ("L", "RGB"):
        raise ValueError(f"{what} has pixel mode {img.mode!r}; expected 8-bit greyscale (L) or RGB: convert it first, e.g. with "
                         "Pillow's Image.convert('L') or Image.convert('RGB') (an alpha channel is not used)")
    array = np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on Pillow's read-only buffer)
    return array[..., None] if array.ndim == 2 else array


def decode_mask(data: bytes, what: str = "mask") -> np.ndarray:
    """Mask image bytes (any mode Pillow reads: greyscale, RGB, with alpha, 1-bit) -> bool ``[H, W]``, True where the
    image is light (its greyscale value >= 128): white = repaint, black = keep. Alpha is ignored."""
    img = _open(data, what)
    if img.mode in ("LA", "RGBA", "PA", "P"):
        img = img.convert("RGBA").convert("RGB")
    return np.array(img.convert("L"), dtype=np.uint8) >= 128


def _read(path, what: str) -> bytes:
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} not found" + (" (it is a folder)" if path.is_dir() else "") + ": give the path of a PNG file")
    return path.read_bytes()


def read_image(path, what: str = "image") -> np.ndarray:
    """Read an image file as uint8 ``[H, W, C]`` (:func:`decode_image`); a missing or unreadable file is a ``ValueError``
    naming it."""
    return decode_image(_read(path, what), f"{what} {path}")


def read_mask(path, what: str = "mask") -> np.ndarray:
    """Read a mask file as bool ``[H, W]`` (:func:`decode_mask`); a missing or unreadable file is a ``ValueError``."""
    return decode_mask(_read(path, what), f"{what} {path}")
