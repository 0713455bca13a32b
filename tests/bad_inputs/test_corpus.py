"""Every bad input of :mod:`tests.bad_inputs.cases`, run through the ``latentflow`` CLI in-process.

Each case runs in a fresh copy of one small, complete project built once per session: 60 real MNIST digits
under ``data/raw/digits``, the dataset ingested from them, a model folder with random weights, samples made
from it, reference statistics and metrics. A failing case must exit with its code, print a message naming
the cause and no traceback, and leave the whole project byte-identical (nothing written, moved or left
behind); a case that must succeed is checked against what its images show.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from tests.bad_inputs import builders as b
from tests.bad_inputs.cases import CASES, Case, Ctx
from tests.conftest import write_digit_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def _failure_text(result) -> str:
    text = (result.stderr or "") + (result.stdout or "")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        text += "".join(traceback.format_exception(result.exception))
    return text


@pytest.fixture(scope="session")
def corpus_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_inputs")


@pytest.fixture(scope="session")
def ctx(corpus_root: Path) -> Ctx:
    from mlflow import MlflowClient

    outside = corpus_root / "outside"
    write_digit_folder(outside / "digits_src", per_class=b.PER_CLASS)
    tracking_uri = f"sqlite:///{corpus_root / 'registry.db'}"
    MlflowClient(tracking_uri).create_registered_model("latentflow")  # a registered model without versions or aliases
    return Ctx(outside=outside, tracking_uri=tracking_uri, marker=corpus_root / "PAYLOAD_RAN")


@pytest.fixture(scope="session")
def template(corpus_root: Path, ctx: Ctx) -> Path:
    """The project every case starts from, with one successful run of ingest and sample."""
    import yaml

    project = corpus_root / "template"
    (project / b.RAW).parent.mkdir(parents=True)
    shutil.copytree(ctx.outside / "digits_src", project / b.RAW)
    (project / "params.yaml").write_text(yaml.safe_dump(b.corpus_params(corpus_root), sort_keys=False))
    b.build_tiny_model(project / "models")
    cwd = os.getcwd()
    os.chdir(project)
    try:
        for args in (["ingest"], b.SAMPLE):
            result = invoke(args)
            assert result.exit_code == 0, _failure_text(result)
    finally:
        os.chdir(cwd)
    digest = json.loads((project / "data/dataset/manifest.json").read_text())["dataset_digest"]
    (project / "reference_stats").mkdir()
    b.write_json(project / "reference_stats/manifest.json", {"dataset_digest": digest, "reference_split": "val", "num_reference": 20,
                                                             "classifier_val_accuracy": 0.9, "extractors": {}, "skipped": {}})
    b.write_json(project / "metrics.json", {"class_consistency": 0.5})
    return project


def test_corpus_is_broad():
    """At least 30 cases, over every kind of input, with unique readable ids."""
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 30
    assert {c.stage for c in CASES} >= {"ingest", "params", "sample", "model", "registry", "evaluate", "validate"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, template: Path, ctx: Ctx, tmp_path: Path, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(template, project, symlinks=True)
    monkeypatch.chdir(project)
    args = case.build(project, ctx)
    before = b.snapshot(project)
    result = invoke(args)
    text = _failure_text(result)
    assert result.exception is None or isinstance(result.exception, SystemExit), f"an unhandled exception, not a message:\n{text}"
    assert "Traceback" not in text, text
    assert result.exit_code == case.exit_code, f"exit {result.exit_code}, expected {case.exit_code}:\n{text}"
    flat = re.sub(r"[│╭╮╰╯─\s]+", " ", text)  # typer's usage errors come in a box that wraps long lines
    for pattern in case.says:
        assert re.search(pattern, flat, re.IGNORECASE), f"the message does not say {pattern!r}:\n{text}"
    if case.exit_code:
        after = b.snapshot(project)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"a failed run changed the project: {changed[:10]}"
    else:
        case.check(project)
    assert not ctx.marker.exists(), "a planted pickle was unpickled: its payload ran"
