"""RGB data end to end: image-folder and tar sources (CIFAR-10 JPEG test set), then a tiny 3-channel run
through validate -> train_autoencoder -> train_diffusion -> sample (grid) and the registry's pyfunc output."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.config import Params
from components.data.sources import SourceError, load_image_folder
from pipelines.stages import ingest, sample, train_autoencoder, train_diffusion, validate
from tests.conftest import SHARED_DATA, tiny_params

pytestmark = pytest.mark.slow  # an integration test: see README "Tests"

CIFAR_TAR = SHARED_DATA / "cifar10-test-jpg.tar"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for cls in ("b_cls", "a_cls"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_tar_of_a_folder_loads_like_the_folder(tmp_path: Path):
    folder = tmp_path / "mine"
    _write_folder(folder)
    tar_path = tmp_path / "mine.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(folder, arcname="some/prefix")
    a = load_image_folder(folder, 16, 3)
    b = load_image_folder(tar_path, 16, 3)
    assert a.class_names == b.class_names == ["a_cls", "b_cls"]
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert a.images.shape == (6, 16, 16, 3)
    limited = load_image_folder(tar_path, 16, 3, max_per_class=2)
    assert np.array_equal(limited.images, a.images[[0, 1, 3, 4]])


def test_bad_tar_layouts_name_the_problem(tmp_path: Path):
    def make(name: str, members: dict[str, bytes]) -> Path:
        path = tmp_path / name
        with tarfile.open(path, "w") as tar:
            for arcname, data in members.items():
                info = tarfile.TarInfo(arcname)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with pytest.raises(SourceError, match="not inside a class folder"):
        load_image_folder(make("flat.tar", {"x.png": png.getvalue()}), 8, 3)
    with pytest.raises(SourceError, match="several prefixes"):
        load_image_folder(make("mixed.tar", {"a/c1/x.png": png.getvalue(), "b/c2/y.png": png.getvalue()}), 8, 3)
    with pytest.raises(SourceError, match=r"bad\.tar:root/c1/broken\.jpg"):
        load_image_folder(make("bad.tar", {"root/c1/ok.png": png.getvalue(), "root/c1/broken.jpg": b"not a jpeg"}), 8, 3)
    with pytest.raises(SourceError, match="holds no images"):
        load_image_folder(make("empty.tar", {"root/README": b"hi"}), 8, 3)


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory) -> Iterator[tuple[Path, Params]]:
    if not CIFAR_TAR.is_file():
        pytest.fail(f"{CIFAR_TAR} is missing: it ships in the shared data folder (set LATENTFLOW_SHARED_DATA to its folder)")
    import torch

    threads = torch.get_num_threads()
    yield _rgb_run(tmp_path_factory)
    torch.set_num_threads(threads)  # the stages set base.num_threads for the process


def _rgb_run(tmp_path_factory) -> tuple[Path, Params]:
    p = tiny_params()
    p["base"]["num_threads"] = 1  # tiny models; two OpenMP threads spin-wait on a shared CPU
    p["ingest"].update(source="image_folder", root=str(CIFAR_TAR), channels=3, max_per_class=12)
    p["validate"].update(min_rows_train=50, min_rows_val=10)
    p["train_autoencoder"].update(max_images=320, batch_size=16, warmup_images=32, channels=[8, 16, 16])
    p["train_diffusion"].update(max_images=320, batch_size=32, warmup_images=32)
    params = Params.model_validate(p)
    root = tmp_path_factory.mktemp("rgb")
    ingest.run(params, out_dir=root / "data")
    validate.run(params, data_dir=root / "data", out_dir=root / "validation")
    train_autoencoder.run(params, data_dir=root / "data", out_dir=root / "models" / "autoencoder", metrics_dir=root / "metrics")
    train_diffusion.run(params, data_dir=root / "data", models_dir=root / "models", metrics_dir=root / "metrics")
    sample.run(model=root / "models", out_dir=root / "samples", num_per_class=2, seed=0, sampler="ddim", steps=3,
                  guidance=2.0, grid_path=root / "grid.png")
    return root, params


def test_cifar_tar_ingest_and_validation(rgb_run):
    root, _ = rgb_run
    manifest = json.loads((root / "data" / "manifest.json").read_text())
    assert manifest["shape"] == [32, 32, 3]
    assert manifest["class_names"] == CIFAR_CLASSES
    assert manifest["counts"] == {"train": 110, "val": 10}
    assert manifest["source"].startswith("image_tar:")
    report = json.loads((root / "validation" / "report.json").read_text())
    assert report["success"] is True, report["failed"]


def test_rgb_autoencoder_diffusion_and_grid(rgb_run):
    root, _ = rgb_run
    ae = json.loads((root / "metrics" / "autoencoder.json").read_text())
    # measured 13.6 dB; on these 10 val images constant grey scores 11.8 dB, the train mean image 11.7 dB (each
    # image's own mean colour, an oracle, 13.5 dB: this tiny autoencoder is barely past colour averages)
    assert np.isfinite(ae["val_psnr"]) and ae["val_psnr"] > 12.5 and ae["scale_factor"] > 0
    assert ae["parameters"] > 0 and ae["macs_per_forward"] > 0
    meta = json.loads((root / "models" / "autoencoder" / "config.json").read_text())
    assert meta["model"]["kind"] == "kl_autoencoder" and meta["model"]["in_channels"] == 3
    grid = Image.open(root / "grid.png")
    assert grid.mode == "RGB" and grid.size[1] > 10 * 32  # one row per class
    sample = np.asarray(Image.open(root / "samples" / "9" / "1.png"))
    assert sample.shape == (32, 32, 3)


def test_rgb_pyfunc_returns_three_channel_images(rgb_run):
    from components.registry.mlflow_registry import LatentDiffusionPyfunc

    root, _ = rgb_run
    model = LatentDiffusionPyfunc()
    model.load_context(SimpleNamespace(artifacts={"model_dir": str(root / "models")}))
    out = model.predict(None, pd.DataFrame([{"class_label": 3, "num_images": 2, "steps": 2, "seed": 1}]))
    assert len(out) == 2 and (out["channels"] == 3).all() and (out["height"] == 32).all()
    img = np.asarray(Image.open(io.BytesIO(out["image"].iloc[0])))
    assert img.shape == (32, 32, 3)


def test_cifar_preset_run_directory(tmp_path: Path):
    import yaml

    from components.config import ConfigError, load_params
    from pipelines.presets import PRESETS_DIR, init_run_dir, list_presets

    assert "cifar10" in list_presets()
    run = init_run_dir("cifar10", tmp_path / "run")
    params = load_params(run / "params.yaml")
    assert params.ingest.source == "image_folder" and params.ingest.channels == 3
    assert Path(params.ingest.root).is_absolute() and Path(params.ingest.root).resolve() == CIFAR_TAR.resolve()
    preset = yaml.safe_load((PRESETS_DIR / "cifar10" / "params.yaml").read_text())
    assert params.train_autoencoder.max_images == preset["train_autoencoder"]["max_images"]  # the preset wins
    root = Path(__file__).resolve().parents[1]
    run_stages = yaml.safe_load((run / "dvc.yaml").read_text())["stages"]
    project_stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert list(run_stages) == list(project_stages)
    for name, stage in project_stages.items():  # code deps point into this checkout, data deps stay relative
        expected = [str(root / d) if d.startswith(("components/", "pipelines/")) else d for d in stage.get("deps", [])]
        assert run_stages[name].get("deps", []) == expected, name
    assert str(root / "pipelines/stages/ingest.py") in run_stages["ingest"]["deps"]
    assert "no_scm = true" in (run / ".dvc" / "config").read_text()
    init_run_dir("cifar10", run)  # idempotent: refreshes params.yaml / dvc.yaml
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        init_run_dir("nope", tmp_path / "other")
