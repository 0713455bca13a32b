"""Reading uint8 images through a :class:`torch.utils.data.DataLoader`: per-batch fetches from the dataset artifact
(in memory or :class:`~components.data.artifact.ShardedImages` on disk), worker processes, pinned memory on CUDA, and
a batch order given from outside (the training loop's, a pure function of ``(seed, step)``), so a run resumed at step
``s`` asks for batch ``s`` first and replays nothing. Conversion to float happens per batch (:func:`to_model`), and the
optional augmentations (:func:`augment`) draw from a generator seeded by the step, so they resume exactly too."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset


class ImageBatches(TorchDataset):
    """A map-style dataset over uint8 images ``[N, H, W, C]`` that fetches a whole batch in one call (``__getitems__``:
    one ``pread`` per run of consecutive indices on a sharded split) and returns it as one uint8 tensor."""

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[int(i)]))

    def __getitems__(self, indices: Sequence[int]) -> torch.Tensor:
        batch = self.images[np.asarray(indices, dtype=np.int64)]
        return torch.from_numpy(np.ascontiguousarray(batch))


def _whole_batch(batch: torch.Tensor) -> torch.Tensor:
    return batch  # ImageBatches already returns the batch as one tensor


def make_loader(images, batch_sampler: Iterable[Sequence[int]], *, workers: int = 0, pin_memory: bool = False,
                seed: int = 0) -> DataLoader:
    """A DataLoader yielding uint8 ``[B, H, W, C]`` tensors for the index lists of ``batch_sampler``, in its order
    (workers deliver in order). ``seed`` seeds the loader's own generator (the worker seeds), so creating the loader
    draws nothing from torch's global RNG, whose state training checkpoints."""
    return DataLoader(ImageBatches(images), batch_sampler=batch_sampler, num_workers=workers, pin_memory=pin_memory,
                      collate_fn=_whole_batch, generator=torch.Generator().manual_seed(seed),
                      persistent_workers=False, prefetch_factor=4 if workers else None)


class SequentialBatches:
    """Index lists ``[0, B), [B, 2B), ...`` over ``n`` images (evaluation, encoding)."""

    def __init__(self, n: int, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size = n, batch_size

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, self.n, self.batch_size):
            yield list(range(start, min(start + self.batch_size, self.n)))


class IndexBatches:
    """The given index lists, in order (e.g. one epoch of a permutation cut into batches)."""

    def __init__(self, batches: Sequence[Sequence[int]]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Sequence[int]]:
        return iter(self.batches)


def iter_batches(images, batch_size: int, *, workers: int = 0, device: torch.device | None = None) -> Iterator[torch.Tensor]:
    """uint8 ``[B, H, W, C]`` batches of ``images`` in order, read through a DataLoader (pinned when ``device`` is CUDA)."""
    if len(images) == 0:
        return iter(())
    pin = device is not None and torch.device(device).type == "cuda"
    return iter(make_loader(images, SequentialBatches(len(images), batch_size), workers=workers, pin_memory=pin))


def to_model(batch: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 ``[B, H, W, C]`` -> float32 ``[B, C, H, W]`` in [-1, 1] on ``device`` (moved as uint8, converted there):
    the same values as :func:`components.images.to_model_range` of the whole array."""
    x = batch.to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def augment(batch: torch.Tensor, rows: torch.Tensor, global_size: int, generator: torch.Generator, *, hflip: bool = False,
            crop_padding: int = 0) -> torch.Tensor:
    """Random horizontal flips (probability 1/2) and random crops (shift by up to ``crop_padding`` pixels each way, the
    border repeated: a random crop of the edge-padded image) of a uint8 ``[B, H, W, C]`` batch.

    The draws are made for the step's whole global batch of ``global_size`` images from ``generator`` and this batch
    keeps its ``rows`` (as :meth:`components.training.loop.Batch.draw` does), so an image's augmentation depends on
    the step's seed and its row only: not on workers, processes or micro-batches, and a resumed run repeats it."""
    if not hflip and not crop_padding:
        return batch
    n, h, w, _ = batch.shape
    flip = torch.rand(global_size, generator=generator)[rows] < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    if crop_padding:
        shift = torch.randint(-crop_padding, crop_padding + 1, (global_size, 2), generator=generator)[rows]
    else:
        shift = torch.zeros(n, 2, dtype=torch.long)
    ys = (torch.arange(h)[None, :] + shift[:, :1]).clamp(0, h - 1)  # [n, h]
    cols = torch.arange(w)[None, :].expand(n, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols)  # flip first, then shift the flipped image
    xs = (cols + shift[:, 1:]).clamp(0, w - 1)  # [n, w]
    return batch[torch.arange(n)[:, None, None], ys[:, :, None], xs[:, None, :]]
