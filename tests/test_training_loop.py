"""The shared training loop: exact resume after SIGKILL, DDP (2 gloo processes) = 1 process, NaN stop,
checkpoint rotation, fingerprints, the wall-clock budget."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from components.training.common import NonFiniteLossError
from components.training.distributed import DistContext
from components.training.loop import Batch, LoopConfig, Trainer, step_seed
from components.training.state import checkpoint_dirs, join_tensors, load_training_state, split_tensors
from tests.conftest import sigkill_at_line

WORKER = Path(__file__).parent / "workers" / "tiny_trainer.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"


def _worker(out: Path, *args: str) -> list[str]:
    return [sys.executable, str(WORKER), "--out", str(out), *args]


def _weights_equal(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs after resume"


STEPS, EVERY = 14, 3  # checkpoints after steps 3, 6, 9, 12 and 14, the newest two kept


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The weights of an uninterrupted run."""
    out = tmp_path_factory.mktemp("straight") / "straight.safetensors"
    subprocess.run(_worker(out, "--steps", str(STEPS)), check=True, capture_output=True, timeout=120)
    return out


# Fixed kill points, each exact: the worker stops at the point and waits for the SIGKILL.
@pytest.mark.slow  # worker subprocesses (an integration test: see README "Tests")
@pytest.mark.parametrize(("hang", "at", "resume_from"), [
    ("--hang-after-checkpoint", 3, 3),  # right after the first checkpoint is complete
    ("--hang-at-step", 10, 9),  # mid-step (loss computed, no optimizer step), after checkpoint 6 was rotated out by 9
    ("--hang-at-step", 2, 0),  # before any checkpoint: the rerun starts from scratch
], ids=["after-checkpoint-3", "mid-step-10", "mid-step-2-no-checkpoint"])
def test_resume_after_sigkill_is_bit_identical(tmp_path: Path, straight: Path, hang: str, at: int, resume_from: int) -> None:
    """Everything runs on the CPU, where these kernels are deterministic; bit-identity on CUDA would also need
    ``torch.use_deterministic_algorithms``."""
    ckpts = tmp_path / "ckpts"
    common = ["--steps", str(STEPS), "--checkpoints", str(ckpts), "--checkpoint-every", str(EVERY)]
    event = f"checkpoint {at}" if hang == "--hang-after-checkpoint" else f"step {at}"
    sigkill_at_line(_worker(tmp_path / "never.safetensors", *common, hang, str(at)), event, timeout=120)
    assert not (tmp_path / "never.safetensors").exists()
    expected = [s for s in range(EVERY, STEPS, EVERY) if s <= resume_from][-2:]
    assert [int(p.name.split("_")[1]) for p in checkpoint_dirs(ckpts)] == expected

    resumed = subprocess.run(_worker(tmp_path / "resumed.safetensors", *common), capture_output=True, text=True, timeout=120, check=True)
    steps = [int(line.split()[1]) for line in resumed.stdout.splitlines() if line.startswith("step ")]
    assert steps == list(range(resume_from, STEPS)), f"the rerun took steps {steps}; the newest checkpoint was step {resume_from}"
    _weights_equal(straight, tmp_path / "resumed.safetensors")


@pytest.mark.slow  # two gloo worker processes
def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    """DDP with 2 ranks (and 2 micro-batches each) = 1 process, same global batch, to float tolerance.

    Pinned to the CPU (gloo) even on a CUDA machine: on one GPU, rank 1 would ask for ``cuda:1``."""
    single, ddp = tmp_path / "single.safetensors", tmp_path / "ddp.safetensors"
    subprocess.run(_worker(single, "--steps", "6"), check=True, capture_output=True, timeout=120)
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(WORKER), "--out", str(ddp), "--steps", "6", "--grad-accum", "2",
           "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(str(single)), load_file(str(ddp))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=f"{k} differs between 1 and 2 processes")
    # the comparison means something: six steps moved the weights well beyond the tolerance
    torch.manual_seed(0)
    init = torch.nn.Conv2d(3, 8, 3, padding=1)
    moved = (a["model.0.weight"] - init.weight.detach()).abs().max().item()
    assert moved > 1e-2


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    ckpts = tmp_path / "ckpts"
    r = subprocess.run(_worker(tmp_path / "w.safetensors", "--steps", "10", "--checkpoints", str(ckpts), "--nan-at", "5"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "NonFiniteLossError" in r.stderr and "loss became nan at step 5" in r.stderr
    assert [p.name for p in checkpoint_dirs(ckpts)] == ["step_00000004", "step_00000005"]
    state = load_training_state(checkpoint_dirs(ckpts)[-1])
    assert state["step"] == 5 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "w.safetensors").exists()


# ------------------------------------------------------------------------- in-process pieces
def _tiny(tmp_path: Path | None, **cfg) -> tuple[Trainer, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    data = torch.randn(64, 4, generator=torch.Generator().manual_seed(3))
    settings = {"batch_size": 8, "max_images": 80, "lr": 1e-2, "ema_decay": 0.9, "checkpoint_every_images": 16, "log_every": 1, **cfg}
    fp = settings.pop("fingerprint", "fp")
    return Trainer(model, LoopConfig(**settings), dataset_size=64, seed=1, ctx=DistContext(),
                   checkpoint_dir=tmp_path, fingerprint=fp, progress=False), data


def _loss(data: torch.Tensor):
    def fn(net, batch: Batch):
        g = batch.generator(torch.device("cpu"))
        noise = batch.draw(torch.randn, (4,), g)
        return ((net(data[batch.indices] + 0.1 * noise) - 1.0) ** 2).mean(), {}

    return fn


def test_every_sample_is_seen_once_per_epoch_and_batches_are_global(tmp_path: Path) -> None:
    trainer, _ = _tiny(None)
    seen = torch.cat([trainer.local_indices(s)[0] for s in range(trainer.steps_per_epoch)])
    assert sorted(seen.tolist()) == list(range(64))
    # rank r of 2 holds the global batch's rows r, r+2, ...
    two = [Trainer(torch.nn.Linear(4, 1), LoopConfig(batch_size=8, max_images=80, lr=1e-2), dataset_size=64, seed=1,
                   ctx=DistContext(rank=r, world_size=2), progress=False) for r in (0, 1)]
    for step in (0, 3, 9):
        glob, _ = trainer.local_indices(step)
        for r, t in enumerate(two):
            idx, rows = t.local_indices(step)
            assert torch.equal(idx, glob[rows]) and torch.equal(rows, torch.arange(r, 8, 2))
    assert step_seed(1, 3) != step_seed(1, 4) and step_seed(1, 3) == step_seed(1, 3)


def test_checkpoints_rotate_and_other_params_are_not_resumed(tmp_path: Path) -> None:
    trainer, data = _tiny(tmp_path)
    res = trainer.run(_loss(data))
    assert res.steps == 10 and res.images_seen == 80
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000008", "step_00000010"]
    again, _ = _tiny(tmp_path)
    assert again.run(_loss(data)).resumed_from_step == 10
    other, _ = _tiny(tmp_path, fingerprint="other-params")
    res = other.run(_loss(data))
    assert res.resumed_from_step is None and res.steps == 10


def test_max_time_stops_early_with_a_checkpoint_and_the_rerun_finishes(tmp_path: Path) -> None:
    straight, data = _tiny(None)
    straight.run(_loss(data))
    trainer, _ = _tiny(tmp_path, max_time_minutes=1e-9)
    res = trainer.run(_loss(data))
    assert res.stopped_by_max_time and res.steps == 1
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000001"]
    rest, _ = _tiny(tmp_path)
    res = rest.run(_loss(data))
    assert res.resumed_from_step == 1 and res.steps == 10
    for a, b in zip(straight.ema.state_dict().values(), rest.ema.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_state_tensors_round_trip_through_json_skeleton() -> None:
    opt = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    opt.zero_grad()
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    opt.step()
    state = {"optimizer": opt.state_dict(), "step": 3, "rng": {"cpu": torch.get_rng_state()}, "nested": [1, {"a": torch.zeros(2)}]}
    tensors: dict = {}
    back = join_tensors(split_tensors(state, "s", tensors), tensors)
    assert back["step"] == 3 and torch.equal(back["rng"]["cpu"], state["rng"]["cpu"])
    assert back["optimizer"]["state"][0]["exp_avg"].equal(state["optimizer"]["state"][0]["exp_avg"])
    assert list(back["optimizer"]["state"].keys()) == [0, 1]  # integer keys survive JSON
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    fresh.load_state_dict(back["optimizer"])


def test_batch_size_must_split_over_processes_and_micro_batches() -> None:
    with pytest.raises(ValueError, match="divisible by num_processes x grad_accum"):
        Trainer(torch.nn.Linear(2, 1), LoopConfig(batch_size=10, max_images=20, lr=1e-3, grad_accum=4), dataset_size=50,
                seed=0, ctx=DistContext(), progress=False)


def test_nan_in_process_raises_named_error() -> None:
    trainer, data = _tiny(None)

    def bad(net, batch):
        return net(data[batch.indices]).mean() * float("inf"), {}

    with pytest.raises(NonFiniteLossError, match="at step 0"):
        trainer.run(bad)
