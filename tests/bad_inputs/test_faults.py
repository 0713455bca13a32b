"""Faults: a full disk while a stage writes leaves the previous output usable (atomic writes, temp files removed)."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from components.models.checkpoint import load_unet, read_checkpoint, save_checkpoint
from pipelines.cli import app
from tests.bad_inputs import builders as b
from tests.conftest import write_digit_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def disk_full_after(real_write, calls_ok: int, path_arg: int):
    """A stand-in for a function that writes a file named by its argument ``path_arg``: the first ``calls_ok`` calls
    work; the next writes half of its output, then fails as a full disk does (``ENOSPC``)."""
    state = {"calls": 0}

    def write(*args, **kwargs):
        state["calls"] += 1
        if state["calls"] <= calls_ok:
            return real_write(*args, **kwargs)
        real_write(*args, **kwargs)
        path = Path(args[path_arg])
        if path.suffix != ".npy" and not path.is_file():
            path = path.with_suffix(".npy")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    return write


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_disk_full_while_writing_the_dataset_keeps_the_previous_one(tmp_path: Path, monkeypatch):
    project = tmp_path / "project"
    write_digit_folder(project / b.RAW, per_class=4)
    (project / "params.yaml").write_text(yaml.safe_dump(b.corpus_params(tmp_path)))
    monkeypatch.chdir(project)
    assert CliRunner().invoke(app, ["ingest"]).exit_code == 0
    before = _tree(project / "data/dataset")
    (project / b.RAW / "3" / "new.png").write_bytes(b.png_bytes(np.full((28, 28), 99, np.uint8)))  # a new version to write

    import components.data.artifact as artifact

    monkeypatch.setattr(artifact.np, "save", disk_full_after(np.save, calls_ok=2, path_arg=0))
    result = CliRunner().invoke(app, ["ingest"])
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.stderr and "disk is full" in result.stderr and "left intact" in result.stderr
    assert _tree(project / "data/dataset") == before, "the previous dataset changed"
    assert not [p for p in (project / "data").iterdir() if p.name.startswith(".")], "a temp folder was left behind"
    from components.data.artifact import read_dataset

    monkeypatch.undo()
    assert read_dataset(project / "data/dataset").manifest["counts"] == {"train": 30, "val": 10}  # the previous one, sha256-verified


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path: Path, monkeypatch):
    b.build_tiny_model(tmp_path / "models", seed=1)
    ckpt = tmp_path / "models/diffusion"
    old_state, _ = read_checkpoint(ckpt)
    before = _tree(ckpt)
    unet, meta = load_unet(ckpt)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(1.0)  # the new weights differ

    import components.models.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "save_file", disk_full_after(checkpoint.save_file, calls_ok=0, path_arg=1))
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(ckpt, unet, unet.config.to_dict(), {k: v for k, v in meta.items() if k != "model"})
    assert _tree(ckpt) == before
    assert not [p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")], "a temp folder was left behind"
    state, _ = read_checkpoint(ckpt)
    assert all(torch.equal(state[k], old_state[k]) for k in old_state)
    load_unet(ckpt)  # still loads
    shutil.rmtree(tmp_path / "models")
