"""``base.device`` everywhere, batch sizes from params, and the error for a device this machine lacks.

The propagation test runs every stage that holds a network (training, sample through the CLI, reference_stats,
evaluate) with ``base.device`` resolved to a sentinel, ``torch.device("cpu", 0)``: it computes like the CPU, but
a network moved to the plain ``cpu`` that every default gives is told apart from one moved to the device the stage
resolved. A spy on ``nn.Module.to`` records where each network went, so a stage (or a component it calls) that
ignores ``base.device`` fails the test by name.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from components import device as device_mod
from components.config import ConfigError, Params, load_params
from components.device import DeviceError, resolve_device
from components.generation import LatentDiffusionGenerator, image_seed
from components.models.autoencoder import AutoencoderConfig, build_autoencoder
from components.models.checkpoint import save_checkpoint
from components.models.unet import UNet, UNetConfig
from tests.conftest import tiny_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SENTINEL = torch.device("cpu", 0)
SCHEDULE = {"schedule": "linear", "num_timesteps": 50, "beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "epsilon"}


# --------------------------------------------------------------------------------------------------------------------
# resolving a device, and the error for one this machine lacks
# --------------------------------------------------------------------------------------------------------------------


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(SENTINEL) == SENTINEL  # an already resolved device passes through unchanged
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    for name in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(DeviceError, match=r"base\.device is .*cuda.* but no CUDA device is available.*base\.device: auto.*base\.device: cpu"):
            resolve_device(name)
    with pytest.raises(DeviceError, match=r"--device is 'tpu', which is not a device: use one of auto, cpu, cuda"):
        resolve_device("tpu", key="--device")
    with pytest.raises(DeviceError) as err:
        resolve_device("cuda")
    assert isinstance(err.value, ConfigError) and isinstance(err.value, RuntimeError)  # CLI: exit 2 with the message; callers of old: RuntimeError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(DeviceError, match=r"has 1 CUDA device\(s\) \(cuda:0 \.\. cuda:0\)"):
        resolve_device("cuda:1")


def _write_params(path: Path, **base) -> Path:
    import yaml

    p = tiny_params()
    p["base"].update(base)
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


@pytest.mark.parametrize("stage", ["train_autoencoder", "train_diffusion", "reference_stats", "evaluate", "sample"])
def test_cuda_without_cuda_is_a_clear_error_naming_the_param(stage, tmp_path, monkeypatch):
    """``base.device: cuda`` on a machine without CUDA: exit 2, one message naming the param and the fix, no traceback,
    nothing written (before: exit 1 "failed: RuntimeError" for the stages, and ``sample`` ignored base.device)."""
    from pipelines.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    _write_params(tmp_path / "params.yaml", device="cuda")
    args = [stage, "--out", str(tmp_path / "samples")] if stage == "sample" else [stage]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "base.device is 'cuda' but no CUDA device is available" in result.output
    assert "set base.device: auto" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no output, not even an empty folder


def test_sample_device_option_is_checked_before_the_model_is_read(tmp_path, monkeypatch):
    from pipelines.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    _write_params(tmp_path / "params.yaml", device="cpu")
    result = CliRunner().invoke(app, ["sample", "--device", "cuda", "--model", "no-such-folder", "--out", "out"])
    assert result.exit_code == 2 and "--device is 'cuda' but no CUDA device" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_ingest_out_dir_is_gone_with_a_clear_error(tmp_path):
    p = _write_params(tmp_path / "params.yaml")
    import yaml

    raw = yaml.safe_load(p.read_text())
    raw["ingest"]["out_dir"] = "data/elsewhere"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"ingest\.out_dir \('data/elsewhere'\) is no longer a parameter.*data/dataset.*delete the key"):
        load_params(p)


# --------------------------------------------------------------------------------------------------------------------
# batch size: how many images one sampler call makes, never which images
# --------------------------------------------------------------------------------------------------------------------


class PerImageDenoiser(nn.Module):
    """A denoiser whose output for an image depends on that image alone, bit for bit: element-wise arithmetic and
    embedding lookups, no matrix product (whose rounding can depend on the number of rows, see below)."""

    def __init__(self, channels: int, size: int, num_classes: int):
        super().__init__()
        self.config = SimpleNamespace(num_classes=num_classes, in_channels=channels, sample_size=size)
        g = torch.Generator().manual_seed(5)
        self.scale = nn.Parameter(torch.rand(num_classes + 1, channels, generator=g) + 0.5)

    def forward(self, x, t, class_labels=None):
        labels = torch.full((x.shape[0],), self.config.num_classes) if class_labels is None else class_labels
        labels = torch.where(labels < 0, self.config.num_classes, labels)
        return torch.tanh(x * self.scale[labels][:, :, None, None] + t[:, None, None, None].float() / 1000.0)


def _autoencoder(seed: int = 1):
    cfg = AutoencoderConfig(in_channels=3, image_size=16, channels=(8, 16, 16), latent_channels=4, regularizer="kl")
    ae = build_autoencoder(cfg, scale_factor=0.8)
    _randomise(ae, seed)
    return ae.eval()


def _randomise(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _decoded_latents(gen: LatentDiffusionGenerator, labels: np.ndarray, batch_size: int, **kw) -> tuple[np.ndarray, torch.Tensor]:
    """The images of ``gen.generate`` and the latents it handed the decoder, concatenated in image order."""
    latents, decode = [], gen.autoencoder.decode

    def recording_decode(z):
        latents.append(z.detach().clone())
        return decode(z)

    gen.autoencoder.decode = recording_decode
    try:
        images = gen.generate(labels, batch_size=batch_size, **kw)
    finally:
        del gen.autoencoder.decode
    return images, torch.cat(latents)


@pytest.mark.parametrize(("sampler", "eta"), [("ddpm", 0.0), ("ddim", 1.0), ("ddim", 0.0), ("dpmpp_2m", 0.0)])
def test_images_do_not_depend_on_the_batch_size(sampler, eta):
    """70 images at batch_size 3, 64 and 70 come from the same latents bit for bit, stochastic samplers included:
    every random draw of image i comes from image i's own stream. (With the former one generator per batch, DDPM
    and DDIM eta=1 differ everywhere.) The decoder's convolutions are not per-image exact on every CPU (oneDNN
    blocks a batch of 3 differently from one of 64: on an AVX-512 EPYC a pixel moved by one level), so the images
    are held to one level, and almost none may move at all."""
    ae = _autoencoder()
    gen = LatentDiffusionGenerator(ae, PerImageDenoiser(4, 4, 5), {"schedule": SCHEDULE}, torch.device("cpu"))
    labels = np.arange(70) % 5
    kw = dict(seed=11, sampler=sampler, steps=6, eta=eta, guidance=2.0)
    (small, z_small), (large, z_large) = _decoded_latents(gen, labels, 3, **kw), _decoded_latents(gen, labels, 64, **kw)
    assert z_small.shape == (70, 4, 4, 4) and torch.equal(z_small, z_large)
    assert torch.equal(_decoded_latents(gen, labels, 70, **kw)[1], z_large)
    diff = np.abs(small.astype(int) - large.astype(int))
    assert small.shape == (70, 16, 16, 3) and diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    assert small.std() > 20 and len({img.tobytes() for img in small}) == 70  # 70 different images, not a constant
    other_seed = gen.generate(labels, batch_size=3, **{**kw, "seed": 12})
    assert np.abs(other_seed.astype(int) - small.astype(int)).mean() > 5  # another seed: other images, not a rounding


def test_image_seeds_are_distinct_and_stable():
    seeds = [image_seed(0, i) for i in range(10_000)] + [image_seed(1, i) for i in range(10_000)]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**64 for s in seeds)
    assert image_seed(0, 0) == 0xF2FEA5823ED3A667  # a fixed value: changing the derivation changes every sampled image


def test_real_unet_batch_size_moves_at_most_one_level():
    """With the real U-Net the random numbers are still the same for any batch size, but the CPU's GEMM kernels for
    fewer than 12 rows round differently (measured: a few 1e-7 in the U-Net output), so a pixel can land one uint8
    level away. This bounds that: no pixel moves by more than one level, and almost none move at all."""
    ae = _autoencoder()
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, sample_size=4, num_classes=4, channels=(16, 32), num_heads=2))
    _randomise(unet, 2)
    gen = LatentDiffusionGenerator(ae, unet.eval(), {"schedule": SCHEDULE}, torch.device("cpu"))
    labels = np.arange(70) % 4
    for sampler, eta in (("ddim", 0.0), ("ddpm", 0.0)):
        a = gen.generate(labels, seed=3, sampler=sampler, steps=5, eta=eta, batch_size=3).astype(int)
        b = gen.generate(labels, seed=3, sampler=sampler, steps=5, eta=eta, batch_size=64).astype(int)
        assert np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3, (sampler, np.abs(a - b).max(), (a != b).mean())


# --------------------------------------------------------------------------------------------------------------------
# every stage passes the resolved device (and the batch sizes) down
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def spies(monkeypatch):
    """``base.device: cpu`` resolves to the sentinel; records where every network is moved and the batch sizes used."""
    moves: list[tuple[str, torch.device | None]] = []
    calls: dict[str, list] = {"generate": [], "classify": [], "extract": []}
    real_resolve, real_to = device_mod.resolve_device, nn.Module.to

    def resolve(device="auto", *, key="base.device"):
        return SENTINEL if (device == "cpu" and key == "base.device") else real_resolve(device, key=key)

    def to(self, *args, **kwargs):
        dev = torch._C._nn._parse_to(*args, **kwargs)[0]
        moves.append((type(self).__name__, dev))
        return real_to(self, *args, **kwargs)

    import components.evaluation.classifier as clf_mod
    import components.evaluation.features as feat_mod

    real_generate, real_classify, real_run = LatentDiffusionGenerator.generate, clf_mod.classify, feat_mod._BatchedExtractor._run

    def generate(self, labels, **kw):
        calls["generate"].append((self.device, kw.get("batch_size")))
        return real_generate(self, labels, **kw)

    def classify(model, images, batch_size=500, **kwargs):
        calls["classify"].append(batch_size)  # (a tensor on cpu:0 reports plain cpu: the device is checked through Module.to)
        return real_classify(model, images, batch_size, **kwargs)

    def run(self, images, batch_size, fn, width):
        calls["extract"].append((self.info.name, self.device, batch_size))
        return real_run(self, images, batch_size, fn, width)

    monkeypatch.setattr(device_mod, "resolve_device", resolve)
    monkeypatch.setattr(nn.Module, "to", to)
    monkeypatch.setattr(LatentDiffusionGenerator, "generate", generate)
    monkeypatch.setattr(clf_mod, "classify", classify)
    monkeypatch.setattr(feat_mod._BatchedExtractor, "_run", run)
    return SimpleNamespace(moves=moves, calls=calls)


def _moved(moves, names: set[str]) -> dict[str, set]:
    """Network class name -> the devices it was moved to (``None``: a dtype-only ``.to``)."""
    out: dict[str, set] = {}
    for name, dev in moves:
        if name in names and dev is not None:
            out.setdefault(name, set()).add(dev)
    return out


@pytest.mark.slow  # 27 s on 2 idle cores (six stages, EfficientNet on CPU)
def test_every_stage_passes_base_device_down(tmp_path, monkeypatch, spies):
    """ingest -> train_autoencoder -> train_diffusion -> sample (CLI) -> reference_stats -> evaluate on a tiny MNIST,
    with ``base.device`` resolved to the sentinel: every network of every stage goes to the sentinel, none to the
    plain CPU a default would give; ``sample.batch_size`` and ``evaluate.feature_batch_size`` reach the sampler and
    every extractor."""
    import yaml

    from pipelines.cli import app
    from pipelines.stages import evaluate, ingest, reference_stats, train_autoencoder, train_diffusion

    p = tiny_params()
    p["base"].update(device="cpu", num_threads=1)
    p["ingest"].update(max_per_class=8)
    p["train_autoencoder"].update(max_images=32, batch_size=16, warmup_images=8, channels=[8, 16, 16])
    p["train_diffusion"].update(max_images=32, batch_size=16, warmup_images=8)
    p["sample"].update(num_per_class=1, steps=2, batch_size=3)
    # judge: effnet_probe, so the EfficientNet-Lite0 probe's features (its training in reference_stats, class consistency, the grid and
    # the sweep in evaluate) are on the device and in feature_batch_size batches too
    p["evaluate"].update(classifier_epochs=1, classifier_batch_size=16, feature_batch_size=3, extractors=["classifier", "effnet_lite0"],
                         judge="effnet_probe", kid_subsets=2, quality_grid={"samplers": ["ddim"], "steps": [2], "num_per_class": 1},
                         guidance_sweep={"guidances": [2.0], "num_per_class": 1, "steps": 2, "extractors": ["classifier", "effnet_lite0"]})
    params = Params.model_validate(p)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    nets = {"Autoencoder", "KLAutoencoder", "UNet", "Classifier", "EfficientNet"}
    spies.moves.clear()

    ingest.run(params, out_dir=tmp_path / "data")
    train_autoencoder.run(params, data_dir=tmp_path / "data", out_dir=tmp_path / "models" / "autoencoder", metrics_dir=tmp_path / "metrics")
    moved = _moved(spies.moves, nets | {"PatchDiscriminator"})
    assert moved and all(devs == {SENTINEL} for devs in moved.values()), moved
    spies.moves.clear()
    train_diffusion.run(params, data_dir=tmp_path / "data", models_dir=tmp_path / "models", metrics_dir=tmp_path / "metrics")
    moved = _moved(spies.moves, nets)
    assert "UNet" in moved and all(devs == {SENTINEL} for devs in moved.values()), moved
    spies.moves.clear()

    result = CliRunner().invoke(app, ["sample", "--model", str(tmp_path / "models"), "--out", str(tmp_path / "samples")])
    assert result.exit_code == 0, result.output
    moved = _moved(spies.moves, nets)
    assert "UNet" in moved and all(devs == {SENTINEL} for devs in moved.values()), moved
    assert spies.calls["generate"] == [(SENTINEL, 3)]  # sample.batch_size reaches the sampler
    spies.moves.clear()

    ref = reference_stats.run(params, data_dir=tmp_path / "data", models_dir=tmp_path / "models", out_dir=tmp_path / "reference_stats")
    assert ref["judge"]["used"] == "effnet_probe"
    moved = _moved(spies.moves, nets)
    assert {"Classifier", "EfficientNet"} <= set(moved) and all(devs == {SENTINEL} for devs in moved.values()), moved
    spies.moves.clear()
    spies.calls["generate"].clear()
    evaluate.run(params, data_dir=tmp_path / "data", samples_dir=tmp_path / "samples", models_dir=tmp_path / "models",
                 ref_dir=tmp_path / "reference_stats", out_path=tmp_path / "metrics.json", quality_path=tmp_path / "quality.json",
                 quality_plot=tmp_path / "quality_plot.json", sweep_path=tmp_path / "sweep.json")
    moved = _moved(spies.moves, nets)
    assert {"Classifier", "EfficientNet", "UNet"} <= set(moved) and all(devs == {SENTINEL} for devs in moved.values()), moved
    assert spies.calls["generate"] == [(SENTINEL, 3)] * 2  # the quality grid and the guidance sweep: on the device, sample.batch_size per call
    # evaluate.feature_batch_size (3: neither extractor's default, 500 and 4): the classifier (reference val accuracy, features,
    # class consistency, the grid) and EfficientNet
    assert spies.calls["classify"] and set(spies.calls["classify"]) == {3}, spies.calls["classify"]
    assert spies.calls["extract"] and all(c == ("effnet_lite0", SENTINEL, 3) for c in spies.calls["extract"]), spies.calls["extract"]


def test_pyfunc_loads_on_the_device_the_caller_asks_for(tmp_path, monkeypatch):
    from components.registry.mlflow_registry import DEVICE_ENV, LatentDiffusionPyfunc, serving_device

    model_dir = tmp_path / "model"
    ae = _autoencoder()
    save_checkpoint(model_dir / "autoencoder", ae, ae.config.to_dict(), {"scale_factor": 0.8})
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, sample_size=4, num_classes=4, channels=(8, 16), num_heads=2))
    save_checkpoint(model_dir / "diffusion", unet, unet.config.to_dict(), {"schedule": SCHEDULE})
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def load(**config):
        model = LatentDiffusionPyfunc()
        model.load_context(SimpleNamespace(artifacts={"model_dir": str(model_dir)}, model_config=config))
        return model.generator

    assert load().device == torch.device("cpu")  # the default for serving: the CPU
    assert serving_device(SimpleNamespace(model_config={"device": "auto"})) == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(DeviceError, match=rf"the environment variable {DEVICE_ENV} is 'cuda' but no CUDA device"):
        load()
    assert load(device="cpu").device == torch.device("cpu")  # model_config wins over the environment
    with pytest.raises(DeviceError, match=r"model_config\['device'\] is 'cuda:1' but no CUDA device"):
        load(device="cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert serving_device(SimpleNamespace(model_config={})) == torch.device("cuda")  # from the environment variable


def test_a_saved_pyfunc_takes_the_device_from_load_model(tmp_path, monkeypatch):
    """Through MLflow itself: the model is saved declaring a ``device`` model config (MLflow drops load-time keys a
    model was not saved with, warning "Argument(s) device were ignored"), so ``load_model(model_config=...)`` reaches it."""
    import mlflow.pyfunc

    from components.registry.mlflow_registry import DEVICE_ENV, save_pyfunc

    model_dir = tmp_path / "model_dir"
    ae = _autoencoder()
    save_checkpoint(model_dir / "autoencoder", ae, ae.config.to_dict(), {"scale_factor": 0.8})
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, sample_size=4, num_classes=4, channels=(8, 16), num_heads=2))
    save_checkpoint(model_dir / "diffusion", unet, unet.config.to_dict(), {"schedule": SCHEDULE})
    save_pyfunc(tmp_path / "pyfunc", model_dir, tmp_path / "code")
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"), model_config={"device": "cpu"})
    assert loaded.unwrap_python_model().generator.device == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"model_config\['device'\] is 'cuda' but no CUDA device"):
        mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"), model_config={"device": "cuda"})
    monkeypatch.setenv(DEVICE_ENV, "cuda")  # no model_config: the environment variable decides
    with pytest.raises(DeviceError, match=rf"{DEVICE_ENV} is 'cuda'"):
        mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))
