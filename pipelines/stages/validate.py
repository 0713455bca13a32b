"""Stage ``validate``: the great-expectations suite over the dataset; ``report.json`` and data docs."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

from components.config import Params
from components.io import atomic_dir
from pipelines.stages.paths import DATA_DIR, VALIDATION_DIR

log = logging.getLogger("latentflow")


def run(params: Params, data_dir: Path = DATA_DIR, out_dir: Path = VALIDATION_DIR) -> dict:
    """Run the great-expectations suite; write ``report.json`` and data docs; raise on a failure."""
    from components.data.artifact import read_dataset
    from components.data.validation import raise_for_failures, validate_dataset

    cfg = params.validate_
    ds = read_dataset(data_dir, stream=True)  # the table is built a chunk of images at a time
    with atomic_dir(out_dir) as tmp:
        report = validate_dataset(
            {s: (ds.images[s], ds.labels[s]) for s in ds.images},
            ds.num_classes,
            expected_shape=tuple(ds.manifest["shape"]),
            min_rows={"train": cfg.min_rows_train, "val": cfg.min_rows_val},
            max_class_imbalance=cfg.max_class_imbalance,
            allow_duplicates=cfg.allow_duplicates,
            min_image_std=cfg.min_image_std,
            docs_dir=tmp / "data_docs",
        )
        summary = {
            "success": report.success,
            "failed": report.failed,
            "statistics": report.statistics,
            "dataset_facts": report.dataset_facts,
            "dataset_digest": ds.manifest["dataset_digest"],
            "results": report.results,
        }
        (tmp / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        if not report.success:
            # Keep the failing report and its data docs for reading, leave the last good report in
            # place, and let the stage fail (which stops the DAG).
            failed_dir = Path(out_dir).with_name(Path(out_dir).name + "_failed")
            shutil.rmtree(failed_dir, ignore_errors=True)
            shutil.copytree(tmp, failed_dir)
            raise_for_failures(dataclasses.replace(report, docs_index=str(failed_dir / "data_docs" / "index.html")))
    rows = ", ".join(f"{split} {facts['rows']}" for split, facts in report.dataset_facts["splits"].items())
    log.info("validate: %d of %d expectations passed (rows: %s) -> %s", report.statistics["successful"],
             report.statistics["evaluated"], rows, Path(out_dir) / "report.json")
    return summary
