"""The shapes data set (``ingest.source: shapes``, ``presets/shapes64``): a labelled 64x64 RGB data set the project
generates offline; the geometry of each class, determinism, backgrounds that carry no class, and tiny end-to-end runs
of the presets (``shapes64``, ``shapes128``) at 64x64 with f = 8 and f = 4 and at 128x128 with f = 8."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.config import Params
from components.data.shapes import SHAPES, draw_shape, generate_shapes, shape_mask

AREA = {  # in units of r^2 (shape_mask's docstring)
    "circle": math.pi, "ring": math.pi * (1 - 0.55**2), "square": 2.0, "triangle": 3 * math.sqrt(3) / 4,
    "star": 5 * 0.45 * math.sin(math.radians(36)), "cross": 1.75,
}


@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("angle", [0.0, 0.7, 2.5])
def test_each_shape_has_its_area_at_any_rotation(kind, angle):
    r = 150.0
    mask = np.asarray(shape_mask(kind, 400, 200.0, 200.0, r, angle)) > 127
    assert abs(mask.mean() * 400**2 / (AREA[kind] * r * r) - 1) < 0.02, kind
    ys, xs = np.nonzero(mask)
    assert abs(xs.mean() - 200) < 2 and abs(ys.mean() - 200) < 2  # centred: no vertex out of place


def test_generation_is_deterministic_labelled_and_fills_the_range():
    images, labels = generate_shapes(per_class=5, image_size=64, seed=3)
    again, _ = generate_shapes(per_class=5, image_size=64, seed=3)
    other, _ = generate_shapes(per_class=5, image_size=64, seed=4)
    assert images.shape == (30, 64, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images, again) and not np.array_equal(images, other)
    assert labels.tolist() == [i % len(SHAPES) for i in range(30)]
    assert images.std(axis=(1, 2, 3)).min() > 10  # texture and a shape on every image, not a flat fill
    with pytest.raises(ValueError, match="per_class"):
        generate_shapes(0)
    with pytest.raises(ValueError, match="unknown shape"):
        draw_shape(np.random.default_rng(0), "hexagon", 64)


def test_backgrounds_do_not_tell_the_classes_apart():
    """Only the shape depends on the class: from the same generator state two classes get the same background and
    colour, and the mean border colour (where no shape reaches) does not differ between classes beyond noise."""
    a = draw_shape(np.random.default_rng(11), "circle", 64).astype(int)
    b = draw_shape(np.random.default_rng(11), "cross", 64).astype(int)
    same = np.abs(a - b).max(axis=2) == 0
    assert 0.6 < same.mean() < 0.99  # the background is shared; the shapes differ
    images, labels = generate_shapes(per_class=60, image_size=64, seed=0)
    border = np.concatenate([images[:, :2].reshape(len(images), -1, 3), images[:, -2:].reshape(len(images), -1, 3)], axis=1)
    per_class = np.array([border[labels == k].mean() for k in range(len(SHAPES))])
    spread = border.reshape(len(images), -1).mean(axis=1).std() / math.sqrt(60)  # standard error of a class mean
    assert per_class.max() - per_class.min() < 6 * spread


def test_ingest_writes_the_shapes_data_set(tmp_path: Path):
    from pipelines.stages import ingest, validate
    from tests.conftest import tiny_params

    p = tiny_params()
    p["ingest"].update(source="shapes", image_size=64, channels=3, shapes_per_class=30)
    p["validate"].update(min_rows_train=100, min_rows_val=10)
    params = Params.model_validate(p)
    ingest.run(params, out_dir=tmp_path / "data", progress=False)
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["shape"] == [64, 64, 3] and manifest["class_names"] == list(SHAPES)
    assert manifest["counts"] == {"train": 162, "val": 18} and manifest["source"].startswith("components.data.shapes")
    ingest.run(params, out_dir=tmp_path / "again", progress=False)
    assert json.loads((tmp_path / "again" / "manifest.json").read_text())["dataset_digest"] == manifest["dataset_digest"]
    validate.run(params, data_dir=tmp_path / "data", out_dir=tmp_path / "validation")
    assert json.loads((tmp_path / "validation" / "report.json").read_text())["success"] is True
    p["ingest"]["channels"] = 1
    with pytest.raises(ValueError, match="channels must be 3 for the shapes source"):
        ingest.run(Params.model_validate(p), out_dir=tmp_path / "grey", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "size", "ae_channels", "latent_channels", "latent", "unet_levels"),
    [
        ("shapes64", 64, [8, 16, 16, 16], None, 8, 2),  # the preset's f = 8 at 64x64: 8x8x16 latents, U-Net levels 8, 4
        ("shapes64", 64, [8, 16, 16], 4, 16, 3),  # the f = 4 recipe (the preset before): 16x16x4 latents, levels 16, 8, 4
        ("shapes128", 128, [8, 16, 16, 16], None, 16, 3),  # the 128x128 preset's f = 8: 16x16x4 latents
    ],
    ids=["64-f8", "64-f4", "128-f8"],
)
def test_shapes_presets_run_end_to_end_with_unet_levels_that_follow_the_latent(
    tmp_path: Path, preset: str, size: int, ae_channels: list[int], latent_channels: int | None, latent: int, unet_levels: int
):
    """The preset's params (ingest, the autoencoder's factor, the U-Net's ``channels: auto``) shrunk to seconds:
    ingest -> validate -> train_autoencoder -> train_diffusion -> sample; the latents and U-Net levels of the size and
    f, RGB samples and grid at the size, a reconstruction better than the data set's mean image."""
    import torch

    from pipelines.presets import preset_params
    from pipelines.stages import ingest, sample, train_autoencoder, train_diffusion, validate

    threads = torch.get_num_threads()
    p = preset_params(preset)
    assert p["ingest"]["source"] == "shapes" and p["ingest"]["image_size"] == size
    assert p["train_autoencoder"]["channels"] == [16, 32, 64, 64]  # f = 8 in both presets
    assert p["train_autoencoder"]["latent_channels"] == {"shapes64": 16, "shapes128": 4}[preset]
    assert p["train_diffusion"]["unet"]["channels"] == "auto" and p["train_diffusion"]["unet"]["attention_levels"] == "auto"
    p["base"].update(device="cpu", num_threads=1)
    p["ingest"]["shapes_per_class"] = 40
    p["validate"].update(min_rows_train=100, min_rows_val=10)
    p["train_autoencoder"].update(channels=ae_channels, max_images=1600 if size == 64 else 800, batch_size=16, warmup_images=32)
    latent_channels = latent_channels or p["train_autoencoder"]["latent_channels"]
    p["train_autoencoder"]["latent_channels"] = latent_channels
    p["train_diffusion"].update(max_images=320, batch_size=32, warmup_images=32)
    p["train_diffusion"]["unet"].update(num_heads=2, preset="res-res-clsAtn-atn-chnAtn")  # with atn blocks, to see where
    params = Params.model_validate(p)
    assert params.latent_size == latent
    try:
        ingest.run(params, out_dir=tmp_path / "data", progress=False)
        validate.run(params, data_dir=tmp_path / "data", out_dir=tmp_path / "validation")
        train_autoencoder.run(params, data_dir=tmp_path / "data", out_dir=tmp_path / "models" / "autoencoder", metrics_dir=tmp_path / "metrics")
        train_diffusion.run(params, data_dir=tmp_path / "data", models_dir=tmp_path / "models", metrics_dir=tmp_path / "metrics")
        sample.run(model=tmp_path / "models", out_dir=tmp_path / "samples", num_per_class=2, seed=0, sampler="ddim", steps=3,
                   guidance=2.0, grid_path=tmp_path / "grid.png")
    finally:
        torch.set_num_threads(threads)
    unet = json.loads((tmp_path / "models" / "diffusion" / "config.json").read_text())["model"]
    assert unet["sample_size"] == latent and unet["in_channels"] == latent_channels
    assert unet["channels"] == [64, 96, 128][:unet_levels]
    # self-attention only at 8x8 and below, never at the top level; the middle always keeps it
    sides = [latent // 2**i for i in range(unet_levels)]
    assert [("atn" in blocks) for blocks in unet["level_blocks"]] == [i > 0 and s <= 8 for i, s in enumerate(sides)]
    assert "atn" in unet["mid_blocks"]
    ae = json.loads((tmp_path / "metrics" / "autoencoder.json").read_text())
    from components.data.artifact import read_dataset

    ds = read_dataset(tmp_path / "data")
    train, val = ds.images["train"].astype(np.float64), ds.images["val"].astype(np.float64)
    mean_image_psnr = 10 * np.log10(255.0**2 / ((val - train.mean(axis=0)) ** 2).mean())
    # measured at 64-f8 (16 latent channels): 16.5 dB against 15.1 for the train mean image (a collapsed autoencoder
    # scores about that); 64-f4 17.4, 128-f8 16.0 against 14.8
    assert ae["val_psnr"] > mean_image_psnr + 1.0, (ae["val_psnr"], mean_image_psnr)
    img = np.asarray(Image.open(tmp_path / "samples" / "5" / "1.png"))
    assert img.shape == (size, size, 3)
    grid = Image.open(tmp_path / "grid.png")
    assert grid.mode == "RGB" and grid.size[1] >= len(SHAPES) * size
