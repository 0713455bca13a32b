"""DVC experiments end to end on the tiny params: two `dvc exp run -S ...` in a fresh project, then `dvc exp show`,
`dvc plots diff` and the MLflow run of each experiment (one run per pipeline execution, with the step metrics of
both training stages)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_project, run_cli, tiny_params

# two pipeline executions (each about 3 minutes on an idle 2-core CPU; the fixture's time counts against the first test)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

# exp-a runs every stage (nothing was run on main); exp-b changes the U-Net's learning rate, so DVC re-runs
# train_diffusion and what follows but keeps the autoencoder: its run gets the autoencoder's curve from the history file
EXPERIMENTS = {"exp-a": ["sample.guidance=1.5"], "exp-b": ["train_diffusion.lr=0.0005"]}


def _ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, f"{res.args} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    params = tiny_params()
    params["base"]["num_threads"] = 1  # tiny models: one thread is as fast, and robust on a shared CPU
    proj = make_project(tmp_path_factory.mktemp("exp") / "project", params)
    for name, overrides in EXPERIMENTS.items():
        subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=proj, check=True)  # each experiment: baseline + its -S
        _ok(run_cli(["dvc", "exp", "run", "-n", name, *[a for o in overrides for a in ("-S", o)]], cwd=proj, timeout=1200))
    return proj


def _experiments(project: Path) -> dict[str, dict]:
    """name -> the experiment's `data` in `dvc exp show --json`."""
    rows = json.loads(_ok(run_cli(["dvc", "exp", "show", "--json"], cwd=project)))
    baseline = next(r for r in rows if r.get("experiments"))
    return {e["name"]: e["revs"][0]["data"] for e in baseline["experiments"]}


def test_exp_show_lists_both_experiments_with_params_and_metrics(project: Path):
    exps = _experiments(project)
    assert set(exps) == set(EXPERIMENTS)
    params = {name: d["params"]["params.yaml"]["data"] for name, d in exps.items()}
    default_lr = tiny_params()["train_diffusion"]["lr"]  # params.yaml's: exp-a leaves it alone
    assert default_lr != 5e-4
    assert params["exp-a"]["sample"]["guidance"] == 1.5 and params["exp-a"]["train_diffusion"]["lr"] == default_lr
    assert params["exp-b"]["sample"]["guidance"] == 3.0 and params["exp-b"]["train_diffusion"]["lr"] == 5e-4
    for name, data in exps.items():
        metrics = {path: m.get("data") for path, m in data["metrics"].items()}
        assert all(m is not None for m in metrics.values()), (name, data["metrics"])  # no `!` in the table
        assert 0.0 <= metrics["metrics.json"]["class_consistency"] <= 1.0
        assert metrics["metrics.json"]["protocol"]["sampler"]["guidance"] == params[name]["sample"]["guidance"]
        assert metrics["metrics/diffusion.json"]["images_seen"] == 2560
        assert metrics["metrics/autoencoder.json"]["val_psnr"] > 16
    # the autoencoder was not retrained for exp-b (same params, same data): same numbers; the U-Net was
    mets = {name: {p: m["data"] for p, m in d["metrics"].items()} for name, d in exps.items()}
    assert mets["exp-a"]["metrics/autoencoder.json"]["val_psnr"] == mets["exp-b"]["metrics/autoencoder.json"]["val_psnr"]
    assert mets["exp-a"]["metrics/diffusion.json"]["final_loss"] != mets["exp-b"]["metrics/diffusion.json"]["final_loss"]


def test_plots_diff_overlays_the_experiments_with_one_series_per_sampler(project: Path):
    out = json.loads(_ok(run_cli(["dvc", "plots", "diff", "exp-a", "exp-b", "--json"], cwd=project)))
    assert not out.get("errors"), out.get("errors")
    (quality,) = out["data"]["class_consistency_vs_steps"]
    points = quality["content"]["data"]["values"]
    series = {(p["rev"], p["field"]) for p in points if p["dvc_inferred_y_value"] is not None}
    # the tiny grid runs ddim and dpmpp_2m at 3 steps: one series per sampler and experiment; ddpm is not in the grid
    assert series == {(rev, s) for rev in ("exp-a", "exp-b") for s in ("ddim", "dpmpp_2m")}
    (loss,) = out["data"]["diffusion_loss"]
    revs = {p["rev"] for p in loss["content"]["data"]["values"]}
    assert revs == {"exp-a", "exp-b"}


def test_each_experiment_has_one_mlflow_run_with_the_step_metrics_of_both_training_stages(project: Path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    exp_id = client.get_experiment_by_name("latentflow").experiment_id
    runs = client.search_runs([exp_id])
    assert len(runs) == 2, [(r.info.run_name, r.info.status, r.data.tags.get("dvc_exp_name")) for r in runs]  # one per execution
    baseline = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True).stdout.strip()
    versions = {v.run_id: v for v in client.search_model_versions("name = 'latentflow'")}
    exps = _experiments(project)
    curves = {}
    for name in EXPERIMENTS:
        (run,) = [r for r in runs if r.data.tags.get("dvc_exp_name") == name]
        assert run.info.status == "FINISHED" and run.info.run_name == name
        assert run.data.tags["dvc_exp_baseline_rev"] == baseline
        assert re.fullmatch(rf"{baseline}(-dirty)?", run.data.tags["git_commit"])
        assert run.info.run_id in versions, "register logged the model into the execution's run"
        assert "class_consistency" in run.data.metrics
        exp_rev = exps[name]["rev"]  # the experiment's commit: its history files are what DVC recorded
        for prefix, stage_file in (("autoencoder", "metrics/autoencoder_loss.json"), ("diffusion", "metrics/diffusion_loss.json")):
            history = json.loads(_ok(run_cli(["git", "show", f"{exp_rev}:{stage_file}"], cwd=project)))
            logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"{prefix}/loss"))
            assert [s for s, _ in logged] == [h["step"] for h in history], (name, prefix)  # every point, once
            assert [v for _, v in logged] == pytest.approx([h["loss"] for h in history], rel=1e-9)
            lr = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"{prefix}/lr"))
            assert lr == [(h["step"], pytest.approx(h["lr"], rel=1e-9)) for h in history] and all(v > 0 for _, v in lr)
            curves[(name, prefix)] = [v for _, v in logged]
    # exp-a trained both stages live (images/s is only known while training); exp-b trained only the U-Net
    run_a = next(r for r in runs if r.data.tags.get("dvc_exp_name") == "exp-a")
    run_b = next(r for r in runs if r.data.tags.get("dvc_exp_name") == "exp-b")
    assert client.get_metric_history(run_a.info.run_id, "autoencoder/images_per_s")
    assert client.get_metric_history(run_a.info.run_id, "diffusion/images_per_s")
    assert client.get_metric_history(run_b.info.run_id, "diffusion/images_per_s")
    assert not client.get_metric_history(run_b.info.run_id, "autoencoder/images_per_s")  # backfilled from the history file
    assert run_a.data.tags["latentflow.opened_by"] == "train_autoencoder" and run_b.data.tags["latentflow.opened_by"] == "train_diffusion"
    assert curves[("exp-a", "autoencoder")] == curves[("exp-b", "autoencoder")]
    assert curves[("exp-a", "diffusion")] != curves[("exp-b", "diffusion")]
    assert not (project / ".latentflow" / "mlflow_run.json").exists(), "register finished the execution's run"
