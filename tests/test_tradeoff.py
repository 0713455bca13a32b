"""Issue 14, part 1: the real-vs-real baseline, FD / precision / recall ratios, the guidance sweep, and the rule that
recommends a guidance from it (components/evaluation/tradeoff.py, the evaluate stage, dvc.yaml's plots)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from components.config import Params
from components.evaluation import feature_statistics
from components.evaluation.tradeoff import RULE, ratio_metrics, real_key, recommend_guidance, set_metrics, stratified_subset
from tests.conftest import ROOT, run_cli, tiny_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCHEDULE = {"schedule": "linear", "num_timesteps": 50, "beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "epsilon"}


# --------------------------------------------------------------------------------------------------------------------
# ratios on synthetic features
# --------------------------------------------------------------------------------------------------------------------


def _gaussian(n: int, d: int, seed: int, *, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    mix = torch.linspace(0.5, 2.0, d, dtype=torch.float64)  # an anisotropic covariance, as real features have
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * mix * scale + shift).numpy()


def _ref(feats: np.ndarray) -> dict:
    mu, sigma = feature_statistics(feats)
    return {"features": feats, "mu": mu, "sigma": sigma}


def _scored(feats: np.ndarray, real: np.ndarray, ref: dict) -> dict:
    m = set_metrics(feats, ref, "x", pr_k=3, seed=0) | set_metrics(real, ref, "real_x", pr_k=3, seed=0)
    return m | ratio_metrics(m, "x")


def test_ratios_are_about_one_for_real_like_data_and_far_from_it_for_shifted_or_collapsed_sets():
    d, n = 16, 300
    ref = _ref(_gaussian(600, d, seed=1))          # the "val split"
    real = _gaussian(n, d, seed=2)                   # the "train subset": same distribution, same n
    for seed in (3, 4, 5, 6, 7):
        same = _scored(_gaussian(n, d, seed=seed), real, ref)
        # FD between finite samples of one Gaussian is estimation bias only (0.69 for the baseline here); a set from the
        # same distribution has the same bias, so the ratio is 1 up to sampling noise (0.73..1.16 over seeds 3..12)
        assert same["fd_ratio_x"] == pytest.approx(same["fd_x"] / same["fd_real_x"], rel=1e-12)
        assert 0.7 < same["fd_ratio_x"] < 1.3, seed
        assert 0.85 < same["recall_ratio_x"] < 1.15 and 0.85 < same["precision_ratio_x"] < 1.15, seed
        # a mean shift of 1 per dimension adds |shift|^2 = 16 to FD, ~23x the bias (22..25 measured); most samples leave
        # the real manifold (precision ratio 0.33..0.41) and cover less of it
        shifted = _scored(_gaussian(n, d, seed=seed, shift=1.0), real, ref)
        assert shifted["fd_ratio_x"] > 10.0 and shifted["precision_ratio_x"] < 0.6 and shifted["recall_ratio_x"] < 0.7, seed
        # a collapsed set (a third of the spread: what too much guidance does) covers none of the reference's spread, so
        # its recall ratio is ~0, while its samples lie on the real manifold (precision ratio 1.17 measured)
        collapsed = _scored(_gaussian(n, d, seed=seed, scale=1 / 3), real, ref)
        assert collapsed["recall_ratio_x"] < 0.1 and collapsed["precision_ratio_x"] > 0.9 and collapsed["fd_ratio_x"] > 10.0, seed


def test_the_sweep_runs_each_network_at_its_own_default_batch(monkeypatch):
    """Without feature_batch_sizes the sweep passes each extractor the batch extractor_batch_size gives it (500 for the
    classifier, 4 for an ImageNet network), and the judge IMAGENET_CPU_BATCH; a given size wins. Every library entry that
    runs an ImageNet network defaults to the same constant, so no caller gets the batch of 16 that ran 2.25x slower."""
    import inspect

    from components.evaluation import classifier as classifier_module
    from components.evaluation import probe, protocol, tradeoff

    calls: list[tuple[str, int]] = []

    def recorder(name: str, dim: int = 4):
        def extract(images, batch_size):
            calls.append((name, batch_size))
            return _gaussian(len(images), dim, seed=len(calls))
        return extract

    def classify(model, images, batch_size):
        calls.append(("classifier", batch_size))
        return _gaussian(len(images), 4, seed=len(calls)), np.zeros(len(images), dtype=np.int64)

    class Generator:
        num_classes = 2

        def generate(self, labels, **kwargs):
            return np.zeros((len(labels), 8, 8, 1), dtype=np.uint8)

    class Judge:
        def predict(self, images, batch_size):
            calls.append(("judge", batch_size))
            return np.zeros(len(images), dtype=np.int64)

    monkeypatch.setattr(classifier_module, "classify", classify)
    extractors = {"classifier": recorder("classifier"), "effnet_lite0": recorder("effnet_lite0")}
    refs = {name: _ref(_gaussian(40, 4, seed=100)) for name in extractors}
    train_labels = np.repeat(np.arange(2), 20)
    kwargs = dict(guidances=[1.0], num_per_class=10, sampler="ddim", steps=2, seed=0, baseline_seed=0, eta=0.0,
                  timestep_spacing="leading", pr_k=3, judge=Judge())
    tradeoff.guidance_sweep(Generator(), None, extractors, refs, np.zeros((40, 8, 8, 1), np.uint8), train_labels, **kwargs)
    assert sorted(set(calls)) == [("classifier", 500), ("effnet_lite0", protocol.IMAGENET_CPU_BATCH), ("judge", protocol.IMAGENET_CPU_BATCH)]
    calls.clear()
    tradeoff.guidance_sweep(Generator(), None, extractors, refs, np.zeros((40, 8, 8, 1), np.uint8), train_labels,
                            feature_batch_sizes={"effnet_lite0": 7}, judge_batch_size=3, **{k: v for k, v in kwargs.items()})
    assert sorted(set(calls)) == [("classifier", 500), ("effnet_lite0", 7), ("judge", 3)]

    def default(fn, arg):
        return inspect.signature(fn).parameters[arg].default

    assert protocol.IMAGENET_CPU_BATCH == default(protocol.quality_vs_steps, "judge_batch_size") == default(
        tradeoff.guidance_sweep, "judge_batch_size") == default(probe.ProbeJudge.predict, "batch_size") == default(
        probe.train_probe_judge, "batch_size")


def test_ratio_of_a_zero_baseline_is_undefined_not_infinite():
    m = {"fd_x": 2.0, "fd_real_x": 0.0, "precision_x": 0.5, "precision_real_x": 0.5, "recall_x": 0.4, "recall_real_x": 0.8}
    assert ratio_metrics(m, "x") == {"fd_ratio_x": None, "precision_ratio_x": 1.0, "recall_ratio_x": 0.5}
    with pytest.raises(ValueError, match="non-finite"):
        ratio_metrics({**m, "fd_x": float("nan")}, "x")
    assert real_key("recall", "effnet_lite0") == "recall_real_effnet_lite0"
    # another set measured the same way (the autoencoder's reconstructions) over the same real baseline
    rec = {**m, "fd_real_x": 0.5, "fd_reconstruction_x": 1.5, "precision_reconstruction_x": 0.25, "recall_reconstruction_x": 0.6}
    assert ratio_metrics(rec, "x", of="reconstruction") == pytest.approx({"fd_ratio_reconstruction_x": 3.0, "precision_ratio_reconstruction_x": 0.5,
                                                                          "recall_ratio_reconstruction_x": 0.75}, rel=1e-12)


def test_stratified_subset_matches_the_label_histogram_is_seeded_and_nested():
    labels = np.repeat(np.arange(4), [30, 20, 25, 10])
    like = np.repeat(np.arange(4), 5)
    idx = stratified_subset(labels, like, seed=7)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    assert np.bincount(labels[idx], minlength=4).tolist() == [5, 5, 5, 5]
    assert np.array_equal(idx, stratified_subset(labels, like, seed=7))          # same seed, same subset
    assert not np.array_equal(idx, stratified_subset(labels, like, seed=8))      # another seed, another subset
    small = stratified_subset(labels, np.repeat(np.arange(4), 2), seed=7)
    assert set(small.tolist()) <= set(idx.tolist())  # a smaller request with the same seed: a subset of the larger one
    uneven = stratified_subset(labels, np.array([0, 0, 0, 3]), seed=7)
    assert sorted(labels[uneven].tolist()) == [0, 0, 0, 3]
    with pytest.raises(ValueError, match=r"needs 11 real images of class 3 .* the train split has 10: lower .*num_per_class.* at most 10"):
        stratified_subset(labels, np.repeat(np.arange(4), 11), seed=0)


# --------------------------------------------------------------------------------------------------------------------
# the recommendation rule, each branch
# --------------------------------------------------------------------------------------------------------------------


def _row(g: float, cc: float, fd: float | None, recall: float | None, **extra) -> dict:
    return {"guidance": g, "class_consistency": cc, "fd_ratio_classifier": fd, "recall_ratio_classifier": recall, **extra}


def test_rule_picks_the_most_class_consistent_guidance_among_those_that_pass_both_limits():
    rows = [_row(1.0, 0.84, 2.7, 1.00),   # too far from the real distribution
            _row(1.5, 0.95, 1.2, 0.95),   # qualifies
            _row(2.0, 0.97, 1.25, 0.92),  # qualifies, more consistent: the pick
            _row(3.0, 1.00, 2.1, 0.60),   # the most consistent, but collapsed (fails both limits)
            _row(5.0, 1.00, 1.1, 0.85)]   # passes FD, fails recall
    assert recommend_guidance(rows) == 2.0
    # the limits are parameters: loosen recall and guidance 5 (consistency 1.0) qualifies and wins
    assert recommend_guidance(rows, min_recall_ratio=0.8) == 5.0
    # the order of the rows does not matter
    assert recommend_guidance(rows[::-1]) == 2.0


def test_rule_breaks_ties_by_fd_ratio_then_by_the_lower_guidance():
    rows = [_row(1.5, 0.98, 1.2, 0.95), _row(2.0, 0.98, 1.1, 0.95), _row(3.0, 0.98, 1.1, 0.99)]
    assert recommend_guidance(rows) == 2.0  # equal consistency: lower FD ratio; equal again: lower guidance


def test_rule_falls_back_to_the_lowest_fd_ratio_when_nothing_qualifies():
    rows = [_row(1.0, 0.84, 2.7, 1.0), _row(1.5, 0.95, 1.4, 0.95), _row(3.0, 1.0, 2.1, 0.6), _row(5.0, 1.0, 1.4, 0.5)]
    assert recommend_guidance(rows) == 1.5  # 1.4 at 1.5 and at 5.0: the lower guidance
    # an undefined ratio (zero baseline) never qualifies and never wins the fallback
    assert recommend_guidance([_row(1.0, 1.0, None, 1.0), _row(2.0, 0.9, 3.0, None)]) == 2.0
    assert recommend_guidance([]) is None


def test_rule_requires_every_swept_extractor_to_pass():
    rows = [_row(1.5, 0.95, 1.2, 0.95, fd_ratio_effnet_lite0=1.2, recall_ratio_effnet_lite0=0.95),
            _row(3.0, 1.00, 1.2, 0.95, fd_ratio_effnet_lite0=2.0, recall_ratio_effnet_lite0=0.95)]
    assert recommend_guidance(rows) == 3.0  # classifier only: both qualify, 3.0 is more consistent
    assert recommend_guidance(rows, extractors=("classifier", "effnet_lite0")) == 1.5  # EfficientNet rules 3.0 out
    with pytest.raises(KeyError, match="recall_ratio_inception"):
        recommend_guidance(rows, extractors=("classifier", "inception"))


def test_the_rule_is_stated_in_params_yaml_and_the_readme():
    params_text = (ROOT / "params.yaml").read_text()
    assert "guidance_sweep:" in params_text
    assert "FD ratio <= max_fd_ratio and recall ratio >= min_recall_ratio" in params_text and "the highest class" in params_text
    readme = (ROOT / "README.md").read_text()
    assert "recommend_guidance" in readme and "max_fd_ratio" in readme and "min_recall_ratio" in readme
    assert "highest class consistency" in RULE and "lowest classifier FD ratio" in RULE


# --------------------------------------------------------------------------------------------------------------------
# params
# --------------------------------------------------------------------------------------------------------------------


def test_sweep_params_are_validated_with_the_key_named():
    from pydantic import ValidationError

    p = tiny_params()
    assert Params.model_validate(p).evaluate.guidance_sweep.guidances  # the shipped params sweep
    for bad, message in [({"guidances": [1.0, 1.0]}, "duplicates"), ({"guidances": [-1.0]}, ">= 0"),
                         ({"extractors": ["effnet_lite0"]}, "must include 'classifier'"), ({"colour": 1}, "colour"),
                         ({"num_per_class": 0}, "num_per_class")]:
        q = tiny_params()
        q["evaluate"]["guidance_sweep"].update(bad)
        with pytest.raises(ValidationError, match=message):
            Params.model_validate(q)
    q = tiny_params()
    q["evaluate"].update(extractors=["classifier"], guidance_sweep={"extractors": ["classifier", "effnet_lite0"]})
    with pytest.raises(ValidationError, match=r"guidance_sweep.extractors \['effnet_lite0'\] are not in evaluate.extractors"):
        Params.model_validate(q)
    q = tiny_params()
    q["evaluate"]["guidance_sweep"]["guidances"] = []
    assert Params.model_validate(q).evaluate.guidance_sweep.guidances == ()  # off


# --------------------------------------------------------------------------------------------------------------------
# the evaluate stage on a tiny model: keys, the sweep's JSON, determinism, a clear failure that keeps old outputs
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny synthetic dataset artifact, an untrained (random) autoencoder + U-Net, reference_stats with the classifier only, and
    4 samples per class: the evaluate stage's inputs, made in seconds."""
    from components.data.artifact import write_dataset
    from components.data.samples import write_samples
    from components.generation import LatentDiffusionGenerator
    from components.models.autoencoder import AutoencoderConfig, build_autoencoder
    from components.models.checkpoint import save_checkpoint
    from components.models.unet import UNet, UNetConfig
    from pipelines.stages import reference_stats

    tmp = tmp_path_factory.mktemp("tradeoff")
    p = tiny_params()
    p["base"].update(num_threads=1)
    p["sample"].update(num_per_class=4, steps=2, batch_size=16)
    p["evaluate"].update(classifier_epochs=5, classifier_batch_size=16, extractors=["classifier"], kid_subsets=2,
                         quality_grid={"samplers": ["ddim"], "steps": [2], "num_per_class": 1},
                         guidance_sweep={"guidances": [1.0, 2.0, 4.0], "num_per_class": 3, "steps": 2, "sampler": "dpmpp_2m"})
    params = Params.model_validate(p)
    # a synthetic dataset (no MNIST load): class c is noise plus a bright bar at column 3c, 15 train / 2 val per class
    g = torch.Generator().manual_seed(0)
    images, labels = {}, {}
    for split, per_class in (("train", 15), ("val", 2)):
        y = np.repeat(np.arange(10), per_class)
        x = torch.randint(0, 60, (len(y), 32, 32, 1), generator=g, dtype=torch.uint8).numpy()
        for i, c in enumerate(y):
            x[i, :, 3 * c : 3 * c + 2] = 220
        images[split], labels[split] = x, y.astype(np.int64)
    write_dataset(tmp / "data", images, labels, [str(c) for c in range(10)], "synthetic bars", {})
    torch.manual_seed(0)  # the autoencoder's random init (a fixture, not the code under test)
    ae = build_autoencoder(AutoencoderConfig(in_channels=1, image_size=32, channels=(8, 16, 16), latent_channels=4, regularizer="kl"),
                           scale_factor=0.8).eval()
    save_checkpoint(tmp / "models" / "autoencoder", ae, ae.config.to_dict(), {"scale_factor": 0.8})
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, sample_size=8, num_classes=10, channels=(8, 16), num_heads=2))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the output layer starts at zero: random weights everywhere so the class (and guidance) matter
        for w in unet.parameters():
            w.copy_(torch.randn(w.shape, generator=g) * 0.2)
    save_checkpoint(tmp / "models" / "diffusion", unet, unet.config.to_dict(), {"schedule": SCHEDULE})
    reference_stats.run(params, data_dir=tmp / "data", models_dir=tmp / "models", out_dir=tmp / "reference_stats")
    labels = np.repeat(np.arange(10), 4)
    images = LatentDiffusionGenerator.from_dir(tmp / "models").generate(labels, seed=0, steps=2)
    write_samples(images, labels, tmp / "samples")
    return params, tmp


def _evaluate(params: Params, tmp: Path, out: Path, samples: str = "samples") -> dict:
    from pipelines.stages import evaluate

    out.mkdir(parents=True, exist_ok=True)
    return evaluate.run(params, data_dir=tmp / "data", samples_dir=tmp / samples, models_dir=tmp / "models", ref_dir=tmp / "reference_stats",
                        out_path=out / "metrics.json", quality_path=out / "quality.json", quality_plot=out / "quality_plot.json",
                        sweep_path=out / "guidance_sweep.json")


@pytest.fixture(scope="module")
def first_eval(tiny_run) -> dict:
    params, tmp = tiny_run
    return _evaluate(params, tmp, tmp / "run1")


def test_evaluate_writes_baselines_ratios_the_sweep_and_its_pick_deterministically(tiny_run, first_eval):
    params, tmp = tiny_run
    first = first_eval
    # the real-vs-real baseline at the samples' n and its ratios, named like the other metrics
    for m in ("fd", "kid", "precision", "recall"):
        assert np.isfinite(first[f"{m}_real_classifier"]), m
    assert first["fd_real_classifier"] > 0
    for m in ("fd", "precision", "recall"):
        base = first[f"{m}_real_classifier"]
        if base > 0:
            assert first[f"{m}_ratio_classifier"] == pytest.approx(first[f"{m}_classifier"] / base, rel=1e-12), m
    assert first["protocol"]["real_vs_real"]["num"] == first["protocol"]["num_generated"] == 40
    assert first["classifier_val_accuracy"] > 0.5  # the reference classifier reads the synthetic classes (chance: 0.1)
    # the sweep: one row per guidance, in order, the classifier's metrics and ratios, the same baseline in every row
    rows = json.loads((tmp / "run1" / "guidance_sweep.json").read_text())
    assert [r["guidance"] for r in rows] == [1.0, 2.0, 4.0]
    keys = {"guidance", "num_generated", "class_consistency", "fd_classifier", "precision_classifier", "recall_classifier",
            "fd_real_classifier", "precision_real_classifier", "recall_real_classifier",
            "fd_ratio_classifier", "precision_ratio_classifier", "recall_ratio_classifier"}
    assert all(set(r) == keys and r["num_generated"] == 30 for r in rows)
    assert len({(r["fd_real_classifier"], r["recall_real_classifier"]) for r in rows}) == 1
    assert all(r["fd_ratio_classifier"] == pytest.approx(r["fd_classifier"] / r["fd_real_classifier"], rel=1e-12) for r in rows)
    # guidance changes the images (same noise, different scale): the rows are not copies of one another
    assert len({r["fd_classifier"] for r in rows}) == 3
    # the pick is the rule's on these rows, and it is written with the rule
    assert first["recommended_guidance"] == recommend_guidance(rows) and first["recommended_guidance"] in (1.0, 2.0, 4.0)
    assert first["protocol"]["guidance_sweep"]["rule"] == RULE and first["protocol"]["guidance_sweep"]["extractors"] == ["classifier"]
    # same params, same metrics: every byte of metrics.json and of the sweep (the CPU, per-image seeded generators)
    _evaluate(params, tmp, tmp / "run2")
    for name in ("metrics.json", "guidance_sweep.json"):
        assert (tmp / "run1" / name).read_bytes() == (tmp / "run2" / name).read_bytes(), name


def test_evaluate_with_the_sweep_off_writes_an_empty_table_and_no_pick(tiny_run):
    params, tmp = tiny_run
    p = params.model_dump(by_alias=True)
    p["evaluate"]["guidance_sweep"]["guidances"] = []
    metrics = _evaluate(Params.model_validate(p), tmp, tmp / "off")
    assert json.loads((tmp / "off" / "guidance_sweep.json").read_text()) == []
    assert metrics["recommended_guidance"] is None and "fd_ratio_classifier" in metrics


def test_a_baseline_that_cannot_match_n_fails_before_writing_and_keeps_the_outputs(tiny_run):
    from components.data.samples import read_samples, write_samples

    params, tmp = tiny_run
    out = tmp / "keep"
    _evaluate(params, tmp, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    images, labels = read_samples(tmp / "samples")
    many = np.concatenate([images] * 5)  # 20 per class; the train split has 15 per class
    write_samples(many, np.concatenate([labels] * 5), tmp / "many")
    with pytest.raises(ValueError, match=r"real-vs-real baseline needs 20 real images of class 0 .*lower .*sample.num_per_class"):
        _evaluate(params, tmp, out, samples="many")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # the sweep's baseline is checked before any work too
    p = params.model_dump(by_alias=True)
    p["evaluate"]["guidance_sweep"]["num_per_class"] = 16
    with pytest.raises(ValueError, match=r"needs 16 real images of class 0 .* has 15: .*evaluate.guidance_sweep.num_per_class"):
        _evaluate(Params.model_validate(p), tmp, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# --------------------------------------------------------------------------------------------------------------------
# dvc.yaml: the sweep is an output of evaluate and a plot with x = guidance; the code deps are current
# --------------------------------------------------------------------------------------------------------------------


def test_dvc_yaml_declares_the_sweep_as_an_evaluate_output_and_a_plot():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in dvc["stages"]["evaluate"]["outs"]]
    assert "metrics/guidance_sweep.json" in outs
    assert "data/dataset" in dvc["stages"]["evaluate"]["deps"]  # the train split feeds the baseline: a change re-runs evaluate
    plots = {next(iter(p)): next(iter(p.values())) for p in dvc["plots"]}
    sweep_plots = {name: spec for name, spec in plots.items() if "metrics/guidance_sweep.json" in spec["y"]}
    assert set(sweep_plots) == {"guidance_sweep", "fd_ratio_vs_guidance"}
    assert all(spec["x"] == "guidance" for spec in sweep_plots.values())
    columns = {c for spec in sweep_plots.values() for c in spec["y"]["metrics/guidance_sweep.json"]}
    assert columns == {"class_consistency", "precision_classifier", "recall_classifier", "recall_real_classifier", "fd_ratio_classifier"}
    # the rows evaluate writes have every column the plots name (DVC fails on a missing field)
    row_keys = {"class_consistency", "fd_classifier", "precision_classifier", "recall_classifier", "fd_real_classifier",
                "precision_real_classifier", "recall_real_classifier", "fd_ratio_classifier", "precision_ratio_classifier",
                "recall_ratio_classifier"}
    assert columns <= row_keys


def test_dvc_plots_show_draws_the_sweep_that_evaluate_wrote(tiny_run, first_eval, tmp_path):
    """`dvc plots show --json` in a project holding this dvc.yaml and the sweep file evaluate wrote: both sweep plots
    have one series per declared column, at the swept guidances (the other plots' files are absent here)."""
    import shutil

    _, tmp = tiny_run
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "metrics").mkdir()
    shutil.copy(tmp / "run1" / "guidance_sweep.json", tmp_path / "metrics" / "guidance_sweep.json")
    assert run_cli(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path).returncode == 0
    res = run_cli(["dvc", "plots", "show", "--json"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert not [e for e in out.get("errors", []) if "guidance_sweep" in str(e)], out["errors"]
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    declared = {next(iter(p)): next(iter(p.values()))["y"]["metrics/guidance_sweep.json"] for p in dvc["plots"]
                if "metrics/guidance_sweep.json" in next(iter(p.values()))["y"]}
    for plot_id, columns in declared.items():
        (plot,) = out["data"][plot_id]
        values = plot["content"]["data"]["values"]
        if len(columns) == 1:  # one column: DVC plots it directly, without its per-field rows
            drawn = {(columns[0], p["guidance"]) for p in values if p[columns[0]] is not None}
        else:
            drawn = {(p["field"], p["guidance"]) for p in values if p["dvc_inferred_y_value"] is not None}
        assert drawn == {(c, g) for c in columns for g in (1.0, 2.0, 4.0)}, plot_id


def test_latentflow_deps_check_passes():
    res = run_cli(["latentflow", "deps", "--check"], cwd=ROOT)
    assert res.returncode == 0, res.stderr
