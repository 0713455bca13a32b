"""A tiny distillation round (components/training/distill.py) run as a subprocess by tests/test_distill.py. Prints
``step N`` when step N's loss is computed and ``checkpoint N`` once the checkpoint after N steps is completely written;
writes the student's final (EMA) weights to ``--out``. ``--hang-at-step N`` waits inside step N (after its loss, before the
optimizer step), ``--hang-after-checkpoint N`` right after checkpoint N, until the test kills it."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import components.training.distill as distill
from components.diffusion import make_betas
from components.models.unet import UNet, UNetConfig
from components.training.distributed import DistContext
from components.training.loop import LoopConfig


def _hang() -> None:
    signal.alarm(300)
    while True:
        time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoints", default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--hang-at-step", type=int, default=-1)
    ap.add_argument("--hang-after-checkpoint", type=int, default=-1)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = UNet(UNetConfig(in_channels=2, out_channels=2, sample_size=4, num_classes=3, channels=(8, 16), num_heads=2, num_class_tokens=1))
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(40) % 3
    mean = torch.randn(40, 2, 4, 4, generator=g) + labels.reshape(-1, 1, 1, 1).float()
    logvar = torch.full_like(mean, -3.0)
    loop = LoopConfig(batch_size=8, max_images=8 * a.steps, lr=1e-3, warmup_images=16, ema_decay=0.9, checkpoint_every_images=16,
                      keep_checkpoints=2, log_every=1)
    original = distill.student_loss

    def loss_with_hooks(student, z_t, t, y, target, ac, prediction_type):  # the step number: the Trainer's step counter
        loss = original(student, z_t, t, y, target, ac, prediction_type)
        step = loss_with_hooks.step
        loss_with_hooks.step += 1
        print(f"step {step}", flush=True)
        if step == a.hang_at_step:
            _hang()
        return loss

    def on_checkpoint(step: int, path: Path) -> None:
        print(f"checkpoint {step}", flush=True)
        if step == a.hang_after_checkpoint:
            _hang()

    from components.training.state import latest_training_state, load_training_state

    latest = latest_training_state(a.checkpoints) if a.checkpoints else None
    loss_with_hooks.step = int(load_training_state(latest)["step"]) if latest is not None else 0
    distill.student_loss = loss_with_hooks
    student, _ = distill.distill_round(teacher, "epsilon", distill.DistillRound(2, 4, 2.0), mean, logvar, labels,
                                       make_betas("linear", 100, 1e-4, 0.02), loop, student_prediction_type="v_prediction", seed=5,
                                       ctx=DistContext(device=torch.device("cpu")), checkpoint_dir=a.checkpoints, fingerprint="tiny",
                                       progress=False, on_checkpoint=on_checkpoint)
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, a.out)


if __name__ == "__main__":
    main()
