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
