"""Two ``dvc repro`` at once in one project: the second stops at once with DVC's lock message naming the first; the first completes; nothing is corrupted."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from components.data.artifact import read_dataset
from tests.conftest import make_project, tiny_params

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_second_dvc_repro_stops_with_a_clear_message_and_nothing_is_corrupted(tmp_path: Path):
    project = make_project(tmp_path / "project", tiny_params())
    # a slow ingest (a copy of the code, as a user's edit would be): the first repro holds DVC's lock for a while
    stage = project / "pipelines/stages/ingest.py"
    stage.write_text(stage.read_text().replace('    cfg = params.ingest\n', '    import time\n\n    time.sleep(15)\n    cfg = params.ingest\n', 1))
    log = (project / "first.log").open("w")
    first = subprocess.Popen(["dvc", "repro", "ingest"], cwd=project, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while "Running stage 'ingest'" not in (project / "first.log").read_text():
            assert first.poll() is None and time.monotonic() < deadline, (project / "first.log").read_text()
            time.sleep(0.2)
        second = subprocess.run(["dvc", "repro", "ingest"], cwd=project, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run ended before the second one tried: the test proves nothing"
        assert second.returncode != 0
        said = second.stderr + second.stdout
        # DVC's rwlock names the output and the run holding it (or, when the repo lock is held, "Unable to acquire lock")
        assert ("is busy, it is being blocked by" in said and f"PID {first.pid}" in said) or "Unable to acquire lock" in said, said
        assert first.wait(timeout=300) == 0, (project / "first.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    read_dataset(project / "data/dataset", verify=True)  # complete: every array matches its sha256
    status = subprocess.run(["dvc", "status", "ingest"], cwd=project, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    assert not [p.name for p in (project / "data").iterdir() if p.name.startswith(".dataset")], "a temp folder was left behind"
