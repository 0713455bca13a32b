"""One-call GPU check (run by ``benchmarks/gpu_check.sh`` on a lent GPU; under 5 minutes on an H100).

1. bf16 training steps of the default U-Net and of a larger one (``res-large`` at 16x16 latents) with the
   project's Trainer (bf16 autocast, fp32 master weights, fused AdamW, channels_last): images/s, peak memory,
   finite losses, and a bf16-vs-fp32 loss agreement check on one batch;
2. guided DDIM-50 sampling images/s of the default U-Net;
3. a 2-process NCCL DDP smoke test (1 process vs 2, same global batch) when 2 GPUs are present.

Results: ``reports/benchmarks/gpu_check.json`` (``gpu_check_dry_run.json`` with ``--dry-run``; also under ``$OUT`` when
``OUT`` is set), rendered by ``python -m benchmarks.report``. ``--dry-run`` runs the same
code on the CPU with tiny settings, to check the script itself on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.provenance import provenance
from components.config import load_params
from components.diffusion import diffusion_loss, make_betas, sample
from components.io import atomic_write_json
from components.models.summary import count_parameters
from components.models.unet import UNet, UNetConfig
from components.training.common import autocast
from components.training.distributed import DistContext
from components.training.loop import Batch, LoopConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(params, preset: str | None, channels, latent: tuple[int, int, int]) -> UNet:
    unet = params.train_diffusion.unet
    if preset is not None:
        unet = unet.model_copy(update={"preset": preset, "blocks": None, "channels": tuple(channels),
                                       "attention_levels": (False,) * (len(channels) - 1) + (True,)})
    torch.manual_seed(0)
    return UNet(UNetConfig.from_params(unet, in_channels=latent[0], out_channels=latent[0], sample_size=latent[1], num_classes=10))


def train_check(name: str, model: UNet, latent, batch: int, steps: int, device: torch.device, channels_last: bool) -> dict:
    betas = make_betas("scaled_linear", 1000, 0.00085, 0.012).to(device)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8 * batch, *latent, generator=g).to(device)
    y = torch.randint(0, 10, (8 * batch,), generator=g).to(device)
    losses: list[float] = []

    def loss_fn(net, b: Batch):
        gen = b.generator(device)
        t = b.draw(torch.randint, (), gen, low=0, high=1000, device=device)
        eps = b.draw(torch.randn, latent, gen, device=device)
        idx = b.indices.to(device)
        x0 = z[idx].contiguous(memory_format=torch.channels_last) if channels_last else z[idx]
        loss = diffusion_loss(net, x0, y[idx], betas, "epsilon", t=t, noise=eps)
        losses.append(loss.item())
        return loss, {}

    def run(n_steps: int) -> float:
        cfg = LoopConfig(batch_size=batch, max_images=n_steps * batch, lr=1e-4, ema_decay=0.999, channels_last=channels_last, log_every=10**9)
        trainer = Trainer(model, cfg, dataset_size=len(z), seed=0, ctx=DistContext(device=device), progress=False)
        _sync(device)
        t0 = time.perf_counter()
        trainer.run(loss_fn)
        _sync(device)
        return time.perf_counter() - t0

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run(3)  # warm-up
    seconds = run(steps)
    # bf16 vs fp32 loss on one fixed batch (same t and noise)
    model.eval()
    with torch.no_grad():
        gen = torch.Generator(device=device).manual_seed(5)
        t = torch.randint(0, 1000, (batch,), generator=gen, device=device)
        eps = torch.randn((batch, *latent), generator=gen, device=device)
        fp32 = diffusion_loss(model, z[:batch], y[:batch], betas, "epsilon", t=t, noise=eps).item()
        with autocast(device):
            bf16 = diffusion_loss(model, z[:batch], y[:batch], betas, "epsilon", t=t, noise=eps).item()
    return {
        "model": name, "parameters": count_parameters(model), "latent": list(latent), "batch": batch, "steps": steps,
        "channels_last": channels_last, "train_img_s": steps * batch / seconds,
        "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "losses_finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
        "loss_fp32": fp32, "loss_bf16": bf16, "bf16_rel_diff": abs(bf16 - fp32) / max(abs(fp32), 1e-8),
    }


@torch.no_grad()
def sample_check(model: UNet, latent, n: int, device: torch.device) -> dict:
    model.eval()
    betas = make_betas("scaled_linear", 1000, 0.00085, 0.012)
    labels = torch.arange(n, device=device) % 10
    for rep in range(2):  # warm-up, then timed
        g = torch.Generator(device=device).manual_seed(rep)
        x = torch.randn(n, *latent, generator=g, device=device)
        _sync(device)
        t0 = time.perf_counter()
        with autocast(device):
            out = sample(model, x, betas=betas, sampler="ddim", num_steps=50, guidance_scale=3.0, class_labels=labels, generator=g)
        _sync(device)
        seconds = time.perf_counter() - t0
    return {"images": n, "steps": 50, "guidance": 3.0, "sample_img_s": n / seconds, "finite": bool(torch.isfinite(out).all())}


def ddp_check(tmp: Path, device: str) -> dict:
    worker = ROOT / "tests" / "workers" / "tiny_trainer.py"
    one, two = tmp / "one.safetensors", tmp / "two.safetensors"
    base = [sys.executable, str(worker), "--steps", "6", "--device", device]
    subprocess.run([*base, "--out", str(one)], check=True, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    r = subprocess.run([*torchrun, str(worker), "--steps", "6", "--device", device, "--out", str(two)], capture_output=True, text=True)
    if r.returncode:
        return {"ok": False, "error": r.stderr[-2000:]}
    from safetensors.torch import load_file

    a, b = load_file(str(one)), load_file(str(two))
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    return {"ok": diff < 1e-3, "max_abs_diff": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny settings on the CPU (checks the script, not the GPU)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not a.dry_run else "cpu")
    if device.type != "cuda" and not a.dry_run:
        raise SystemExit("no CUDA device: run with --dry-run to check the script on the CPU")
    params = load_params(a.params)
    batch, steps, n = (16, 2, 8) if a.dry_run else (512, 30, 1000)
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
                    "torch": torch.__version__, "gpus": torch.cuda.device_count(), "train": [], "dry_run": a.dry_run}
    default = build(params, None, None, (4, 8, 8)).to(device)
    for cl in (False, True):
        report["train"].append(train_check("default", default, (4, 8, 8), batch, steps, device, cl))
        print(json.dumps(report["train"][-1]), flush=True)
    large_channels = (64, 128) if a.dry_run else (192, 384, 384)
    large = build(params, "res-large", large_channels, (4, 16, 16)).to(device)
    report["train"].append(train_check("res-large", large, (4, 16, 16), batch // 2, steps, device, True))
    print(json.dumps(report["train"][-1]), flush=True)
    report["sample"] = sample_check(default, (4, 8, 8), n, device)
    print(json.dumps(report["sample"]), flush=True)
    if torch.cuda.device_count() >= 2 or a.dry_run:
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "latentflow_gpu_check"
        tmp.mkdir(parents=True, exist_ok=True)
        report["ddp"] = ddp_check(tmp, "cpu" if a.dry_run else "cuda")
        print(json.dumps(report["ddp"]), flush=True)
    else:
        report["ddp"] = {"ok": None, "note": "one GPU: the 2-process NCCL smoke test needs two"}
    report["ok"] = all(t["losses_finite"] and t["bf16_rel_diff"] < 0.05 for t in report["train"]) and report["sample"]["finite"] \
        and report["ddp"].get("ok") is not False
    report["provenance"] = provenance()
    name = "gpu_check_dry_run.json" if a.dry_run else "gpu_check.json"  # only a real GPU run is reported
    for out in [ROOT / "reports" / "benchmarks" / name, *([Path(os.environ["OUT"]) / name] if os.environ.get("OUT") else [])]:
        atomic_write_json(out, report)
    print("gpu_check:", "OK" if report["ok"] else "FAILED")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
