"""The evaluation's fixed costs, each against the way it was computed before, in one process (issue 14, item 3).

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
        "provenance": provenance(),
    }
    atomic_write_json(a.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
