"""Schema checks of infra/ (no Docker engine or cluster here): compose spec, Kubernetes manifests, the GPU pool template, prefect.yaml."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prefect.utilities.templating import apply_values

from tests.conftest import ROOT

INFRA = ROOT / "infra"
K8S_VERSION = "1.30.0"
TEMPLATE = json.loads((INFRA / "k8s/gpu-work-pool-template.json").read_text())


def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_spec():
    schema = json.loads((INFRA / "schemas/compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    # the validator is real: a misspelt key is rejected
    broken = compose()
    broken["services"]["mlflow"]["comand"] = ["mlflow"]
    assert list(validator.iter_errors(broken))


def test_compose_services_and_credentials():
    services = compose()["services"]
    assert set(services) == {"postgres", "minio", "minio-init", "mlflow", "prefect-server", "prefect-worker"}
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "--serve-artifacts" in mlflow_cmd and "--artifacts-destination=s3://mlflow/artifacts" in mlflow_cmd
    assert "postgresql://" in mlflow_cmd and "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "mc mb --ignore-existing local/mlflow local/dvc" in services["minio-init"]["command"][0]
    # MLflow's artifact credentials live only in the MLflow server; the worker has DVC's and no MLflow S3 endpoint
    with_mlflow_s3 = {name for name, s in services.items() if "MLFLOW_S3_ENDPOINT_URL" in s.get("environment", {})}
    assert with_mlflow_s3 == {"mlflow"}
    assert services["prefect-worker"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    # no literal secrets: every credential is an ${ENV} reference
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY", key):
                assert str(value).startswith("${"), (name, key, value)
    assert services["prefect-worker"]["stop_signal"] == "SIGKILL"
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.cuda", "mlflow.Dockerfile"):
        text = (INFRA / "docker" / dockerfile).read_text()
        assert text.startswith("#") and "\nFROM " in text
    assert "download.pytorch.org/whl/cu" in (INFRA / "docker/Dockerfile.cuda").read_text()


def test_kubernetes_worker_manifests_validate():
    docs = [d for d in yaml.safe_load_all((INFRA / "k8s/worker.yaml").read_text()) if d]
    assert {d["kind"] for d in docs} == {"Namespace", "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Deployment"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--pool") + 1] == "gpu" and args[args.index("--type") + 1] == "kubernetes"
    # the validator is real: a wrong type is rejected
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def render_job(**overrides) -> dict:
    """The GPU pool's job manifest with the template's defaults (plus ``overrides``), as Prefect's worker renders it."""
    variables = {k: v["default"] for k, v in TEMPLATE["variables"]["properties"].items() if "default" in v}
    variables.update(name="latentflow-train", command="prefect flow-run execute", env={"PREFECT_API_URL": "http://prefect:4200/api"},
                     labels={"app": "latentflow"}, **overrides)
    manifest = apply_values(TEMPLATE["job_configuration"]["job_manifest"], variables)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["args"] = container["args"].split()  # the worker splits the command the same way
    container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]
    return manifest


def test_gpu_pool_template_maps_gpu_to_nvidia_resources():
    properties = TEMPLATE["variables"]["properties"]
    assert properties["gpu"]["type"] == "integer" and properties["gpu"]["default"] == 1
    for gpus in (1, 2):
        job = render_job(gpu=gpus)
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
        resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == gpus and resources["requests"]["nvidia.com/gpu"] == gpus
    assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "latentflow-s3"}}]


def test_prefect_yaml_deployments():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"retrain-cpu", "retrain-gpu", "train-gpu", "train-cpu"}
    from prefect.flows import load_flow_from_entrypoint

    for d in deployments.values():
        flow = load_flow_from_entrypoint(d["entrypoint"])
        assert set(d.get("parameters", {})) <= set(flow.parameters.properties), d["name"]
    assert deployments["retrain-cpu"]["work_pool"]["name"] == "cpu" and deployments["retrain-cpu"]["schedules"][0]["cron"] == "0 3 * * 1"
    assert deployments["retrain-gpu"]["parameters"]["train_deployment"] == "latentflow-stages/train-gpu"
    gpu = deployments["train-gpu"]
    assert gpu["work_pool"]["name"] == "gpu" and gpu["work_pool"]["job_variables"]["gpu"] == 1
    assert set(gpu["work_pool"]["job_variables"]) <= set(TEMPLATE["variables"]["properties"])
    assert [next(iter(step)) for step in gpu["pull"]] == ["prefect.deployments.steps.git_clone", "prefect.deployments.steps.set_working_directory"]
    assert gpu["parameters"]["stages"] == deployments["train-cpu"]["parameters"]["stages"] == ["train_autoencoder", "train_diffusion"]


def test_handoff_round_trip_keeps_lock_and_uncached_outputs(tmp_path: Path):
    from pipelines.remote import pack_handoff, uncached_outputs, unpack_handoff

    uncached = uncached_outputs(ROOT)
    assert {"reports/validation", "metrics.json", "metrics/diffusion.json"} <= set(uncached)
    assert "models/diffusion" not in uncached  # cached outputs travel through dvc push/pull
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "reports/validation").mkdir(parents=True)
    (src / "reports/validation/report.json").write_text('{"success": true}')
    (src / "dvc.lock").write_text("schema: '2.0'\n")
    (src / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (src / "models").mkdir()
    (src / "models/big.bin").write_bytes(b"x" * 10)
    assert sorted(unpack_handoff(pack_handoff(src), dst)) == ["dvc.lock", "reports/validation/report.json"]
    assert (dst / "reports/validation/report.json").read_text() == '{"success": true}'
    # an output folder arrives whole: files the sender no longer has (older data docs) do not survive on the receiver
    (dst / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (dst / "reports/validation/old_docs.html").write_text("stale")
    (dst / "models").mkdir()
    (dst / "models/keep.bin").write_bytes(b"y")
    (src / "reports/validation/report.json").write_text('{"success": false}')
    assert sorted(unpack_handoff(pack_handoff(src), dst)) == ["dvc.lock", "reports/validation/report.json"]
    assert sorted(p.name for p in (dst / "reports/validation").iterdir()) == ["report.json"]
    assert (dst / "reports/validation/report.json").read_text() == '{"success": false}'
    assert (dst / "models/keep.bin").read_bytes() == b"y"  # what is not in the archive is left alone
    assert not any(p.name.startswith(".handoff-") for p in dst.iterdir())
