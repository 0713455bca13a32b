"""Great Expectations (1.x) validation of image datasets.

Each image becomes one row of a per-image table (shape, dtype, pixel statistics,
content hash).  Two suites are run through GX Checkpoints on an ephemeral context:

* ``latentflow_images``  - per-image checks plus per-split row counts
  (``expect_table_row_count_to_be_between`` with a ``split == ...`` row condition);
* ``latentflow_dataset_facts`` - one row per split: class balance and class coverage.

Both checkpoints carry an ``UpdateDataDocsAction`` that renders HTML Data Docs
into a caller-chosen folder.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DOCS_SITE = "latentflow_docs"
KEY_COLUMNS = ("split", "index", "label", "sha256")


class DataValidationError(RuntimeError):
    """Raised by :func:`raise_for_failures` when a dataset fails validation."""


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_dataset` (all fields are JSON-safe)."""

    success: bool
    failed: list[str]
    results: list[dict]
    statistics: dict
    dataset_facts: dict
    docs_index: str | None


TABLE_CHUNK = 4096  # images read at a time while building the table: validate's memory is the table's, not the data set's


def build_image_table(images, labels: np.ndarray, split: str, chunk: int = TABLE_CHUNK) -> pd.DataFrame:
    """Return one row per image: split, index, label, shape, dtype, pixel stats, sha256.

    ``images`` is ``[N, H, W, C]``: an array or a streamed split (:class:`~components.data.artifact.ShardedImages`),
    read ``chunk`` images at a time so a data set larger than memory validates; ``labels`` is ``[N]``.
    """
    from components.data.artifact import iter_chunks

    labels = np.asarray(labels)
    if not hasattr(images, "shape"):
        images = np.asarray(images)
    if len(images.shape) != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {tuple(images.shape)}")
    n, h, w, c = images.shape
    if labels.shape != (n,):
        raise ValueError(f"labels shape {labels.shape} does not match {n} images")
    stats: dict[str, list] = {"min": [], "max": [], "mean": [], "std": [], "sha256": []}
    for part in iter_chunks(images, chunk):
        flat = part.reshape(len(part), -1)
        stats["min"].append(flat.min(axis=1).astype(np.int64))
        stats["max"].append(flat.max(axis=1).astype(np.int64))
        stats["mean"].append(flat.mean(axis=1, dtype=np.float64))
        stats["std"].append(flat.std(axis=1, dtype=np.float64))
        stats["sha256"].extend(hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() for im in part)
    empty = np.zeros(0, dtype=np.int64)
    return pd.DataFrame(
        {
            "split": split,
            "index": np.arange(n, dtype=np.int64),
            "label": labels.astype(np.int64),
            "height": h,
            "width": w,
            "channels": c,
            "dtype": str(images.dtype),
            **{k: np.concatenate(stats[k]) if stats[k] else empty.astype(np.float64 if k in ("mean", "std") else np.int64)
               for k in ("min", "max", "mean", "std")},
            "sha256": stats["sha256"],
        }
    )


def _dataset_facts(table: pd.DataFrame, splits: list[str], num_classes: int) -> pd.DataFrame:
    """One row per split: rows, classes present (of ``range(num_classes)``), max/min class count."""
    rows = []
    for split in splits:
        labels = table.loc[table["split"] == split, "label"].to_numpy()
        in_range = labels[(labels >= 0) & (labels < num_classes)]
        counts = np.bincount(in_range, minlength=num_classes)
        present = counts[counts > 0]
        imbalance = float(present.max() / present.min()) if present.size else float("nan")
        rows.append({"split": split, "rows": int(labels.size),
                     "num_classes_present": int(present.size), "class_imbalance": imbalance})
    return pd.DataFrame(rows, columns=["split", "rows", "num_classes_present", "class_imbalance"])


def _name(kind: str, kwargs: dict) -> str:
    """Human-readable expectation name, e.g. ``expect_column_values_to_be_in_set(label)``."""
    parts = [str(kwargs["column"])] if "column" in kwargs else []
    cond = kwargs.get("row_condition")
    if isinstance(cond, dict) and "column" in cond:
        parts.append(f"{cond['column'].get('name')} {cond.get('operator')} {cond.get('parameter')!r}")
    return f"{kind}({', '.join(parts)})"


def _observed(result: dict) -> Any:
    """Compact JSON-safe summary of a GX result dict."""
    if "observed_value" in result:
        return result["observed_value"]
    keys = ("element_count", "unexpected_count", "unexpected_percent", "partial_unexpected_list")
    summary = {k: result[k] for k in keys if k in result}
    if "partial_unexpected_list" in summary:
        summary["partial_unexpected_list"] = summary["partial_unexpected_list"][:5]
    return summary


def validate_dataset(
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    *,
    expected_shape: tuple[int, int, int],
    min_rows: dict[str, int],
    max_class_imbalance: float,
    allow_duplicates: bool,
    min_image_std: float,
    docs_dir: Path,
) -> ValidationReport:
    """Validate image splits with Great Expectations and build Data Docs into ``docs_dir``.

    Returns a :class:`ValidationReport`; it never raises on data problems
    (use :func:`raise_for_failures` for that).
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.row_conditions import Column

    table = pd.concat([build_image_table(x, y, s) for s, (x, y) in splits.items()], ignore_index=True)
    split_names = list(dict.fromkeys([*splits, *min_rows]))
    facts = _dataset_facts(table, split_names, num_classes)
    h, w, c = expected_shape

    image_checks: list = [gxe.ExpectColumnValuesToNotBeNull(column=col) for col in KEY_COLUMNS]
    image_checks += [
        gxe.ExpectColumnValuesToBeInSet(column="height", value_set=[h]),
        gxe.ExpectColumnValuesToBeInSet(column="width", value_set=[w]),
        gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[c]),
        gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=["uint8"]),
        gxe.ExpectColumnValuesToBeBetween(column="min", min_value=0),
        gxe.ExpectColumnValuesToBeBetween(column="max", max_value=255),
        gxe.ExpectColumnValuesToBeBetween(column="mean", min_value=0, max_value=255),
        gxe.ExpectColumnValuesToBeBetween(column="std", min_value=min_image_std),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(num_classes))),
    ]
    if not allow_duplicates:
        image_checks.append(gxe.ExpectColumnValuesToBeUnique(column="sha256"))
    for s in split_names:  # the row condition is not shown in Data Docs, so describe it
        n = min_rows.get(s, 1)
        image_checks.append(gxe.ExpectTableRowCountToBeBetween(
            min_value=n, row_condition=Column("split") == s,
            description=f"Split '{s}' must have at least {n} rows."))
    fact_checks = [
        gxe.ExpectColumnValuesToBeInSet(column="num_classes_present", value_set=[num_classes]),
        gxe.ExpectColumnValuesToBeBetween(column="class_imbalance", max_value=max_class_imbalance),
    ]

    docs_dir = Path(docs_dir).resolve()
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site(DOCS_SITE, {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    source = context.data_sources.add_pandas("latentflow")
    described: list[dict] = []
    for name, df, checks in (("latentflow_images", table, image_checks),
                             ("latentflow_dataset_facts", facts, fact_checks)):
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=checks))
        vdef = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=name, validation_definitions=[vdef], result_format="SUMMARY",
            actions=[UpdateDataDocsAction(name="update_docs", site_names=[DOCS_SITE])],
        ))
        described += checkpoint.run(batch_parameters={"dataframe": df}).describe_dict()["validation_results"]

    results: list[dict] = []
    for suite_result in described:
        for exp in suite_result["expectations"]:
            kwargs = {k: v for k, v in exp["kwargs"].items() if k != "batch_id"}
            observed = _observed(exp.get("result") or {})
            if "exception_info" in exp:
                observed = {"exception": exp["exception_info"].get("exception_message")}
            entry = {"expectation": exp["expectation_type"], "kwargs": kwargs,
                     "success": bool(exp["success"]), "observed": observed}
            results.append(entry)
    failed = [_name(r["expectation"], r["kwargs"]) for r in results if not r["success"]]
    n_ok = sum(r["success"] for r in results)
    index = docs_dir / "index.html"
    sha_splits = table.groupby("sha256")["split"].nunique()
    return ValidationReport(
        success=not failed,
        failed=failed,
        results=results,
        statistics={"evaluated": len(results), "successful": n_ok, "unsuccessful": len(results) - n_ok},
        dataset_facts={
            "total_rows": len(table),
            "splits": {r["split"]: {k: v for k, v in r.items() if k != "split"}
                       for r in facts.astype(object).where(facts.notna(), None).to_dict("records")},
            "duplicate_images": int(table["sha256"].duplicated().sum()),
            "cross_split_duplicates": int((sha_splits > 1).sum()),
        },
        docs_index=str(index) if index.exists() else None,
    )


def raise_for_failures(report: ValidationReport) -> None:
    """Raise :class:`DataValidationError` listing every failing expectation, if any."""
    if report.success:
        return
    failures = [r for r in report.results if not r["success"]]
    lines = [f"Dataset validation failed: {len(failures)} of {len(report.results)} expectations"]
    for f in failures:
        extra = {k: v for k, v in f["kwargs"].items() if k not in ("column", "row_condition")}
        lines.append(f"  - {_name(f['expectation'], f['kwargs'])} {extra}: observed {f['observed']}")
    lines.append(f"Per-split facts: {report.dataset_facts.get('splits')}")
    lines.append(f"Data Docs: {report.docs_index or 'not built'}")
    raise DataValidationError("\n".join(lines))
