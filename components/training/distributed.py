"""Single-process or ``torchrun`` data-parallel training (DDP: gloo on the CPU, NCCL on CUDA).

One training loop serves both: :func:`init_distributed` reads torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``) and returns a :class:`DistContext`; without torchrun it is a
world of one. Only rank 0 logs and writes files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank (e.g. the resume decision, so all ranks start at one step)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of ``value`` over ranks (for logging; gradients are averaged by DDP itself)."""
        if not self.distributed:
            return value
        out = value.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size


def under_torchrun() -> bool:
    """True when this process was started by torchrun (or any launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group when started by torchrun; else a world of one on ``device``.

    Under torchrun on CUDA each rank takes ``cuda:LOCAL_RANK`` and NCCL; on the CPU, gloo.
    """
    if not under_torchrun():
        return DistContext(device=device)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The command that re-runs ``argv`` (a ``python -m ...`` argument list) under torchrun with ``nproc`` ranks
    on this machine (``--standalone``: a local rendezvous on a free port)."""
    launcher = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    return [launcher, "--standalone", f"--nproc_per_node={nproc}", *argv]


def launch_torchrun(nproc: int, argv: list[str]) -> None:
    """Run ``argv`` under torchrun and raise with the exit code when any rank fails."""
    cmd = torchrun_command(nproc, argv)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))}
    result = subprocess.run(cmd, env=env)
    if result.returncode:
        raise RuntimeError(f"torchrun with {nproc} processes failed (exit {result.returncode}): {' '.join(cmd)}")
