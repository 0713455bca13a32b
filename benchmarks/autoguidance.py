"""Autoguidance (Karras et al. 2024) against classifier-free guidance on a finished run (issue 14, item 2).

Classifier-free guidance (Ho & Salimans 2022, eq. 6) extrapolates from the unconditional prediction u to the
conditional one c: out = u + w (c - u). Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version
of itself", eq. 2) extrapolates from a worse model's conditional prediction b instead: out = b + w (c - b), which they
report sharpens the images without the loss of variety that CFG's pull toward class prototypes costs. Our default's
gap to issue 14's targets is exactly that variety (EfficientNet-Lite0 recall 0.67-0.68x real at class consistency
0.98), so this script measures it on the run's own U-Net.

The "bad" models (``GUIDES``) are the run's U-Net recipe degraded as the paper degrades its guides, each trained here
on the run's latents with the run's seed: ``quarter``, the same network on a quarter of the images; ``small``, half
the channels on half the images. Each is used in two ways (``--modes``): ``cond`` is autoguidance proper (b is the
bad model's conditional prediction); ``uncond`` is CFG with the bad model's unconditional prediction in place of the
good one's. Both run at every step (the paper's setting). ``--combined`` adds CFG at ``sample.guidance`` in its
``sample.guidance_interval`` plus autoguidance by the ``quarter`` guide at weight a on the same steps:
out = c + (w - 1)(c - u) + (a - 1)(c - b). One row is CFG exactly as the ``sample`` stage runs it (its guidance and
interval), the reference; every row is scored by ``components.evaluation.tradeoff.guidance_sweep`` (the same noise for
every row: seed ``base.seed + 2``, as ``benchmarks.frontier``) with the run's classifier and reference statistics.

    .venv/bin/python -m benchmarks.autoguidance --run RUN --num-threads 2 --out reports/benchmarks/autoguidance.json

RUN is a finished ``make run`` folder (params.yaml, data/dataset, models/, reference_stats/). CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from benchmarks.provenance import provenance
from components.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]

# guide name -> train_diffusion overrides on top of the run's params (the paper's guides: smaller and/or shorter-trained)
GUIDES: dict[str, dict] = {
    "quarter": {"max_images": 11264},  # 88 steps of 128: a quarter of the default's 350
    "small": {"max_images": 22528, "unet": {"channels": [32, 48]}},  # half the widths, half the images
}


class GuideSwap(torch.nn.Module):
    """The ``model(x, t, labels)`` that :func:`components.diffusion.samplers.guided` calls, answering its batched pair
    [x; x] with labels [c; null] by [good(x, c); v], where v is what the guidance extrapolates from:

    - ``mode="cond"``: v = bad(x, c), so guided's u + w (c - u) becomes autoguidance, b + w (c - b) (Karras et al. 2024, eq. 2);
    - ``mode="uncond"``: v = bad(x, null), CFG with the bad model's unconditional prediction;
    - ``mode="combined"`` (with ``cfg_scale`` w > 1 and ``weight`` a): v = u - (a - 1) / (w - 1) (c - b), so that
      u' + w (c - u') = c + (w - 1)(c - u) + (a - 1)(c - b): CFG and autoguidance at once.

    Any other call (a conditional-only pass: guidance 1, or outside the guidance interval) is the good model's alone."""

    def __init__(self, good: torch.nn.Module, bad: torch.nn.Module, mode: str, *, cfg_scale: float | None = None, weight: float | None = None):
        super().__init__()
        if mode not in ("cond", "uncond", "combined"):
            raise ValueError(f"mode must be cond, uncond or combined, got {mode!r}")
        if mode == "combined" and (cfg_scale is None or weight is None or cfg_scale == 1.0):
            raise ValueError("mode combined needs cfg_scale != 1 (the sampler's guidance) and weight")
        self.good, self.bad, self.mode, self.cfg_scale, self.weight = good, bad, mode, cfg_scale, weight

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0] // 2
        paired = (class_labels is not None and x.shape[0] % 2 == 0 and n > 0 and bool((class_labels[n:] == -1).all())
                  and not bool((class_labels[:n] == -1).any()))
        if not paired:
            return self.good(x, t, class_labels)
        c_labels = class_labels[:n]
        if self.mode == "combined":
            out = self.good(x, t, class_labels)
            cond, uncond = out[:n], out[n:]
            bad = self.bad(x[n:], t[n:], c_labels)
            return torch.cat([cond, uncond - (self.weight - 1.0) / (self.cfg_scale - 1.0) * (cond - bad)])
        cond = self.good(x[:n], t[:n], c_labels)
        bad = self.bad(x[n:], t[n:], c_labels if self.mode == "cond" else class_labels[n:])
        return torch.cat([cond, bad])


def train_guide(name: str, run: Path, raw_params: dict, work: Path) -> tuple[Path, dict]:
    """Train guide ``name`` on the run's latents into ``work/name/models`` (reused when already there with the same
    params); returns the models folder and its training record."""
    from components.config import Params
    from pipelines.presets import deep_merge
    from pipelines.stages import train_diffusion

    raw = copy.deepcopy(raw_params)
    raw["train_diffusion"] = deep_merge(raw["train_diffusion"], GUIDES[name])
    stamp = {"train_diffusion": raw["train_diffusion"], "autoencoder": str(run / "models/autoencoder")}
    gdir = work / name
    done = gdir / "trained.json"
    if done.is_file() and json.loads(done.read_text())["stamp"] == stamp:
        return gdir / "models", json.loads(done.read_text())["train"]
    shutil.rmtree(gdir, ignore_errors=True)
    (gdir / "models").mkdir(parents=True)
    shutil.copytree(run / "models/autoencoder", gdir / "models/autoencoder")
    t0 = time.perf_counter()
    res = train_diffusion.run(Params.model_validate(raw), data_dir=run / "data/dataset", models_dir=gdir / "models", metrics_dir=gdir / "metrics")
    train = {k: res[k] for k in ("images_seen", "final_loss", "parameters", "macs_per_forward") if k in res}
    train["stage_seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(done, {"stamp": stamp, "train": train})
    return gdir / "models", train


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="finished run folder (params.yaml, data/dataset, models/, reference_stats/)")
    ap.add_argument("--guides", nargs="+", default=list(GUIDES), choices=list(GUIDES))
    ap.add_argument("--modes", nargs="+", default=["cond", "uncond"], choices=["cond", "uncond"])
    ap.add_argument("--guidances", nargs="+", type=float, default=[1.5, 2.0, 3.0, 5.0], help="w of the cond / uncond rows")
    ap.add_argument("--combined", nargs="*", type=float, default=[1.5, 2.0],
                    help="autoguidance weights a added to CFG at sample.guidance in its interval (quarter guide); none: no such rows")
    ap.add_argument("--num-per-class", type=int, default=50)
    ap.add_argument("--extractors", nargs="+", default=["classifier", "effnet_lite0"])
    ap.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: the run's base.num_threads)")
    ap.add_argument("--work", type=Path, default=None, help="keep the guides here (default: RUN/autoguidance_work); reused when trained")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/autoguidance.json")
    args = ap.parse_args(argv)

    from components.config import Params, load_params, params_dict
    from components.data.artifact import read_dataset
    from components.evaluation.classifier import load_classifier
    from components.evaluation.protocol import build_extractors, extractor_batch_size, load_reference
    from components.evaluation.tradeoff import guidance_sweep
    from components.generation import LatentDiffusionGenerator
    from pipelines.stages.runtime import setup

    run = args.run.resolve()
    raw = params_dict(load_params(run / "params.yaml"))
    if args.num_threads is not None:
        raw["base"]["num_threads"] = int(args.num_threads)
    params = Params.model_validate(raw)
    device = setup(params)
    s = params.sample
    manifest = json.loads((run / "data/dataset/manifest.json").read_text())
    _, refs = load_reference(run / "reference_stats", manifest["dataset_digest"])
    clf = load_classifier(run / "models/classifier", device)
    extractors, _ = build_extractors(args.extractors, clf, device=device)
    ds = read_dataset(run / "data/dataset")
    work = (args.work or run / "autoguidance_work").resolve()
    rows: list[dict] = []
    guides: dict[str, dict] = {}

    def score(label: str, unet: torch.nn.Module, guidances: list[float], interval: bool, **extra) -> None:
        gen = LatentDiffusionGenerator.from_dir(run / "models", device=device)
        gen.unet = unet
        t0 = time.perf_counter()
        out = guidance_sweep(gen, clf, extractors, refs, ds.images["train"], ds.labels["train"], guidances=guidances,
                             num_per_class=args.num_per_class, sampler=s.sampler, steps=s.steps, seed=params.base.seed + 2,
                             baseline_seed=params.base.seed, eta=s.eta, timestep_spacing=s.timestep_spacing, pr_k=params.evaluate.pr_k,
                             batch_size=s.batch_size, generate_kwargs={"guidance_interval": s.guidance_interval} if interval else {},
                             feature_batch_sizes={e: extractor_batch_size(e, None) for e in args.extractors})
        seconds = round(time.perf_counter() - t0, 1)
        for r in out:
            rows.append({"variant": label, "guidance_interval": s.guidance_interval if interval else None, **extra, **r,
                         "sweep_seconds": seconds})
            keys = ("class_consistency", "fd_ratio_classifier", "fd_ratio_effnet_lite0", "recall_ratio_classifier", "recall_ratio_effnet_lite0")
            print(f"{label} w={r['guidance']}: " + ", ".join(f"{k} {r[k]:.3f}" for k in keys if k in r), flush=True)
        write()

    def write() -> None:
        atomic_write_json(args.out, {
            "command": "python -m benchmarks.autoguidance " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "run": str(run), "sampler": s.sampler, "steps": s.steps, "num_per_class": args.num_per_class, "extractors": args.extractors,
            "seed": params.base.seed + 2, "guides": {name: {"overrides": GUIDES[name], **rec} for name, rec in guides.items()},
            "rows": rows, "provenance": provenance()})

    good = LatentDiffusionGenerator.from_dir(run / "models", device=device).unet
    score("cfg", good, [s.guidance], True)  # the sample stage's own guidance: the reference row
    bad_unets = {}
    for name in args.guides:
        models, guides[name] = train_guide(name, run, raw, work)
        bad_unets[name] = LatentDiffusionGenerator.from_dir(models, device=device).unet
        for mode in args.modes:
            score(f"{name}_{mode}", GuideSwap(good, bad_unets[name], mode).eval(), args.guidances, False, guide=name, mode=mode)
    if args.combined:
        if "quarter" not in bad_unets:
            models, guides["quarter"] = train_guide("quarter", run, raw, work)
            bad_unets["quarter"] = LatentDiffusionGenerator.from_dir(models, device=device).unet
        for a in args.combined:
            score(f"cfg_plus_quarter_{a:g}", GuideSwap(good, bad_unets["quarter"], "combined", cfg_scale=s.guidance, weight=a).eval(),
                  [s.guidance], True, guide="quarter", mode="combined", autoguidance_weight=a)
    print(f"wrote {args.out}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
