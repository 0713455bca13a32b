"""Generated samples on disk: ``<dir>/<label>/<index>.png`` folders and a one-row-per-class grid."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from components.io import atomic_dir, atomic_write_bytes


def check_samples_target(out_dir: Path) -> None:
    """``out_dir`` may be replaced by a samples folder: it does not exist, or is an empty folder, or a samples folder
    (only ``<label>/<index>.png``). Anything else (a file, a folder of other things: ``--out data`` or ``--out .``)
    is a ``ValueError``: replacing it would delete what it holds."""
    out_dir = Path(out_dir)
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise ValueError(f"{out_dir} is a file, not a folder: samples are written as OUT/<label>/<index>.png and replace OUT; "
                         "choose another --out")
    for entry in out_dir.iterdir():
        ok = entry.is_dir() and not entry.is_symlink() and entry.name.isdigit() and all(
            f.is_file() and f.suffix == ".png" and f.stem.isdigit() for f in entry.iterdir())
        if not ok:
            raise ValueError(f"{out_dir} is not a samples folder (it holds {entry.name!r}, not only <label>/<index>.png); sample replaces "
                             "its --out folder, which would delete that: choose a new or empty folder for --out")


def write_samples(images: np.ndarray, labels: np.ndarray, out_dir: Path) -> None:
    """Write ``out_dir/<label>/<index>.png`` atomically (the whole folder is replaced at once). ``out_dir`` must pass
    :func:`check_samples_target` (nothing but samples is ever replaced)."""
    from PIL import Image

    check_samples_target(out_dir)
    with atomic_dir(out_dir) as tmp:
        counters: dict[int, int] = {}
        for img, label in zip(images, labels, strict=True):
            i = counters.get(int(label), 0)
            counters[int(label)] = i + 1
            (tmp / str(int(label))).mkdir(exist_ok=True)
            Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(tmp / str(int(label)) / f"{i}.png")


def read_samples(samples_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels from ``samples_dir/<label>/<index>.png``."""
    from PIL import Image

    samples_dir = Path(samples_dir)
    images, labels = [], []
    label_dirs = sorted((d for d in samples_dir.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name)) if samples_dir.is_dir() else []
    if not label_dirs:
        raise FileNotFoundError(f"no samples in {samples_dir}: run `latentflow sample` (or `dvc repro sample`) first")
    for d in label_dirs:
        for p in sorted(d.glob("*.png"), key=lambda p: int(p.stem)):
            arr = np.asarray(Image.open(p))
            images.append(arr[..., None] if arr.ndim == 2 else arr)
            labels.append(int(d.name))
    return np.stack(images), np.asarray(labels)


def make_grid(images: np.ndarray, labels: np.ndarray, per_row: int = 10, pad: int = 2, upscale: int = 2) -> np.ndarray:
    """One row per class with its first ``per_row`` images; uint8 ``[H, W, C]``."""
    classes = sorted(set(int(x) for x in labels))
    h, w, c = images.shape[1:]
    grid = np.full((len(classes) * (h + pad) + pad, per_row * (w + pad) + pad, c), 255, dtype=np.uint8)
    for r, cls in enumerate(classes):
        for col, img in enumerate(images[labels == cls][:per_row]):
            y, x = pad + r * (h + pad), pad + col * (w + pad)
            grid[y : y + h, x : x + w] = img
    return grid.repeat(upscale, 0).repeat(upscale, 1)


def write_grid(images: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """:func:`make_grid` as a PNG at ``path`` (atomic)."""
    from PIL import Image

    grid = make_grid(images, labels)
    buf = io.BytesIO()
    Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
