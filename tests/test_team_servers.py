"""The team setup against real servers on 127.0.0.1 (started and stopped by this module).

S3 (moto's server mode), an ``mlflow server`` (SQLite backend, proxied S3 artifacts) and
``prefect server start`` run for the whole module; a ``prefect worker`` on a process pool runs the
retraining deployment, which sends the training stages to a second deployment (``run_deployment``)
working in a separate clone of the project: the two exchange artifacts through the DVC remote on S3.
The MLflow outage test stops the shared MLflow server and restarts it (same store; same port unless it
was taken meanwhile); the S3 outage test stops an S3 server of its own, behind an MLflow server of its
own, so the shared servers are up for whatever runs after either. Nothing is written into the repository.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import infra.local_servers
from infra.local_servers import DVC_BUCKET, MLFLOW_BUCKET, S3_CREDENTIALS, TeamServers, base_env, http_ok
from tests.conftest import ROOT, make_project, tiny_params, write_digit_folder

# an integration test; the timeout includes the session fixtures (servers, retraining run) for the first test that uses them
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
MODEL = "latentflow"


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess, servers: TeamServers | None = None) -> str:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n" + (
        servers.logs_tail() if servers else "")
    return proc.stdout


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    team = TeamServers(tmp_path_factory.mktemp("servers"))
    try:
        yield team.start()
    finally:
        team.stop()


def team_params(servers: TeamServers) -> dict:
    """The tiny params at half the training images, one feature extractor, one quality-grid point; registering to the server."""
    p = tiny_params()
    p["train_autoencoder"].update(max_images=640, warmup_images=100)
    p["train_diffusion"].update(max_images=1280, warmup_images=200)
    p["evaluate"].update(extractors=["classifier"], quality_grid={"samplers": ["ddim"], "steps": [3], "num_per_class": 2})
    # the MLflow server comes from the environment (client_env: MLFLOW_TRACKING_URI, as the compose worker sets it);
    # params keep the local default, which must not be used
    p["register"].update(http_max_retries=2, http_backoff_factor=1, http_timeout_s=20)
    assert p["register"]["tracking_uri"].startswith("sqlite:")
    return p


@pytest.fixture(scope="session")
def client_env(servers) -> dict[str, str]:
    """A team member's shell (and the worker's): Prefect API, MLflow server, S3 credentials for DVC, no MLflow S3 settings."""
    return {**servers.prefect_env(), **S3_CREDENTIALS, "MLFLOW_TRACKING_URI": servers.mlflow_uri}


@pytest.fixture(scope="session")
def project(servers, client_env, tmp_path_factory) -> Path:
    """A committed project whose default DVC remote is s3://lf-dvc/store on the S3 server, plus prefect.yaml; its data is
    a user's image folder (14 digits per class) put under DVC by `latentflow add-data` (data v1)."""
    proj = tmp_path_factory.mktemp("team") / "project"
    make_project(proj, team_params(servers))
    digits = write_digit_folder(tmp_path_factory.mktemp("user-images") / "digits", per_class=14)
    ok(run(["latentflow", "add-data", str(digits)], proj, client_env))
    shutil.copy(ROOT / "prefect.yaml", proj / "prefect.yaml")
    ok(run(["dvc", "remote", "add", "-d", "storage", f"s3://{DVC_BUCKET}/store"], proj, client_env))
    ok(run(["dvc", "remote", "modify", "storage", "endpointurl", servers.s3_endpoint], proj, client_env))
    assert "AWS" not in (proj / ".dvc/config").read_text() and "secret" not in (proj / ".dvc/config").read_text()
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    ok(run([*git, "add", "-A"], proj, client_env))
    ok(run([*git, "commit", "-q", "-m", "team setup"], proj, client_env))
    return proj


@pytest.fixture(scope="session")
def retrained(servers, client_env, project, tmp_path_factory) -> dict:
    """Deploy from prefect.yaml onto a process pool, trigger the retraining deployment, let a worker run it."""
    gpu_clone = tmp_path_factory.mktemp("gpu-node") / "project"  # the "other machine" of the training stage
    ok(run(["git", "clone", "-q", str(project), str(gpu_clone)], project.parent, client_env))
    ok(run(["prefect", "work-pool", "create", "cpu", "--type", "process"], project, client_env), servers)
    ok(run(["prefect", "--no-prompt", "deploy", "--name", "retrain-cpu", "--name", "train-cpu"], project, client_env), servers)
    servers.start_worker("cpu", client_env, cwd=project)
    parameters = {"train_deployment": "latentflow-stages/train-cpu", "train_project_dir": str(gpu_clone)}
    flow_run = trigger_retrain(servers, client_env, project, parameters)
    # what run 1 left, recorded now: test_retraining_sees_new_images... retrains on new data in this same project later,
    # and the tests about run 1 must not depend on whether it ran before them (pytest-randomly)
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    run1 = {
        "clone_has_metrics": (gpu_clone / "metrics.json").exists(),
        "registry": json.loads((project / "reports/registry.json").read_text()),
        "dataset_digest": json.loads((project / "data/dataset/manifest.json").read_text())["dataset_digest"],
        "diffusion_md5": next(o["md5"] for o in lock["train_diffusion"]["outs"] if o["path"] == "models/diffusion"),
    }
    return {"flow_run": flow_run, "gpu_clone": gpu_clone, "parameters": parameters, "run1": run1}


TRIGGER = (
    "import json, sys\n"
    "from prefect.deployments import run_deployment\n"
    "fr = run_deployment('latentflow-retrain/retrain-cpu', parameters=json.loads(sys.argv[1]), timeout=480, poll_interval=1)\n"
    "print(json.dumps({'id': str(fr.id), 'type': fr.state.type.value if fr.state else None, 'name': fr.state.name if fr.state else None}))\n"
)


def trigger_retrain(servers: TeamServers, client_env: dict[str, str], project: Path, parameters: dict) -> dict:
    """A manual run of the scheduled deployment (what the cron schedule creates), waited for; fails with its logs."""
    out = ok(run([sys.executable, "-c", TRIGGER, json.dumps(parameters)], project, client_env, timeout=540), servers)
    return _completed(json.loads(out.strip().splitlines()[-1]), servers, client_env, project)


def _completed(result: dict, servers: TeamServers, client_env: dict[str, str], project: Path) -> dict:
    if result["type"] != "COMPLETED":
        logs = run(["prefect", "flow-run", "logs", result["id"]], project, client_env).stdout
        pytest.fail(f"retraining flow run ended {result}:\n{logs[-6000:]}\n{servers.logs_tail()}")
    return result


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cached_files(project: Path) -> dict[str, str]:
    """md5 of every file under the DVC-cached outputs recorded in dvc.lock."""
    from pipelines.remote import uncached_outputs

    uncached = set(uncached_outputs(project))
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    outs = {o["path"] for entry in lock.values() for o in entry.get("outs", []) if o["path"] not in uncached}
    files = {}
    for out in sorted(outs):
        path = project / out
        for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            files[f.relative_to(project).as_posix()] = md5(f)
    return files


# ------------------------------------------------------------------------------------------------ deployment


def test_retraining_deployment_runs_on_the_process_pool(servers, client_env, project, retrained):
    inspect = ok(run(["prefect", "deployment", "inspect", "latentflow-retrain/retrain-cpu"], project, client_env))
    assert "0 3 * * 1" in inspect and "'work_pool_name': 'cpu'" in inspect
    pool = ok(run(["prefect", "work-pool", "inspect", "cpu"], project, client_env))
    assert "type='process'" in pool or "'type': 'process'" in pool, pool
    # the training stages ran in the other clone (its own flow run), the rest here; both ends hold the same weights
    clone = retrained["gpu_clone"]
    for part in ("autoencoder", "diffusion"):
        assert md5(clone / "models" / part / "model.safetensors") == md5(project / "models" / part / "model.safetensors")
    assert not retrained["run1"]["clone_has_metrics"], "evaluation must run on the CPU side, not on the training node"
    code = (
        "import asyncio, json\n"
        "from prefect.client.orchestration import get_client\n"
        "async def main():\n"
        "    async with get_client() as c:\n"
        "        flows = {f.id: f.name for f in await c.read_flows()}\n"
        "        print(json.dumps(sorted({(flows[r.flow_id], r.state_type.value) for r in await c.read_flow_runs()})))\n"
        "asyncio.run(main())\n"
    )
    runs = json.loads(ok(run([sys.executable, "-c", code], project, client_env)).strip().splitlines()[-1])
    assert ["latentflow-retrain", "COMPLETED"] in runs and ["latentflow-stages", "COMPLETED"] in runs, runs
    registry = retrained["run1"]["registry"]  # the first registration of the model becomes champion
    assert registry["alias"] == "champion" and registry["tracking_uri"] == servers.mlflow_uri
    status = ok(run(["dvc", "status"], project, client_env))
    assert "up to date" in status.lower(), status


def test_registered_model_lands_in_s3_with_lineage(servers, project, retrained, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(servers.mlflow_uri)
    run1 = retrained["run1"]  # the version run 1 registered (a later test may register version 2 on new data)
    version = client.get_model_version(MODEL, str(run1["registry"]["version"]))
    assert version.source.startswith("mlflow-artifacts:"), version.source  # proxied: clients need no S3 credentials
    keys = servers.s3_objects(MLFLOW_BUCKET)
    run_id = version.run_id
    assert any(k.endswith("/MLmodel") for k in keys)
    assert any(k.endswith("diffusion/model.safetensors") for k in keys) and any(k.endswith("autoencoder/model.safetensors") for k in keys)
    assert any(run_id in k and k.endswith("samples_grid.png") for k in keys)
    assert any(run_id in k and k.endswith("quality_vs_steps.png") for k in keys)
    assert any(k.endswith("pyfunc_model.py") for k in keys) and not any(k.endswith(".pkl") for k in keys), "models from code: nothing pickled"
    expected_md5 = run1["diffusion_md5"]
    run = client.get_run(run_id)
    for tags in (version.tags, run.data.tags):
        assert tags["dataset_digest"] == run1["dataset_digest"]
        assert len(tags["git_commit"].removesuffix("-dirty")) == 40
    # the DVC hashes of the outputs travel in the run's lineage.json (through the proxy: no S3 credentials here)
    import mlflow

    lineage = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="lineage.json", tracking_uri=servers.mlflow_uri,
                                                                  dst_path=str(tmp_path))).read_text())
    assert lineage["dvc_lock_outs"]["dvc.train_diffusion.models/diffusion"] == expected_md5
    assert lineage["dataset_digest"] == run1["dataset_digest"]
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == run1["dataset_digest"][:36] and run1["dataset_digest"] in dataset_input.dataset.profile
    assert run.data.params["sample.steps"] == "10" and "class_consistency" in run.data.metrics


def test_dvc_pull_into_an_empty_cache_restores_every_output(servers, client_env, project, retrained, tmp_path):
    assert servers.s3_objects(DVC_BUCKET), "dvc push left nothing on the remote"
    fresh = tmp_path / "fresh"
    ok(run(["git", "clone", "-q", str(project), str(fresh)], tmp_path, client_env))
    shutil.copy(project / "dvc.lock", fresh / "dvc.lock")  # dvc.lock is committed in a real repo
    assert not (fresh / ".dvc/cache").exists()
    ok(run(["dvc", "pull"], fresh, client_env, timeout=300))
    expected = cached_files(project)
    assert {"models/diffusion/model.safetensors", "models/autoencoder/model.safetensors", "data/dataset/manifest.json"} <= set(expected)
    assert cached_files(fresh) == expected


def test_gpu_pool_and_training_deployment_on_the_server(servers, client_env, project, retrained):
    """The Kubernetes pool's base job template is accepted by the server and train-gpu deploys onto it with gpu=1."""
    template = ROOT / "infra/k8s/gpu-work-pool-template.json"
    ok(run(["prefect", "work-pool", "create", "gpu", "--type", "kubernetes", "--base-job-template", str(template)], project, client_env), servers)
    env = {**client_env, "LATENTFLOW_GIT_URL": "https://git.example.com/team/latentflow.git", "LATENTFLOW_CUDA_IMAGE": "registry.example.com/latentflow:cuda"}
    ok(run(["prefect", "--no-prompt", "deploy", "--name", "train-gpu"], project, env), servers)
    code = (
        "import asyncio, json\n"
        "from prefect.client.orchestration import get_client\n"
        "async def main():\n"
        "    async with get_client() as c:\n"
        "        d = await c.read_deployment_by_name('latentflow-stages/train-gpu')\n"
        "        pool = await c.read_work_pool('gpu')\n"
        "        print(json.dumps({'pool': d.work_pool_name, 'vars': d.job_variables, 'pull': d.pull_steps,"
        " 'gpu': pool.base_job_template['variables']['properties']['gpu'], 'type': pool.type}))\n"
        "asyncio.run(main())\n"
    )
    info = json.loads(ok(run([sys.executable, "-c", code], project, client_env)).strip().splitlines()[-1])
    assert info["pool"] == "gpu" and info["type"] == "kubernetes" and info["gpu"]["default"] == 1
    assert info["vars"] == {"gpu": 1, "image": "registry.example.com/latentflow:cuda"}
    assert info["pull"][0]["prefect.deployments.steps.git_clone"]["repository"] == "https://git.example.com/team/latentflow.git"


# ------------------------------------------------------------------------------------------------ registry


def test_promotion_rule_against_the_server(servers, project, retrained):
    """FID-family metric (lower is better): a worse model becomes challenger, a better one champion; decision tagged."""
    from mlflow import MlflowClient

    from components.registry.mlflow_registry import register_model

    client, name = MlflowClient(servers.mlflow_uri), "latentflow-fid"
    metrics = json.loads((project / "metrics.json").read_text())
    fd = float(metrics["fd_classifier"])

    def register(value: float):
        return register_model(tracking_uri=servers.mlflow_uri, experiment="latentflow", model_name=name, model_dir=project / "models",
                              params={"note": "promotion test"}, metrics={"fd_classifier": value}, artifacts=[], primary_metric="fd_classifier",
                              greater_is_better=False, min_improvement=0.5, tags={"git_commit": "test"})

    first, worse, better = register(fd + 1.0), register(fd + 1.2), register(fd)
    assert (first.alias, worse.alias, better.alias) == ("champion", "challenger", "champion")
    assert str(client.get_model_version_by_alias(name, "champion").version) == better.version
    assert str(client.get_model_version_by_alias(name, "challenger").version) == worse.version
    worse_tags, better_tags = client.get_model_version(name, worse.version).tags, client.get_model_version(name, better.version).tags
    assert worse_tags["promotion_decision"] == "not promoted" and better_tags["promotion_decision"] == "promoted"
    assert worse_tags["compared_to_version"] == better_tags["compared_to_version"] == first.version
    assert float(better_tags["champion_value"]) == pytest.approx(fd + 1.0) and float(better_tags["metric.fd_classifier"]) == pytest.approx(fd)
    assert "lower is better" in better_tags["promotion_reason"]


def test_champion_predicts_in_a_fresh_process(servers, retrained, tmp_path):
    """models:/latentflow@champion loads with only the installed package and the tracking URI (no S3 credentials)."""
    code = (
        "import io, json, mlflow.pyfunc, numpy as np, pandas as pd\n"
        "from PIL import Image\n"
        "model = mlflow.pyfunc.load_model('models:/latentflow@champion')\n"
        "out = model.predict(pd.DataFrame({'class_label': [3, 7], 'num_images': [2, 1], 'sampler': ['ddim', 'dpmpp_2m'],"
        " 'steps': [4, 4], 'guidance': [2.0, 2.0], 'seed': [5, 6]}))\n"
        "images = [np.asarray(Image.open(io.BytesIO(b))) for b in out['image']]\n"
        "print(json.dumps({'labels': out['class_label'].tolist(), 'shapes': [list(i.shape) for i in images],"
        " 'dtypes': sorted({str(i.dtype) for i in images}), 'std': [float(i.std()) for i in images],"
        " 'hw': out[['height', 'width', 'channels']].values.tolist()}))\n"
    )
    env = {**base_env(), "MLFLOW_TRACKING_URI": servers.mlflow_uri}
    assert not any(k.startswith("AWS_") for k in env)
    result = json.loads(ok(run([sys.executable, "-c", code], tmp_path, env, timeout=240)).strip().splitlines()[-1])
    assert result["labels"] == [3, 3, 7] and result["dtypes"] == ["uint8"]
    assert result["shapes"] == [[32, 32]] * 3 and result["hw"] == [[32, 32, 1]] * 3
    assert all(s > 1.0 for s in result["std"]), "blank images"
    # the CLI samples from the registry too
    res = run(["latentflow", "sample", "--model", f"models:/{MODEL}@champion", "--num-per-class", "1", "--steps", "3", "--out", "out"],
              tmp_path, env, timeout=240)
    ok(res)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [f"{c}/0.png" for c in range(10)]


def test_mlflow_ui_shows_the_champion(servers, retrained, tmp_path):
    """Headless Chromium renders the registered model page: title, the version row's `@ champion` chip, a real screenshot."""
    from mlflow import MlflowClient

    from components.registry.browser import check_model_page, check_version_page

    check = check_model_page(servers.mlflow_uri, MODEL, tmp_path / "mlflow_ui_champion.png")
    assert check.title == f"Model: {MODEL} - MLflow"
    # the page shows exactly the aliases the registry holds: `champion`, plus `challenger` when a test that registers a
    # second version (the retraining test) ran first -- the suite runs in any order
    registry_aliases = sorted(MlflowClient(servers.mlflow_uri).get_registered_model(MODEL).aliases)
    assert "champion" in check.aliases and sorted(check.aliases) == registry_aliases
    assert "class-conditional latent diffusion" in check.dom.read_text()  # the registered model's description
    image = np.asarray(Image.open(io.BytesIO(check.screenshot.read_bytes())).convert("L"), dtype=np.float64)
    assert image.shape[0] >= 600 and image.shape[1] >= 1000
    assert image.std() > 20, "blank screenshot"
    # the champion version's own page: what it generates, from which data, and why it is champion
    version = MlflowClient(servers.mlflow_uri).get_model_version_by_alias(MODEL, "champion")
    page = check_version_page(servers.mlflow_uri, MODEL, version.version, tmp_path / "mlflow_ui_champion_version.png")
    dom = page.dom.read_text()
    assert "Class-conditional latent diffusion generator: 10 classes" in dom and version.tags["dataset_digest"][:12] in dom
    assert "Promotion: champion" in dom
    shot = np.asarray(Image.open(page.screenshot).convert("L"), dtype=np.float64)
    assert shot.std() > 20, "blank version-page screenshot"
    # the screenshot stays in tmp_path: the tracked reports/mlflow_ui_champion.png comes from `make ui-check`


# ------------------------------------------------------------------------------------------------ the retraining loop

ARTIFACTS = (
    "import asyncio, json, sys\n"
    "from prefect.client.orchestration import get_client\n"
    "from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey\n"
    "async def main():\n"
    "    async with get_client() as c:\n"
    "        arts = await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=['latentflow-retrain'])))\n"
    "        out = {}\n"
    "        for a in arts:\n"
    "            fr = await c.read_flow_run(a.flow_run_id)\n"
    "            out[str(a.flow_run_id)] = {'data': a.data, 'start': fr.start_time.timestamp(), 'end': fr.end_time.timestamp()}\n"
    "        print(json.dumps(out))\n"
    "asyncio.run(main())\n"
)


def _summaries(project: Path, client_env: dict[str, str]) -> dict[str, dict]:
    return json.loads(ok(run([sys.executable, "-c", ARTIFACTS], project, client_env)).strip().splitlines()[-1])


def test_retraining_sees_new_images_and_does_nothing_when_nothing_changed(servers, client_env, project, retrained, tmp_path):
    """Run 1 (the fixture) on data v1 made version 1 champion. New images land in the DVC-tracked folder: run 2 re-runs
    from ingest and registers version 2 under the promotion rule. Run 3, nothing changed, twice at once: no new version,
    the runs do not overlap (deployment concurrency limit 1) and each says "nothing changed"."""
    from mlflow import MlflowClient

    client = MlflowClient(servers.mlflow_uri)
    assert _versions(servers.mlflow_uri) == ["1"] and client.get_model_version_by_alias(MODEL, "champion").version == "1"
    run1 = _summaries(project, client_env)[retrained["flow_run"]["id"]]["data"]
    assert "Re-ran" in run1 and "`ingest`" in run1 and "v1" in run1 and "**champion**" in run1, run1
    digest_v1 = json.loads((project / "data/dataset/manifest.json").read_text())["dataset_digest"]

    # data v2: four more digits per class, recorded in the .dvc file and pushed, as a user would
    write_digit_folder(project / "data/raw/digits", per_class=4, start=14)
    ok(run(["latentflow", "add-data", "data/raw/digits"], project, client_env))
    ok(run(["dvc", "push"], project, client_env, timeout=300))
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    ok(run([*git, "commit", "-q", "-am", "data v2: 40 new digits"], project, client_env))
    assert "data/raw/digits" in ok(run(["dvc", "status", "ingest"], project, client_env))

    run2 = trigger_retrain(servers, client_env, project, retrained["parameters"])
    manifest = json.loads((project / "data/dataset/manifest.json").read_text())
    assert manifest["dataset_digest"] != digest_v1 and manifest["counts"] == {"train": 160, "val": 20}  # 18 per class, 2 held out
    assert _versions(servers.mlflow_uri) == ["1", "2"]
    v2 = client.get_model_version(MODEL, "2")
    assert v2.tags["dataset_digest"] == manifest["dataset_digest"] and v2.tags["compared_to_version"] == "1"
    promoted = v2.tags["promotion_decision"] == "promoted"
    assert client.get_model_version_by_alias(MODEL, "champion").version == ("2" if promoted else "1")
    if not promoted:
        assert client.get_model_version_by_alias(MODEL, "challenger").version == "2"
    summary2 = _summaries(project, client_env)[run2["id"]]["data"]
    assert "data/raw/digits" in summary2 and "Re-ran: `ingest`, `validate`, `train_autoencoder`" in summary2, summary2
    assert f"v2]({servers.mlflow_uri}/#/models/{MODEL}/versions/2)" in summary2 and v2.run_id in summary2

    # run 3: nothing changed; a scheduled and a manual run at once wait for each other
    lock_before = (project / "dvc.lock").read_text()
    procs = [subprocess.Popen([sys.executable, "-c", TRIGGER, json.dumps(retrained["parameters"])], cwd=project, env=client_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=540)
        assert proc.returncode == 0, err[-3000:]
        results.append(_completed(json.loads(out.strip().splitlines()[-1]), servers, client_env, project))
    assert _versions(servers.mlflow_uri) == ["1", "2"], "nothing changed, yet a version was registered"
    assert (project / "dvc.lock").read_text() == lock_before
    summaries = _summaries(project, client_env)
    a, b = (summaries[r["id"]] for r in results)
    for s in (a, b):
        assert s["data"].startswith("# latentflow retraining: nothing changed") and f"{MODEL} v2" in s["data"], s["data"]
    first, second = sorted((a, b), key=lambda s: s["start"])
    assert first["end"] <= second["start"], "the two retraining runs overlapped (deployment concurrency limit 1)"
    code = (
        "import asyncio, json\n"
        "from prefect.client.orchestration import get_client\n"
        "async def main():\n"
        "    async with get_client() as c:\n"
        "        d = await c.read_deployment_by_name('latentflow-retrain/retrain-cpu')\n"
        "        print(json.dumps({'limit': d.global_concurrency_limit.limit if d.global_concurrency_limit else None,\n"
        "                          'strategy': str(getattr(d.concurrency_options, 'collision_strategy', None))}))\n"
        "asyncio.run(main())\n"
    )
    limit = json.loads(ok(run([sys.executable, "-c", code], project, client_env)).strip().splitlines()[-1])
    assert limit["limit"] == 1 and "ENQUEUE" in limit["strategy"], limit


# ------------------------------------------------------------------------------------------------ outages


def _versions(uri: str) -> list[str]:
    from mlflow import MlflowClient

    return sorted(str(v.version) for v in MlflowClient(uri).search_model_versions(f"name='{MODEL}'"))


def test_mlflow_outage_fails_clearly_and_registers_nothing(servers, project, retrained):
    uri = servers.mlflow_uri
    before = _versions(uri)
    servers.procs["mlflow"].stop()
    try:
        res = run(["latentflow", "register"], project, {**base_env(), "MLFLOW_TRACKING_URI": uri}, timeout=240)
    finally:
        servers.restart_mlflow()  # same SQLite store; same port unless another process took it meanwhile
    assert res.returncode == 1, res.stderr[-3000:]
    assert "MLflow registration failed while trying to" in res.stderr and uri in res.stderr
    assert "2 HTTP retries" in res.stderr and "No model version was registered" in res.stderr
    assert _versions(servers.mlflow_uri) == before


def test_s3_outage_fails_clearly_and_leaves_no_half_registered_version(servers, project, retrained, tmp_path):
    """An S3 server and an MLflow server of this test's own: the S3 server goes down, the shared ones stay up."""
    from mlflow import MlflowClient

    outage = TeamServers(tmp_path / "servers")
    try:
        outage.start_s3()
        outage.start_mlflow()
        outage.procs["s3"].stop()
        res = run(["latentflow", "register"], project, {**base_env(), "MLFLOW_TRACKING_URI": outage.mlflow_uri}, timeout=300)
        assert res.returncode == 1, res.stderr[-3000:]
        assert "MLflow registration failed while trying to upload" in res.stderr, res.stderr[-3000:]
        assert "No model version was registered" in res.stderr
        assert _versions(outage.mlflow_uri) == []
        client = MlflowClient(outage.mlflow_uri)
        (latest,) = client.search_runs([client.get_experiment_by_name("latentflow").experiment_id], order_by=["attributes.start_time DESC"],
                                       max_results=1)
        assert latest.info.status == "FAILED"
    finally:
        outage.stop()
    assert http_ok(f"{servers.s3_endpoint}/moto-api/") and http_ok(f"{servers.mlflow_uri}/health"), "the shared servers went down"


PUSH_ONLY = (
    "import sys\n"
    "from prefect import flow\n"
    "from pipelines.deployments import dvc_push\n"
    "flow(name='push-during-outage')(lambda project: dvc_push(project))(sys.argv[1])\n"
)


def _tree_digest(root: Path, parts: tuple[str, ...]) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for part in parts for p in sorted((root / part).rglob("*") if (root / part).is_dir() else [root / part]) if p.is_file()}


def test_s3_down_during_dvc_push_retries_a_bounded_number_of_times_and_keeps_local_outputs(servers, client_env, project, retrained):
    """The retraining flow's push task against a DVC remote whose S3 endpoint is down (nothing listens on its port):
    3 Prefect retries with backoff, then the flow fails with DVC's own message naming the remote; the workspace and
    the local cache are untouched (the next run pushes them)."""
    outputs = ("data/dataset", "models", "samples", "reference_stats", "metrics.json", "dvc.lock")
    before, status_before = _tree_digest(project, outputs), ok(run(["dvc", "status"], project, client_env))
    dead = f"http://127.0.0.1:{infra.local_servers.free_port()}"
    ok(run(["dvc", "remote", "modify", "--local", "storage", "endpointurl", dead], project, client_env))
    try:
        res = run([sys.executable, "-c", PUSH_ONLY, str(project)], project, client_env, timeout=600)
    finally:
        (project / ".dvc/config.local").unlink()
    log = res.stdout + res.stderr
    assert res.returncode != 0, log[-3000:]
    assert "`dvc push` failed in" in log and f'Could not connect to the endpoint URL: "{dead}/' in log, log[-3000:]
    assert "The DVC remote's S3 endpoint is unreachable" in log
    assert "Retry 3/3 will start" in log and "Retries are exhausted" in log, log[-3000:]  # four attempts, then Failed
    assert _tree_digest(project, outputs) == before
    assert ok(run(["dvc", "status"], project, client_env)) == status_before


# ------------------------------------------------------------------------------------------------ ports


def test_a_port_taken_before_the_server_binds_it_moves_the_server_to_a_fresh_port(tmp_path, monkeypatch):
    """The race a free port leaves open: the port looked free, but another listener (here one answering every GET with
    200, so the health poll alone would pass) has it when the server starts. The start moves to a fresh port."""
    import http.server
    import threading

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    squatter = http.server.HTTPServer(("127.0.0.1", 0), Ok)
    taken = squatter.server_address[1]
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    real_free_port, handed = infra.local_servers.free_port, iter([taken])
    monkeypatch.setattr(infra.local_servers, "free_port", lambda: next(handed, None) or real_free_port())
    monkeypatch.setattr(infra.local_servers, "port_is_free", lambda port: True)  # the check raced: the port looked free
    team = TeamServers(tmp_path)
    try:
        team.start_s3()
        assert team.s3_port not in (0, taken)
        assert infra.local_servers.listener_is_ours(team.s3_port, team.procs["s3"].popen.pid)
        assert not infra.local_servers.listener_is_ours(taken, team.procs["s3"].popen.pid)
        assert team.s3_objects(MLFLOW_BUCKET) == []  # the moto server works, buckets made
    finally:
        team.stop()
        squatter.shutdown()
        squatter.server_close()
