"""The dataset artifact: uint8 arrays + labels per split and a ``manifest.json``, written atomically."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.io import atomic_dir

SPLITS = ("train", "val")
CAPTIONS_FILE = "captions.jsonl"


class ArtifactError(RuntimeError):
    """The dataset artifact is missing or does not match its manifest."""


@dataclass(frozen=True)
class Dataset:
    images: dict[str, np.ndarray]  # split -> uint8 [N, H, W, C]
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


def write_dataset(out_dir: Path, images: dict, labels: dict, class_names: list[str], source: str, extra: dict,
                  captions: dict[str, list[list[str]]] | None = None) -> dict:
    """Write ``<split>_images.npy`` / ``<split>_labels.npy`` and ``manifest.json`` into ``out_dir`` atomically; with
    ``captions`` (split -> each image's captions) also ``captions.jsonl`` (``{"image": "<split>/<index>", "captions":
    [...]}`` a line), whose sha256 joins the dataset digest (without captions the digest is as before)."""
    from components.data.captions import caption_key, captions_jsonl_bytes

    hashes = {}
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            for kind, arr in (("images", images[split]), ("labels", labels[split])):
                np.save(tmp / f"{split}_{kind}.npy", arr, allow_pickle=False)
                hashes[f"{split}_{kind}"] = sha256_array(arr)
            counts[split] = {
                name: int((labels[split] == i).sum()) for i, name in enumerate(class_names)
            }
        if captions is not None:
            for split in SPLITS:
                if len(captions[split]) != len(labels[split]):
                    raise ValueError(f"{len(captions[split])} caption lists for {len(labels[split])} {split} images")
            data = captions_jsonl_bytes({caption_key(split, i): caps for split in SPLITS for i, caps in enumerate(captions[split])})
            (tmp / CAPTIONS_FILE).write_bytes(data)
            hashes["captions"] = hashlib.sha256(data).hexdigest()
        manifest = {
            "source": source,
            "class_names": class_names,
            "shape": list(images["train"].shape[1:]),
            "dtype": "uint8",
            "counts": {s: len(labels[s]) for s in SPLITS},
            "counts_per_class": counts,
            "sha256": hashes,
            "dataset_digest": hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest(),
            **extra,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_dataset(data_dir: str | Path, verify: bool = True) -> Dataset:
    """Load the artifact written by :func:`write_dataset`; with ``verify``, check every array's sha256."""
    data_dir = Path(data_dir)
    manifest_path = data_dir / "manifest.json"
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path} not found: run `latentflow ingest` (or `dvc repro ingest`) first")
    manifest = json.loads(manifest_path.read_text())
    if "dataset_digest" not in manifest:
        raise ArtifactError(f"{manifest_path} has no `dataset_digest` (written by an older latentflow, which called it "
                            "`digest`): re-run `latentflow ingest` (or `dvc repro ingest`)")
    images, labels = {}, {}
    for split in SPLITS:
        for kind, store in (("images", images), ("labels", labels)):
            path = data_dir / f"{split}_{kind}.npy"
            if not path.is_file():
                raise ArtifactError(f"{path} missing from the dataset artifact; re-run ingest")
            arr = np.load(path, allow_pickle=False)
            if verify and sha256_array(arr) != manifest["sha256"][f"{split}_{kind}"]:
                raise ArtifactError(f"{path} does not match the sha256 in {manifest_path}; re-run ingest")
            store[split] = arr
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
