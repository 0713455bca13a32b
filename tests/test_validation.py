"""Tests for components.data.validation (Great Expectations 1.x image-dataset validation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.data.validation import (
    DataValidationError,
    ValidationReport,
    build_image_table,
    raise_for_failures,
    validate_dataset,
)

NUM_CLASSES = 10
SHAPE = (32, 32, 1)


def make_splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """10 classes x 12 train images and 10 x 3 val images of 32x32x1 uint8 noise."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, per_class in (("train", 12), ("val", 3)):
        n = NUM_CLASSES * per_class
        images = rng.integers(0, 256, size=(n, *SHAPE), dtype=np.uint8)
        labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class)
        out[split] = (images, labels)
    return out


def run(splits, docs_dir: Path, **overrides) -> ValidationReport:
    kwargs = dict(
        expected_shape=SHAPE,
        min_rows={"train": 100, "val": 10},
        max_class_imbalance=2.0,
        allow_duplicates=False,
        min_image_std=5.0,
        docs_dir=docs_dir,
    )
    kwargs.update(overrides)
    return validate_dataset(splits, NUM_CLASSES, **kwargs)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> tuple[ValidationReport, Path]:
    docs = tmp_path_factory.mktemp("docs_good")
    return run(make_splits(), docs), docs


def test_build_image_table_columns_and_values():
    images, labels = make_splits()["val"]
    table = build_image_table(images, labels, "val")
    assert list(table.columns) == ["split", "index", "label", "height", "width", "channels",
                                   "dtype", "min", "max", "mean", "std", "sha256"]
    assert len(table) == 30
    row = table.iloc[4]
    assert (row["split"], row["index"], row["label"]) == ("val", 4, labels[4])
    assert (row["height"], row["width"], row["channels"], row["dtype"]) == (32, 32, 1, "uint8")
    assert row["min"] == images[4].min() and row["max"] == images[4].max()
    assert row["mean"] == pytest.approx(images[4].mean())
    assert row["std"] == pytest.approx(images[4].std())
    assert table["sha256"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert table["sha256"].is_unique


def test_the_table_of_a_streamed_split_is_built_a_chunk_at_a_time(tmp_path, monkeypatch):
    """A data set larger than memory validates: the table reads a sharded split in chunks, never the whole split as one
    array, and its rows equal the in-memory table's (whatever the chunk size, shard boundaries included)."""
    from components.data.artifact import ShardedImages, write_dataset

    splits = make_splits()
    write_dataset(tmp_path / "data", images={s: x for s, (x, _) in splits.items()}, labels={s: y for s, (_, y) in splits.items()},
                  class_names=[str(i) for i in range(NUM_CLASSES)], source="test", extra={}, shard_size=50)
    images, labels = splits["train"]
    expected = build_image_table(images, labels, "train")
    shards = sorted((tmp_path / "data").glob("train_images_*.npy"))
    assert len(shards) == 3  # 120 images in shards of 50

    def whole_split(self, dtype=None, copy=None):
        raise AssertionError("the whole split was read into memory at once")

    monkeypatch.setattr(ShardedImages, "__array__", whole_split)
    read_slices = []
    getitem = ShardedImages.__getitem__

    def spy(self, key):
        read_slices.append(key)
        return getitem(self, key)

    monkeypatch.setattr(ShardedImages, "__getitem__", spy)
    for chunk in (7, 50, 4096):
        read_slices.clear()
        table = build_image_table(ShardedImages(shards), labels, "train", chunk=chunk)
        assert table.equals(expected), chunk
        assert all(k.stop - k.start <= chunk for k in read_slices) and len(read_slices) == -(-120 // chunk)


def test_good_dataset_passes_and_builds_docs(good):
    report, docs = good
    assert report.success, report.failed
    assert report.failed == []
    assert report.statistics["unsuccessful"] == 0
    assert report.statistics["evaluated"] == report.statistics["successful"] == len(report.results)
    kinds = [r["expectation"] for r in report.results]
    assert kinds.count("expect_table_row_count_to_be_between") == 2
    assert "expect_column_values_to_be_unique" in kinds
    assert any(r["kwargs"].get("column") == "class_imbalance" for r in report.results)
    json.dumps(report.results)  # JSON-safe
    json.dumps(report.dataset_facts)
    assert report.dataset_facts["splits"]["train"] == {
        "rows": 120, "num_classes_present": 10, "class_imbalance": 1.0}
    assert report.dataset_facts["splits"]["val"]["rows"] == 30
    index = docs / "index.html"
    assert report.docs_index == str(index.resolve()) and index.is_file()
    pages = [p for p in docs.rglob("*.html") if p.name != "index.html"]
    assert any("validations" in p.parts for p in pages)
    assert "latentflow_images" in index.read_text()
    raise_for_failures(report)  # no-op on success


def test_label_out_of_range_fails(tmp_path):
    splits = make_splits()
    splits["train"][1][0] = NUM_CLASSES
    report = run(splits, tmp_path)
    assert not report.success
    assert report.failed == ["expect_column_values_to_be_in_set(label)"]
    [res] = [r for r in report.results if not r["success"]]
    assert res["observed"]["partial_unexpected_list"] == [NUM_CLASSES]


def test_duplicate_across_splits_fails_unless_allowed(tmp_path):
    splits = make_splits()
    splits["val"][0][5] = splits["train"][0][7]
    report = run(splits, tmp_path / "strict")
    assert report.failed == ["expect_column_values_to_be_unique(sha256)"]
    assert report.dataset_facts["cross_split_duplicates"] == 1
    assert run(splits, tmp_path / "lenient", allow_duplicates=True).success


def test_blank_image_fails_on_std(tmp_path):
    splits = make_splits()
    splits["train"][0][3] = 0
    report = run(splits, tmp_path)
    assert report.failed == ["expect_column_values_to_be_between(std)"]
    [res] = [r for r in report.results if not r["success"]]
    assert res["observed"]["partial_unexpected_list"] == [0.0]


def test_wrong_shape_fails_on_shape_columns(tmp_path):
    splits = make_splits()
    images, labels = splits["val"]
    splits["val"] = (images[:, :28, :28, :].copy(), labels)
    report = run(splits, tmp_path)
    assert set(report.failed) == {"expect_column_values_to_be_in_set(height)",
                                  "expect_column_values_to_be_in_set(width)"}
    report = run(make_splits(), tmp_path / "rgb", expected_shape=(32, 32, 3))
    assert report.failed == ["expect_column_values_to_be_in_set(channels)"]


def test_too_few_rows_fails(tmp_path):
    report = run(make_splits(), tmp_path, min_rows={"train": 200, "val": 10, "test": 1})
    assert set(report.failed) >= {"expect_table_row_count_to_be_between(split == 'train')",
                                  "expect_table_row_count_to_be_between(split == 'test')"}
    observed = {r["kwargs"]["min_value"]: r["observed"] for r in report.results
                if r["expectation"] == "expect_table_row_count_to_be_between"}
    assert observed == {200: 120, 10: 30, 1: 0}


def test_class_imbalance_and_missing_class_fail(tmp_path):
    splits = make_splits()
    images, labels = splits["train"]
    keep = (labels != 3) | (np.arange(len(labels)) % 12 < 2)  # class 3: 2 images vs 12
    splits["train"] = (images[keep], labels[keep])
    report = run(splits, tmp_path)
    assert report.failed == ["expect_column_values_to_be_between(class_imbalance)"]
    assert report.dataset_facts["splits"]["train"]["class_imbalance"] == pytest.approx(6.0)

    images, labels = make_splits()["val"]
    splits = {"train": make_splits()["train"], "val": (images[labels != 9], labels[labels != 9])}
    report = run(splits, tmp_path / "missing")
    assert report.failed == ["expect_column_values_to_be_in_set(num_classes_present)"]


def test_raise_for_failures_names_every_failure(tmp_path):
    splits = make_splits()
    splits["train"][0][0] = 0
    splits["val"][1][2] = 42
    report = run(splits, tmp_path)
    assert len(report.failed) == 2
    with pytest.raises(DataValidationError) as excinfo:
        raise_for_failures(report)
    message = str(excinfo.value)
    for name in report.failed:
        assert name in message
    assert "[42]" in message and "[0.0]" in message
    assert report.docs_index and report.docs_index in message
