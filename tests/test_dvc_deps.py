"""DVC sees what each stage reads: its raw data (``${ingest.root}``, put under DVC by ``latentflow add-data``)
and its code (the stage module and every project file it imports, ``latentflow deps``)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipelines.codedeps import import_closure, stage_code, stale_stages, write_code_deps
from tests.conftest import ROOT, make_project, run_cli, tiny_params, write_digit_folder

STAGES = ["ingest", "validate", "train_autoencoder", "train_diffusion", "distill", "sample", "reference_stats", "evaluate", "register"]


def test_dvc_yaml_lists_exactly_the_code_each_stage_imports():
    res = run_cli(["latentflow", "deps", "--check"], cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert stale_stages(ROOT / "dvc.yaml", ROOT) == {}
    for stage in STAGES:
        code = stage_code(stage)
        assert f"pipelines/stages/{stage}.py" in code and "pipelines/cli.py" not in code
    # the data stages do not run the diffusion math; the sampling stages do
    for stage in ("ingest", "validate"):
        heavy = {"components/diffusion/samplers.py", "components/diffusion/forward.py", "components/models/unet.py", "components/training/loop.py"}
        assert not heavy & set(stage_code(stage)), stage
    for stage in ("sample", "evaluate"):
        assert "components/diffusion/samplers.py" in stage_code(stage)
    assert "components/data/validation.py" in stage_code("validate") and "components/data/validation.py" not in stage_code("ingest")


def test_closure_follows_function_level_and_relative_imports(tmp_path: Path):
    pkg = tmp_path / "components"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from components.deep import g\n    return g\n")
    (pkg / "deep.py").write_text("import numpy\n")
    (pkg / "unused.py").write_text("")
    assert import_closure("components.sub", tmp_path) == ["components/__init__.py", "components/deep.py", "components/sub/__init__.py",
                                                          "components/sub/leaf.py"]


def test_check_catches_a_new_import_and_write_fixes_it_keeping_comments(tmp_path: Path):
    for item in ("components", "pipelines"):
        shutil.copytree(ROOT / item, tmp_path / item, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    with open(tmp_path / "pipelines/stages/ingest.py", "a") as f:
        f.write("\n\ndef _extra():\n    from components.evaluation import kid_pr\n\n    return kid_pr\n")
    stale = stale_stages(tmp_path / "dvc.yaml", tmp_path)
    assert list(stale) == ["ingest"] and "components/evaluation/kid_pr.py" in stale["ingest"][0]
    res = run_cli(["latentflow", "deps", "--check"], cwd=tmp_path)
    assert res.returncode == 1 and "ingest" in res.stderr and "kid_pr.py" in res.stderr
    assert write_code_deps(tmp_path / "dvc.yaml", tmp_path) == ["ingest"]
    assert stale_stages(tmp_path / "dvc.yaml", tmp_path) == {}
    text = (tmp_path / "dvc.yaml").read_text()
    assert "# The pipeline DAG, declared once." in text and "${ingest.root}" in text
    ingest = yaml.safe_load(text)["stages"]["ingest"]
    assert ingest["deps"][0] == "${ingest.root}" and ingest["outs"] == yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["ingest"]["outs"]


@pytest.fixture
def folder_project(tmp_path: Path) -> Path:
    params = tiny_params()
    params["validate"].update(min_rows_train=100, min_rows_val=10)
    return make_project(tmp_path / "project", params)


@pytest.mark.slow
def test_add_data_puts_a_folder_under_dvc_and_a_changed_image_reruns_ingest(folder_project: Path, tmp_path: Path):
    proj = folder_project
    src = write_digit_folder(tmp_path / "my digits")
    res = run_cli(["latentflow", "add-data", str(src), "--name", "digits"], cwd=proj)
    assert res.returncode == 0, res.stderr
    assert "git add data/raw/digits.dvc" in res.stdout
    assert (proj / "data/raw/digits.dvc").is_file() and "/digits" in (proj / "data/raw/.gitignore").read_text()
    params_text = (proj / "params.yaml").read_text()
    params = yaml.safe_load(params_text)
    assert params["ingest"]["source"] == "image_folder" and params["ingest"]["root"] == "data/raw/digits"
    assert params["train_diffusion"] == tiny_params()["train_diffusion"]  # nothing else changed

    res = run_cli(["dvc", "repro", "validate"], cwd=proj)
    assert res.returncode == 0, res.stderr[-3000:]
    # the console holds our summary line, not great-expectations' own INFO logging (~200 lines of it per validate
    # before), nor DVC's "'components/__init__.py' is empty" warnings (4 per stage before)
    console = res.stdout + res.stderr
    assert re.search(r"validate: (\d+) of \1 expectations passed \(rows: train 130, val 10\)", console), console[-2000:]
    assert "great_expectations" not in console and "is empty" not in console, console[-2000:]
    first = json.loads((proj / "data/dataset/manifest.json").read_text())
    assert first["counts"] == {"train": 130, "val": 10}  # stratified: one image per class held out
    assert "data/raw/digits" in [d["path"] for d in yaml.safe_load((proj / "dvc.lock").read_text())["stages"]["ingest"]["deps"]]
    assert run_cli(["dvc", "status", "--with-deps", "validate"], cwd=proj).stdout.strip().endswith("up to date.")

    # change one image: DVC names the changed data, ingest and validate re-run, the dataset digest changes
    img = proj / "data/raw/digits/3/0.png"
    Image.fromarray(255 - np.asarray(Image.open(img))).save(img)
    status = run_cli(["dvc", "status", "--with-deps", "validate"], cwd=proj).stdout
    assert "ingest" in status and "data/raw/digits" in status and "modified" in status, status
    res = run_cli(["dvc", "repro", "validate"], cwd=proj)
    assert res.returncode == 0 and "Running stage 'ingest'" in res.stdout and "Running stage 'validate'" in res.stdout, res.stdout[-2000:]
    assert json.loads((proj / "data/dataset/manifest.json").read_text())["dataset_digest"] != first["dataset_digest"]
    # add-data on the folder itself records the new version in its .dvc file
    before = (proj / "data/raw/digits.dvc").read_text()
    res = run_cli(["latentflow", "add-data", "data/raw/digits"], cwd=proj)
    assert res.returncode == 0, res.stderr
    assert (proj / "data/raw/digits.dvc").read_text() != before
    assert run_cli(["dvc", "status", "--with-deps", "validate"], cwd=proj).stdout.strip().endswith("up to date.")


@pytest.mark.slow
def test_add_data_errors_are_clear_and_change_nothing(folder_project: Path, tmp_path: Path):
    proj = folder_project
    before = (proj / "params.yaml").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, message in (([str(tmp_path / "missing")], "does not exist"), ([str(empty)], "no <class>/ subfolders"),
                          ([str(proj / "params.yaml")], "not a .tar")):
        res = run_cli(["latentflow", "add-data", *args], cwd=proj)
        assert res.returncode == 1 and message in res.stderr, res.stderr
    src = write_digit_folder(tmp_path / "d", per_class=2)
    res = run_cli(["latentflow", "add-data", str(src), "--channels", "2"], cwd=proj)
    assert res.returncode == 1 and "channels" in res.stderr, res.stderr
    assert (proj / "params.yaml").read_text() == before
