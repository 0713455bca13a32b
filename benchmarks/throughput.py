"""Training and sampling throughput: our latent U-Net and loop vs diffusers' ``UNet2DModel`` and its usual loop.

Both models are class-conditional, take the same 4x8x8 latents (the default autoencoder's) and are sized
to within 10 % of the same parameter count. Measured in one process, alternating ours/peer, median of
``--repeats`` runs after a warm-up:

- training images/s: ours = the project's :class:`~components.training.loop.Trainer` (EMA, clipping, per-step
  seeded draws, DistributedSampler batches); peer = the loop of diffusers' training examples (``DDPMScheduler.add_noise``,
  MSE on epsilon, AdamW, ``diffusers.training_utils.EMAModel``, clipping) at the same batch;
- sampling images/s: 50 DDIM steps with classifier-free guidance (cond + uncond batched); ours =
  :func:`components.diffusion.sample`, peer = ``DDIMScheduler`` with the usual denoising loop.

    python -m benchmarks.throughput               # writes reports/benchmarks/throughput.json and a section of reports/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.provenance import provenance
from components.config import load_params
from components.diffusion import make_betas, sample
from components.io import atomic_write_json
from components.models.summary import count_parameters
from components.models.unet import UNet, UNetConfig
from components.training.common import autocast
from components.training.distributed import DistContext
from components.training.loop import Batch, LoopConfig, Trainer

LATENT = (4, 8, 8)
NUM_CLASSES = 10


def our_unet(params_path: str) -> UNet:
    p = load_params(params_path).train_diffusion
    torch.manual_seed(0)
    return UNet(UNetConfig.from_params(p.unet, in_channels=LATENT[0], out_channels=LATENT[0], sample_size=LATENT[1], num_classes=NUM_CLASSES))


def peer_unet(target_params: int, levels: int, layers_per_block: int):
    """diffusers' UNet2DModel (attention on the lower-resolution levels, as ours) with its width searched so the
    parameter count is as close as possible to ``target_params``."""
    from diffusers import UNet2DModel

    def build(width: int):
        chans = tuple(width * (1 + i // 2) if levels > 2 else (width, width * 3 // 2)[i] for i in range(levels))
        chans = tuple(c - c % 8 for c in chans)
        down = tuple("DownBlock2D" if i == 0 else "AttnDownBlock2D" for i in range(levels))
        up = tuple("AttnUpBlock2D" if i < levels - 1 else "UpBlock2D" for i in range(levels))
        torch.manual_seed(0)
        return UNet2DModel(sample_size=LATENT[1], in_channels=LATENT[0], out_channels=LATENT[0], block_out_channels=chans,
                           layers_per_block=layers_per_block, down_block_types=down, up_block_types=up, norm_num_groups=8,
                           attention_head_dim=8, num_class_embeds=NUM_CLASSES + 1)

    best = min(range(16, 512, 8), key=lambda w: abs(sum(p.numel() for p in build(w).parameters()) - target_params))
    return build(best)


def synthetic_latents(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, *LATENT, generator=g).to(device), torch.randint(0, NUM_CLASSES, (n,), generator=g).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ours_training(model: UNet, data, batch: int, steps: int, betas: torch.Tensor, device: torch.device) -> float:
    """Images/s of ``steps`` steps of the project's Trainer (fresh optimizer/EMA each call; bf16 autocast on CUDA)."""
    from components.diffusion import diffusion_loss

    z, y = data
    cfg = LoopConfig(batch_size=batch, max_images=steps * batch, lr=1e-4, ema_decay=0.999, log_every=10**9)
    trainer = Trainer(model, cfg, dataset_size=len(z), seed=0, ctx=DistContext(device=device), progress=False)
    betas = betas.to(device)

    def loss_fn(net, b: Batch):
        g = b.generator(device)
        t = b.draw(torch.randint, (), g, low=0, high=len(betas), device=device)
        eps = b.draw(torch.randn, LATENT, g, device=device)
        idx = b.indices.to(device)
        return diffusion_loss(net, z[idx], y[idx], betas, "epsilon", t=t, noise=eps), {}

    _sync(device)
    t0 = time.perf_counter()
    trainer.run(loss_fn)
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def time_peer_training(model, data, batch: int, steps: int, device: torch.device) -> float:
    """Images/s of the loop in diffusers' training examples (EMAModel, add_noise, MSE, AdamW, clipping;
    bf16 autocast on CUDA, as ``accelerate --mixed_precision bf16`` would)."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    z, y = data
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ema = EMAModel(model.parameters(), decay=0.999)
    g = torch.Generator(device=device).manual_seed(0)
    model.train()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(z), (batch,), generator=g, device=device)
        x0, labels = z[idx], y[idx]
        noise = torch.randn(x0.shape, generator=g, device=device)
        t = torch.randint(0, 1000, (batch,), generator=g, device=device)
        with autocast(device):
            pred = model(sched.add_noise(x0, noise, t), t, class_labels=labels).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.step(model.parameters())
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


@torch.no_grad()
def time_ours_sampling(model: UNet, n: int, steps: int, guidance: float, betas: torch.Tensor, device: torch.device) -> float:
    model.eval()
    g = torch.Generator(device=device).manual_seed(1)
    labels = torch.arange(n, device=device) % NUM_CLASSES
    _sync(device)
    t0 = time.perf_counter()
    x = torch.randn(n, *LATENT, generator=g, device=device)
    with autocast(device):
        sample(model, x, betas=betas, sampler="ddim", num_steps=steps, guidance_scale=guidance, class_labels=labels, generator=g)
    _sync(device)
    return n / (time.perf_counter() - t0)


@torch.no_grad()
def time_peer_sampling(model, n: int, steps: int, guidance: float, device: torch.device) -> float:
    from diffusers import DDIMScheduler

    model.eval()
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(steps)
    g = torch.Generator(device=device).manual_seed(1)
    labels = torch.arange(n, device=device) % NUM_CLASSES
    both = torch.cat([labels, torch.full_like(labels, NUM_CLASSES)])
    _sync(device)
    t0 = time.perf_counter()
    x = torch.randn(n, *LATENT, generator=g, device=device)
    for t in sched.timesteps:
        with autocast(device):
            cond, uncond = model(torch.cat([x, x]), t, class_labels=both).sample.float().chunk(2)
        x = sched.step(uncond + guidance * (cond - uncond), t, x).prev_sample
    _sync(device)
    return n / (time.perf_counter() - t0)


def alternate(fn_ours, fn_peer, repeats: int) -> tuple[list[float], list[float]]:
    fn_ours(), fn_peer()  # warm-up (allocator, kernels)
    ours, peer = [], []
    for _ in range(repeats):
        ours.append(fn_ours())
        peer.append(fn_peer())
    return ours, peer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--batch", type=int, default=128, help="training batch (both)")
    ap.add_argument("--train-steps", type=int, default=8, help="optimizer steps per timed training run")
    ap.add_argument("--sample-n", type=int, default=100, help="images per timed sampling run")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (bf16 autocast on CUDA for both)")
    ap.add_argument("--out", default="reports/benchmarks/throughput.json")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    ours = our_unet(a.params).to(device)
    n_ours = count_parameters(ours)
    peer = peer_unet(n_ours, levels=len(ours.config.channels), layers_per_block=2).to(device)
    n_peer = count_parameters(peer)
    ratio = n_peer / n_ours
    if abs(ratio - 1) > 0.10:
        raise SystemExit(f"could not size the peer within 10 % of {n_ours} parameters (got {n_peer})")
    betas = make_betas("scaled_linear", 1000, 0.00085, 0.012)
    data = synthetic_latents(max(4096, 4 * a.batch), device)
    print(f"ours: {n_ours:,} parameters ({ours.config.preset}); diffusers UNet2DModel: {n_peer:,} ({ratio:.3f}x), "
          f"block_out_channels={tuple(peer.config.block_out_channels)}", flush=True)
    tr_ours, tr_peer = alternate(lambda: time_ours_training(ours, data, a.batch, a.train_steps, betas, device),
                                 lambda: time_peer_training(peer, data, a.batch, a.train_steps, device), a.repeats)
    print(f"train img/s  ours {statistics.median(tr_ours):.1f}  peer {statistics.median(tr_peer):.1f}", flush=True)
    sa_ours, sa_peer = alternate(lambda: time_ours_sampling(ours, a.sample_n, a.sample_steps, a.guidance, betas, device),
                                 lambda: time_peer_sampling(peer, a.sample_n, a.sample_steps, a.guidance, device), a.repeats)
    print(f"sample img/s ours {statistics.median(sa_ours):.2f}  peer {statistics.median(sa_peer):.2f}", flush=True)
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "threads": torch.get_num_threads(),
        "batch": a.batch, "train_steps_per_run": a.train_steps,
        "sample_n": a.sample_n, "sample_steps": a.sample_steps, "guidance": a.guidance, "repeats": a.repeats,
        "ours": {"parameters": n_ours, "preset": ours.config.preset, "channels": list(ours.config.channels),
                 "train_img_s": tr_ours, "sample_img_s": sa_ours},
        "peer": {"model": "diffusers.UNet2DModel", "parameters": n_peer, "block_out_channels": list(peer.config.block_out_channels),
                 "layers_per_block": 2, "train_img_s": tr_peer, "sample_img_s": sa_peer},
        "train_ratio": statistics.median(tr_ours) / statistics.median(tr_peer),
        "sample_ratio": statistics.median(sa_ours) / statistics.median(sa_peer),
        "provenance": provenance(),
    }
    atomic_write_json(Path(a.out), result)
    print(json.dumps({k: result[k] for k in ("train_ratio", "sample_ratio")}))


if __name__ == "__main__":
    main()
