"""SIGKILL during ``register``: the next registration finishes or undoes what the killed one left (no half-registered version)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient

from components.registry.mlflow_registry import CHAMPION, OWNER_TAG, REGISTRATION_TAG, register_model
from tests.bad_inputs import builders as b
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
NAME = "killed"

CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    from mlflow import MlflowClient
    from components.registry.mlflow_registry import register_model

    tracking_uri, model_dir, point, fid = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    real = getattr(MlflowClient, point)

    def die(self, *args, **kwargs):
        if point == "set_registered_model_alias":  # killed right after the alias, before the last tag and the run's end
            real(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(MlflowClient, point, die)
    register_model(tracking_uri=tracking_uri, experiment="exp", model_name="killed", model_dir=Path(model_dir), params={"seed": 0},
                   metrics={"fid": fid}, artifacts=[], primary_metric="fid", greater_is_better=False, min_improvement=0.0,
                   tags={"git_commit": "test"})
""")


def _register(tracking_uri: str, model_dir: Path, fid: float):
    return register_model(tracking_uri=tracking_uri, experiment="exp", model_name=NAME, model_dir=model_dir, params={"seed": 0},
                          metrics={"fid": fid}, artifacts=[], primary_metric="fid", greater_is_better=False, min_improvement=0.0,
                          tags={"git_commit": "test"})


def _killed_register(tracking_uri: str, model_dir: Path, point: str, fid: float) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, tracking_uri, str(model_dir), point, str(fid)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -signal.SIGKILL, f"the child was not killed at {point}: {proc.returncode}\\n{proc.stderr[-3000:]}"


def _versions(client: MlflowClient) -> dict[str, dict]:
    return {str(mv.version): mv.tags for mv in client.search_model_versions(f"name='{NAME}'")}


def test_sigkill_during_register_leaves_no_half_registered_version(tmp_path: Path):
    model_dir = tmp_path / "model"
    b.build_tiny_model(model_dir)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    first = _register(tracking_uri, model_dir, fid=5.0)
    assert first.alias == CHAMPION

    # killed after the version exists, while tagging it: a half-registered version (no alias, no metric tag)
    _killed_register(tracking_uri, model_dir, "set_model_version_tag", fid=1.0)
    half = _versions(client)
    assert len(half) == 2 and half["2"][REGISTRATION_TAG] == "in_progress"
    killed_run = client.get_model_version(NAME, "2").run_id
    assert client.get_run(killed_run).info.status == "RUNNING"

    # the next registration deletes it, marks its run FAILED, and completes its own
    second = _register(tracking_uri, model_dir, fid=4.0)
    versions = _versions(client)
    assert sorted(versions) == ["1", "3"], versions
    assert all(tags[REGISTRATION_TAG] == "complete" for tags in versions.values())
    assert client.get_run(killed_run).info.status == "FAILED"
    assert second.version == "3" and second.alias == CHAMPION and second.decision.champion_value == 5.0  # compared with v1, not v2

    # killed right after setting its alias (only the last tag and the run's end missing): the next run completes it
    _killed_register(tracking_uri, model_dir, "set_registered_model_alias", fid=3.0)
    assert _versions(client)["4"][REGISTRATION_TAG] == "in_progress"
    assert str(client.get_registered_model(NAME).aliases[CHAMPION]) == "4"
    _register(tracking_uri, model_dir, fid=9.0)
    versions = _versions(client)
    assert sorted(versions) == ["1", "3", "4", "5"] and versions["4"][REGISTRATION_TAG] == "complete"
    assert client.get_run(client.get_model_version(NAME, "4").run_id).info.status == "FINISHED"
    assert str(client.get_registered_model(NAME).aliases[CHAMPION]) == "4"


def test_a_live_registration_is_not_touched(tmp_path: Path):
    """An in-progress version whose owner still runs (here: this test process) is left alone."""
    import os

    from components.registry.mlflow_registry import recover_interrupted

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    client.create_registered_model(NAME)
    exp = client.create_experiment("exp")
    run = client.create_run(exp, tags={OWNER_TAG: f"{__import__('socket').gethostname()}:{os.getpid()}"})
    client.create_model_version(NAME, (tmp_path / "x").as_uri(), run_id=run.info.run_id,
                                tags={REGISTRATION_TAG: "in_progress", OWNER_TAG: f"{__import__('socket').gethostname()}:{os.getpid()}"})
    assert recover_interrupted(client, NAME, exp) == []
    assert json.dumps(_versions(client)) and client.get_run(run.info.run_id).info.status == "RUNNING"
