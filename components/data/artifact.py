"""The dataset artifact: uint8 image shards + labels per split and a ``manifest.json``, written atomically.

Layout (``format: 2``)::

    manifest.json                    counts, classes, per-split and per-shard sha256, the dataset digest
    <split>_images_00000.npy ...     uint8 [n_k, H, W, C] shards of ``shard_size`` images, in split order
    <split>_labels.npy               int64 [N]
    captions.jsonl                   (optional) each image's captions

Why plain ``.npy`` shards: a shard's image ``i`` sits at a fixed byte offset (header + i * H*W*C), so any image is one
``os.pread`` away. A reader needs no index and no decode, and the batch order of training stays a pure function of
``(seed, step)`` (exact resume after SIGKILL) because any index can be fetched in any order; WebDataset tars are
sequential streams, which would need a shuffle buffer whose state is not a function of the step. Images are read with
``pread`` rather than through an ``np.memmap``: mapped pages the training touches count in the process's RSS until the
kernel drops them (an epoch over 100k 64x64 RGB images would show 1.2 GB), whereas ``pread`` goes through the page
cache only.

The dataset digest is unchanged by sharding: ``sha256["<split>_images"]`` is still :func:`sha256_array` of the whole
split (dtype, shape, bytes), computed shard by shard, so the same images give the same digest as the single-array
format (``format: 1``, ``<split>_images.npy``), which :func:`read_dataset` still reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.io import atomic_dir

SPLITS = ("train", "val")
CAPTIONS_FILE = "captions.jsonl"
FORMAT = 2
DEFAULT_SHARD_SIZE = 4096
_CHUNK = 1 << 24  # bytes read at a time when hashing


class ArtifactError(RuntimeError):
    """The dataset artifact is missing or does not match its manifest."""


class ShardedImages:
    """The uint8 images ``[N, H, W, C]`` of one split, read from its ``.npy`` shards on demand.

    Indexing (an int, a slice, or an integer array/list) returns a NumPy array, as indexing the in-memory array would;
    ``np.asarray`` loads all of it. Each read is an ``os.pread`` at the image's offset, so the object holds no image
    in memory, can be pickled to DataLoader workers (each opens its own file handles) and is safe after ``fork``."""

    def __init__(self, paths: Sequence[str | Path]):
        if not paths:
            raise ArtifactError("a split needs at least one shard")
        self.paths = [str(p) for p in paths]
        counts, offsets, shape = [], [], None
        for p in self.paths:
            with open(p, "rb") as f:
                try:
                    version = np.lib.format.read_magic(f)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    s, fortran, dtype = read_header(f)
                except ValueError as exc:
                    raise ArtifactError(f"{p} is not a .npy file ({exc}); re-run ingest") from None
                offsets.append(f.tell())
            if dtype != np.uint8 or fortran or len(s) != 4:
                raise ArtifactError(f"{p} holds {dtype} {s}{' (Fortran order)' if fortran else ''}, expected uint8 [n, H, W, C]; re-run ingest")
            if shape is not None and tuple(s[1:]) != shape:
                raise ArtifactError(f"{p} holds images of shape {s[1:]}, other shards {shape}; re-run ingest")
            shape = tuple(s[1:])
            counts.append(int(s[0]))
        self.image_shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.counts = counts
        self.offsets = offsets
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.image_bytes = int(np.prod(shape))
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    # ------------------------------------------------------------------ array-like
    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (int(self.starts[-1]), *self.image_shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[0 : len(self)]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"image {key} out of range for {n} images")
            return self._read_run(i, 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return self._read_run(start, max(0, stop - start))
            key = np.arange(start, stop, step)
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise TypeError(f"index images with an int, a slice or a 1-d integer array, not {type(key).__name__}")
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"image index out of range for {n} images")
        return self.take(idx)

    def take(self, indices: np.ndarray) -> np.ndarray:
        """The images at ``indices`` (in that order), one ``pread`` per run of consecutive indices."""
        out = np.empty((len(indices), *self.image_shape), dtype=np.uint8)
        if not len(indices):
            return out
        indices = np.asarray(indices, dtype=np.int64)
        # runs of consecutive indices within one shard are read with one call
        breaks = np.flatnonzero(np.diff(indices) != 1) + 1
        pos = 0
        for run in np.split(indices, breaks):
            first, length = int(run[0]), len(run)
            out[pos : pos + length] = self._read_run(first, length)
            pos += length
        return out

    # ------------------------------------------------------------------ reading
    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked DataLoader worker opens its own handles
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
        return fd

    def _read_run(self, first: int, length: int) -> np.ndarray:
        out = np.empty((length, *self.image_shape), dtype=np.uint8)
        flat = out.reshape(-1)
        done = 0
        while done < length:
            i = first + done
            shard = int(np.searchsorted(self.starts, i, side="right")) - 1
            local = i - int(self.starts[shard])
            take = min(length - done, self.counts[shard] - local)
            nbytes = take * self.image_bytes
            data = os.pread(self._fd(shard), nbytes, self.offsets[shard] + local * self.image_bytes)
            if len(data) != nbytes:
                raise ArtifactError(f"{self.paths[shard]} is cut short ({len(data)} of {nbytes} bytes at image {local}); re-run ingest")
            flat[done * self.image_bytes : done * self.image_bytes + nbytes] = np.frombuffer(data, dtype=np.uint8)
            done += take
        return out

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            try:
                self.close()
            except OSError:
                pass

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}}


@dataclass(frozen=True)
class Dataset:
    images: dict[str, np.ndarray | ShardedImages]  # split -> uint8 [N, H, W, C] (in memory, or read on demand with stream=True)
    labels: dict[str, np.ndarray]  # split -> int64 [N]
    class_names: list[str]
    manifest: dict
    captions: dict[str, list[list[str]]] | None = None  # split -> captions of each image (text conditioning), if any

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images["train"].shape[1:])  # type: ignore[return-value]


def sha256_array(arr: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (C order)."""
    h = hashlib.sha256(f"{arr.dtype}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def shard_name(split: str, k: int) -> str:
    return f"{split}_images_{k:05d}.npy"


class DatasetWriter:
    """Writes the artifact shard by shard, so no split is ever whole in memory.

    Give each split's image count up front (:func:`sha256_array` of a split hashes its shape first); then
    :meth:`add` images of a split in order (any chunk sizes) and :meth:`finish`. Use inside :func:`write_streamed`,
    which makes the folder atomic."""

    def __init__(self, tmp: Path, counts: dict[str, int], image_shape: tuple[int, int, int], shard_size: int = DEFAULT_SHARD_SIZE):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.tmp, self.counts, self.image_shape, self.shard_size = tmp, dict(counts), tuple(image_shape), shard_size
        self.written = {s: 0 for s in SPLITS}
        self.pending: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        self.pending_n = {s: 0 for s in SPLITS}
        self.split_hash = {s: hashlib.sha256(f"uint8{(counts[s], *self.image_shape)}".encode()) for s in SPLITS}
        self.shards: dict[str, list[dict]] = {s: [] for s in SPLITS}

    def add(self, split: str, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"{split}: expected uint8 images of shape {self.image_shape}, got {images.dtype} {tuple(images.shape[1:])}")
        if self.written[split] + self.pending_n[split] + len(images) > self.counts[split]:
            raise ValueError(f"{split}: more images than the {self.counts[split]} announced")
        self.pending[split].append(images)
        self.pending_n[split] += len(images)
        while self.pending_n[split] >= self.shard_size:
            self._flush(split, self.shard_size)

    def _flush(self, split: str, n: int) -> None:
        parts, got = [], 0
        while got < n:
            head = self.pending[split][0]
            take = min(len(head), n - got)
            parts.append(head[:take])
            if take == len(head):
                self.pending[split].pop(0)
            else:
                self.pending[split][0] = head[take:]
            got += take
        shard = np.ascontiguousarray(np.concatenate(parts) if len(parts) > 1 else parts[0])
        self.pending_n[split] -= n
        name = shard_name(split, len(self.shards[split]))
        np.save(self.tmp / name, shard, allow_pickle=False)
        self.split_hash[split].update(shard.tobytes())
        self.shards[split].append({"file": name, "count": int(n), "sha256": _file_sha256(self.tmp / name)})
        self.written[split] += n

    def finish(self, labels: dict[str, np.ndarray], class_names: list[str], source: str, extra: dict,
               captions: dict[str, list[list[str]]] | None = None) -> dict:
        """Flush the last shards; write labels, captions and ``manifest.json``; return the manifest."""
        from components.data.captions import caption_key, captions_jsonl_bytes

        hashes: dict[str, str] = {}
        per_class = {}
        for split in SPLITS:
            if self.pending_n[split]:
                self._flush(split, self.pending_n[split])
            if self.written[split] != self.counts[split] or len(labels[split]) != self.counts[split]:
                raise ValueError(f"{split}: {self.written[split]} images written and {len(labels[split])} labels, "
                                 f"{self.counts[split]} announced")
            if self.counts[split] == 0:  # an empty split still has one (empty) shard, as the single-array format had
                name = shard_name(split, 0)
                np.save(self.tmp / name, np.zeros((0, *self.image_shape), np.uint8), allow_pickle=False)
                self.shards[split].append({"file": name, "count": 0, "sha256": _file_sha256(self.tmp / name)})
            lab = np.asarray(labels[split])
            np.save(self.tmp / f"{split}_labels.npy", lab, allow_pickle=False)
            hashes[f"{split}_images"] = self.split_hash[split].hexdigest()
            hashes[f"{split}_labels"] = sha256_array(lab)
            per_class[split] = {name: int((lab == i).sum()) for i, name in enumerate(class_names)}
        if captions is not None:
            for split in SPLITS:
                if len(captions[split]) != len(labels[split]):
                    raise ValueError(f"{len(captions[split])} caption lists for {len(labels[split])} {split} images")
            data = captions_jsonl_bytes({caption_key(split, i): caps for split in SPLITS for i, caps in enumerate(captions[split])})
            (self.tmp / CAPTIONS_FILE).write_bytes(data)
            hashes["captions"] = hashlib.sha256(data).hexdigest()
        manifest = {
            "format": FORMAT,
            "source": source,
            "class_names": class_names,
            "shape": list(self.image_shape),
            "dtype": "uint8",
            "counts": {s: int(self.counts[s]) for s in SPLITS},
            "counts_per_class": per_class,
            "sha256": hashes,
            "dataset_digest": hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest(),
            "shards": {s: self.shards[s] for s in SPLITS},
            "shard_size": self.shard_size,
            **extra,
        }
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest


class write_streamed:
    """``with write_streamed(out_dir, counts, shape) as w: w.add(...); manifest = w.finish(...)``: the artifact goes
    to a temporary sibling folder and replaces ``out_dir`` only when the block ends without an error (a failed ingest
    leaves the previous artifact intact)."""

    def __init__(self, out_dir: Path, counts: dict[str, int], image_shape: tuple[int, int, int], shard_size: int = DEFAULT_SHARD_SIZE):
        self._cm = atomic_dir(out_dir)
        self._args = (counts, image_shape, shard_size)

    def __enter__(self) -> DatasetWriter:
        tmp = self._cm.__enter__()
        self.writer = DatasetWriter(tmp, *self._args)
        return self.writer

    def __exit__(self, *exc) -> bool | None:
        if exc[0] is None and not (self.writer.tmp / "manifest.json").is_file():
            err = ValueError("write_streamed: finish() was not called; nothing written")
            self._cm.__exit__(type(err), err, None)
            raise err
        return self._cm.__exit__(*exc)


def write_dataset(out_dir: Path, images: dict, labels: dict, class_names: list[str], source: str, extra: dict,
                  captions: dict[str, list[list[str]]] | None = None, shard_size: int = DEFAULT_SHARD_SIZE) -> dict:
    """Write in-memory splits as the sharded artifact (:class:`DatasetWriter`) into ``out_dir`` atomically; with
    ``captions`` (split -> each image's captions) also ``captions.jsonl`` (``{"image": "<split>/<index>", "captions":
    [...]}`` a line), whose sha256 joins the dataset digest (without captions the digest is as before)."""
    shape = tuple(images["train"].shape[1:])
    with write_streamed(Path(out_dir), {s: len(labels[s]) for s in SPLITS}, shape, shard_size) as w:
        for split in SPLITS:
            for start in range(0, len(images[split]), shard_size):
                w.add(split, np.asarray(images[split][start : start + shard_size], dtype=np.uint8))
        manifest = w.finish(labels, class_names, source, extra, captions)
    return manifest


def _verify_split(data_dir: Path, split: str, shards: list[dict], manifest: dict, manifest_path: Path, images: ShardedImages) -> None:
    """Each shard's file sha256, and the split's sha256 (the digest's), in one pass over the files."""
    h = hashlib.sha256(f"uint8{images.shape}".encode())
    for k, (shard, offset) in enumerate(zip(shards, images.offsets, strict=True)):
        path = data_dir / shard["file"]
        fh = hashlib.sha256()
        with open(path, "rb") as f:
            head = f.read(offset)
            fh.update(head)
            while chunk := f.read(_CHUNK):
                fh.update(chunk)
                h.update(chunk)
        if fh.hexdigest() != shard["sha256"]:
            raise ArtifactError(f"{path} (shard {k} of {split}) does not match its sha256 in {manifest_path}; re-run ingest")
    if h.hexdigest() != manifest["sha256"][f"{split}_images"]:
        raise ArtifactError(f"the {split} shards do not add up to the {split}_images sha256 in {manifest_path}; re-run ingest")


def read_dataset(data_dir: str | Path, verify: bool = True, stream: bool = False) -> Dataset:
    """Load the artifact written by :func:`write_dataset` / :class:`DatasetWriter` (or the single-array format 1).

    ``stream=False``: every split's images as one in-memory array (small data sets, the validation suite).
    ``stream=True``: each split as a :class:`ShardedImages`, read on demand (training, reference statistics,
    evaluation). With ``verify``, every file's sha256 is checked (streamed, in chunks)."""
    data_dir = Path(data_dir)
    manifest_path = data_dir / "manifest.json"
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path} not found: run `latentflow ingest` (or `dvc repro ingest`) first")
    manifest = json.loads(manifest_path.read_text())
    if "dataset_digest" not in manifest:
        raise ArtifactError(f"{manifest_path} has no `dataset_digest` (written by an older latentflow, which called it "
                            "`digest`): re-run `latentflow ingest` (or `dvc repro ingest`)")
    fmt = manifest.get("format", 1)
    if fmt not in (1, FORMAT):
        raise ArtifactError(f"{manifest_path} is dataset format {fmt}, which this latentflow does not read (it reads 1 and {FORMAT}): "
                            "re-run `latentflow ingest` with this version")
    images, labels = {}, {}
    for split in SPLITS:
        if fmt == 1:  # one <split>_images.npy: a single shard
            shards = [{"file": f"{split}_images.npy"}]
        else:
            shards = manifest.get("shards", {}).get(split)
            if not shards:
                raise ArtifactError(f"{manifest_path} lists no {split} shards; re-run ingest")
        for shard in shards:
            if not (data_dir / shard["file"]).is_file():
                raise ArtifactError(f"{data_dir / shard['file']} missing from the dataset artifact; re-run ingest")
        sharded = ShardedImages([data_dir / s["file"] for s in shards])
        if list(sharded.image_shape) != list(manifest["shape"]) or len(sharded) != manifest["counts"][split]:
            raise ArtifactError(f"the {split} images on disk are {sharded.shape}, the manifest says {manifest['counts'][split]} x "
                                f"{manifest['shape']}; re-run ingest")
        if verify:
            if fmt == 1:
                arr = np.load(data_dir / shards[0]["file"], allow_pickle=False)
                if sha256_array(arr) != manifest["sha256"][f"{split}_images"]:
                    raise ArtifactError(f"{data_dir / shards[0]['file']} does not match the sha256 in {manifest_path}; re-run ingest")
                del arr
            else:
                _verify_split(data_dir, split, shards, manifest, manifest_path, sharded)
        images[split] = sharded if stream else np.asarray(sharded)
        path = data_dir / f"{split}_labels.npy"
        if not path.is_file():
            raise ArtifactError(f"{path} missing from the dataset artifact; re-run ingest")
        arr = np.load(path, allow_pickle=False)
        if verify and sha256_array(arr) != manifest["sha256"][f"{split}_labels"]:
            raise ArtifactError(f"{path} does not match the sha256 in {manifest_path}; re-run ingest")
        labels[split] = arr
    captions = None
    if "captions" in manifest["sha256"]:
        from components.data.captions import caption_key, read_captions_jsonl

        path = data_dir / CAPTIONS_FILE
        if not path.is_file():
            raise ArtifactError(f"{path} missing from the dataset artifact (its manifest lists captions); re-run ingest")
        if verify and hashlib.sha256(path.read_bytes()).hexdigest() != manifest["sha256"]["captions"]:
            raise ArtifactError(f"{path} does not match the sha256 in {manifest_path}; re-run ingest")
        by_key = read_captions_jsonl(path)
        try:
            captions = {split: [by_key[caption_key(split, i)] for i in range(len(labels[split]))] for split in SPLITS}
        except KeyError as exc:
            raise ArtifactError(f"{path} has no captions for image {exc}; re-run ingest") from None
    return Dataset(images=images, labels=labels, class_names=list(manifest["class_names"]), manifest=manifest, captions=captions)


def iter_chunks(images: np.ndarray | ShardedImages, chunk: int) -> Iterator[np.ndarray]:
    """``images`` ``chunk`` at a time, as in-memory arrays (a sharded split is read piece by piece)."""
    for start in range(0, len(images), chunk):
        yield np.asarray(images[start : start + chunk])
