"""The streamed dataset artifact (#15 part 1): uint8 shards with per-shard sha256 and the same dataset digest as the
single-array format, parallel decoding that does not change the artifact, and the DataLoader path of training and
evaluation: the same batches as the in-memory path, in the (seed, step) order, resumable from any step."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import Params
from components.data.artifact import ArtifactError, ShardedImages, read_dataset, sha256_array, write_dataset
from components.data.loader import augment, iter_batches, to_model
from components.images import to_model_range
from components.training.distributed import DistContext
from components.training.loop import Batch, LoopConfig, Trainer
from pipelines.stages import ingest
from tests.conftest import write_digit_folder


def _splits(seed: int = 0, n_train: int = 53, n_val: int = 11, shape=(8, 8, 3)):
    rng = np.random.default_rng(seed)
    images = {"train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8), "val": rng.integers(0, 256, (n_val, *shape), dtype=np.uint8)}
    labels = {"train": rng.integers(0, 3, n_train).astype(np.int64), "val": rng.integers(0, 3, n_val).astype(np.int64)}
    return images, labels


def _format1_digest(images: dict, labels: dict) -> str:
    """The dataset digest as the single-array format (format 1) computed it."""
    hashes = {f"{s}_{k}": sha256_array(d[s]) for s in ("train", "val") for k, d in (("images", images), ("labels", labels))}
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


def test_shards_keep_the_digest_and_read_back_exactly(tmp_path: Path) -> None:
    images, labels = _splits()
    m = write_dataset(tmp_path / "a", images, labels, ["a", "b", "c"], "test", {}, shard_size=10)
    m_one = write_dataset(tmp_path / "b", images, labels, ["a", "b", "c"], "test", {}, shard_size=1000)
    # lineage: the digest is the format-1 one, whatever the shard size
    assert m["dataset_digest"] == m_one["dataset_digest"] == _format1_digest(images, labels)
    assert [s["count"] for s in m["shards"]["train"]] == [10] * 5 + [3] and len(m_one["shards"]["train"]) == 1
    ds = read_dataset(tmp_path / "a", stream=True)
    x = ds.images["train"]
    assert isinstance(x, ShardedImages) and x.shape == (53, 8, 8, 3) and len(x) == 53
    perm = np.random.default_rng(1).permutation(53)
    np.testing.assert_array_equal(x[perm], images["train"][perm])  # across shard boundaries, any order
    np.testing.assert_array_equal(x[7:31], images["train"][7:31])
    np.testing.assert_array_equal(x[::4], images["train"][::4])
    np.testing.assert_array_equal(x[-1], images["train"][-1])
    np.testing.assert_array_equal(np.asarray(x), images["train"])
    with pytest.raises(IndexError):
        x[53]
    mem = read_dataset(tmp_path / "a")  # in memory: plain arrays, as before
    assert isinstance(mem.images["val"], np.ndarray)
    np.testing.assert_array_equal(mem.images["val"], images["val"])


def test_a_changed_or_cut_shard_is_named(tmp_path: Path) -> None:
    images, labels = _splits()
    write_dataset(tmp_path / "d", images, labels, ["a", "b", "c"], "test", {}, shard_size=10)
    shard = tmp_path / "d" / "train_images_00002.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"train_images_00002\.npy \(shard 2 of train\).*re-run ingest"):
        read_dataset(tmp_path / "d", stream=True)
    shard.write_bytes(bytes(data[:-50]))  # cut short: the reader refuses to index past the end
    x = read_dataset(tmp_path / "d", stream=True, verify=False).images["train"]
    with pytest.raises(ArtifactError, match="cut short"):
        x[29]


def test_the_single_array_format_still_reads(tmp_path: Path) -> None:
    """An artifact written by the previous latentflow (format 1: <split>_images.npy, no shards) keeps working."""
    images, labels = _splits()
    d = tmp_path / "old"
    d.mkdir()
    hashes = {}
    for s in ("train", "val"):
        for kind, arr in (("images", images[s]), ("labels", labels[s])):
            np.save(d / f"{s}_{kind}.npy", arr)
            hashes[f"{s}_{kind}"] = sha256_array(arr)
    manifest = {"source": "old", "class_names": ["a", "b", "c"], "shape": [8, 8, 3], "counts": {"train": 53, "val": 11},
                "sha256": hashes, "dataset_digest": _format1_digest(images, labels)}
    (d / "manifest.json").write_text(json.dumps(manifest))
    ds = read_dataset(d, stream=True)
    np.testing.assert_array_equal(ds.images["train"][[5, 2, 40]], images["train"][[5, 2, 40]])
    manifest["format"] = 7
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format 7.*re-run `latentflow ingest`"):
        read_dataset(d)


def test_parallel_decoding_writes_the_same_artifact(tmp_path: Path) -> None:
    root = write_digit_folder(tmp_path / "raw", per_class=6)
    manifests = []
    for workers in (1, 2):
        params = Params.model_validate({"ingest": {"source": "image_folder", "root": str(root), "decode_workers": workers, "shard_size": 16}})
        manifests.append(ingest.run(params, out_dir=tmp_path / f"ds{workers}", progress=False))
    one, two = manifests
    assert one["dataset_digest"] == two["dataset_digest"] and one["shards"] == two["shards"]
    assert one["counts"] == {"train": 50, "val": 10} and len(one["shards"]["train"]) == 4
    for name in [s["file"] for s in one["shards"]["train"]] + ["val_labels.npy", "manifest.json"]:
        assert (tmp_path / "ds1" / name).read_bytes() == (tmp_path / "ds2" / name).read_bytes(), name
    # the same images as decoding the folder in memory and splitting it
    from components.data.sources import load_image_folder, stratified_split

    raw = load_image_folder(root, 32, 1)
    tr, _ = stratified_split(raw.labels, 0.1, 0)
    np.testing.assert_array_equal(np.asarray(read_dataset(tmp_path / "ds2", stream=True).images["train"]), raw.images[tr])


def test_decode_images_in_batches_keeps_the_order_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers decode batches of DECODE_BATCH images; the chunks that come out hold the images at ``indices`` in that
    order whatever the worker count, also where a batch straddles two chunks, and a corrupt image in a later batch
    stops decoding with the file named."""
    from components.data import sources

    root = write_digit_folder(tmp_path / "raw", per_class=15)
    listing = sources.list_image_folder(root)
    idx = np.random.default_rng(0).permutation(len(listing))[:137]
    want = np.stack([sources._read_image(listing.items[i], 32, 1) for i in idx])
    monkeypatch.setattr(sources, "DECODE_BATCH", 7)  # 20 batches, none aligned with the chunks of 40
    for workers in (1, 2):
        chunks = list(sources.decode_images(listing, idx, 32, 1, workers=workers, chunk=40, progress=False))
        assert [len(c) for c in chunks] == [40, 40, 40, 17], workers
        np.testing.assert_array_equal(np.concatenate(chunks), want, err_msg=f"workers={workers}")
    bad = Path(listing.items[idx[100]])
    bad.write_bytes(b"not a png")
    with pytest.raises(sources.SourceError, match=f"cannot read image .*{bad.name}"):
        list(sources.decode_images(listing, idx, 32, 1, workers=2, chunk=40, progress=False))


def test_in_order_bounds_the_tasks_in_flight() -> None:
    """_in_order hands the pool at most ``ahead`` tasks before the first result is taken (Pool.imap would queue them
    all, and every decoded image with them, when the writer is slower than the workers)."""
    from multiprocessing.pool import ThreadPool

    from components.data.sources import _in_order

    drawn = []

    def items():
        for i in range(50):
            drawn.append(i)
            yield i

    with ThreadPool(2) as pool:
        results = _in_order(pool, abs, items(), ahead=3)
        assert next(results) == 0 and len(drawn) == 3
        assert list(results) == list(range(1, 50))


def _trainer(n: int, *, images, batch_size: int = 8, steps: int = 9, grad_accum: int = 1, workers: int = 0, augment_cfg=None,
             ctx: DistContext | None = None) -> Trainer:
    cfg = LoopConfig(batch_size=batch_size, max_images=batch_size * steps, lr=1e-3, grad_accum=grad_accum, data_workers=workers,
                     log_every=1000)
    return Trainer(torch.nn.Linear(1, 1), cfg, dataset_size=n, seed=5, ctx=ctx or DistContext(), progress=False, images=images,
                   augment=augment_cfg)


def _seen(trainer: Trainer) -> list[Batch]:
    seen: list[Batch] = []

    def loss_fn(net, batch):
        seen.append(batch)
        return net.weight.sum() * 0.0 + net(torch.ones(1, 1)).sum() * 0.0, {}

    trainer.run(loss_fn)
    return seen


@pytest.mark.parametrize("workers", [0, 2])
def test_each_step_reads_the_images_of_its_indices(tmp_path: Path, workers: int) -> None:
    """A step's Batch.images are the images at its indices (over 2 epochs of 21 images, batches of 8, 2 micro-batches)."""
    images, labels = _splits(n_train=21)
    write_dataset(tmp_path / "d", images, labels, ["a", "b", "c"], "t", {}, shard_size=5)
    sharded = read_dataset(tmp_path / "d", stream=True).images["train"]
    seen = _seen(_trainer(21, images=sharded, grad_accum=2, workers=workers))
    assert len(seen) == 18
    for b in seen:
        np.testing.assert_array_equal(b.images.numpy(), images["train"][b.indices.numpy()])
        assert b.images.dtype == torch.uint8 and len(b.images) == 4


def test_a_resumed_loader_starts_at_its_step_without_replaying(tmp_path: Path) -> None:
    """The loader of a run resumed at step s yields exactly the batches s, s+1, ... of an uninterrupted run."""
    images = _splits(n_train=21)[0]["train"]
    straight = _trainer(21, images=images)
    batches = straight._image_batches(0)
    full = [next(batches) for _ in range(9)]
    for start in (0, 3, 5, 8):
        resumed = list(_trainer(21, images=images)._image_batches(start))
        assert len(resumed) == 9 - start
        for a, b in zip(full[start:], resumed, strict=True):
            assert torch.equal(a, b)


def test_augmentation_is_off_by_default_and_a_function_of_seed_step_and_row() -> None:
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.integers(0, 256, (16, 6, 6, 3), dtype=np.uint8))
    rows = torch.arange(16)
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    assert augment(batch, rows, 16, g()) is batch  # nothing asked: the batch itself, no draw
    flipped = augment(batch, rows, 16, g(), hflip=True)
    n_flipped = 0
    for i in range(16):  # each image is itself or its mirror image, about half mirrored
        if torch.equal(flipped[i], batch[i].flip(1)):
            n_flipped += 1
        else:
            assert torch.equal(flipped[i], batch[i])
    assert 3 <= n_flipped <= 13
    cropped = augment(batch, rows, 16, g(), crop_padding=2)
    moved = 0
    for i in range(16):  # a crop is a shift by (dy, dx) in [-2, 2]^2 with the border repeated
        ok = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
              if torch.equal(cropped[i], batch[i][(torch.arange(6) + dy).clamp(0, 5)][:, (torch.arange(6) + dx).clamp(0, 5)])]
        assert ok, f"image {i} is no shift of the original"
        moved += (0, 0) not in ok
    assert moved >= 8
    # a row's draw does not depend on how the global batch is split (micro-batches, ranks)
    both = augment(batch, rows, 16, g(), hflip=True, crop_padding=2)
    odd = augment(batch[1::2], rows[1::2], 16, g(), hflip=True, crop_padding=2)
    assert torch.equal(both[1::2], odd)


def test_training_with_augmentation_repeats_exactly_and_changes_the_images() -> None:
    images = _splits(n_train=24)[0]["train"]
    cfg = {"hflip": True, "crop_padding": 1}
    a = _seen(_trainer(24, images=images, augment_cfg=cfg))
    b = _seen(_trainer(24, images=images, augment_cfg=cfg, workers=2))
    assert all(torch.equal(x.images, y.images) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x.images.numpy(), images[x.indices.numpy()]) for x in a)


def test_streamed_autoencoder_training_equals_in_memory(tmp_path: Path) -> None:
    """fit_autoencoder on the shards (2 loader workers) and on the array in memory: bit-identical weights and scale."""
    from components.training.autoencoder import fit_autoencoder, reconstruction_metrics

    rng = np.random.default_rng(3)
    images = {"train": rng.integers(0, 256, (40, 16, 16, 1), dtype=np.uint8), "val": rng.integers(0, 256, (8, 16, 16, 1), dtype=np.uint8)}
    labels = {"train": np.zeros(40, np.int64), "val": np.zeros(8, np.int64)}
    write_dataset(tmp_path / "d", images, labels, ["a"], "t", {}, shard_size=7)
    sharded = read_dataset(tmp_path / "d", stream=True).images
    base = {"channels": [4, 4, 4], "max_images": 96, "batch_size": 16, "warmup_images": 16}
    cfg_mem = Params.model_validate({"train_autoencoder": base}).train_autoencoder
    cfg_stream = Params.model_validate({"train_autoencoder": {**base, "runtime": {"data_workers": 2}}}).train_autoencoder
    m1, _ = fit_autoencoder(images["train"], cfg_mem, seed=0, progress=False)
    m2, _ = fit_autoencoder(sharded["train"], cfg_stream, seed=0, progress=False)
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(v1, v2), k
    cpu = torch.device("cpu")
    assert reconstruction_metrics(m1, images["val"], cpu) == reconstruction_metrics(m2, sharded["val"], cpu, workers=2)


def test_batches_convert_to_the_in_memory_values(tmp_path: Path) -> None:
    images, labels = _splits(n_train=30)
    write_dataset(tmp_path / "d", images, labels, ["a", "b", "c"], "t", {}, shard_size=4)
    x = read_dataset(tmp_path / "d", stream=True).images["train"]
    got = torch.cat([to_model(b) for b in iter_batches(x, 7, workers=2)])
    assert torch.equal(got, to_model_range(images["train"]))
