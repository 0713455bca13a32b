"""Tests for components.registry.mlflow_registry against a throwaway sqlite MLflow store."""

from __future__ import annotations

import io
import json
import math
import os
import sys
import types
from collections.abc import Sequence
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus
from PIL import Image

from components.registry.mlflow_registry import (
    PromotionDecision,
    decide_promotion,
    flatten_params,
    load_generator_from_uri,
    register_model,
)

IMAGE_SHAPE = (8, 6, 1)
NUM_CLASSES = 3
BOGUS_URI = "bogus-scheme://no-store-here"  # any use of the global tracking URI fails fast


class FakeGenerator:
    """Stand-in for components.generation.LatentDiffusionGenerator: deterministic uint8 images."""

    def __init__(self, model_dir: Path, num_classes: int, image_shape: tuple[int, int, int]) -> None:
        self.model_dir, self.num_classes, self.image_shape = model_dir, num_classes, image_shape
        self.calls: list[dict] = []

    @classmethod
    def from_dir(cls, model_dir, device: str = "cpu") -> FakeGenerator:
        config = json.loads(Path(model_dir, "autoencoder", "config.json").read_text())
        assert Path(model_dir, "diffusion", "config.json").is_file()
        return cls(Path(model_dir), config["num_classes"], tuple(config["image_shape"]))

    def generate(self, class_labels: Sequence[int], *, seed: int, sampler: str = "ddim",
                 steps: int = 50, guidance: float = 3.0, eta: float = 0.0) -> np.ndarray:
        self.calls.append({"labels": list(class_labels), "seed": seed, "sampler": sampler,
                           "steps": steps, "guidance": guidance})
        return expected_images(class_labels, seed)


def expected_images(class_labels: Sequence[int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 200, size=(len(class_labels), *IMAGE_SHAPE), dtype=np.uint8)
    return noise + np.asarray(class_labels, dtype=np.uint8)[:, None, None, None] * 20


@pytest.fixture(scope="module", autouse=True)
def fake_generation_module():
    module = types.ModuleType("components.generation")
    module.LatentDiffusionGenerator = FakeGenerator
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "components.generation", module)
        yield module


@pytest.fixture(autouse=True)
def bogus_global_tracking_uri(monkeypatch):
    """register_model must only use its explicit tracking_uri, never the global one."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", BOGUS_URI)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    assert mlflow.get_tracking_uri() == BOGUS_URI


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mlflow")
    tracking_uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri)
    client.create_experiment("latentflow-test", artifact_location=(root / "artifacts").as_uri())
    model_dir = root / "model_dir"
    for sub in ("autoencoder", "diffusion"):
        (model_dir / sub).mkdir(parents=True)
        config = {"num_classes": NUM_CLASSES, "image_shape": list(IMAGE_SHAPE)}
        (model_dir / sub / "config.json").write_text(json.dumps(config))
    grid = root / "sample_grid.png"
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(grid)
    metrics_json = root / "metrics.json"
    metrics_json.write_text(json.dumps({"fid": 1.0}))
    return {"root": root, "tracking_uri": tracking_uri, "client": client, "model_dir": model_dir,
            "artifacts": [grid, metrics_json]}


def register(store: dict, model_name: str, metric: str, value: float, *, greater_is_better: bool,
             min_improvement: float, **overrides):
    kwargs = dict(
        tracking_uri=store["tracking_uri"], experiment="latentflow-test", model_name=model_name,
        model_dir=store["model_dir"], params={"train": {"lr": 1e-3, "epochs": 2}, "seed": 7},
        metrics={metric: value, "other": 1.5}, artifacts=store["artifacts"], primary_metric=metric,
        greater_is_better=greater_is_better, min_improvement=min_improvement,
        tags={"git_commit": "abc123", "data_hash": "d41d8c"}, run_name=f"{model_name}-{value}",
    )
    kwargs.update(overrides)
    return register_model(**kwargs)


def champion_version(client: MlflowClient, name: str) -> str:
    return str(client.get_model_version_by_alias(name, "champion").version)


# ---------------------------------------------------------------- decide_promotion


@pytest.mark.parametrize(
    ("new", "champ", "greater", "min_imp", "expected"),
    [
        (0.5, None, True, 0.1, True),  # no champion
        (0.5, None, False, 0.1, True),
        (0.5, 0.5, True, 0.0, False),  # equal does not beat the champion, even with a zero threshold
        (0.5, 0.5, True, 0.01, False),  # equal, positive threshold
        (0.5, 0.5, False, 0.01, False),
        (1.5, 1.0, True, 0.5, True),  # exactly min_improvement (exact in binary)
        (1.0, 1.5, False, 0.5, True),
        (1.25, 1.0, True, 0.5, False),  # better but not enough
        (2.0, 1.0, False, 0.0, False),  # worse in the lower-is-better direction
        (0.0, 1.0, True, 0.0, False),  # worse in the higher-is-better direction
        (float("nan"), 1.0, True, 0.0, False),  # NaN never promotes
        (float("nan"), None, False, 0.0, False),
    ],
)
def test_decide_promotion(new, champ, greater, min_imp, expected):
    decision = decide_promotion(new, champ, greater_is_better=greater, min_improvement=min_imp)
    assert isinstance(decision, PromotionDecision)
    assert decision.promote is expected
    assert decision.champion_value == champ
    assert (math.isnan(decision.new_value) and math.isnan(new)) or decision.new_value == new


def test_decide_promotion_reason_mentions_both_figures():
    decision = decide_promotion(12.5, 20.25, greater_is_better=False, min_improvement=1.0)
    assert decision.promote
    assert "12.5" in decision.reason and "20.25" in decision.reason


def test_flatten_params_dotted_and_truncated():
    flat = flatten_params({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": Path("x"), "long": "z" * 7000})
    assert flat == {"a.b.c": "1", "a.d": "[1, 2]", "e": "x", "long": "z" * 6000}


# ---------------------------------------------------------------- register_model


def test_higher_is_better_sequence(store):
    client, name = store["client"], "higher-better"
    first = register(store, name, "accuracy", 0.80, greater_is_better=True, min_improvement=0.01)
    assert (first.version, first.alias, first.decision.promote) == ("1", "champion", True)
    assert first.model_uri == f"models:/{name}/1"
    tags = client.get_model_version(name, "1").tags
    assert tags["promotion_decision"] == "promoted"
    assert tags["compared_to_version"] == "none"
    assert float(tags["metric.accuracy"]) == 0.80

    worse = register(store, name, "accuracy", 0.79, greater_is_better=True, min_improvement=0.01)
    assert (worse.version, worse.alias, worse.decision.promote) == ("2", "challenger", False)
    assert worse.decision.champion_value == 0.80
    assert champion_version(client, name) == "1"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"

    marginal = register(store, name, "accuracy", 0.805, greater_is_better=True, min_improvement=0.01)
    assert marginal.alias == "challenger" and champion_version(client, name) == "1"

    better = register(store, name, "accuracy", 0.83, greater_is_better=True, min_improvement=0.01)
    assert (better.version, better.alias) == ("4", "champion")
    assert champion_version(client, name) == "4"
    tags = client.get_model_version(name, "4").tags
    assert tags["promotion_decision"] == "promoted"
    assert tags["compared_to_version"] == "1"
    assert float(tags["metric.accuracy"]) == 0.83
    assert "0.83" in tags["promotion_reason"] and "0.8" in tags["promotion_reason"]
    assert tags["git_commit"] == "abc123" and tags["data_hash"] == "d41d8c"
    assert client.get_model_version(name, "2").tags["promotion_decision"] == "not promoted"
    # the global MLflow state was never used nor modified
    assert mlflow.get_tracking_uri() == BOGUS_URI and mlflow.active_run() is None


def test_lower_is_better_sequence(store):
    client, name = store["client"], "lower-better"
    assert register(store, name, "fid", 50.0, greater_is_better=False, min_improvement=1.0).alias == "champion"
    close = register(store, name, "fid", 49.5, greater_is_better=False, min_improvement=1.0)
    assert close.alias == "challenger" and champion_version(client, name) == "1"
    tags = client.get_model_version(name, close.version).tags
    assert tags["promotion_decision"] == "not promoted" and tags["compared_to_version"] == "1"
    assert "49.5" in tags["promotion_reason"] and "50" in tags["promotion_reason"]
    higher = register(store, name, "fid", 70.0, greater_is_better=False, min_improvement=1.0)
    assert higher.alias == "challenger"
    lower = register(store, name, "fid", 40.0, greater_is_better=False, min_improvement=1.0)
    assert lower.alias == "champion" and champion_version(client, name) == lower.version == "4"
    assert lower.decision.champion_value == 50.0


def test_run_contents(store):
    client = store["client"]
    result = register(store, "run-contents", "fid", 10.0, greater_is_better=False, min_improvement=0.0)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run-contents-10.0"
    assert run.data.params == {"train.lr": "0.001", "train.epochs": "2", "seed": "7"}
    assert run.data.metrics == {"fid": 10.0, "other": 1.5}
    assert run.data.tags["git_commit"] == "abc123"
    assert {a.path for a in client.list_artifacts(result.run_id)} == {"sample_grid.png", "metrics.json"}
    version = client.get_model_version("run-contents", result.version)
    assert version.run_id == result.run_id
    logged = client.get_logged_model(version.tags["logged_model_id"])
    assert version.source == logged.artifact_location
    assert logged.source_run_id == result.run_id and logged.status == LoggedModelStatus.READY
    assert [o.model_id for o in run.outputs.model_outputs] == [logged.model_id]
    # model artifacts (and the copied model_dir) live under the experiment's artifact location
    root = Path(store["root"], "artifacts")
    assert any(root.rglob("MLmodel")) and any(root.rglob("autoencoder/config.json"))


def test_failed_registration_marks_run_failed(store):
    client = store["client"]
    with pytest.raises(FileNotFoundError):
        register(store, "broken", "fid", 1.0, greater_is_better=False, min_improvement=0.0,
                 artifacts=[store["root"] / "does-not-exist.png"], run_name="broken-run")
    exp = client.get_experiment_by_name("latentflow-test")
    runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'broken-run'")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"


def test_missing_primary_metric_rejected(store):
    with pytest.raises(KeyError):
        register(store, "no-metric", "fid", 1.0, greater_is_better=False, min_improvement=0.0,
                 primary_metric="kid")


# ---------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def served(store):
    register(store, "served", "fid", 5.0, greater_is_better=False, min_improvement=0.0)
    return "served"


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_pyfunc_predict_from_champion_alias(store, served, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["tracking_uri"])
    model = mlflow.pyfunc.load_model(f"models:/{served}@champion")
    frame = pd.DataFrame({"class_label": [1, 2], "num_images": [3, 2], "sampler": ["ddim", "ddpm"],
                          "steps": [4, 6], "guidance": [1.0, 2.5], "seed": [11, 12]})
    out = model.predict(frame)
    assert list(out.columns) == ["class_label", "prompt", "seed", "image", "height", "width", "channels"]
    assert len(out) == 5 and out["class_label"].tolist() == [1, 1, 1, 2, 2]
    assert out["seed"].tolist() == [11, 11, 11, 12, 12]
    assert set(zip(out["height"], out["width"], out["channels"], strict=True)) == {IMAGE_SHAPE}
    images = np.stack([decode(png) for png in out["image"]])
    assert images.shape == (5, IMAGE_SHAPE[0], IMAGE_SHAPE[1]) and images.dtype == np.uint8
    expected = np.concatenate([expected_images([1] * 3, 11), expected_images([2] * 2, 12)])[..., 0]
    np.testing.assert_array_equal(images, expected)
    generator = model.unwrap_python_model().generator
    assert isinstance(generator, FakeGenerator)
    assert generator.calls[1] == {"labels": [2, 2], "seed": 12, "sampler": "ddpm", "steps": 6, "guidance": 2.5}
    assert generator.model_dir != store["model_dir"]  # loaded from the logged copy


def test_pyfunc_predict_defaults_and_validation(store, served, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["tracking_uri"])
    model = mlflow.pyfunc.load_model(f"models:/{served}/1")
    out = model.predict(pd.DataFrame({"class_label": [0]}))
    assert len(out) == 1 and out["seed"].tolist() == [0]
    assert model.unwrap_python_model().generator.calls[-1] == {
        "labels": [0], "seed": 0, "sampler": "ddim", "steps": 50, "guidance": 3.0}
    with pytest.raises(ValueError, match="class_label"):
        model.predict(pd.DataFrame({"class_label": [NUM_CLASSES]}))


def test_load_generator_from_uri_uses_explicit_tracking_uri(store, served):
    generator = load_generator_from_uri(f"models:/{served}@champion", tracking_uri=store["tracking_uri"])
    assert isinstance(generator, FakeGenerator)
    assert generator.num_classes == NUM_CLASSES and generator.image_shape == IMAGE_SHAPE
    np.testing.assert_array_equal(generator.generate([1, 0], seed=3), expected_images([1, 0], 3))
    by_version = load_generator_from_uri(f"models:/{served}/1", tracking_uri=store["tracking_uri"])
    assert by_version.image_shape == IMAGE_SHAPE
    assert mlflow.get_tracking_uri() == BOGUS_URI


def test_failure_after_version_creation_leaves_no_half_registered_version(store, monkeypatch):
    """An error while tagging/aliasing a new version deletes it, fails the run and names the step."""
    from mlflow.exceptions import MlflowException

    from components.registry.mlflow_registry import RegistryError

    client, name = store["client"], "half-registered"
    assert register(store, name, "fid", 5.0, greater_is_better=False, min_improvement=0.0).alias == "champion"

    def outage(self, *args, **kwargs):
        raise MlflowException("API request failed: Max retries exceeded (simulated outage)")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", outage)
    with pytest.raises(RegistryError, match=r"while trying to set alias 'champion' on version 2 .*No model version was registered"):
        register(store, name, "fid", 1.0, greater_is_better=False, min_improvement=0.0, run_name="half-run")
    assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    assert champion_version(client, name) == "1"
    exp = client.get_experiment_by_name("latentflow-test")
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'half-run'")
    assert run.info.status == "FAILED"


def test_model_is_logged_from_code_not_pickled(store):
    result = register(store, "from-code", "fid", 3.0, greater_is_better=False, min_improvement=0.0)
    version = store["client"].get_model_version("from-code", result.version)
    root = Path(store["root"], "artifacts")
    model_dirs = [p.parent for p in root.rglob("MLmodel") if result.run_id in p.read_text() or version.source.endswith(p.parent.name)]
    assert model_dirs
    files = {p.name for p in model_dirs[0].rglob("*") if p.is_file()}
    assert "pyfunc_model.py" in files and not any(f.endswith((".pkl", ".cloudpickle")) for f in files)
    assert "python_model.pkl" not in model_dirs[0].joinpath("MLmodel").read_text()


def test_retry_policy_bounds_and_restores_the_environment(monkeypatch):
    from components.registry.mlflow_registry import RetryPolicy

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    with RetryPolicy(max_retries=2, backoff_factor=1, timeout_s=9).applied():
        from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT

        assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 2 and MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 9
        monkeypatch.setenv("LATENTFLOW_SET_INSIDE", "kept")  # only the policy's own variables are restored
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7" and "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
    assert os.environ["LATENTFLOW_SET_INSIDE"] == "kept"


def test_a_named_alias_registers_a_version_without_touching_the_champion(store):
    """A distilled student is registered with alias ``fast``: no promotion decision, champion unchanged, its lineage tags
    on the version; the promotion rule's own aliases cannot be forced."""
    name = "alias-fast"
    first = register(store, name, "class_consistency", 0.9, greater_is_better=True, min_improvement=0.0)
    fast = register(store, name, "class_consistency", 0.1, greater_is_better=True, min_improvement=0.0, alias="fast",
                    metrics={"distilled_steps": 4.0}, tags={"teacher_version": first.version, "git_commit": "abc123"})
    client = store["client"]
    assert champion_version(client, name) == first.version and first.alias == "champion"
    version = client.get_model_version_by_alias(name, "fast")
    assert fast.alias == "fast" and str(version.version) == fast.version != first.version
    assert version.tags["teacher_version"] == first.version and version.tags["promotion_decision"] == "alias fast"
    assert version.tags["registration"] == "complete"
    with pytest.raises(ValueError, match="promotion rule"):
        register(store, name, "class_consistency", 1.0, greater_is_better=True, min_improvement=0.0, alias="champion")
