"""The evaluation's fixed costs (and the training loop's optimizer step), each against the way it was computed
before, in one process (issue 14, item 3).

Three pieces of ``reference_stats`` and ``evaluate`` that the stage profile (``benchmarks/stage_profile.py``) found to
take most of those stages' time apart from sampling:

- **EfficientNet-Lite0 features** (``components.evaluation.features``): the extractor as it runs now (BatchNorm folded
  into the convolutions, ``components.models.effnet_lite.fuse_for_inference``; model and input in channels-last memory
  format) against the network as loaded in the default (contiguous) format, and against it in channels-last (the
  fusion alone); the same images, the same batch size (``--feature-batch``, 16 as when these were chosen). Also the
  largest feature difference.
- **EfficientNet-Lite0's batch size**: the extractor as shipped at its CPU default batch (4,
  ``components.evaluation.protocol.IMAGENET_CPU_BATCH``) against the same extractor at 16, the default before it; the
  same images, and the largest feature difference (a convolution computes each image on its own: expect 0).
- **The reference classifier's training step** (``components.evaluation.classifier``, batch 128 as in params.yaml):
  channels-last model and input against the default format, same initial weights.
- **The training loop's AdamW step** on the CPU (``components.training.loop.Trainer``) on the default U-Net's and
  autoencoder's parameters with fixed gradients: the multi-tensor (foreach) implementation it builds against torch's
  default there (a loop over the parameters), and torch's fused CPU kernel for reference; with the largest parameter
  difference after the same steps (the foreach one must give 0).
- **The Fréchet distance** of 1280-d statistics from fewer images than dimensions (as in evaluate: 500 images):
  ``components.evaluation.metrics.frechet_distance`` (two symmetric eigendecompositions) against pytorch-fid's
  ``calculate_frechet_distance`` (``scipy.linalg.sqrtm`` of the product, with its diagonal offset when that is singular), and the
  relative difference of the two values.

Each pair runs alternately (ours, peer, ours, peer...) after a warm-up; the figures are medians of ``--repeats`` runs
and the ratios are peer time / our time (> 1: ours is faster). Images and features are synthetic (the work does not
depend on the pixel values); the machine should be otherwise idle.

    python -m benchmarks.eval_speed                 # writes reports/benchmarks/eval_speed.json
    python -m benchmarks.eval_speed --repeats 2 --images 64 --out /tmp/eval_speed.json   # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_fid.fid_score import calculate_frechet_distance

from benchmarks.provenance import provenance
from components.evaluation.classifier import Classifier, ClassifierConfig
from components.evaluation.features import _to_unit_rgb, get_extractor
from components.evaluation.metrics import feature_statistics, frechet_distance
from components.evaluation.protocol import IMAGENET_CPU_BATCH
from components.io import atomic_write_json


def _median_pair(ours: Callable[[], object], peer: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of ``ours`` and ``peer``, run alternately ``repeats`` times each after one warm-up call each."""
    ours(), peer()
    t_ours, t_peer = [], []
    for _ in range(repeats):
        for fn, times in ((ours, t_ours), (peer, t_peer)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(t_ours), statistics.median(t_peer)


EFFNET_PEERS = {  # former ways of computing the same features: name -> (description, memory format of the unfused network)
    "contiguous": ("unfused, contiguous", torch.contiguous_format),
    "unfused": ("unfused, channels-last", torch.channels_last),
}


def effnet_features(images: np.ndarray, batch_size: int, repeats: int, peer: str = "contiguous") -> dict:
    """Seconds for the features of ``images``: the extractor as shipped (BatchNorm folded into the convolutions,
    channels-last) vs the same network as loaded (``load_effnet_lite0``, BatchNorm apart) in the ``peer`` layout:
    ``contiguous`` (the first way) or ``unfused`` (channels-last: the fusion alone)."""
    from components.models.effnet_lite import load_effnet_lite0

    ex = get_extractor("effnet_lite0", device="cpu")
    description, layout = EFFNET_PEERS[peer]
    former = load_effnet_lite0("cpu")[0].to(memory_format=layout)

    def peer_features() -> np.ndarray:
        out = []
        with torch.inference_mode():
            for s in range(0, len(images), batch_size):
                x = ex._preprocess(_to_unit_rgb(images[s : s + batch_size], ex.device)).contiguous(memory_format=layout)
                out.append(former.extract_features(x).mean(dim=(2, 3)).double().numpy())
        return np.concatenate(out)

    ours_s, peer_s = _median_pair(lambda: ex(images, batch_size=batch_size), peer_features, repeats)
    diff = float(np.abs(ex(images, batch_size=batch_size) - peer_features()).max())
    return {"images": len(images), "batch_size": batch_size, "ours": "BatchNorm folded, channels-last", "peer": description,
            "ours_s": round(ours_s, 3), "peer_s": round(peer_s, 3),
            "ours_images_per_s": round(len(images) / ours_s, 1), "peer_images_per_s": round(len(images) / peer_s, 1),
            "speedup": round(peer_s / ours_s, 3), "max_abs_feature_difference": diff}


def effnet_batch(images: np.ndarray, batch_size: int, peer_batch_size: int, repeats: int) -> dict:
    """Seconds for the features of ``images`` by the extractor as shipped, ``batch_size`` images per forward pass
    against ``peer_batch_size``, and the largest difference between the two feature arrays."""
    ex = get_extractor("effnet_lite0", device="cpu")
    ours_s, peer_s = _median_pair(lambda: ex(images, batch_size=batch_size), lambda: ex(images, batch_size=peer_batch_size), repeats)
    diff = float(np.abs(ex(images, batch_size=batch_size) - ex(images, batch_size=peer_batch_size)).max())
    return {"images": len(images), "ours": f"batch {batch_size}", "peer": f"batch {peer_batch_size}", "ours_s": round(ours_s, 3),
            "peer_s": round(peer_s, 3), "ours_images_per_s": round(len(images) / ours_s, 1),
            "peer_images_per_s": round(len(images) / peer_s, 1), "speedup": round(peer_s / ours_s, 3), "max_abs_feature_difference": diff}


def classifier_steps(batch: int, side: int, steps: int, repeats: int) -> dict:
    """Seconds for ``steps`` AdamW steps of the reference classifier: channels-last vs the default format."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, side, side, generator=gen) * 2 - 1
    y = torch.randint(0, 10, (batch,), generator=gen)
    torch.manual_seed(0)
    base = Classifier(ClassifierConfig())

    def trainer(memory_format: torch.memory_format) -> Callable[[], None]:
        model = copy.deepcopy(base).to(memory_format=memory_format).train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        xb = x.contiguous(memory_format=memory_format)

        def run() -> None:
            for _ in range(steps):
                loss = F.cross_entropy(model(xb), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return run

    ours_s, peer_s = _median_pair(trainer(torch.channels_last), trainer(torch.contiguous_format), repeats)
    return {"batch_size": batch, "image_side": side, "steps": steps, "ours_s_per_step": round(ours_s / steps, 4),
            "peer_s_per_step": round(peer_s / steps, 4), "speedup": round(peer_s / ours_s, 3)}


def optimizer_steps(network: str, steps: int, repeats: int) -> dict:
    """Seconds per AdamW step on the parameters of the default ``network`` (``unet`` or ``autoencoder``, as params.yaml
    builds them), fixed gradients: the optimizer the training loop builds on the CPU
    (:class:`~components.training.loop.Trainer`: foreach) against torch's default there (a loop over the parameters),
    and torch's fused CPU kernel for reference. Also the largest parameter difference after the same number of steps:
    0 for the foreach one, rounding for the fused one."""
    from components.config import load_params
    from components.models.autoencoder import build_autoencoder
    from components.models.unet import UNet, UNetConfig
    from components.training.autoencoder import autoencoder_config
    from components.training.distributed import DistContext
    from components.training.loop import LoopConfig, Trainer

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    torch.manual_seed(0)
    if network == "unet":
        model = UNet(UNetConfig.from_params(params.train_diffusion.unet, in_channels=4, out_channels=4, sample_size=8, num_classes=10))
    else:
        model = build_autoencoder(autoencoder_config(params.train_autoencoder, 1, 32))
    grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 1e-3 for i, p in enumerate(model.parameters())]

    def optimizer(kind: str) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
        net = copy.deepcopy(model)
        if kind == "ours":
            opt = Trainer(net, LoopConfig(batch_size=1, max_images=1, lr=1e-3), dataset_size=1, seed=0, ctx=DistContext(),
                          progress=False).optimizer
        else:
            opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0, **({"fused": True} if kind == "fused" else {}))
        ps = list(net.parameters())
        for p, g in zip(ps, grads, strict=True):
            p.grad = g.clone()
        return opt, ps

    opts = {kind: optimizer(kind) for kind in ("ours", "peer", "fused")}

    def stepper(kind: str) -> Callable[[], None]:
        def run() -> None:
            for _ in range(steps):
                opts[kind][0].step()
        return run

    ours_s, peer_s = _median_pair(stepper("ours"), stepper("peer"), repeats)
    fused_s, _ = _median_pair(stepper("fused"), lambda: None, repeats)  # the same number of steps as the other two

    def max_difference(kind: str) -> float:
        return max(float((a - b).abs().max().detach()) for a, b in zip(opts[kind][1], opts["peer"][1], strict=True))

    return {"network": network, "parameters": sum(p.numel() for p in model.parameters()), "tensors": len(grads), "steps": steps,
            "ours": "foreach (the training loop on the CPU)", "peer": "torch's default on the CPU (per-parameter loop)",
            "ours_s_per_step": round(ours_s / steps, 5), "peer_s_per_step": round(peer_s / steps, 5), "speedup": round(peer_s / ours_s, 3),
            "max_abs_parameter_difference": max_difference("ours"), "fused_s_per_step": round(fused_s / steps, 5),
            "fused_speedup": round(peer_s / fused_s, 3), "fused_max_abs_parameter_difference": max_difference("fused")}


def frechet(n: int, dim: int, repeats: int) -> dict:
    """Seconds for one Fréchet distance of ``dim``-d statistics of ``n`` images each: ours vs pytorch-fid's formula."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(dim, dim)) * 0.05
    a = np.maximum(rng.normal(size=(n, dim)) @ mix, 0)  # ReLU-like correlated features, rank n - 1 < dim
    b = np.maximum(rng.normal(size=(n, dim)) @ mix + 0.1, 0)
    stats = (*feature_statistics(a), *feature_statistics(b))
    ours_s, peer_s = _median_pair(lambda: frechet_distance(*stats), lambda: calculate_frechet_distance(*stats), repeats)
    ours, peer = frechet_distance(*stats), calculate_frechet_distance(*stats)
    return {"images": n, "dim": dim, "ours_s": round(ours_s, 4), "peer_s": round(peer_s, 4), "speedup": round(peer_s / ours_s, 3),
            "ours": ours, "peer": peer, "relative_difference": abs(ours - peer) / abs(peer)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=160, help="images per EfficientNet-Lite0 timing run")
    ap.add_argument("--feature-batch", type=int, default=16, help="images per forward pass in the fusion and layout pairs")
    ap.add_argument("--small-batch", type=int, default=IMAGENET_CPU_BATCH, help="the batch pair's ours (evaluate's CPU default); its peer is --feature-batch")
    ap.add_argument("--classifier-steps", type=int, default=10, help="optimizer steps per classifier timing run")
    ap.add_argument("--optimizer-steps", type=int, default=20, help="AdamW steps per optimizer timing run")
    ap.add_argument("--fd-images", type=int, default=500, help="images behind each Fréchet statistic (evaluate: 500)")
    ap.add_argument("--fd-dim", type=int, default=1280, help="feature dimension (EfficientNet-Lite0: 1280)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--out", type=Path, default=Path("reports/benchmarks/eval_speed.json"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    images = np.random.default_rng(0).integers(0, 256, size=(a.images, 32, 32, 1), dtype=np.uint8)
    result = {
        "command": "python -m benchmarks.eval_speed"
        + "".join(f" --{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "out" and v != ap.get_default(k)),
        "repeats": a.repeats,
        "effnet_lite0_features": effnet_features(images, a.feature_batch, a.repeats),
        "effnet_lite0_fusion": effnet_features(images, a.feature_batch, a.repeats, peer="unfused"),
        "effnet_lite0_batch": effnet_batch(images, a.small_batch, a.feature_batch, a.repeats),
        "classifier_training": classifier_steps(128, 32, a.classifier_steps, a.repeats),
        "frechet_distance": frechet(a.fd_images, a.fd_dim, a.repeats),
        "training_optimizer": [optimizer_steps(net, a.optimizer_steps, a.repeats) for net in ("unet", "autoencoder")],
        "provenance": provenance(),
    }
    atomic_write_json(a.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
