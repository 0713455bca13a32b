"""The domain classifier's input pool (large images are average-pooled to at most ``evaluate.classifier_max_side``
before the network) and its one loader, ``load_classifier``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from components.evaluation.classifier import (
    Classifier,
    ClassifierConfig,
    ClassifierExtractor,
    classify,
    input_pool_for,
    load_classifier,
    train_classifier,
)
from components.models.checkpoint import read_checkpoint, save_checkpoint


@pytest.mark.parametrize(("side", "max_side", "pool"), [(28, 32, 1), (32, 32, 1), (33, 32, 2), (64, 32, 2), (128, 32, 4), (96, 32, 3),
                                                        (64, 64, 1), (128, 64, 2)])
def test_input_pool_for_brings_the_side_to_at_most_max_side(side, max_side, pool):
    assert input_pool_for(side, max_side) == pool
    assert side / pool <= max_side


def test_input_pool_for_rejects_nonsense():
    with pytest.raises(ValueError, match="must be >= 1"):
        input_pool_for(64, 0)


def test_pooled_classifier_sees_the_average_pooled_image():
    """A classifier with input_pool 2 on a 64x64 image computes exactly what the same weights compute on the image
    average-pooled to 32x32 by hand; its state_dict has the keys of an unpooled one (checkpoints stay compatible)."""
    torch.manual_seed(0)
    pooled = Classifier(ClassifierConfig(in_channels=3, num_classes=6, input_pool=2)).eval()
    plain = Classifier(ClassifierConfig(in_channels=3, num_classes=6)).eval()
    assert pooled.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(pooled.state_dict())
    x = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    by_hand = x.reshape(5, 3, 32, 2, 32, 2).mean(dim=(3, 5))
    with torch.no_grad():
        torch.testing.assert_close(pooled(x), plain(by_hand), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(F.avg_pool2d(x, 2), by_hand)
    assert ClassifierExtractor(pooled).info.resize == "average pool by 2"
    assert ClassifierExtractor(plain).info.resize == "none (native resolution)"


def _toy(side: int, n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Two classes told apart by which half of the image is bright."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, size=(n, side, side, 3), dtype=np.uint8)
    for i, y in enumerate(labels):
        images[i, :, (side // 2) * y : (side // 2) * (y + 1)] += 150
    return images, labels


def test_train_classifier_pools_large_images_only():
    """MNIST/CIFAR-sized data keeps the native-resolution network (the default run's classifier is unchanged); 64x64
    data gets input_pool 2 by default, native resolution when max_side allows it; the pooled one still learns."""
    small, y_small = _toy(32)
    assert train_classifier(small, y_small, 2, epochs=1, batch_size=32, lr=2e-3, seed=0, progress=False).config.input_pool == 1
    large, y_large = _toy(64)
    clf = train_classifier(large, y_large, 2, epochs=3, batch_size=16, lr=3e-3, seed=0, progress=False)
    assert clf.config.input_pool == 2
    assert (classify(clf, large)[1] == y_large).mean() >= 0.9
    native = train_classifier(large, y_large, 2, epochs=1, batch_size=32, lr=2e-3, seed=0, progress=False, max_side=64)
    assert native.config.input_pool == 1


def test_load_classifier_round_trips_weights_config_and_device(tmp_path):
    torch.manual_seed(3)
    model = Classifier(ClassifierConfig(in_channels=3, num_classes=6, input_pool=2))
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        model(torch.randn(8, 3, 64, 64))
    save_checkpoint(tmp_path / "classifier", model, model.config.to_dict(), {"val_accuracy": 0.5})
    loaded = load_classifier(tmp_path / "classifier")
    assert loaded.config == model.config and not loaded.training
    assert next(loaded.parameters()).device.type == "cpu"
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_load_classifier_reads_a_checkpoint_written_before_the_input_pool(tmp_path):
    """Checkpoints from before ``input_pool`` existed (no such key in their JSON config) load as native resolution."""
    model = Classifier(ClassifierConfig())
    config = {k: v for k, v in model.config.to_dict().items() if k != "input_pool"}
    save_checkpoint(tmp_path / "old", model, config, {})
    assert "input_pool" not in read_checkpoint(tmp_path / "old")[1]["model"]
    assert load_classifier(tmp_path / "old").config.input_pool == 1
