"""components/training/distributed.py in one process: the collective calls, torchrun's environment and the
launcher, with ``torch.distributed`` and ``subprocess`` replaced by recorders (the real two-rank gloo runs are in
tests/test_training_loop.py and tests/test_resume_stages.py; these pin what each line decides)."""

from __future__ import annotations

import dataclasses
import os
import sys
from types import SimpleNamespace

import pytest
import torch

from components.training import distributed
from components.training.distributed import DistContext


class FakeDist:
    """Records the ``torch.distributed`` calls; ``all_reduce`` sums as if ``world`` ranks held the same tensor."""

    ReduceOp = SimpleNamespace(SUM="sum")

    def __init__(self, world: int = 2, initialized: bool = False, other_rank_object=None):
        self.calls: list[tuple] = []
        self.world, self.initialized, self.other = world, initialized, other_rank_object

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialized

    def barrier(self) -> None:
        self.calls.append(("barrier",))

    def broadcast_object_list(self, box: list, src: int) -> None:
        self.calls.append(("broadcast", src))
        if src == 0 and self.other is not None:  # what rank 0 sent
            box[0] = self.other

    def all_reduce(self, tensor: torch.Tensor, op) -> None:
        self.calls.append(("all_reduce", op))
        tensor.mul_(self.world)

    def init_process_group(self, **kwargs) -> None:
        self.calls.append(("init", kwargs))
        self.initialized = True

    def destroy_process_group(self) -> None:
        self.calls.append(("destroy",))
        self.initialized = False


@pytest.fixture
def fake_dist(monkeypatch) -> FakeDist:
    fake = FakeDist(other_rank_object={"resume_step": 12})
    monkeypatch.setattr(distributed, "dist", fake)
    return fake


def test_a_world_of_one_makes_no_collective_call(fake_dist: FakeDist):
    ctx = DistContext()
    assert (ctx.rank, ctx.world_size, ctx.device) == (0, 1, torch.device("cpu"))
    assert ctx.is_main and not ctx.distributed
    value = torch.tensor([3.0])
    ctx.barrier()
    assert ctx.broadcast_object("mine") == "mine"
    assert ctx.all_reduce_mean(value) is value
    assert fake_dist.calls == []


def test_two_ranks_use_the_collectives(fake_dist: FakeDist):
    ctx = DistContext(rank=1, world_size=2, local_rank=1)
    assert ctx.distributed and not ctx.is_main
    ctx.barrier()
    assert fake_dist.calls == [("barrier",)]
    # rank 1 gets rank 0's object, not its own
    assert ctx.broadcast_object({"resume_step": 0}) == {"resume_step": 12}
    assert fake_dist.calls[-1] == ("broadcast", 0)
    value = torch.tensor([2.0, -4.0])
    mean = ctx.all_reduce_mean(value)
    assert fake_dist.calls[-1] == ("all_reduce", "sum")
    torch.testing.assert_close(mean, torch.tensor([2.0, -4.0]))  # the same value on both ranks: the mean is it
    assert torch.equal(value, torch.tensor([2.0, -4.0])), "the caller's tensor must not be reduced in place"


def test_the_mean_divides_the_sum_by_the_world_size(monkeypatch):
    fake = FakeDist(world=4)
    monkeypatch.setattr(distributed, "dist", fake)
    out = DistContext(rank=0, world_size=4).all_reduce_mean(torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(out, torch.tensor([1.0, 3.0]))


def test_the_context_is_immutable_and_defaults_to_rank_zero_of_one():
    ctx = DistContext()
    assert (ctx.rank, ctx.world_size, ctx.local_rank) == (0, 1, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.rank = 1  # type: ignore[misc]


@pytest.mark.parametrize(("world", "expected"), [(None, False), ("1", False), ("2", True), ("8", True)])
def test_under_torchrun_reads_world_size(monkeypatch, world, expected):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    if world is not None:
        monkeypatch.setenv("WORLD_SIZE", world)
    assert distributed.under_torchrun() is expected


def test_init_distributed_without_torchrun_is_a_world_of_one_on_the_given_device(monkeypatch, fake_dist: FakeDist):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.init_distributed(torch.device("meta"))
    assert ctx == DistContext(device=torch.device("meta"))
    assert fake_dist.calls == []


def _torchrun_env(monkeypatch, rank: int, world: int, local: int | None) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    if local is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", str(local))


def test_init_distributed_on_the_cpu_joins_a_gloo_group(monkeypatch, fake_dist: FakeDist):
    _torchrun_env(monkeypatch, rank=3, world=4, local=1)
    set_device = []
    monkeypatch.setattr(torch.cuda, "set_device", set_device.append)
    ctx = distributed.init_distributed(torch.device("cpu"))
    assert ctx == DistContext(rank=3, world_size=4, local_rank=1, device=torch.device("cpu"))
    assert fake_dist.calls == [("init", {"backend": "gloo", "rank": 3, "world_size": 4})]
    assert set_device == [], "a CPU rank must not touch CUDA"


def test_init_distributed_on_cuda_takes_the_local_gpu_and_nccl(monkeypatch, fake_dist: FakeDist):
    _torchrun_env(monkeypatch, rank=5, world=8, local=1)
    set_device = []
    monkeypatch.setattr(torch.cuda, "set_device", set_device.append)
    ctx = distributed.init_distributed(torch.device("cuda"))
    assert set_device == [1]
    assert ctx.device == torch.device("cuda", 1)
    assert (ctx.rank, ctx.world_size, ctx.local_rank) == (5, 8, 1)
    assert fake_dist.calls == [("init", {"backend": "nccl", "rank": 5, "world_size": 8})]


def test_init_distributed_defaults_local_rank_to_zero_and_joins_only_once(monkeypatch, fake_dist: FakeDist):
    _torchrun_env(monkeypatch, rank=1, world=2, local=None)
    fake_dist.initialized = True  # e.g. a second call in the same process
    ctx = distributed.init_distributed(torch.device("cpu"))
    assert (ctx.rank, ctx.world_size, ctx.local_rank) == (1, 2, 0)
    assert fake_dist.calls == []


@pytest.mark.parametrize("initialized", [True, False])
def test_shutdown_leaves_the_group_only_when_in_one(monkeypatch, initialized: bool):
    fake = FakeDist(initialized=initialized)
    monkeypatch.setattr(distributed, "dist", fake)
    distributed.shutdown_distributed()
    assert fake.calls == ([("destroy",)] if initialized else [])


def test_shutdown_without_a_distributed_build_does_nothing(monkeypatch):
    fake = FakeDist(initialized=True)
    fake.is_available = lambda: False
    monkeypatch.setattr(distributed, "dist", fake)
    distributed.shutdown_distributed()
    assert fake.calls == []


def test_torchrun_command_prefers_the_torchrun_on_path(monkeypatch):
    monkeypatch.setattr(distributed.shutil, "which", lambda name: f"/opt/bin/{name}")
    assert distributed.torchrun_command(3, ["-m", "pipelines.stages", "x"]) == [
        "/opt/bin/torchrun", "--standalone", "--nproc_per_node=3", "-m", "pipelines.stages", "x",
    ]


def test_torchrun_command_falls_back_to_the_one_beside_the_interpreter(monkeypatch):
    monkeypatch.setattr(distributed.shutil, "which", lambda name: None)
    cmd = distributed.torchrun_command(2, ["-m", "m"])
    assert cmd[0] == os.path.join(os.path.dirname(sys.executable), "torchrun")
    assert cmd[1:] == ["--standalone", "--nproc_per_node=2", "-m", "m"]


class _Run:
    def __init__(self, returncode: int):
        self.returncode, self.seen = returncode, []

    def __call__(self, cmd, env):
        self.seen.append((cmd, env))
        return SimpleNamespace(returncode=self.returncode)


@pytest.mark.parametrize(("cpus", "nproc", "threads"), [(8, 2, "4"), (2, 2, "1"), (1, 2, "1"), (None, 2, "1"), (None, 1, "1"), (16, 3, "5")])
def test_launch_splits_the_cores_between_the_ranks(monkeypatch, cpus, nproc, threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(distributed.os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(distributed.shutil, "which", lambda name: "/opt/bin/torchrun")
    run = _Run(0)
    monkeypatch.setattr(distributed.subprocess, "run", run)
    distributed.launch_torchrun(nproc, ["-m", "m"])
    (cmd, env), = run.seen
    assert cmd == ["/opt/bin/torchrun", "--standalone", f"--nproc_per_node={nproc}", "-m", "m"]
    assert env["OMP_NUM_THREADS"] == threads
    assert env["PATH"] == os.environ["PATH"], "the ranks inherit the environment"


def test_launch_keeps_a_thread_count_the_user_set_and_raises_on_a_failed_rank(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setattr(distributed.os, "cpu_count", lambda: 64)
    run = _Run(3)
    monkeypatch.setattr(distributed.subprocess, "run", run)
    with pytest.raises(RuntimeError, match=r"torchrun with 2 processes failed \(exit 3\)"):
        distributed.launch_torchrun(2, ["-m", "m"])
    assert run.seen[0][1]["OMP_NUM_THREADS"] == "7"
