"""`latentflow <command> --help` says, for each option a params key backs, which key it is."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from pipelines.cli import app


@pytest.mark.parametrize(("command", "keys"), [
    ("sample", ["sample.num_per_class", "base.seed", "sample.sampler", "sample.steps", "sample.guidance"]),
    ("edit", ["sample.sampler", "sample.steps", "sample.guidance"]),
])
def test_help_names_the_params_key_behind_each_option(command, keys):
    """Rich reads ``[...]`` as markup and drops it, so the notes are in parentheses; every one must reach the screen."""
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    text = re.sub(r"\s+", " ", result.output)
    for key in keys:
        assert f"(params: {key})" in text, f"{command} --help does not name {key}"


def test_data_stages_start_without_torch(tiny_project):
    """``ingest`` and ``validate`` read and check uint8 arrays: neither imports torch (about 3 s of every stage's
    start-up on a 2-core machine, benchmarks/stage_profile.py); only the stages that run a model pay for it."""
    import subprocess
    import sys

    code = ("import sys\nfrom pipelines.cli import main\nsys.argv = ['latentflow', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    for stage in ("ingest", "validate"):
        out = subprocess.run([sys.executable, "-c", code, stage], cwd=tiny_project, capture_output=True, text=True, timeout=300,
                             env={**__import__("os").environ, "PYTHONPATH": str(tiny_project)})
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.strip().splitlines()[-1] == "no torch", f"latentflow {stage} imported torch"
    assert (tiny_project / "reports" / "validation").is_dir()


def test_stage_logging_keeps_our_info_and_libraries_warnings_only():
    import logging

    from pipelines.cli import _own_or_warning

    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "message", None, None)

    assert _own_or_warning(record("latentflow", logging.INFO))
    assert _own_or_warning(record("components.training.loop", logging.INFO))
    assert not _own_or_warning(record("great_expectations.data_context.types.base", logging.INFO))
    assert not _own_or_warning(record("latentflowx", logging.INFO))  # a prefix is not our logger
    assert _own_or_warning(record("prefect.task_runs", logging.INFO))  # `latentflow flow`'s per-stage lines
    assert _own_or_warning(record("prefect.flow_runs", logging.INFO))
    assert not _own_or_warning(record("prefect.client", logging.INFO))
    assert _own_or_warning(record("great_expectations", logging.WARNING))
    assert _own_or_warning(record("mlflow.tracking", logging.ERROR))
