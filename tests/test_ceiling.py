"""The autoencoder's ceiling on class consistency (evaluate's ``reconstruction_consistency``): the judge's accuracy
on real images after they pass through the autoencoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from components.evaluation.ceiling import judges_on_reconstructions, reconstruct, reconstruction_consistency
from components.evaluation.probe import choose_judge
from components.evaluation.tradeoff import stratified_subset
from components.images import to_model_range, to_uint8
from components.models.autoencoder import AutoencoderConfig, DiagonalGaussian, build_autoencoder


class _Identity(nn.Module):
    """An 'autoencoder' that gives back what it is given (the latent is the image)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))  # a parameter, so the device can be read

    def encode(self, x):
        return DiagonalGaussian.point(x)

    def decode(self, z):
        return z


class _Blank(_Identity):
    """Renders every latent as a black image: it has lost the class."""

    def decode(self, z):
        return torch.full_like(z, -1.0)


def _brightness_judge(images: np.ndarray) -> np.ndarray:
    """Class 0 = dark, 1 = bright: a judge simple enough to check by hand."""
    return (np.asarray(images, dtype=np.float64).mean(axis=(1, 2, 3)) > 127).astype(np.int64)


def _two_classes(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(n) % 2
    images = np.where(labels[:, None, None, None] == 1, 200, 30).astype(np.uint8) * np.ones((1, 8, 8, 1), dtype=np.uint8)
    return images, labels


def test_reconstruct_is_decode_of_the_latent_mean_and_independent_of_the_batch_size():
    torch.manual_seed(0)
    ae = build_autoencoder(AutoencoderConfig(in_channels=3, image_size=16, channels=(8, 16), latent_channels=2)).eval()
    images = np.random.default_rng(0).integers(0, 256, size=(7, 16, 16, 3), dtype=np.uint8)
    with torch.no_grad():
        by_hand = to_uint8(ae.decode(ae.encode(to_model_range(images)).mean))
    out = reconstruct(ae, images, batch_size=3)
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert np.abs(out.astype(int) - by_hand.astype(int)).max() <= 1  # CPU GEMM rounding by batch shape: at most one level
    assert np.array_equal(reconstruct(ae, images, batch_size=3), out)  # deterministic: the mean, not a draw
    assert not np.array_equal(out, images)
    with pytest.raises(ValueError, match="batch_size"):
        reconstruct(ae, images, batch_size=0)


def test_a_lossless_autoencoder_reaches_the_judges_accuracy_and_a_blank_one_the_chance_of_its_class():
    images, labels = _two_classes()
    exact = reconstruction_consistency(_brightness_judge, _Identity(), images, labels, num_classes=2, batch_size=5)
    assert exact.pop("reconstructed_correct").all()
    assert exact == {"real": 1.0, "reconstructed": 1.0, "reconstructed_per_class": {"0": 1.0, "1": 1.0}, "num": 12}
    blank = reconstruction_consistency(_brightness_judge, _Blank(), images, labels, num_classes=2, batch_size=5)
    np.testing.assert_array_equal(blank["reconstructed_correct"], labels == 0)
    assert blank["real"] == 1.0 and blank["reconstructed"] == 0.5
    assert blank["reconstructed_per_class"] == {"0": 1.0, "1": 0.0}  # every image now reads as dark


class _Dim(_Identity):
    """Decodes every image at about half its brightness (30 -> 15, 200 -> 100 in uint8) and counts its decodes."""

    decodes = 0

    def decode(self, z):
        self.decodes += len(z)
        return z * 0.5 - 0.5


def test_judges_on_reconstructions_decodes_once_and_auto_picks_the_judge_that_reads_decoded_images():
    """Two judges that read the real images equally well (1.0) but the decoded ones differently: a threshold at 127
    reads every dimmed image as dark (0.5), one at 60 still reads them right (1.0). ``choose_judge('auto', ...)`` on the
    reconstruction accuracies takes the second; on the real accuracies it would tie and take the classifier."""
    images, labels = _two_classes()
    ae = _Dim()
    judges = {"classifier": _brightness_judge,
              "effnet_probe": lambda x: (np.asarray(x, dtype=np.float64).mean(axis=(1, 2, 3)) > 60).astype(np.int64)}
    out = judges_on_reconstructions(judges, ae, images, labels, num_classes=2, batch_size=5)
    assert ae.decodes == 12  # one reconstruction of the 12 images, shared by both judges
    single = reconstruction_consistency(_brightness_judge, _Dim(), images, labels, num_classes=2, batch_size=5)
    # per-image correctness on the reconstructions, in the images' order (pick_judge's paired comparison reads it)
    np.testing.assert_array_equal(out["classifier"].pop("reconstructed_correct"), labels == 0)
    np.testing.assert_array_equal(out["effnet_probe"].pop("reconstructed_correct"), np.ones(12, dtype=bool))
    np.testing.assert_array_equal(single.pop("reconstructed_correct"), labels == 0)
    assert out["classifier"] == {"real": 1.0, "reconstructed": 0.5, "reconstructed_per_class": {"0": 1.0, "1": 0.0}, "num": 12}
    assert out["effnet_probe"] == {"real": 1.0, "reconstructed": 1.0, "reconstructed_per_class": {"0": 1.0, "1": 1.0}, "num": 12}
    assert out["classifier"] == single
    assert choose_judge("auto", {n: r["reconstructed"] for n, r in out.items()}) == "effnet_probe"
    assert choose_judge("auto", {n: r["real"] for n, r in out.items()}) == "classifier"


def test_stratified_subset_at_most_takes_what_a_short_class_has():
    labels = np.array([0, 0, 0, 1, 2, 2])
    like = np.repeat([0, 1, 2], 2)
    with pytest.raises(ValueError, match="class 1"):
        stratified_subset(labels, like, seed=0)
    picked = stratified_subset(labels, like, seed=0, at_most=True)
    assert np.bincount(labels[picked]).tolist() == [2, 1, 2]
    assert len(set(picked.tolist())) == len(picked)
