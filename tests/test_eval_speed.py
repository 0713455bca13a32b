"""benchmarks/eval_speed.py: the faster ways of the evaluation give the figures of the former ones, and the report
renders the committed JSON's table from the file (not from typed numbers)."""

import json

import numpy as np
import pytest

from benchmarks import eval_speed, report


@pytest.mark.parametrize(("peer", "description"), [("contiguous", "unfused, contiguous"), ("unfused", "unfused, channels-last")])
def test_the_shipped_extractor_gives_the_features_of_the_network_as_loaded(peer, description):
    images = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 1), dtype=np.uint8)
    r = eval_speed.effnet_features(images, batch_size=4, repeats=1, peer=peer)
    assert r["images"] == 6 and r["ours_s"] > 0 and r["peer_s"] > 0 and r["peer"] == description
    assert 0 < r["max_abs_feature_difference"] < 1e-3  # rounding only (features are O(1-10)); 0 would mean no fusion ran


def test_the_default_imagenet_batch_is_small_and_changes_no_feature():
    """The CPU default batch of the ImageNet extractors (4) gives the features of batch 16, the former default, to the
    rounding of one image's convolutions; an explicit evaluate.feature_batch_size wins, and a bad one is refused."""
    from components.evaluation.protocol import IMAGENET_CPU_BATCH, extractor_batch_size

    assert extractor_batch_size("effnet_lite0") == extractor_batch_size("inception") == IMAGENET_CPU_BATCH == 4
    assert extractor_batch_size("classifier") == 500 and extractor_batch_size("effnet_lite0", 64) == 64
    with pytest.raises(ValueError, match="feature batch size"):
        extractor_batch_size("effnet_lite0", 0)
    images = np.random.default_rng(1).integers(0, 256, size=(10, 32, 32, 1), dtype=np.uint8)  # 10: a last batch of 2
    r = eval_speed.effnet_batch(images, batch_size=4, peer_batch_size=16, repeats=1)
    assert (r["ours"], r["peer"], r["images"]) == ("batch 4", "batch 16", 10) and r["ours_s"] > 0 and r["peer_s"] > 0
    assert r["max_abs_feature_difference"] < 1e-4  # features are O(1-10): a mixed-up or dropped image moves them by O(1)


@pytest.mark.parametrize("network", ["unet", "autoencoder"])
def test_the_training_loops_adamw_is_the_defaults_to_the_bit(network):
    """The pair times the optimizer the training loop builds (foreach on the CPU) against torch's default, on the default
    network's parameters; after the same steps the two agree to the bit, the fused kernel only to rounding."""
    r = eval_speed.optimizer_steps(network, steps=2, repeats=1)
    assert r["network"] == network and r["parameters"] > 100_000 and r["tensors"] > 50
    assert r["ours_s_per_step"] > 0 and r["peer_s_per_step"] > 0 and r["fused_s_per_step"] > 0
    assert r["max_abs_parameter_difference"] == 0.0
    assert r["fused_max_abs_parameter_difference"] < 1e-5  # 4 steps of lr 1e-3 move a parameter by ~4e-3: a wrong update shows


def test_frechet_distance_agrees_with_pytorch_fid_formula_in_the_benchmark():
    r = eval_speed.frechet(n=60, dim=96, repeats=1)  # rank-deficient: 60 images, 96 dimensions
    assert r["relative_difference"] < 1e-6 and r["ours"] > 0


def test_classifier_step_benchmark_trains_both_layouts():
    r = eval_speed.classifier_steps(batch=8, side=32, steps=1, repeats=1)
    assert r["ours_s_per_step"] > 0 and r["peer_s_per_step"] > 0 and r["speedup"] == pytest.approx(
        r["peer_s_per_step"] / r["ours_s_per_step"], rel=0.01)


def test_trained_classifier_is_returned_contiguous_so_safetensors_can_save_it():
    from components.evaluation.classifier import train_classifier

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 32, 32, 1), dtype=np.uint8)
    model = train_classifier(images, rng.integers(0, 10, size=40), 10, epochs=1, batch_size=20, lr=1e-3, seed=0, progress=False)
    assert all(p.is_contiguous() for p in model.state_dict().values())
    assert not model.training


def test_report_renders_eval_speed_from_the_json(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    r = {"command": "python -m benchmarks.eval_speed", "repeats": 5,
         "effnet_lite0_features": {"images": 160, "batch_size": 16, "ours_s": 4.0, "peer_s": 7.2, "ours_images_per_s": 40.0,
                                   "peer_images_per_s": 22.2, "speedup": 1.8, "max_abs_feature_difference": 1.1e-5},
         "effnet_lite0_fusion": {"images": 160, "batch_size": 16, "ours": "BatchNorm folded, channels-last", "peer": "unfused, channels-last",
                                 "ours_s": 4.0, "peer_s": 5.0, "ours_images_per_s": 40.0, "peer_images_per_s": 32.0, "speedup": 1.25,
                                 "max_abs_feature_difference": 1.2e-5},
         "effnet_lite0_batch": {"images": 160, "ours": "batch 4", "peer": "batch 16", "ours_s": 2.0, "peer_s": 4.4,
                                "ours_images_per_s": 80.0, "peer_images_per_s": 36.4, "speedup": 2.2, "max_abs_feature_difference": 0.0},
         "classifier_training": {"batch_size": 128, "image_side": 32, "steps": 10, "ours_s_per_step": 0.137,
                                 "peer_s_per_step": 0.174, "speedup": 1.27},
         "frechet_distance": {"images": 500, "dim": 1280, "ours_s": 0.65, "peer_s": 2.3, "speedup": 3.54, "ours": 1.0, "peer": 1.0,
                              "relative_difference": 2.3e-8},
         "provenance": {"git_commit": "abc", "torch_threads": 2}}
    (tmp_path / "benchmarks" / "eval_speed.json").write_text(json.dumps(r))
    assert "AdamW" not in "\n".join(report.render(tmp_path))  # a file from before the optimizer pair: no row, no sentence
    r["training_optimizer"] = [{"network": "unet", "parameters": 1802937, "tensors": 149, "steps": 20, "ours_s_per_step": 0.00495,
                                "peer_s_per_step": 0.00744, "speedup": 1.503, "max_abs_parameter_difference": 0.0,
                                "fused_s_per_step": 0.00147, "fused_speedup": 5.06, "fused_max_abs_parameter_difference": 7.2e-7}]
    (tmp_path / "benchmarks" / "eval_speed.json").write_text(json.dumps(r))
    text = "\n".join(report.render(tmp_path))
    assert "| EfficientNet-Lite0 features, 160 images, batches of 16 | channels-last | contiguous | 4.00 s (40.0 img/s) | 7.20 s (22.2 img/s) | 1.80x |" in text
    assert ("| EfficientNet-Lite0 features, 160 images, batches of 16 | BatchNorm folded, channels-last | unfused, channels-last | "
            "4.00 s (40.0 img/s) | 5.00 s (32.0 img/s) | 1.25x |") in text
    assert "| 0.137 s | 0.174 s | 1.27x |" in text and "| 0.650 s | 2.300 s | 3.54x |" in text
    assert "| EfficientNet-Lite0 features, 160 images | batch 4 | batch 16 | 2.00 s (80.0 img/s) | 4.40 s (36.4 img/s) | 2.20x |" in text
    assert "across the two batch sizes by 0.0e+00" in text
    assert "by 2.3e-08 relative" in text
    assert ("| AdamW step, the default U-Net's 1,802,937 parameters (149 tensors) | foreach | torch's default on the CPU (a loop) | "
            "4.95 ms | 7.44 ms | 1.50x |") in text
    assert ("The U-Net's parameters after the same AdamW steps differ by 0.0e+00 (foreach against the loop); torch's fused CPU "
            "kernel takes 1.47 ms (5.06x the loop's speed) and differs by 7.2e-07.") in text
    (tmp_path / "benchmarks" / "eval_speed.json").unlink()
    assert "Not measured yet: `.venv/bin/python -m benchmarks.eval_speed`" in "\n".join(report.render(tmp_path))


def test_median_pair_alternates_and_takes_medians():
    calls = []
    ours, peer = eval_speed._median_pair(lambda: calls.append("o"), lambda: calls.append("p"), repeats=3)
    assert calls == ["o", "p"] * 4 and ours >= 0 and peer >= 0
