"""One MLflow run per pipeline execution (components/registry/tracking.py, pipelines/stages/tracking.py), against a
temporary SQLite store: which stage opens, joins or supersedes the run, step metrics from the training loop (which
must not change the weights), a failed stage marking the run FAILED, and where a DVC stage's local store lives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """A project folder as cwd (the state file and a relative SQLite store live here), no tracking env."""
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _params(tmp_path: Path):
    from components.config import load_params

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["register"]["tracking_uri"] = f"sqlite:///{tmp_path}/mlflow.db"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return load_params(path)


def _runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("latentflow")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else []


# ------------------------------------------------------------------------------------------- run per execution


def test_training_stages_share_one_run_and_a_rerun_of_an_earlier_stage_starts_a_new_one(workdir: Path, monkeypatch):
    from pipelines.stages.tracking import training_run

    params = _params(workdir)
    uri = params.register_.tracking_uri
    monkeypatch.setenv("DVC_EXP_NAME", "sweep-1")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    with training_run("train_autoencoder", params, "autoencoder") as ae:
        ae({"step": 1, "images": 64, "loss": 0.5, "lr": 1e-4, "images_per_s": 100.0})
    with training_run("train_diffusion", params, "diffusion") as diff:
        diff({"step": 1, "images": 128, "loss": 0.9, "lr": 2e-4, "images_per_s": 50.0})
    assert ae.run_id == diff.run_id  # the same execution: the U-Net joins the autoencoder's run
    (run,) = _runs(uri)
    assert run.info.status == "RUNNING" and run.info.run_name == "sweep-1"
    assert run.data.tags["dvc_exp_name"] == "sweep-1" and run.data.tags["dvc_exp_baseline_rev"] == "a" * 40
    assert run.data.tags["latentflow.opened_by"] == "train_autoencoder" and "git_commit" in run.data.tags
    assert run.data.metrics == {"autoencoder/loss": 0.5, "autoencoder/lr": 1e-4, "autoencoder/images": 64, "autoencoder/images_per_s": 100.0,
                                "diffusion/loss": 0.9, "diffusion/lr": 2e-4, "diffusion/images": 128, "diffusion/images_per_s": 50.0}
    assert run.data.params["train_diffusion.lr"] == str(params.train_diffusion.lr)
    state = json.loads((workdir / ".latentflow/mlflow_run.json").read_text())
    assert state["run_id"] == run.info.run_id and state["stages"] == ["train_autoencoder", "train_diffusion"]
    # the U-Net again (e.g. `dvc repro train_diffusion` after a param change): a new execution, the old run is KILLED
    with training_run("train_diffusion", params, "diffusion") as again:
        pass  # opening the run is what is tested: no training inside
    old, new = _runs(uri)
    assert again.run_id == new.info.run_id != old.info.run_id
    assert old.info.status == "KILLED" and new.info.status == "RUNNING"


def test_register_logs_into_the_open_run_backfills_missing_curves_and_finishes_it(workdir: Path):
    from mlflow import MlflowClient

    from components.registry.tracking import candidate_run, log_history, read_state
    from pipelines.stages.tracking import training_run

    params = _params(workdir)
    uri = params.register_.tracking_uri
    with training_run("train_diffusion", params, "diffusion") as diff:
        diff({"step": 5, "images": 320, "loss": 0.8, "lr": 1e-4})
    assert candidate_run("register", tracking_uri=uri, experiment="latentflow") == diff.run_id
    assert candidate_run("register", tracking_uri="sqlite:///elsewhere.db", experiment="latentflow") is None
    assert candidate_run("register", tracking_uri=uri, experiment="other") is None
    assert candidate_run("train_autoencoder", tracking_uri=uri, experiment="latentflow") is None  # upstream re-run: new run
    client = MlflowClient(uri)
    # what register does with the loss histories: only the steps the run lacks
    ae_history = [{"step": s, "images": 64 * s, "loss": 1.0 / s, "lr": 1e-3} for s in (1, 5, 10)]
    diff_history = [{"step": s, "images": 64 * s, "loss": 0.8, "lr": 1e-4} for s in (1, 5)]
    assert log_history(client, diff.run_id, "autoencoder", ae_history) == 3
    assert log_history(client, diff.run_id, "diffusion", diff_history) == 1  # step 5 was logged live
    assert log_history(client, diff.run_id, "autoencoder", ae_history) == 0  # idempotent
    assert sorted(m.step for m in client.get_metric_history(diff.run_id, "diffusion/loss")) == [1, 5]
    assert [m.value for m in sorted(client.get_metric_history(diff.run_id, "autoencoder/loss"), key=lambda m: m.step)] == [1.0, 0.2, 0.1]
    assert read_state()["stages"] == ["train_diffusion"]


def test_a_failed_stage_marks_the_run_failed_and_leaves_its_outputs(workdir: Path):
    import typer

    from pipelines.cli import _run_stage
    from pipelines.stages.tracking import training_run

    params = _params(workdir)
    with training_run("train_autoencoder", params, "autoencoder") as ae:
        ae({"step": 1, "images": 64, "loss": 0.5})
    (workdir / "metrics.json").write_text('{"class_consistency": 0.9}')  # a previous good output of the failing stage

    def evaluate(_params):
        raise ValueError("reference stats were made from another dataset")

    with pytest.raises(typer.Exit) as exit_info:
        _run_stage("evaluate", evaluate, workdir / "params.yaml")
    assert exit_info.value.exit_code == 1
    (run,) = _runs(params.register_.tracking_uri)
    assert run.info.run_id == ae.run_id and run.info.status == "FAILED"
    assert run.data.tags["failed_stage_error"] == "evaluate: ValueError: reference stats were made from another dataset"
    assert run.data.metrics["autoencoder/loss"] == 0.5  # the failed execution keeps its curves
    assert not (workdir / ".latentflow/mlflow_run.json").exists()  # the next execution opens a new run
    assert (workdir / "metrics.json").read_text() == '{"class_consistency": 0.9}'


def test_training_goes_on_without_a_tracking_server(workdir: Path, caplog):
    from pipelines.stages.tracking import training_run

    params = _params(workdir)
    p = yaml.safe_load((workdir / "params.yaml").read_text())
    p["register"].update(tracking_uri="http://127.0.0.1:9", http_max_retries=0, http_timeout_s=2)  # nothing listens on port 9
    (workdir / "params.yaml").write_text(yaml.safe_dump(p))
    from components.config import load_params

    params = load_params(workdir / "params.yaml")
    with training_run("train_diffusion", params, "diffusion") as logger:
        assert logger is None
    assert "no MLflow run" in caplog.text and "training goes on" in caplog.text


def test_step_logger_stops_after_a_failure_without_raising(workdir: Path):
    from mlflow import MlflowClient

    from components.registry.tracking import StepLogger

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    exp = client.create_experiment("x")
    run_id = client.create_run(exp).info.run_id
    logger = StepLogger(client, run_id, "diffusion")
    logger({"step": 1, "loss": 1.0})
    client.delete_run(run_id)  # the run goes away mid-training
    logger({"step": 2, "loss": 0.5})
    logger({"step": 3, "loss": 0.4})
    assert logger.logged == 1 and logger.failed


# ------------------------------------------------------------------------------------ training loop hook


def test_on_log_sees_every_history_point_and_does_not_change_the_weights(workdir: Path):
    """The same tiny training with and without an MLflow step logger ends with bit-identical weights, and the logger
    receives each history point (plus images/s) exactly as the history records it."""
    from mlflow import MlflowClient

    from components.registry.tracking import StepLogger
    from components.training.distributed import DistContext
    from components.training.loop import LoopConfig, Trainer

    data = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    target = data @ torch.randn(4, 2, generator=torch.Generator().manual_seed(1))

    def train(on_log):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        cfg = LoopConfig(batch_size=8, max_images=160, lr=1e-2, warmup_images=16, log_every=3)
        trainer = Trainer(model, cfg, dataset_size=64, seed=3, ctx=DistContext(device=torch.device("cpu")), progress=False, on_log=on_log)

        def loss_fn(net, batch):
            noise = batch.draw(torch.randn, (2,), batch.generator(torch.device("cpu")))
            return torch.nn.functional.mse_loss(net(data[batch.indices]), target[batch.indices] + 0.01 * noise), {}

        return trainer.run(loss_fn), model

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    seen = []
    logger = StepLogger(client, run_id, "toy")
    plain, m1 = train(None)
    logged, m2 = train(lambda e: (seen.append(e), logger(e)))
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert plain.history == logged.history and [e["step"] for e in plain.history] == [1, 3, 6, 9, 12, 15, 18, 20]
    assert [{k: v for k, v in e.items() if k != "images_per_s"} for e in seen] == logged.history
    assert all(e["images_per_s"] > 0 for e in seen)
    assert [h["lr"] for h in plain.history][:2] == pytest.approx([1e-2 / 2, 1e-2])  # warmup: 2 steps of 8 images
    history = sorted(client.get_metric_history(run_id, "toy/loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(e["step"], pytest.approx(e["loss"])) for e in plain.history]


# -------------------------------------------------------------------------------------------- tracking URI


def test_a_relative_sqlite_store_is_anchored_at_dvc_root(workdir: Path, monkeypatch):
    """`dvc exp run --queue` runs stages in a temporary copy; DVC_ROOT names the workspace, whose store they use."""
    from components.registry.lineage import default_artifact_location, resolve_tracking_uri

    assert resolve_tracking_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"  # outside DVC: as given
    monkeypatch.setenv("DVC_ROOT", "/work/project")
    assert resolve_tracking_uri("sqlite:///mlflow.db") == "sqlite:////work/project/mlflow.db"
    assert resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert resolve_tracking_uri("sqlite:///mlflow.db") == "http://127.0.0.1:5001"  # the environment still wins
    assert default_artifact_location("sqlite:////work/project/mlflow.db", "latentflow") == "/work/project/mlruns/latentflow"
    assert default_artifact_location("http://127.0.0.1:5001", "latentflow") is None


# ------------------------------------------------------------------------------------------------ dvc plots


def test_quality_table_has_one_column_per_sampler_as_dvc_yaml_plots_them():
    from components.diffusion.options import SAMPLERS
    from components.evaluation.protocol import quality_by_steps

    rows = [{"sampler": s, "steps": n, "class_consistency": c, "fd_classifier": f}
            for s, n, c, f in [("ddim", 10, 0.5, 9.0), ("ddim", 25, 0.7, 5.0), ("dpmpp_2m", 10, 0.6, 8.0), ("dpmpp_2m", 25, 0.8, 4.0)]]
    table = quality_by_steps(rows)
    others = {s: None for s in SAMPLERS if s not in ("ddim", "dpmpp_2m")} | {f"fd_{s}": None for s in SAMPLERS if s not in ("ddim", "dpmpp_2m")}
    assert table == [{"steps": 10, "ddim": 0.5, "dpmpp_2m": 0.6, "fd_ddim": 9.0, "fd_dpmpp_2m": 8.0, **others},
                     {"steps": 25, "ddim": 0.7, "dpmpp_2m": 0.8, "fd_ddim": 5.0, "fd_dpmpp_2m": 4.0, **others}]
    assert list(table[0]) == ["steps", *SAMPLERS, *(f"fd_{s}" for s in SAMPLERS)]  # one column per sampler, in order
    with pytest.raises(ValueError, match="euler"):
        quality_by_steps([{**rows[0], "sampler": "euler"}])
    # dvc.yaml names these columns: a sampler added to SAMPLERS must be added to the plots (DVC fails on a missing field)
    plots = {next(iter(p)): next(iter(p.values())) for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]}
    assert plots["class_consistency_vs_steps"]["y"] == {"metrics/quality_vs_steps.json": list(SAMPLERS)}
    assert plots["fd_vs_steps"]["y"] == {"metrics/quality_vs_steps.json": [f"fd_{s}" for s in SAMPLERS]}


def test_metrics_and_plot_files_are_in_git_not_ignored():
    """`dvc exp show` reads a commit's metrics from git: the metric and plot files must not be git-ignored."""
    import subprocess

    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    files = [*dvc_yaml["metrics"], *(path for p in dvc_yaml["plots"] for spec in p.values() for path in spec["y"])]
    assert "metrics.json" in files and "metrics/diffusion_loss.json" in files
    ignored = subprocess.run(["git", "check-ignore", *files], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert ignored == []


# ------------------------------------------------------------------------------------------ presets as experiments


def test_preset_overrides_turn_params_into_the_preset_as_dvc_applies_them(tmp_path: Path):
    """`latentflow exp-preset cifar10` runs `dvc exp run -S ...`: DVC's own override code (Hydra grammar) applied to the
    project's params.yaml must give exactly the merged preset, and the result must validate."""
    from dvc.utils.hydra import apply_overrides

    from components.config import load_params, load_yaml
    from pipelines.presets import list_presets, preset_overrides, preset_params

    assert "cifar10" in list_presets()
    for name in list_presets():
        target = tmp_path / f"{name}.yaml"
        target.write_text((ROOT / "params.yaml").read_text())
        apply_overrides(target, preset_overrides(name))
        assert load_yaml(target.read_text()) == preset_params(name), name  # read as load_params reads it
        load_params(target)
    # DVC writes 3e-5 as `3e-05`, which PyYAML's YAML 1.1 rules read as a string; params are read as YAML 1.2 floats
    target = tmp_path / "shapes64.yaml"
    assert "kl_weight: 3e-05" in target.read_text() and yaml.safe_load(target.read_text())["train_autoencoder"]["kl_weight"] == "3e-05"
    assert load_yaml(target.read_text())["train_autoencoder"]["kl_weight"] == 3e-05
    assert load_yaml("a: 3e-05\nb: -1E+3\nc: '3e-05'\nd: 1.0e-5\ne: 12\nf: 1e\ng: e5\nh: 0.5") == {
        "a": 3e-05, "b": -1000.0, "c": "3e-05", "d": 1e-05, "e": 12, "f": "1e", "g": "e5", "h": 0.5}
    overrides = preset_overrides("cifar10")
    assert "ingest.channels=3" in overrides and "train_autoencoder.channels=[16,32,64]" in overrides
    root = next(o for o in overrides if o.startswith("ingest.root="))
    assert Path(root.split("=", 1)[1].strip("'")).is_absolute()  # a queued experiment runs in a temporary copy


def test_exp_preset_prints_the_dvc_command(tmp_path: Path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    res = CliRunner().invoke(app, ["exp-preset", "cifar10", "--queue", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("dvc exp run -n cifar10 --queue -S base.num_threads=1 -S ")
    res = CliRunner().invoke(app, ["exp-preset", "nope", "--dry-run"])
    assert res.exit_code == 2 and "unknown preset 'nope'" in res.output
