"""A tiny model trained by the project's Trainer, run as a subprocess by tests/test_training_loop.py
(plain ``python`` or ``torchrun``). Prints ``step N`` when step N's loss is computed and ``checkpoint N`` once
the checkpoint after N steps is completely written (the Trainer's ``on_checkpoint`` hook); rank 0 writes the
final weights (safetensors) to ``--out``.

For exact kill points, ``--hang-at-step N`` stops inside step N (loss computed; no backward, no optimizer
step) and ``--hang-after-checkpoint N`` right after checkpoint N, each after printing its line, until the
test kills the process: no race between the kill and the next step."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from components.training.distributed import init_distributed, shutdown_distributed
from components.training.loop import Batch, LoopConfig, Trainer


def _hang() -> None:
    """Wait for the test's SIGKILL (bounded, so a forgotten worker does not live for ever)."""
    signal.alarm(300)
    while True:
        time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoints", default=None)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--checkpoint-every", type=int, default=1, help="steps")
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds per step")
    ap.add_argument("--hang-at-step", type=int, default=-1, help="after printing 'step N', wait inside step N to be killed")
    ap.add_argument("--hang-after-checkpoint", type=int, default=-1, help="after printing 'checkpoint N', wait to be killed")
    ap.add_argument("--nan-at", type=int, default=-1, help="make the loss NaN at this step")
    ap.add_argument("--device", default="cpu", help="cpu (gloo) | cuda (NCCL; benchmarks/gpu_check.py)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    ctx = init_distributed(torch.device(a.device))
    torch.manual_seed(0)
    x = torch.randn(200, 3, 8, 8, generator=torch.Generator().manual_seed(1)).to(ctx.device)
    y = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(2)).to(ctx.device)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.SiLU(), torch.nn.Dropout(0.0),
        torch.nn.Conv2d(8, 3, 3, padding=1),
    )
    cfg = LoopConfig(batch_size=a.batch_size, max_images=a.steps * a.batch_size, lr=1e-2, warmup_images=2 * a.batch_size,
                     ema_decay=0.9, grad_accum=a.grad_accum, checkpoint_every_images=a.checkpoint_every * a.batch_size,
                     keep_checkpoints=2, log_every=1)

    def on_checkpoint(step: int, path: Path) -> None:
        print(f"checkpoint {step}", flush=True)
        if step == a.hang_after_checkpoint:
            _hang()

    trainer = Trainer(model, cfg, dataset_size=len(x), seed=7, ctx=ctx, checkpoint_dir=a.checkpoints, fingerprint="tiny", progress=False,
                      on_checkpoint=on_checkpoint)

    def loss_fn(net: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
        g = batch.generator(ctx.device)
        noise = batch.draw(torch.randn, (3, 8, 8), g, device=ctx.device)
        scale = batch.draw(torch.rand, (), g, device=ctx.device)
        idx = batch.indices.to(ctx.device)
        xb = x[idx] + scale[:, None, None, None] * noise
        target = torch.roll(x[idx], 1, dims=1) * (1 + y[idx])[:, None, None, None].float()
        loss = ((net(xb) - target) ** 2).mean()
        if batch.step == a.nan_at:
            loss = loss * float("nan")
        print(f"step {batch.step}", flush=True)
        if batch.step == a.hang_at_step:
            _hang()
        time.sleep(a.sleep)
        return loss, {}

    trainer.run(loss_fn)
    if ctx.is_main:
        state = {f"model.{k}": v.cpu().contiguous() for k, v in trainer.model.state_dict().items()}
        state.update({f"ema.{k}": v.cpu().contiguous() for k, v in trainer.ema.state_dict().items()})
        save_file(state, a.out)
    shutdown_distributed()


if __name__ == "__main__":
    main()
