"""Both training stages, killed with SIGKILL at a fixed checkpoint and re-run, end with weights bit-identical
to an uninterrupted run of the same length (CPU, same params, data and seed)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from components.training.state import checkpoint_dirs
from tests.conftest import make_project, run_cli, sigkill_at_line, tiny_params

pytestmark = pytest.mark.slow  # the stages as subprocesses, SIGKILLed and resumed: an integration test (README "Tests")


def _params() -> dict:
    p = tiny_params()
    p["train_autoencoder"].update(max_images=1920, batch_size=32, channels=[8, 16, 16])
    # images through 2 DataLoader workers, with augmentation: the resume must still repeat every batch and every draw
    p["train_autoencoder"]["runtime"] = {"checkpoint_every_images": 64, "data_workers": 2}  # every 2 steps of 60
    p["train_autoencoder"]["augment"] = {"hflip": True, "crop_padding": 2}
    p["train_diffusion"].update(max_images=3840, batch_size=64)
    p["train_diffusion"]["unet"].update(preset="res-clsAtn-chnAtn", channels=[16, 32], num_heads=2)
    p["train_diffusion"]["runtime"] = {"checkpoint_every_images": 128}  # every 2 steps of 60
    return p


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_project(tmp_path_factory.mktemp("resume") / "project", _params())
    for stage in ("ingest", "validate", "train_autoencoder", "train_diffusion"):
        r = run_cli(["latentflow", stage], root)
        assert r.returncode == 0, r.stderr[-3000:]
    for name in ("autoencoder", "diffusion"):
        shutil.copytree(root / "models" / name, root / f"straight_{name}")
    shutil.rmtree(root / "checkpoints")
    return root


# Runs `latentflow STAGE` in-process with checkpoint writing wrapped: once checkpoint K is complete ("after") or
# while its files are being written into the temporary folder ("during"), it prints a line and waits for the
# test's SIGKILL. So the kill lands exactly there however loaded the machine is (a kill "once checkpoint K
# shows up" could land several steps later).
_HANG_AT_CHECKPOINT = """
import signal, sys, time
from pathlib import Path
import components.training.loop as loop
import components.training.state as state
from pipelines.cli import main

stage, mode, k = sys.argv[1], sys.argv[2], int(sys.argv[3])

def hang(event):
    print(event, flush=True)
    signal.alarm(300)  # bounded, should the test not kill it
    while True:
        time.sleep(1)

save_training_state, save_file = loop.save_training_state, state.save_file

def save_training_state_then_hang(root, step, *args, **kwargs):
    out = save_training_state(root, step, *args, **kwargs)
    if mode == "after" and step == k:
        hang(f"checkpoint {step} written")
    return out

def save_file_then_hang(tensors, filename, *args, **kwargs):
    save_file(tensors, filename, *args, **kwargs)
    if mode == "during" and Path(filename).parent.name.startswith(f".step_{k:08d}.tmp-"):
        hang(f"checkpoint {k} half-written")

loop.save_training_state, state.save_file = save_training_state_then_hang, save_file_then_hang
sys.argv = ["latentflow", stage]
main()
"""


def _kill_at_checkpoint(root: Path, stage: str, mode: str, k: int) -> None:
    """Run ``stage`` until checkpoint ``k`` is complete (``mode="after"``) or half-written (``"during"``), then SIGKILL it."""
    event = f"checkpoint {k} written" if mode == "after" else f"checkpoint {k} half-written"
    log = root / f"{stage}-killed.log"
    with open(log, "w") as err:
        try:
            sigkill_at_line([sys.executable, "-c", _HANG_AT_CHECKPOINT, stage, mode, str(k)], event, cwd=root, stderr=err)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{log.read_text()[-2000:]}") from None


# Fixed kill points (checkpoints every 2 steps of 60): the autoencoder right after checkpoint 10 is complete, the
# diffusion stage while checkpoint 12 is half-written (its temporary folder must be ignored: resume from 10).
@pytest.mark.parametrize(("stage", "model", "mode", "k", "resume_from"), [
    ("train_autoencoder", "autoencoder", "after", 10, 10),
    ("train_diffusion", "diffusion", "during", 12, 10),
])
def test_sigkill_then_resume_is_bit_identical(project: Path, stage: str, model: str, mode: str, k: int, resume_from: int) -> None:
    """CPU only (tiny_params pins base.device: cpu): bit-identity on CUDA would also need deterministic algorithms."""
    root = project
    shutil.rmtree(root / "checkpoints" / stage, ignore_errors=True)
    shutil.rmtree(root / "models" / "autoencoder")
    shutil.copytree(root / "straight_autoencoder", root / "models" / "autoencoder")  # the diffusion stage's input, as straight
    before = (root / "models" / model / "model.safetensors").read_bytes()
    _kill_at_checkpoint(root, stage, mode, k)
    # the killed run left the previous output untouched, and only complete checkpoints count
    assert (root / "models" / model / "model.safetensors").read_bytes() == before
    ckpt_root = root / "checkpoints" / stage
    assert [int(p.name.split("_")[1]) for p in checkpoint_dirs(ckpt_root)] == [resume_from - 2, resume_from]
    if mode == "during":
        assert list(ckpt_root.glob(f".step_{k:08d}.tmp-*")), "the kill did not land inside the checkpoint write"
    r = run_cli(["latentflow", stage], root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr and f"step {resume_from}," in r.stderr, r.stderr[-2000:]
    straight, resumed = load_file(str(root / f"straight_{model}" / "model.safetensors")), load_file(str(root / "models" / model / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert straight[name].equal(resumed[name]), f"{stage}: {name} differs from the uninterrupted run"


def test_train_diffusion_with_two_processes_launches_torchrun_and_matches(project: Path) -> None:
    """runtime.num_processes: 2 makes the stage relaunch itself under torchrun (2 gloo ranks: tiny_params pins
    base.device: cpu, also on a CUDA machine, where one GPU has no cuda:1 for rank 1); the EMA U-Net matches the
    one-process run of the same global batch to float tolerance."""
    import torch
    import yaml

    root = project
    shutil.rmtree(root / "models" / "autoencoder")
    shutil.copytree(root / "straight_autoencoder", root / "models" / "autoencoder")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train_diffusion"]["runtime"].update(num_processes=2, resume=False)
    ddp_params = root / "params_ddp.yaml"
    ddp_params.write_text(yaml.safe_dump(params, sort_keys=False))
    r = run_cli(["latentflow", "train_diffusion", "--params", str(ddp_params)], root)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((root / "metrics" / "diffusion.json").read_text())
    assert metrics["processes"] == 2 and metrics["resumed_from_step"] is None
    one, two = load_file(str(root / "straight_diffusion" / "model.safetensors")), load_file(str(root / "models" / "diffusion" / "model.safetensors"))
    # Adam turns reduction-order noise in near-zero gradients into updates of up to lr (1e-3) per step; seen: 4e-5
    # after 24 steps, 2.1e-4 after 60. A real divergence (other samples or noise per rank, no gradient averaging)
    # moves weights by up to lr x steps (6e-2 here).
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-3, atol=1e-3, msg=f"{k} differs between 1 and 2 processes")
